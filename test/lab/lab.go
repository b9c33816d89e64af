package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nftpolicy/nftpolicy/internal/testns"
)

// Options configures New.
type Options struct {
	// Prefix starts every namespace name (and names the lab's state). Empty
	// means NewPrefix(). Leftovers of an earlier, dead lab with the same
	// prefix are removed by New.
	Prefix string
	// StateDir holds the lab's lock file and PID directory. Empty means
	// DefaultStateDir.
	StateDir string
}

// Lab owns a set of namespaces, servers, forwarders and processes that share
// one name prefix. Close removes all of it. A Lab is safe for concurrent use.
type Lab struct {
	prefix   string
	stateDir string
	dir      string   // stateDir/prefix
	lock     *os.File // flocked stateDir/prefix.lock, held while the lab lives

	mu         sync.Mutex
	closed     bool
	netns      []*Netns
	nodes      []*Node
	pods       []*Pod
	servers    []*Server
	forwarders []*Forwarder
	procs      []*Process
}

// New creates a lab: it registers the prefix in the state directory (holding
// a lock so that CleanupStale in other processes leaves it alone) and removes
// leftovers of a dead lab with the same prefix.
func New(opts Options) (*Lab, error) {
	stateDir := opts.StateDir
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("new lab: %w", err)
	}
	for attempt := 0; ; attempt++ {
		prefix := opts.Prefix
		if prefix == "" {
			prefix = NewPrefix()
		}
		if !validPrefix.MatchString(prefix) {
			return nil, fmt.Errorf("new lab: invalid prefix %q", prefix)
		}
		lockPath := filepath.Join(stateDir, prefix+".lock")
		lock, err := tryLock(lockPath, true)
		if err != nil {
			return nil, fmt.Errorf("new lab: %w", err)
		}
		if lock == nil {
			if opts.Prefix != "" || attempt > 10 {
				return nil, fmt.Errorf("new lab: prefix %q is in use by a live lab (%s is locked)", prefix, lockPath)
			}
			continue // random prefix collided with a live lab
		}
		l := &Lab{prefix: prefix, stateDir: stateDir, dir: filepath.Join(stateDir, prefix), lock: lock}
		// Whatever exists under this prefix now belongs to a dead lab.
		err = Cleanup(prefix, l.PidDir())
		if err == nil {
			err = os.RemoveAll(l.dir)
		}
		if err == nil {
			err = os.MkdirAll(l.PidDir(), 0o755)
		}
		if err == nil {
			// Who owns the lab: `nftpolicy-lab down --all` asks it to stop.
			err = os.WriteFile(filepath.Join(l.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
		}
		if err != nil {
			return nil, fmt.Errorf("new lab %s: %w", prefix, errors.Join(err, l.release()))
		}
		return l, nil
	}
}

// SkipIfNotRoot skips the test unless it runs as root with the tools the lab
// needs.
func SkipIfNotRoot(t testns.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testns.SkipUnlessRequired(t, "lab: needs root (network namespaces, veth, nftables); run e.g. `sudo -E go test ./test/lab/...`")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("lab: iproute2 'ip' not found: %v", err)
	}
}

// SkipUnlessCluster skips t (through testns.SkipUnlessRequired, so it fails
// where the lab is required) unless StartCluster can run here: root, ip, nft
// and the further tools on PATH, and a control plane (KUBEBUILDER_ASSETS or
// `make envtest-assets`).
func SkipUnlessCluster(t testns.TB, tools ...string) {
	t.Helper()
	SkipIfNotRoot(t)
	for _, tool := range append([]string{"nft"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			testns.SkipUnlessRequired(t, "lab: %s is not installed (make deps)", tool)
		}
	}
	if _, err := ControlPlaneDir(""); err != nil {
		testns.SkipUnlessRequired(t, "lab: no control plane: %v (run `make envtest-assets` or set KUBEBUILDER_ASSETS)", err)
	}
}

// TestLog returns a writer that sends each write, less its trailing newline,
// to t.Log: the progress lines of StartCluster and the like then show in the
// test's own output.
func TestLog(t testing.TB) io.Writer { return testLog{t} }

type testLog struct{ t testing.TB }

func (w testLog) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// NewForTest skips the test when not root, removes stale labs of crashed
// runs, creates a lab with a random prefix and closes it in t.Cleanup.
func NewForTest(t testing.TB) *Lab {
	t.Helper()
	SkipIfNotRoot(t)
	if err := CleanupStale(""); err != nil {
		t.Logf("lab: cleaning up stale labs: %v", err)
	}
	l, err := New(Options{})
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Logf("lab: prefix %s", l.Prefix())
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab: close: %v", err)
		}
	})
	return l
}

// Prefix returns the prefix shared by all namespaces of the lab.
func (l *Lab) Prefix() string { return l.prefix }

// Dir returns the lab's state directory (below Options.StateDir). It is
// removed by Close; keep logs elsewhere (e.g. t.TempDir or an artifacts dir).
func (l *Lab) Dir() string { return l.dir }

// PidDir returns the directory in which the lab's processes record their PIDs.
func (l *Lab) PidDir() string { return filepath.Join(l.dir, "pids") }

// NetnsName returns the full namespace name for a lab-local name.
func (l *Lab) NetnsName(name string) string { return l.prefix + name }

// NewNetns creates a namespace named Prefix()+name that is removed by Close.
func (l *Lab) NewNetns(name string) (*Netns, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.newNetnsLocked(name)
}

func (l *Lab) newNetnsLocked(name string) (*Netns, error) {
	if l.closed {
		return nil, errors.New("lab is closed")
	}
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("invalid name %q", name)
	}
	ns, err := CreateNetns(l.NetnsName(name))
	if err != nil {
		return nil, err
	}
	l.netns = append(l.netns, ns)
	return ns, nil
}

func (l *Lab) track(add func()) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab is closed")
	}
	add()
	return nil
}

// ServeTCP is like the package-level ServeTCP; the server is closed by Close.
func (l *Lab) ServeTCP(ns *Netns, addr, reply string) (*Server, error) {
	s, err := ServeTCP(ns, addr, reply)
	return keep(l, &l.servers, s, err, (*Server).Close)
}

// ServeUDP is like the package-level ServeUDP; the server is closed by Close.
func (l *Lab) ServeUDP(ns *Netns, addr, reply string) (*Server, error) {
	s, err := ServeUDP(ns, addr, reply)
	return keep(l, &l.servers, s, err, (*Server).Close)
}

// ForwardTCP is like the package-level ForwardTCP; the forwarder is closed
// by Close.
func (l *Lab) ForwardTCP(ns *Netns, listenAddr, target string) (*Forwarder, error) {
	f, err := ForwardTCP(ns, listenAddr, target)
	return keep(l, &l.forwarders, f, err, (*Forwarder).Close)
}

// StartProcess is like the package-level StartProcess with the lab's PID
// directory; the process is stopped (SIGTERM, then SIGKILL) by Close.
func (l *Lab) StartProcess(ns *Netns, name, logFile string, args ...string) (*Process, error) {
	p, err := StartProcess(ns, l.PidDir(), name, logFile, args...)
	return keep(l, &l.procs, p, err, func(p *Process) error { return p.Stop(syscall.SIGKILL) })
}

// keep hands x, just made (err says whether it was), to the lab for Close by
// adding it to list. If the lab closed meanwhile, x is released at once and
// keep fails.
func keep[T any](l *Lab, list *[]T, x T, err error, release func(T) error) (T, error) {
	var none T
	if err != nil {
		return none, err
	}
	if err := l.track(func() { *list = append(*list, x) }); err != nil {
		return none, errors.Join(err, release(x))
	}
	return x, nil
}

// Nodes returns the nodes in creation order.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.nodes)
}

// Pods returns all pods in creation order.
func (l *Lab) Pods() []*Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.pods)
}

// Pod returns the pod with the given name, or nil.
func (l *Lab) Pod(name string) *Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Node returns the node with the given name, or nil.
func (l *Lab) Node(name string) *Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nodeLocked(name)
}

// nodeLocked is Node with l.mu held.
func (l *Lab) nodeLocked(name string) *Node {
	for _, n := range l.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// markClosed sets *closed under mu and, in the same critical section, runs
// take (which copies what Close will release); it reports false, doing
// nothing, if *closed was already set: Close is then a no-op.
func markClosed(mu *sync.Mutex, closed *bool, take func()) bool {
	mu.Lock()
	defer mu.Unlock()
	if *closed {
		return false
	}
	*closed = true
	take()
	return true
}

// Close stops processes (SIGTERM, then SIGKILL), closes forwarders and
// servers, deletes every namespace with the lab's prefix and removes the
// lab's state. It is idempotent.
func (l *Lab) Close() error {
	var (
		procs   []*Process
		fwds    []*Forwarder
		servers []*Server
		netns   []*Netns
	)
	if !markClosed(&l.mu, &l.closed, func() { procs, fwds, servers, netns = l.procs, l.forwarders, l.servers, l.netns }) {
		return nil
	}

	var errs []error
	var wg sync.WaitGroup
	perrs := make([]error, len(procs))
	for i, p := range procs {
		wg.Go(func() { perrs[i] = p.Stop(syscall.SIGTERM) })
	}
	wg.Wait()
	errs = append(errs, perrs...)
	for _, f := range fwds {
		errs = append(errs, f.Close())
	}
	for _, s := range servers {
		errs = append(errs, s.Close())
	}
	for _, ns := range netns {
		errs = append(errs, ns.Close())
	}
	errs = append(errs, Cleanup(l.prefix, l.PidDir()))
	if err := errors.Join(errs...); err != nil {
		// Keep lock file and state so that CleanupStale can retry.
		l.lock.Close()
		return fmt.Errorf("close lab %s: %w", l.prefix, err)
	}
	if err := os.RemoveAll(l.dir); err != nil {
		l.lock.Close()
		return fmt.Errorf("close lab %s: %w", l.prefix, err)
	}
	return l.release()
}

// release removes and unlocks the lock file.
func (l *Lab) release() error {
	err := os.Remove(l.lock.Name())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, l.lock.Close())
}
