package controllers

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// The probe endpoint answers as controller-runtime's (status codes from the checks,
// per-check subpaths), and under --audit every /readyz answer, ready or not, ends
// with the audit note while /healthz does not.
func TestProbesAuditNote(t *testing.T) {
	var notReady error
	p := &Probes{
		Healthz:   map[string]healthz.Checker{"healthz": healthz.Ping},
		Readyz:    map[string]healthz.Checker{"ruleset": func(*http.Request) error { return notReady }},
		ReadyNote: AuditReadyNote,
	}
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	get := func(path string) (int, string, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b), resp.Header.Get("X-Nftpolicy-Mode")
	}
	for _, tc := range []struct {
		path     string
		notReady error
		code     int
		note     bool
	}{
		{"/readyz", nil, 200, true},
		{"/readyz/ruleset", nil, 200, true},
		{"/readyz", errors.New("no ruleset applied yet"), 500, true},
		{"/healthz", nil, 200, false},
	} {
		notReady = tc.notReady
		code, body, mode := get(tc.path)
		if code != tc.code || strings.Contains(body, AuditReadyNote) != tc.note || (mode == "audit") != tc.note {
			t.Errorf("%s (not ready: %v): %d %q mode %q; want %d, note %v", tc.path, tc.notReady, code, body, mode, tc.code, tc.note)
		}
		if tc.path == "/readyz" && tc.code == 200 && !strings.HasPrefix(body, "ok\n") {
			t.Errorf("%s: body %q, want ok first", tc.path, body)
		}
	}
	// Without a note the answers are controller-runtime's exactly.
	p.ReadyNote = ""
	plain := httptest.NewServer(p.Handler())
	defer plain.Close()
	notReady = nil
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, plain.URL+"/readyz", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Errorf("plain /readyz: %d %q, want 200 \"ok\"", resp.StatusCode, b)
	}
}
