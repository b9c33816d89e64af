package controllers

import (
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// NodeEventInterval is the least time between two Node Events for the same error: a
// failing apply is retried with backoff, and an Event per retry would flood the API
// server with one message.
const NodeEventInterval = 5 * time.Minute

// eventLimiter lets a message through at most once per interval.
type eventLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
	// now is time.Now; tests replace it.
	now func() time.Time
}

// allow reports whether msg may be sent now, and if so notes it as sent.
func (l *eventLimiter) allow(msg string, interval time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.now != nil {
		now = l.now()
	}
	if l.last == nil {
		l.last = map[string]time.Time{}
	}
	// Forget what has expired, so that errors carrying changing details (a sequence
	// number, an address) do not grow the map without bound.
	for m, t := range l.last {
		if now.Sub(t) >= interval {
			delete(l.last, m)
		}
	}
	if _, seen := l.last[msg]; seen {
		return false
	}
	l.last[msg] = now
	return true
}

// reportNodeFailure records a Warning Event on this node's Node object when the
// dataplane cannot be programmed, at most once per distinct error per
// NodeEventInterval. The error is logged by the caller either way.
func (s *Syncer) reportNodeFailure(err error) {
	if s.Recorder == nil || s.NodeName == "" {
		return
	}
	msg := err.Error()
	if !s.nodeEvents.allow(msg, NodeEventInterval) {
		nodeEventsSuppressed.Inc()
		return
	}
	// Node events name the node as their UID too (as the kubelet's do), so that
	// `kubectl describe node` lists them.
	ref := &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: s.NodeName, UID: types.UID(s.NodeName)}
	s.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, "DataplaneError", "Apply",
		"programming the nftables table failed; the previous ruleset stays in force: %s", msg)
}

// KernelHasSCTP reports whether the kernel of the calling process's network namespace
// knows SCTP. Without the sctp module nftables cannot match SCTP ports (and no SCTP
// traffic exists to match). An unreadable file counts as SCTP present: no false alarm.
func KernelHasSCTP() bool {
	b, err := os.ReadFile("/proc/net/protocols")
	if err != nil {
		return true
	}
	return protocolsListSCTP(string(b))
}

// protocolsListSCTP reads /proc/net/protocols: one protocol a line, its name first.
func protocolsListSCTP(s string) bool {
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > 0 && (f[0] == "SCTP" || f[0] == "SCTPv6") {
			return true
		}
	}
	return false
}
