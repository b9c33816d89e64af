package bench

import (
	"context"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"k8s.io/client-go/rest"
)

// wireMeter counts what one API client receives, at two levels: the bytes read from
// its TCP connections (TLS records and HTTP/2 frames included: what the API server
// sends and the network carries) and, per resource and request kind, the response
// bodies (the encoded objects, after any gzip is undone) and their Content-Type. One
// meter per emulated agent, installed by instrument: its own dialer also gives the
// client its own connection, so no two agents share an HTTP/2 connection as two
// clients built from equal rest.Configs would (client-go caches transports by
// config).
type wireMeter struct {
	conn atomic.Int64 // bytes read from the client's connections

	mu  sync.Mutex
	per map[string]*meterStream // "pods watch", "pods list", "discovery get", ...
}

// meterStream is what one kind of request received so far (mu guards all but body).
type meterStream struct {
	requests, initialEvents int64
	contentTypes            map[string]int64
	body                    atomic.Int64
}

// wireStream is what one kind of request received.
type wireStream struct {
	Requests int64 `json:"requests"`
	// BodyBytes are the response bodies as the client decoder reads them.
	BodyBytes int64 `json:"body_bytes"`
	// ContentTypes counts the responses' Content-Type headers.
	ContentTypes map[string]int64 `json:"content_types"`
	// InitialEvents counts watch requests with sendInitialEvents=true: the streaming
	// list (WatchList) that replaces the initial LIST.
	InitialEvents int64 `json:"send_initial_events,omitempty"`
}

func newWireMeter() *wireMeter { return &wireMeter{per: map[string]*meterStream{}} }

// instrument returns a copy of cfg whose connections and responses m counts.
func (m *wireMeter) instrument(cfg *rest.Config) *rest.Config {
	out := rest.CopyConfig(cfg)
	d := &net.Dialer{}
	out.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, n: &m.conn}, nil
	}
	out.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &meterRoundTripper{next: rt, m: m} })
	return out
}

// requestKind names a request by resource and verb: "pods watch", "networkpolicies
// list", "discovery get".
func requestKind(r *http.Request) string {
	q := r.URL.Query()
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	// /api/v1/<resource>, /apis/<group>/<version>/<resource>, optionally under
	// namespaces/<ns>/; anything shorter is discovery.
	resource := ""
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		resource = parts[len(parts)-1]
	case len(parts) >= 4 && parts[0] == "apis":
		resource = parts[len(parts)-1]
	}
	if resource == "" {
		return "discovery " + strings.ToLower(r.Method)
	}
	verb := strings.ToLower(r.Method)
	if verb == "get" {
		verb = "list"
		if q.Get("watch") == "true" || q.Get("watch") == "1" {
			verb = "watch"
		}
	}
	return resource + " " + verb
}

func (m *wireMeter) stream(kind string) *meterStream {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.per[kind]
	if s == nil {
		s = &meterStream{contentTypes: map[string]int64{}}
		m.per[kind] = s
	}
	return s
}

// ConnBytes is what the client read from its connections so far.
func (m *wireMeter) ConnBytes() int64 { return m.conn.Load() }

// Body returns the body bytes received for the request kind so far.
func (m *wireMeter) Body(kind string) int64 { return m.stream(kind).body.Load() }

// Snapshot copies the per-kind counts.
func (m *wireMeter) Snapshot() map[string]wireStream {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]wireStream, len(m.per))
	for k, s := range m.per {
		out[k] = wireStream{Requests: s.requests, BodyBytes: s.body.Load(), ContentTypes: maps.Clone(s.contentTypes), InitialEvents: s.initialEvents}
	}
	return out
}

// ContentTypes returns the distinct Content-Types the request kind received, sorted.
func (m *wireMeter) ContentTypes(kind string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.per[kind]
	if s == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(s.contentTypes))
}

type meterRoundTripper struct {
	next http.RoundTripper
	m    *wireMeter
}

func (t *meterRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	s := t.m.stream(requestKind(r))
	t.m.mu.Lock()
	s.requests++
	s.contentTypes[resp.Header.Get("Content-Type")]++
	if r.URL.Query().Get("sendInitialEvents") == "true" {
		s.initialEvents++
	}
	t.m.mu.Unlock()
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &s.body}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}
