package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// NetnsDir is where iproute2 keeps the bind mounts of named network
// namespaces.
const NetnsDir = "/run/netns"

// cmdTimeout bounds every helper command (ip, nft, ...) the lab runs.
const cmdTimeout = 30 * time.Second

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Netns is a named network namespace as managed by "ip netns". It keeps a
// file descriptor of the namespace open until Close or Delete.
type Netns struct {
	name string

	mu sync.RWMutex // guards fd; Do holds it shared while using fd
	fd int          // -1 once closed
}

// CreateNetns creates the named network namespace ("ip netns add <name>"),
// brings its loopback interface up and opens it.
func CreateNetns(name string) (*Netns, error) {
	if len(name) > 200 || !validName.MatchString(name) {
		return nil, fmt.Errorf("create netns %q: invalid name", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create netns %q: %w", name, err)
	}
	ns, err := OpenNetns(name)
	if err == nil {
		_, err = run(ctx, "ip", "-n", name, "link", "set", "lo", "up")
	}
	if err != nil {
		if ns != nil {
			ns.Close()
		}
		_, derr := run(ctx, "ip", "netns", "del", name)
		return nil, errors.Join(fmt.Errorf("create netns %q: %w", name, err), derr)
	}
	return ns, nil
}

// OpenNetns opens an existing named network namespace.
func OpenNetns(name string) (*Netns, error) {
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("open netns %q: invalid name", name)
	}
	fd, err := unix.Open(filepath.Join(NetnsDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %q: %w", name, err)
	}
	return &Netns{name: name, fd: fd}, nil
}

// Name returns the namespace name as shown by "ip netns list".
func (n *Netns) Name() string { return n.name }

// Path returns the bind-mount path of the namespace.
func (n *Netns) Path() string { return filepath.Join(NetnsDir, n.name) }

func (n *Netns) String() string { return n.name }

// Do runs fn on an OS thread that has been switched into the namespace and
// waits for it. Sockets created by fn stay in the namespace and may be used
// from any goroutine afterwards. fn must not start goroutines that expect to
// run in the namespace (they will not). A panic in fn is re-raised in the
// caller after the thread has been switched back.
//
// If switching back to the original namespace fails, the thread is left
// locked so that the Go runtime discards it when the helper goroutine exits.
func (n *Netns) Do(fn func() error) error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.fd < 0 {
		return fmt.Errorf("netns %s: closed", n.name)
	}

	type outcome struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		// /proc/thread-self, not /proc/self: other threads of the process
		// may be elsewhere.
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("netns %s: open current netns: %w", n.name, err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("netns %s: setns: %w", n.name, err)}
			return
		}

		var res outcome
		func() {
			defer func() {
				if r := recover(); r != nil {
					res = outcome{panicked: true, panicVal: r}
				}
			}()
			res.err = fn()
		}()

		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine.
			res.err = errors.Join(res.err, fmt.Errorf("netns %s: switch back to original netns: %w", n.name, err))
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	return res.err
}

// DialContext dials address from inside the namespace (the socket is created
// there); the connection may then be used from any goroutine. It fits
// http.Transport.DialContext.
func (n *Netns) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// HTTPClient returns an HTTP client whose connections start inside the
// namespace, for endpoints only reachable there (an agent's health and metrics
// listeners on the node's loopback). Keep-alives are off so that no idle
// connection outlives the namespace. Its Transport is an *http.Transport the
// caller may adjust (TLS) before first use.
func (n *Netns) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       n.DialContext,
	}}
}

// Listen listens on address inside the namespace (net.Listen syntax); the
// listener may then be used from any goroutine.
func (n *Netns) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// Command returns an *exec.Cmd running args inside the namespace via
// "ip netns exec".
func (n *Netns) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name}, args...)...)
}

// Exec runs args inside the namespace ("ip netns exec <name> args...") and
// returns the combined output. The error includes the output.
func (n *Netns) Exec(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("netns %s: exec: no command", n.name)
	}
	out, err := n.Command(ctx, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netns %s: %s: %w: %s", n.name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// IP runs "ip -n <name> args..." and returns its combined output.
func (n *Netns) IP(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, "ip", append([]string{"-n", n.name}, args...)...)
}

// Sysctl sets a sysctl inside the namespace. key is either dotted
// ("net.ipv4.ip_forward") or a path below /proc/sys
// ("net/ipv4/conf/eth0.100/rp_filter"; use this form when a component
// contains a dot).
func (n *Netns) Sysctl(key, value string) error {
	p := key
	if !strings.Contains(key, "/") {
		p = strings.ReplaceAll(key, ".", "/")
	}
	p = filepath.Join("/proc/sys", filepath.Clean("/"+p))
	err := n.Do(func() error {
		// /proc/sys/net resolves against the calling thread's netns.
		return os.WriteFile(p, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("netns %s: sysctl %s=%s: %w", n.name, key, value, err)
	}
	return nil
}

// Close releases the namespace file descriptor. The namespace itself stays.
func (n *Netns) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fd < 0 {
		return nil
	}
	err := unix.Close(n.fd)
	n.fd = -1
	if err != nil {
		return fmt.Errorf("netns %s: close: %w", n.name, err)
	}
	return nil
}

// Delete closes the namespace and removes it ("ip netns del"). Processes
// still running inside keep the namespace alive (unnamed) until they exit.
func (n *Netns) Delete() error {
	cerr := n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := os.Stat(n.Path()); errors.Is(err, os.ErrNotExist) {
		return cerr
	}
	if _, err := run(ctx, "ip", "netns", "del", n.name); err != nil {
		return errors.Join(cerr, fmt.Errorf("delete netns %s: %w", n.name, err))
	}
	return cerr
}

// ListNetns returns the names of all named network namespaces starting with
// prefix.
func ListNetns(prefix string) ([]string, error) {
	entries, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// run executes a command and returns its combined output; the error names
// the command and includes the output.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}
