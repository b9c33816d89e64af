// Package testns gives kernel tests a throwaway network namespace without touching the
// test process's own: a locked OS thread unshares into a new namespace and opens it,
// then exits without unlocking, so the runtime discards the thread and no goroutine
// ever runs inside the namespace. The namespace lives as long as the descriptor.
package testns

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// New returns a descriptor of a new, empty network namespace, closed when the test
// ends. It skips the test (fails it when Required) when not root or when namespaces
// cannot be created.
func New(t testing.TB) int {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipUnlessRequired(t, "kernel test: needs root (CAP_SYS_ADMIN for a network namespace, CAP_NET_ADMIN inside it)")
	}
	var r struct {
		fd  int
		err error
	}
	r.err = OnThrowawayThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
		}
		var err error
		r.fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if r.err != nil {
		SkipUnlessRequired(t, "kernel test: cannot create a network namespace: %v", r.err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return r.fd
}

// OnThrowawayThread runs fn on a new OS thread locked to its goroutine and never
// unlocked, so the runtime discards the thread when fn returns: fn may move the thread
// into another namespace (unshare, setns) without any other goroutine ever running there.
func OnThrowawayThread(fn func() error) error {
	errc := make(chan error)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread must not go back to the pool.
		errc <- fn()
	}()
	return <-errc
}

// In runs fn on a throwaway thread (OnThrowawayThread) inside the namespace nsFd.
func In(nsFd int, fn func() error) error {
	return OnThrowawayThread(func() error {
		if err := unix.Setns(nsFd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns into namespace fd %d: %w", nsFd, err)
		}
		return fn()
	})
}

// Exec runs a command inside the namespace (nsenter on an inherited copy of the
// descriptor) and returns its output. It skips the test (fails it when Required) when
// nsenter or the command is not installed.
func Exec(t testing.TB, nsFd int, name string, args ...string) (string, error) {
	t.Helper()
	for _, tool := range []string{"nsenter", name} {
		if _, err := exec.LookPath(tool); err != nil {
			SkipUnlessRequired(t, "kernel test: %s not installed", tool)
		}
	}
	dup, err := unix.Dup(nsFd)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "netns")
	defer f.Close()
	cmd := exec.CommandContext(t.Context(), "nsenter", append([]string{"--net=/proc/self/fd/3", name}, args...)...)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
