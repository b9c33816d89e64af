// Package testns gives kernel tests a throwaway network namespace without touching the
// test process's own: a locked OS thread unshares into a new namespace and opens it,
// then exits without unlocking, so the runtime discards the thread and no goroutine
// ever runs inside the namespace. The namespace lives as long as the descriptor.
package testns

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// New returns a descriptor of a new, empty network namespace, closed when the test
// ends. It skips the test when not root or when namespaces cannot be created.
func New(t testing.TB) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root (CAP_SYS_ADMIN for a network namespace, CAP_NET_ADMIN inside it)")
	}
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread must not go back to the pool.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, fmt.Errorf("unshare(CLONE_NEWNET): %w", err)}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		ch <- result{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Skipf("kernel test: cannot create a network namespace: %v", r.err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return r.fd
}
