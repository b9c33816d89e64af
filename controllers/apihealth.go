package controllers

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
)

// Defaults of APIServerCheck.
const (
	DefaultAPIServerCheckTimeout  = 2 * time.Second
	DefaultAPIServerCheckCacheFor = time.Second
)

// APIServerCheck is a readiness check (a healthz.Checker through Check) that fails
// while the API server cannot be reached. The agent keeps enforcing its last ruleset
// during an outage, but it no longer sees policy changes: reporting not-ready makes the
// outage visible (kubectl, alerts) without restarting the agent, which would gain
// nothing. The result is cached for CacheFor so that frequent probes cost the API
// server at most one request per period.
type APIServerCheck struct {
	// Client reaches the API server; only AbsPath requests are made.
	Client rest.Interface
	// Timeout bounds one request (DefaultAPIServerCheckTimeout if zero): a hung
	// API server must fail the probe, not hold it.
	Timeout time.Duration
	// CacheFor is how long a result is reused (DefaultAPIServerCheckCacheFor if
	// zero; negative disables the cache).
	CacheFor time.Duration
	// Path is requested (default /readyz, which every authenticated user may read
	// through the system:public-info-viewer ClusterRole).
	Path string

	// now is time.Now, replaceable in tests.
	now func() time.Time

	// mu serializes checks: concurrent probes wait for the one request in flight
	// and share its result instead of sending their own.
	mu      sync.Mutex
	checked time.Time
	lastErr error
}

// NewAPIServerCheck returns a check using a client built from cfg. The client is its
// own (not the manager's) and has no client-side rate limit that the informers'
// traffic could exhaust: the check is already bounded by its cache.
func NewAPIServerCheck(cfg *rest.Config) (*APIServerCheck, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = -1, 0
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API server check: %w", err)
	}
	return &APIServerCheck{Client: dc.RESTClient()}, nil
}

// Check reports an error while the API server does not answer Path with success.
func (c *APIServerCheck) Check(req *http.Request) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now
	if c.now != nil {
		now = c.now
	}
	cacheFor := c.CacheFor
	if cacheFor == 0 {
		cacheFor = DefaultAPIServerCheckCacheFor
	}
	if !c.checked.IsZero() && cacheFor > 0 && now().Sub(c.checked) < cacheFor {
		return c.lastErr
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultAPIServerCheckTimeout
	}
	ctx := context.Background()
	if req != nil {
		ctx = req.Context()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	path := c.Path
	if path == "" {
		path = "/readyz"
	}
	// No retries: client-go retries a GET that met a closed connection (what a
	// proxy in front of a dead API server gives), which would hold the probe for the
	// whole timeout; one attempt per period is the point of the cache.
	err := c.Client.Get().AbsPath(path).MaxRetries(0).Do(ctx).Error()
	if err != nil {
		err = fmt.Errorf("API server unreachable (GET %s): %w", path, err)
	}
	c.checked, c.lastErr = now(), err
	return err
}
