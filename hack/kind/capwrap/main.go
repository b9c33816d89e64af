// Command capwrap is an OCI runtime wrapper for the kind test harness, never part of the
// product: it removes from a container's spec every capability that the capability
// bounding set of the calling process lacks, then executes the real runc with the same
// arguments.
//
// Why: a privileged container (a kind node, and kube-proxy inside one) asks for every
// capability, and runc fails with "unable to apply caps: operation not permitted" when
// the host's bounding set lacks one of them (a sandbox without CAP_SYS_RESOURCE, for
// example). Dropping what the host cannot grant anyway is the only change; on a host
// whose bounding set is full, the spec is left untouched.
//
// It edits config.json of the bundle for "create" and "run" (--bundle, or the current
// directory as runc does) and the --process file for "exec". The real runc is
// $CAPWRAP_RUNC, or the first of /usr/sbin/runc, /usr/bin/runc, /usr/local/sbin/runc.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// capBits are the Linux capability numbers (linux/capability.h).
var capBits = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
	"CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
	"CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
	"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
	"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
	"CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
	"CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
	"CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
	"CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
	"CAP_CHECKPOINT_RESTORE": 40,
}

func main() {
	runc, err := realRunc()
	if err != nil {
		fail(err)
	}
	args := os.Args[1:]
	bounding, err := boundingSet()
	if err != nil {
		fail(err)
	}
	if err := rewrite(args, bounding); err != nil {
		fail(err)
	}
	if err := syscall.Exec(runc, append([]string{"runc"}, args...), os.Environ()); err != nil { //nolint:gosec // the wrapper's whole job is to run runc with its caller's arguments
		fail(fmt.Errorf("exec %s: %w", runc, err))
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "capwrap: %v\n", err)
	os.Exit(1)
}

func realRunc() (string, error) {
	if p := os.Getenv("CAPWRAP_RUNC"); p != "" {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no runc found (set CAPWRAP_RUNC)")
}

// rewrite finds the spec files the runc command line names and filters their capabilities.
// Global flags may carry values (--root DIR, --log FILE), so the command is the first
// argument that names one of the commands whose spec is edited; the flags after it are
// read in both the "--flag value" and "--flag=value" forms.
func rewrite(args []string, bounding uint64) error {
	at := -1
	for i, a := range args {
		if a == "create" || a == "run" || a == "exec" {
			at = i
			break
		}
	}
	if at < 0 {
		return nil
	}
	cmd, flags := args[at], map[string]string{}
	for i := at + 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
		}
		switch name {
		case "bundle", "b":
			flags["bundle"] = value
		case "process", "p":
			flags["process"] = value
		}
	}
	if cmd == "exec" {
		if flags["process"] != "" {
			return filterFile(flags["process"], bounding, false)
		}
		return nil
	}
	bundle := flags["bundle"]
	if bundle == "" {
		bundle = "."
	}
	return filterFile(filepath.Join(bundle, "config.json"), bounding, true)
}

func boundingSet() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("reading the capability bounding set: %w", err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapBnd:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapBnd line in /proc/self/status")
}

// filterFile drops unavailable capabilities from a spec (whole config.json, caps under
// .process.capabilities) or a process file (caps under .capabilities). Unknown fields
// are kept as they are: the file is edited as generic JSON.
func filterFile(path string, bounding uint64, wholeSpec bool) error {
	raw, err := os.ReadFile(path) //nolint:gosec // path comes from runc's own command line
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	proc := doc
	if wholeSpec {
		p, ok := doc["process"].(map[string]any)
		if !ok {
			return nil
		}
		proc = p
	}
	caps, ok := proc["capabilities"].(map[string]any)
	if !ok {
		return nil
	}
	changed := false
	for set, list := range caps {
		names, ok := list.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(names))
		for _, n := range names {
			name, _ := n.(string)
			if bit, known := capBits[name]; known && bounding&(1<<bit) == 0 {
				changed = true
				continue
			}
			kept = append(kept, n)
		}
		caps[set] = kept
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
