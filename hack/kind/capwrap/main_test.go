package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A bounding set without CAP_SYS_RESOURCE (bit 24), as in the CI sandbox.
const sandboxBounding = uint64(0x1fffeffffff)

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func caps(t *testing.T, path string, wholeSpec bool) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if wholeSpec {
		doc = doc["process"].(map[string]any)
	}
	out := map[string][]string{}
	for set, list := range doc["capabilities"].(map[string]any) {
		for _, c := range list.([]any) {
			out[set] = append(out[set], c.(string))
		}
	}
	return out
}

func TestCreateDropsWhatTheBoundingSetLacks(t *testing.T) {
	bundle := t.TempDir()
	all := []string{"CAP_NET_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"}
	writeJSON(t, filepath.Join(bundle, "config.json"), map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{"args": []string{"/sbin/init"}, "capabilities": map[string]any{
			"bounding": all, "effective": all, "permitted": all,
		}},
		"root": map[string]any{"path": "rootfs"},
	})
	// Global flags with values come before the command, as dockerd and the shim pass them.
	args := []string{"--root", "/run/docker/runtime-runc/moby", "--log", "/x/log.json", "create", "--bundle", bundle, "--pid-file", "/x/pid", "id"}
	if err := rewrite(args, sandboxBounding); err != nil {
		t.Fatal(err)
	}
	got := caps(t, filepath.Join(bundle, "config.json"), true)
	for _, set := range []string{"bounding", "effective", "permitted"} {
		if want := []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}; !slices.Equal(got[set], want) {
			t.Errorf("%s = %v, want %v", set, got[set], want)
		}
	}
	raw, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	var doc map[string]any
	_ = json.Unmarshal(raw, &doc)
	if doc["root"].(map[string]any)["path"] != "rootfs" || doc["ociVersion"] != "1.0.2" {
		t.Errorf("fields other than capabilities changed: %s", raw)
	}
}

func TestExecProcessFile(t *testing.T) {
	dir := t.TempDir()
	process := filepath.Join(dir, "process.json")
	writeJSON(t, process, map[string]any{"args": []string{"sh"}, "capabilities": map[string]any{
		"bounding": []string{"CAP_SYS_RESOURCE", "CAP_KILL"},
	}})
	if err := rewrite([]string{"--root", "/r", "exec", "--process=" + process, "--detach", "id"}, sandboxBounding); err != nil {
		t.Fatal(err)
	}
	if got := caps(t, process, false)["bounding"]; !slices.Equal(got, []string{"CAP_KILL"}) {
		t.Errorf("bounding = %v, want [CAP_KILL]", got)
	}
}

func TestFullBoundingSetChangesNothing(t *testing.T) {
	bundle := t.TempDir()
	path := filepath.Join(bundle, "config.json")
	writeJSON(t, path, map[string]any{"process": map[string]any{"capabilities": map[string]any{
		"bounding": []string{"CAP_SYS_RESOURCE", "CAP_BPF"},
	}}})
	before, _ := os.ReadFile(path)
	if err := rewrite([]string{"run", "-b", bundle, "id"}, 1<<41-1); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Errorf("a full bounding set rewrote the spec:\n%s\n%s", before, after)
	}
}

func TestOtherCommandsUntouched(t *testing.T) {
	// state, delete, kill...: no spec to edit, and the current directory is not read.
	for _, args := range [][]string{{"--root", "/r", "state", "id"}, {"delete", "--force", "id"}, {"kill", "id", "9"}} {
		if err := rewrite(args, sandboxBounding); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
}
