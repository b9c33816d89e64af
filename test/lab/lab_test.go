package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/internal/testns"
)

var ports = []int{80, 81}

// newCluster builds one node with pods a, b, c (dual stack) serving TCP and
// UDP on 80 and 81.
func newCluster(t *testing.T) (*Lab, *Node, []*Pod) {
	t.Helper()
	l, node := newNode(t)
	var pods []*Pod
	for i, name := range []string{"a", "b", "c"} {
		v4 := netip.MustParseAddr(fmt.Sprintf("10.244.1.%d", i+2))
		v6 := netip.MustParseAddr(fmt.Sprintf("fd00:10:244:1::%d", i+2))
		p, err := l.AddPod(node, name, v4, v6)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Serve(ports...); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	return l, node, pods
}

// newNode starts a lab with one node, node1.
func newNode(t *testing.T) (*Lab, *Node) {
	t.Helper()
	l := NewForTest(t)
	node, err := l.AddNode("node1")
	if err != nil {
		t.Fatal(err)
	}
	return l, node
}

type combo struct {
	family Family
	proto  string
	port   int
}

func allCombos() []combo {
	var cs []combo
	for _, f := range []Family{IPv4, IPv6} {
		for _, proto := range []string{"tcp", "udp"} {
			for _, port := range ports {
				cs = append(cs, combo{f, proto, port})
			}
		}
	}
	return cs
}

// checkMatrices probes every combo concurrently and compares with want(c).
func checkMatrices(t *testing.T, pods []*Pod, want func(c combo) *Matrix) {
	t.Helper()
	ctx := context.Background()
	cs := allCombos()
	got := make([]*Matrix, len(cs))
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			got[i], errs[i] = ProbeMatrix(ctx, pods, pods, c.family, c.proto, c.port, ProbeOptions{})
		})
	}
	wg.Wait()
	for i, c := range cs {
		if errs[i] != nil {
			t.Fatalf("%v: %v", c, errs[i])
		}
		if d := Diff(want(c), got[i]); d != "" {
			t.Error(d)
		} else {
			t.Logf("\n%s", got[i])
		}
	}
}

func TestPodToPod(t *testing.T) {
	l, node, pods := newCluster(t)
	names := PodNames(pods)
	ctx := context.Background()

	t.Run("all allowed", func(t *testing.T) {
		checkMatrices(t, pods, func(combo) *Matrix { return NewMatrix(names, names, true) })
	})

	t.Run("probe reply names the target", func(t *testing.T) {
		for _, f := range []Family{IPv4, IPv6} {
			for _, proto := range []string{"tcp", "udp"} {
				r, err := ProbeDetail(ctx, pods[0].NS, pods[1].AddrPort(f, 81), proto, 0)
				if err != nil {
					t.Fatal(err)
				}
				if !r.OK || r.Reply != "b" {
					t.Errorf("%s %v a->b:81: got %+v, want OK with reply %q", proto, f, r, "b")
				}
			}
		}
	})

	t.Run("closed port fails fast", func(t *testing.T) {
		for _, f := range []Family{IPv4, IPv6} {
			for _, proto := range []string{"tcp", "udp"} {
				r, err := ProbeDetail(ctx, pods[0].NS, pods[2].AddrPort(f, 82), proto, 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if r.OK {
					t.Errorf("%s %v a->c:82 succeeded, want refused", proto, f)
				}
				if r.Elapsed > 500*time.Millisecond || !isRefused(r.Err) {
					t.Errorf("%s %v a->c:82: took %v with %v, want fast connection refused", proto, f, r.Elapsed, r.Err)
				}
			}
		}
	})

	t.Run("nft drop in node netns", func(t *testing.T) {
		if _, err := exec.LookPath("nft"); err != nil {
			testns.SkipUnlessRequired(t, "nft not installed")
		}
		b := pods[1]
		rules := fmt.Sprintf("add table inet t; "+
			"add chain inet t f { type filter hook forward priority 0; }; "+
			"add rule inet t f ip daddr %s tcp dport 80 drop", b.IPv4)
		if _, err := node.NS.Exec(ctx, "nft", rules); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := node.NS.Exec(ctx, "nft", "delete table inet t"); err != nil {
				t.Error(err)
			}
		}()
		checkMatrices(t, pods, func(c combo) *Matrix {
			m := NewMatrix(names, names, true)
			if c == (combo{IPv4, "tcp", 80}) {
				// b -> b stays local to b's namespace.
				m.DenyTo("b").AllowSelf()
			}
			return m
		})
	})

	t.Run("close removes everything", func(t *testing.T) {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		assertNoNetns(t, l.Prefix())
		for _, p := range []string{l.Dir(), l.lock.Name()} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("%s still exists after Close (err=%v)", p, err)
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// assertNoNetns checks "ip netns list" for namespaces with prefix.
func assertNoNetns(t *testing.T, prefix string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("netns %q left behind", line)
		}
	}
}

func TestSingleStackPod(t *testing.T) {
	l := NewForTest(t)
	node, err := l.AddNode("n")
	if err != nil {
		t.Fatal(err)
	}
	v4, err := l.AddPod(node, "v4only", netip.MustParseAddr("10.244.1.10"), netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	v6, err := l.AddPod(node, "v6only", netip.Addr{}, netip.MustParseAddr("fd00:10:244:1::10"))
	if err != nil {
		t.Fatal(err)
	}
	if err := v6.Serve(80); err != nil {
		t.Fatal(err)
	}
	if err := v4.Serve(80); err != nil {
		t.Fatal(err)
	}
	ok, err := Probe(context.Background(), v6.NS, v4.AddrPort(IPv4, 80), "tcp", 0)
	if err != nil || ok {
		// v6only has no IPv4 route at all.
		t.Errorf("v6only -> v4only over IPv4: ok=%v err=%v, want unreachable", ok, err)
	}
	if _, err := l.AddPod(node, "dup", netip.MustParseAddr("10.244.1.10"), netip.Addr{}); err == nil {
		t.Error("duplicate address accepted")
	}
	if _, err := ProbeMatrix(context.Background(), []*Pod{v4}, []*Pod{v6}, IPv4, "tcp", 80, ProbeOptions{}); err == nil {
		t.Error("ProbeMatrix to a pod without IPv4 address: want error")
	}
}

func TestForwardTCP(t *testing.T) {
	l, node := newNode(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from root netns "+r.URL.Path) // the client checks the body
	}))
	t.Cleanup(srv.Close)
	target := srv.Listener.Addr().String() // 127.0.0.1:<port>

	// Before forwarding, the node cannot reach the root namespace's port.
	if c, err := node.NS.DialContext(context.Background(), "tcp", target); err == nil {
		c.Close()
		t.Fatalf("node reached %s without a forwarder", target)
	}

	same, err := l.ForwardTCP(node.NS, "", target)
	if err != nil {
		t.Fatal(err)
	}
	if same.Addr().String() != target {
		t.Errorf("forwarder listens on %s, want %s", same.Addr(), target)
	}
	anyPort, err := l.ForwardTCP(node.NS, "127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}

	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: node.NS.DialContext},
	}
	defer client.CloseIdleConnections()
	for _, addr := range []string{same.Addr().String(), anyPort.Addr().String()} {
		resp, err := client.Get("http://" + addr + "/x")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello from root netns /x" {
			t.Errorf("GET via %s: %q", addr, body)
		}
	}

	// A separate process inside the node namespace (like the agent) sees
	// the API server at the unchanged address.
	host, port, _ := net.SplitHostPort(target)
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s && printf 'GET /agent HTTP/1.0\r\nHost: x\r\n\r\n' >&3 && cat <&3`, host, port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := node.NS.Exec(ctx, "bash", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "hello from root netns /agent") {
		t.Errorf("bash inside node netns got %q", out)
	}

	if err := same.Close(); err != nil {
		t.Error(err)
	}
	if c, err := node.NS.DialContext(context.Background(), "tcp", target); err == nil {
		c.Close()
		t.Error("forwarder still accepting after Close")
	}
}

func TestProcess(t *testing.T) {
	l, node := newNode(t)
	logFile := filepath.Join(t.TempDir(), "sleeper.log")
	p, err := l.StartProcess(node.NS, "sleeper", logFile, "sh", "-c", "echo started; exec sleep 300")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p.PidFile)
	if err != nil || strings.TrimSpace(string(data)) != fmt.Sprint(p.Pid()) {
		t.Fatalf("pid file %s: %q, %v; want %d", p.PidFile, data, err, p.Pid())
	}
	// "ip netns exec" execs, so the PID ends up running sleep inside the
	// node namespace.
	nodeIno := inode(t, node.NS.Path())
	waitFor(t, 5*time.Second, "sleeper running in node netns", func() bool {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.Pid()))
		st, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", p.Pid()))
		return err == nil && strings.TrimSpace(string(comm)) == "sleep" && st.Sys().(*syscall.Stat_t).Ino == nodeIno
	})
	waitFor(t, 5*time.Second, "log output", func() bool {
		b, _ := os.ReadFile(logFile)
		return strings.Contains(string(b), "started")
	})

	if err := p.ExitErr(); err != nil {
		t.Errorf("ExitErr of a running process: %v, want nil", err)
	}
	if err := p.Stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() || p.Err() == nil || !strings.Contains(p.Err().Error(), "terminated") {
		t.Errorf("after Stop: exited=%v err=%v, want terminated", p.Exited(), p.Err())
	}
	if !errors.Is(p.ExitErr(), p.Err()) {
		t.Errorf("ExitErr %v, want Err %v", p.ExitErr(), p.Err())
	}
	if _, err := os.Stat(p.PidFile); !os.IsNotExist(err) {
		t.Errorf("pid file still exists after Stop (err=%v)", err)
	}

	// A process ignoring SIGTERM gets SIGKILLed after StopTimeout.
	log2 := filepath.Join(t.TempDir(), "stubborn.log")
	p2, err := l.StartProcess(node.NS, "stubborn", log2, "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
	if err != nil {
		t.Fatal(err)
	}
	p2.StopTimeout = 200 * time.Millisecond
	waitFor(t, 5*time.Second, "stubborn to ignore SIGTERM", func() bool {
		b, _ := os.ReadFile(log2)
		return strings.Contains(string(b), "ready")
	})
	if err := p2.Stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if p2.Err() == nil || !strings.Contains(p2.Err().Error(), "killed") {
		t.Errorf("stubborn: err=%v, want killed", p2.Err())
	}

	// A clean exit: Err is nil, ExitErr still says the process is gone.
	p3, err := l.StartProcess(node.NS, "quitter", filepath.Join(t.TempDir(), "quitter.log"), "true")
	if err != nil {
		t.Fatal(err)
	}
	<-p3.Done()
	if p3.Err() != nil || p3.ExitErr() == nil || !strings.Contains(p3.ExitErr().Error(), "status 0") {
		t.Errorf("clean exit: Err %v, ExitErr %v; want nil and an error naming status 0", p3.Err(), p3.ExitErr())
	}
}

// TestCleanupStale simulates a crashed lab (lock released, nothing closed)
// and checks that CleanupStale removes its namespaces and processes.
func TestCleanupStale(t *testing.T) {
	SkipIfNotRoot(t)
	l, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Cleanup(l.Prefix(), l.PidDir()) }) // safety net
	node, err := l.AddNode("node1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddPod(node, "a", netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00:10:244:1::2")); err != nil {
		t.Fatal(err)
	}
	p, err := l.StartProcess(node.NS, "agent", "", "sleep", "300")
	if err != nil {
		t.Fatal(err)
	}
	// A live lab is left alone.
	if err := CleanupStale(""); err != nil {
		t.Fatal(err)
	}
	if names, _ := ListNetns(l.Prefix()); len(names) != 2 {
		t.Fatalf("live lab touched: netns %v", names)
	}

	// "Crash": the lock is released as if the process had died.
	l.lock.Close()
	for _, ns := range l.netns {
		ns.Close()
	}
	if err := CleanupStale(""); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("recorded process not killed")
	}
	assertNoNetns(t, l.Prefix())
	for _, path := range []string{l.Dir(), l.lock.Name()} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s left behind (err=%v)", path, err)
		}
	}
}

// TestDoRestoresThread hammers Do concurrently and checks that no goroutine
// afterwards finds itself in a lab namespace.
func TestDoRestoresThread(t *testing.T) {
	l := NewForTest(t)
	ns, err := l.NewNetns("x")
	if err != nil {
		t.Fatal(err)
	}
	origIno := inode(t, "/proc/self/ns/net")
	nsIno := inode(t, ns.Path())
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			err := ns.Do(func() error {
				if got, err := inodeOf("/proc/thread-self/ns/net"); err != nil || got != nsIno {
					return fmt.Errorf("inside Do: netns inode %d (%w), want %d", got, err, nsIno)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for range 50 {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if got, err := inodeOf("/proc/thread-self/ns/net"); err != nil || got != origIno {
				t.Errorf("thread in netns inode %d (%v), want %d", got, err, origIno)
			}
		})
	}
	wg.Wait()

	// Panics propagate to the caller, after the thread was switched back.
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		_ = ns.Do(func() error { panic("boom") })
	}()
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	ino, err := inodeOf(path)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

func inodeOf(path string) (uint64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Sys().(*syscall.Stat_t).Ino, nil
}

// waitFor polls cond until it holds or the timeout expires.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
