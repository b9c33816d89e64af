package deploy

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/chart"
)

// TestImageMatchesDockerfile checks that `make image` (the OCI archive built without a
// daemon) is the image the Dockerfile describes: same labels, entrypoint and user, and
// the agent binary executable at the entrypoint.
func TestImageMatchesDockerfile(t *testing.T) {
	archive := filepath.Join(chart.RepoRoot(t), "_out", "image", "nftpolicy-agent.oci.tar")
	if _, err := os.Stat(archive); err != nil {
		testns.SkipUnlessRequired(t, "no %s: run `make image` (make test builds it)", archive)
	}
	want := parseDockerfile(t, filepath.Join(chart.RepoRoot(t), "Dockerfile"))
	blobs := readTar(t, archive)

	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	unmarshal(t, blobs["index.json"], &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(index.Manifests))
	}
	if name := index.Manifests[0].Annotations["io.containerd.image.name"]; !strings.Contains(name, "/nftpolicy/agent:") {
		t.Errorf("io.containerd.image.name = %q: `ctr images import` would not name the image", name)
	}
	var manifest struct {
		Config struct{ Digest string } `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
		} `json:"layers"`
	}
	unmarshal(t, blob(t, blobs, index.Manifests[0].Digest), &manifest)
	var config struct {
		OS, Architecture string
		Config           struct {
			User       string
			Entrypoint []string
			Labels     map[string]string
		} `json:"config"`
	}
	unmarshal(t, blob(t, blobs, manifest.Config.Digest), &config)

	if config.OS != "linux" {
		t.Errorf("os %q", config.OS)
	}
	if config.Config.User != want.user {
		t.Errorf("user %q, Dockerfile says %q", config.Config.User, want.user)
	}
	if strings.Join(config.Config.Entrypoint, " ") != strings.Join(want.entrypoint, " ") {
		t.Errorf("entrypoint %q, Dockerfile says %q", config.Config.Entrypoint, want.entrypoint)
	}
	for k, v := range want.labels {
		got, ok := config.Config.Labels[k]
		switch {
		case !ok:
			t.Errorf("label %s missing", k)
		case !strings.Contains(v, "${") && got != v:
			t.Errorf("label %s = %q, Dockerfile says %q", k, got, v)
		case got == "":
			t.Errorf("label %s is empty", k)
		}
	}
	for k := range config.Config.Labels {
		if _, ok := want.labels[k]; !ok {
			t.Errorf("label %s is not in the Dockerfile", k)
		}
	}

	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(manifest.Layers))
	}
	entry := strings.TrimPrefix(want.entrypoint[0], "/")
	var mode int64 = -1
	gz, err := gzip.NewReader(bytes.NewReader(blob(t, blobs, manifest.Layers[0].Digest)))
	if err != nil {
		t.Fatalf("layer: %v", err)
	}
	readTarStream(t, gz, func(h *tar.Header, r io.Reader) {
		if h.Name == entry {
			mode = h.Mode
			head := make([]byte, 4)
			if _, err := io.ReadFull(r, head); err != nil || string(head) != "\x7fELF" {
				t.Errorf("%s is not an ELF binary", entry)
			}
		}
	})
	if mode&0o111 == 0 || mode < 0 {
		t.Errorf("%s missing or not executable in the layer (mode %o)", entry, mode)
	}
}

type dockerfileImage struct {
	labels     map[string]string
	entrypoint []string
	user       string
}

// parseDockerfile reads the final stage's LABEL, ENTRYPOINT (exec form) and USER.
func parseDockerfile(t *testing.T, path string) dockerfileImage {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	img := dockerfileImage{labels: map[string]string{}, user: "0:0"}
	labelRE := regexp.MustCompile(`([A-Za-z0-9._-]+)="([^"]*)"`)
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(instr) {
		case "FROM": // labels and settings of earlier stages do not count
			img = dockerfileImage{labels: map[string]string{}, user: "0:0"}
		case "LABEL":
			for _, m := range labelRE.FindAllStringSubmatch(rest, -1) {
				img.labels[m[1]] = m[2]
			}
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &img.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s: want the exec form: %v", rest, err)
			}
		case "USER":
			img.user = strings.TrimSpace(rest)
		}
	}
	if len(img.entrypoint) == 0 || len(img.labels) == 0 {
		t.Fatalf("%s: no ENTRYPOINT or LABEL in the final stage", path)
	}
	return img
}

func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	readTarStream(t, f, func(h *tar.Header, r io.Reader) {
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			out[strings.TrimPrefix(h.Name, "./")] = b
		}
	})
	return out
}

func readTarStream(t *testing.T, r io.Reader, fn func(*tar.Header, io.Reader)) {
	t.Helper()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		fn(h, tr)
	}
}

func blob(t *testing.T, blobs map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := blobs["blobs/"+strings.Replace(digest, ":", "/", 1)]
	if !ok {
		t.Fatalf("blob %s missing from the archive", digest)
	}
	return b
}

func unmarshal(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decoding %s: %v", data, err)
	}
}
