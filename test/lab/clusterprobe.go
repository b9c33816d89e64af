package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// DefaultClusterProbeTimeout is the Cluster probes' default timeout: every
// namespace is local, so an allowed connection answers within
// milliseconds even with all cells of a matrix probed at once.
const DefaultClusterProbeTimeout = 400 * time.Millisecond

// Target is a column of ProbeTargets: a named address.
type Target struct {
	// Name labels the column.
	Name string
	Addr netip.AddrPort
	// ExpectReply, if set, must equal the reply (the answering pod's
	// "ns/name"); otherwise the probe counts as failed.
	ExpectReply string
}

// PodTarget probes a pod's own address of family f at port, for
// ProbeMatrix.
func PodTarget(f Family, port int) func(*ClusterPod) netip.AddrPort {
	return func(p *ClusterPod) netip.AddrPort { return p.AddrPort(f, port) }
}

// netns returns where probes from p start.
func (p *ClusterPod) netns() (*Netns, error) {
	if p.NS == nil {
		return nil, fmt.Errorf("pod %s exists only in the API: it cannot probe", p.Key())
	}
	return p.NS, nil
}

// Probe connects from pod from (from its node's namespace if host-network)
// to to with proto ("tcp", "udp", "sctp"); see ProbeDetail. A zero timeout
// means DefaultClusterProbeTimeout.
func (c *Cluster) Probe(ctx context.Context, from *ClusterPod, to netip.AddrPort, proto string, timeout time.Duration) (ProbeResult, error) {
	ns, err := from.netns()
	if err != nil {
		return ProbeResult{}, err
	}
	if timeout <= 0 {
		timeout = DefaultClusterProbeTimeout
	}
	return ProbeDetail(ctx, ns, to, proto, timeout)
}

// ProbeMatrix probes proto from every pod in froms to target(to) for every
// pod in tos — the pod's address or, say, the ClusterIP of a Service whose
// single endpoint is to — all cells at once, and returns the observed
// matrix with rows and columns named "ns/pod". A cell is allowed when the
// answer names to. opts.Timeout defaults to DefaultClusterProbeTimeout and
// opts.Parallelism to all cells.
func (c *Cluster) ProbeMatrix(ctx context.Context, froms, tos []*ClusterPod, target func(to *ClusterPod) netip.AddrPort, proto string, opts ProbeOptions) (*Matrix, error) {
	targets := make([]Target, len(tos))
	for i, t := range tos {
		targets[i] = Target{Name: t.Key(), Addr: target(t), ExpectReply: t.Key()}
	}
	return c.ProbeTargets(ctx, froms, targets, proto, opts)
}

// ProbeTargets is ProbeMatrix with explicit columns.
func (c *Cluster) ProbeTargets(ctx context.Context, froms []*ClusterPod, targets []Target, proto string, opts ProbeOptions) (*Matrix, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultClusterProbeTimeout
	}
	var cases []Case
	for _, f := range froms {
		ns, err := f.netns()
		if err != nil {
			return nil, fmt.Errorf("probe matrix: %w", err)
		}
		for _, t := range targets {
			if !t.Addr.IsValid() || t.Addr.Port() == 0 {
				return nil, fmt.Errorf("probe matrix: target %s has no address (%s)", t.Name, t.Addr)
			}
			cases = append(cases, Case{FromName: f.Key(), From: ns, ToName: t.Name, To: t.Addr, Proto: proto, ExpectReply: t.ExpectReply})
		}
	}
	if len(cases) == 0 {
		return nil, errors.New("probe matrix: nothing to probe")
	}
	if opts.Parallelism <= 0 {
		opts.Parallelism = len(cases)
	}
	results, err := ProbeCases(ctx, cases, opts)
	return MatrixFromResults(matrixTitle(proto, targets), cases, results), err
}

// matrixTitle is "tcp/80 IPv4", leaving out the port or family when the
// targets differ in it.
func matrixTitle(proto string, targets []Target) string {
	port, fam := targets[0].Addr.Port(), targets[0].Addr.Addr().Is4()
	samePort, sameFam := true, true
	for _, t := range targets {
		samePort = samePort && t.Addr.Port() == port
		sameFam = sameFam && t.Addr.Addr().Is4() == fam
	}
	title := proto
	if samePort {
		title += "/" + strconv.Itoa(int(port))
	}
	if sameFam {
		if fam {
			title += " " + IPv4.String()
		} else {
			title += " " + IPv6.String()
		}
	}
	return title
}
