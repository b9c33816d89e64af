package controllers

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// fakeAPIServer answers /readyz with the status in code and counts requests.
type fakeAPIServer struct {
	srv   *httptest.Server
	code  atomic.Int32
	hang  atomic.Bool
	calls atomic.Int32
	// release unblocks hung handlers when the test ends.
	release chan struct{}
}

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	t.Helper()
	f := &fakeAPIServer{release: make(chan struct{})}
	f.code.Store(http.StatusOK)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		f.calls.Add(1)
		if f.hang.Load() {
			select {
			case <-r.Context().Done():
			case <-f.release:
			}
			return
		}
		w.WriteHeader(int(f.code.Load()))
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(func() {
		close(f.release)
		f.srv.Close()
	})
	return f
}

func newCheck(t *testing.T, host string) *APIServerCheck {
	t.Helper()
	c, err := NewAPIServerCheck(&rest.Config{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAPIServerCheckReachable(t *testing.T) {
	f := newFakeAPIServer(t)
	c := newCheck(t, f.srv.URL)
	if err := c.Check(nil); err != nil {
		t.Fatalf("reachable API server: %v", err)
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("requests = %d, want 1", n)
	}
}

func TestAPIServerCheckNotReady(t *testing.T) {
	f := newFakeAPIServer(t)
	f.code.Store(http.StatusInternalServerError)
	c := newCheck(t, f.srv.URL)
	if err := c.Check(nil); err == nil {
		t.Fatal("API server answering 500: check passed")
	}
}

func TestAPIServerCheckDown(t *testing.T) {
	f := newFakeAPIServer(t)
	url := f.srv.URL
	f.srv.Close()
	c := newCheck(t, url)
	if err := c.Check(nil); err == nil {
		t.Fatal("stopped API server: check passed")
	}
}

// A proxy whose backend is gone accepts and closes: the check fails at once instead
// of retrying until its timeout.
func TestAPIServerCheckClosedConnection(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer srv.Close()
	c := newCheck(t, srv.URL)
	c.Timeout = 10 * time.Second
	start := time.Now()
	if err := c.Check(nil); err == nil {
		t.Fatal("closed connection: check passed")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("check took %v: retried instead of failing", d)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("requests = %d, want 1 (no retries)", n)
	}
}

func TestAPIServerCheckTimeout(t *testing.T) {
	f := newFakeAPIServer(t)
	f.hang.Store(true)
	c := newCheck(t, f.srv.URL)
	c.Timeout = 200 * time.Millisecond
	start := time.Now()
	err := c.Check(nil)
	if err == nil {
		t.Fatal("hung API server: check passed")
	}
	// The bound is the point: a hung API server must not hold the probe.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("check took %v with a 200ms timeout", d)
	}
}

func TestAPIServerCheckCachesResult(t *testing.T) {
	f := newFakeAPIServer(t)
	c := newCheck(t, f.srv.URL)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	c.CacheFor = time.Second

	for range 5 {
		if err := c.Check(nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("5 checks within the cache period sent %d requests, want 1", n)
	}

	// The API server goes away: the cached success is still reported within the
	// period, the failure right after it.
	f.code.Store(http.StatusServiceUnavailable)
	now = now.Add(500 * time.Millisecond)
	if err := c.Check(nil); err != nil {
		t.Fatalf("within the cache period: %v", err)
	}
	now = now.Add(600 * time.Millisecond)
	if err := c.Check(nil); err == nil {
		t.Fatal("after the cache period: check passed against a failing API server")
	}
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("requests = %d, want 2", n)
	}

	// Recovery is seen once the cached failure expires.
	f.code.Store(http.StatusOK)
	if err := c.Check(nil); err == nil {
		t.Fatal("cached failure not reused within the period")
	}
	now = now.Add(1100 * time.Millisecond)
	if err := c.Check(nil); err != nil {
		t.Fatalf("recovered API server: %v", err)
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("requests = %d, want 3", n)
	}
}
