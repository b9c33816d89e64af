package controllers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// AuditReadyNote is what /readyz adds to its body under --audit. The node is ready —
// a DaemonSet rollout in audit mode must not stall — but whoever reads the probe
// (kubectl get --raw, a person with curl) must see that it enforces nothing.
const AuditReadyNote = "AUDIT MODE: this node enforces no policy (--audit); connections the policies would deny are counted and logged, not dropped"

// Probes are the checks of the health probe endpoint.
type Probes struct {
	// Healthz and Readyz are the checks of /healthz and /readyz, by name.
	Healthz, Readyz map[string]healthz.Checker
	// ReadyNote, when set, is appended as a line to every /readyz answer (the status
	// code stays the checks'). The agent sets AuditReadyNote under --audit.
	ReadyNote string
}

// Handler serves /healthz and /readyz like controller-runtime's health probe server
// (the same checks, status codes, bodies and per-check subpaths such as
// /readyz/ruleset), with ReadyNote added. The manager's own server has no place for
// such a note: its handler is internal.
func (p *Probes) Handler() http.Handler {
	mux := http.NewServeMux()
	ready := http.Handler(&healthz.Handler{Checks: p.Readyz})
	if p.ReadyNote != "" {
		ready = withNote(ready, p.ReadyNote)
	}
	for path, h := range map[string]http.Handler{"/readyz": ready, "/healthz": &healthz.Handler{Checks: p.Healthz}} {
		mux.Handle(path, http.StripPrefix(path, h))
		mux.Handle(path+"/", http.StripPrefix(path, h))
	}
	return mux
}

// withNote appends note as a line after what h writes, and says the mode in a header.
func withNote(h http.Handler, note string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Nftpolicy-Mode", "audit")
		h.ServeHTTP(w, r)
		fmt.Fprintf(w, "\n%s\n", note)
	})
}

// Server returns the runnable serving Handler on addr. It listens now, so that a
// taken port fails the start rather than the first probe.
func (p *Probes) Server(ctx context.Context, addr string) (*manager.Server, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health probes on %s: %w", addr, err)
	}
	shutdown := 5 * time.Second
	return &manager.Server{
		Name:     "health probe",
		Listener: ln,
		Server: &http.Server{Handler: p.Handler(), MaxHeaderBytes: 1 << 20,
			ReadHeaderTimeout: 32 * time.Second, IdleTimeout: 90 * time.Second},
		ShutdownTimeout: &shutdown,
	}, nil
}
