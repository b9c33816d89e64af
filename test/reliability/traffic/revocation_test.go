package traffic

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/test/echo"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

const (
	// revocationTrials is the number of denials measured (each with a TCP and a UDP
	// flow), alternating the three kinds of change.
	revocationTrials = 33
	// revocationP99 is the bound for write → last packet delivered.
	revocationP99 = 500 * time.Millisecond
	// maxAllowedGap is the longest silence an allowed echo stream may show.
	maxAllowedGap = 200 * time.Millisecond
	// quiet ends the wait for a revoked flow: 300 echo intervals without an echo.
	quiet = 300 * time.Millisecond
)

// denial is one way a policy change denies client → server, and how to undo it.
type denial struct {
	name          string
	deny, restore func(context.Context) error
}

func denials() []denial {
	return []denial{
		{
			name: "policy deleted",
			deny: func(ctx context.Context) error { return k8s.Delete(ctx, serverAllow()) },
			restore: func(ctx context.Context) error {
				return k8s.Create(ctx, serverAllow())
			},
		},
		{
			name: "peer label changed",
			deny: func(ctx context.Context) error {
				return patchLabels(ctx, podRefLabels(client1, clientLabels), map[string]string{"role": "client", "access": "revoked"})
			},
			restore: func(ctx context.Context) error {
				return patchLabels(ctx, podRefLabels(client1, map[string]string{"role": "client", "access": "revoked"}), clientLabels)
			},
		},
		{
			name: "pod label changed",
			deny: func(ctx context.Context) error {
				return patchLabels(ctx, podRefLabels(server, serverLabels), map[string]string{"app": "server", "tier": "closed"})
			},
			restore: func(ctx context.Context) error {
				return patchLabels(ctx, podRefLabels(server, map[string]string{"app": "server", "tier": "closed"}), serverLabels)
			},
		},
	}
}

// podRefLabels is a Pod reference carrying the labels the object has now (patchLabels
// removes the keys the new labels lack).
func podRefLabels(p *lab.ClusterPod, labels map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
	}
}

func serverEcho() netip.AddrPort { return server.AddrPort(lab.IPv4, echoPort) }
func keeperEcho() netip.AddrPort { return keeper.AddrPort(lab.IPv4, echoPort) }

// startFlows starts a TCP and a UDP flow from the client to to.
func startFlows(to netip.AddrPort) []*echo.Flow {
	GinkgoHelper()
	var fs []*echo.Flow
	for _, proto := range []string{"tcp", "udp"} {
		f, err := startFlow(client1.NS, proto, to, flowInterval, 15*time.Second)
		Expect(err).NotTo(HaveOccurred())
		fs = append(fs, f)
	}
	return fs
}

func closeFlows(fs []*echo.Flow) {
	for _, f := range fs {
		f.Close()
	}
}

// expectSteady checks that allowed flows never paused longer than maxAllowedGap since
// their last resetGaps, were never reset and still flow.
func expectSteady(what string, fs []*echo.Flow) {
	GinkgoHelper()
	type result struct {
		gap time.Duration
		err error
	}
	var rs []result
	// Report every flow before judging any.
	for _, f := range fs {
		gap, end, reads, err := f.Gaps()
		report("%s: allowed %s: longest gap %v (ended %s), %d reads, error %v", what, f, gap.Round(time.Millisecond),
			end.Format("15:04:05.000"), reads, err)
		rs = append(rs, result{gap, err})
	}
	for i, f := range fs {
		Expect(rs[i].err).NotTo(HaveOccurred(), "%s: allowed flow %s was cut", what, f)
		Expect(rs[i].gap).To(BeNumerically("<", maxAllowedGap), "%s: allowed flow %s paused", what, f)
	}
}

var _ = Describe("Revocation of established flows", Ordered, func() {
	It("stops an established TCP connection and a UDP flow a change denies (p99 < 500 ms), and only those", func(ctx SpecContext) {
		allowed := startFlows(keeperEcho())
		defer closeFlows(allowed)
		kinds := denials()
		lat := map[string][]time.Duration{}
		perKind := map[string][]time.Duration{}
		var failures []string
		for trial := range revocationTrials {
			k := kinds[trial%len(kinds)]
			fs := startFlows(serverEcho())
			Expect(k.deny(ctx)).To(Succeed(), k.name)
			written := time.Now()
			for _, f := range fs {
				last, ok := f.WaitStopped(quiet, 5*time.Second)
				d := last.Sub(written)
				if !ok {
					failures = append(failures, fmt.Sprintf("trial %d (%s): %s still echoing 5 s after the write", trial, k.name, f))
					d = 5 * time.Second
				}
				lat[f.Proto()] = append(lat[f.Proto()], d)
				perKind[k.name] = append(perKind[k.name], d)
			}
			closeFlows(fs)
			Expect(k.restore(ctx)).To(Succeed(), k.name)
		}
		for _, proto := range []string{"tcp", "udp"} {
			report("revocation %s: write → last echo: %s", proto, durations(lat[proto]))
		}
		for _, k := range kinds {
			report("revocation by %s (tcp+udp): %s", k.name, durations(perKind[k.name]))
		}
		expectSteady("during the revocation trials", allowed)
		Expect(failures).To(BeEmpty())
		for _, proto := range []string{"tcp", "udp"} {
			Expect(len(lat[proto])).To(BeNumerically(">=", 30))
			Expect(percentile(lat[proto], 99)).To(BeNumerically("<", revocationP99), "%s p99", proto)
		}
	}, SpecTimeout(10*time.Minute))

	It("lets established flows go on with --revoke-established=false, while new connections are denied", func(ctx SpecContext) {
		DeferCleanup(startCustomAgents(ctx, "--revoke-established=false"))
		for _, k := range denials() {
			fs := startFlows(serverEcho())
			Expect(k.deny(ctx)).To(Succeed(), k.name)
			// The change is in force: a new connection from the client is dropped.
			Eventually(func() bool { return probeOnce(ctx, client1, server.AddrPort(lab.IPv4, podPort)) }).
				WithTimeout(10*time.Second).WithPolling(50*time.Millisecond).Should(BeFalse(), k.name)
			for _, f := range fs {
				f.ResetGaps()
			}
			// A revocation would have stopped the flows well within this second.
			Consistently(func() time.Duration {
				var worst time.Duration
				for _, f := range fs {
					worst = max(worst, time.Since(f.LastEcho()))
				}
				return worst
			}).WithTimeout(time.Second).WithPolling(20*time.Millisecond).Should(BeNumerically("<", maxAllowedGap), k.name)
			expectSteady("revocation off, "+k.name, fs)
			closeFlows(fs)
			Expect(k.restore(ctx)).To(Succeed(), k.name)
			Eventually(func() bool { return probeOnce(ctx, client1, server.AddrPort(lab.IPv4, podPort)) }).
				WithTimeout(10*time.Second).WithPolling(50*time.Millisecond).Should(BeTrue(), k.name)
		}
	}, SpecTimeout(5*time.Minute))

	It("never cuts allowed flows through 30+ unrelated changes", func(ctx SpecContext) {
		waitConverged(ctx, 30*time.Second) // the lab's agents are back after the previous spec
		flows := append(startFlows(keeperEcho()), startFlows(serverEcho())...)
		defer closeFlows(flows)
		changes, applied := 0, []time.Duration{}
		change := func(what string, fn func() error) {
			GinkgoHelper()
			Expect(fn()).To(Succeed(), what)
			changes++
			// Each change reaches the kernel before the next: one sync per change
			// rather than a few coalesced ones.
			applied = append(applied, waitConverged(ctx, 15*time.Second))
		}
		for k := range 5 {
			var real, ghost *lab.ClusterPod
			change("real pod added", func() (err error) {
				real, err = cluster.CreatePod(ctx, lab.PodSpec{Namespace: "noise", Name: fmt.Sprintf("real-%d", k), Node: "node2",
					Labels: map[string]string{"app": "noise"}, Ports: lab.TCPUDPPorts(podPort)})
				return err
			})
			change("API-only pod added to the keeper's peers", func() (err error) {
				// role=client in the keeper's namespace: the keeper's peer set grows.
				ghost, err = cluster.CreatePodObjectOnly(ctx, lab.PodSpec{Namespace: ns, Name: fmt.Sprintf("ghost-%d", k), Node: "node1",
					Labels: map[string]string{"role": "client"}, IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 70, 0, byte(10 + k)})}})
				return err
			})
			change("other namespace's policy added", func() error {
				return k8s.Create(ctx, isolate("noise", fmt.Sprintf("np-%d", k), map[string]string{"app": "noise"}))
			})
			change("second policy selecting the keeper added", func() error {
				// The keeper's isolation chain is rebuilt with one more policy; the union
				// still allows the client.
				return k8s.Create(ctx, allowFrom(ns, fmt.Sprintf("extra-%d", k), map[string]string{"app": "keeper"}, nil,
					map[string]string{"role": "attacker"}))
			})
			change("flows' namespace relabelled", func() error {
				return patchLabels(ctx, nsRef(ns), map[string]string{"unrelated": fmt.Sprint(k)})
			})
			change("other namespace relabelled", func() error {
				return patchLabels(ctx, nsRef("noise"), map[string]string{"team": fmt.Sprint(k)})
			})
			change("real pod removed", func() error { return cluster.DeletePod(ctx, real) })
			change("API-only pod removed", func() error { return cluster.DeletePod(ctx, ghost) })
			change("other namespace's policy removed", func() error {
				return k8s.Delete(ctx, isolate("noise", fmt.Sprintf("np-%d", k), nil))
			})
			change("second keeper policy removed", func() error {
				return k8s.Delete(ctx, isolate(ns, fmt.Sprintf("extra-%d", k), nil))
			})
		}
		report("unrelated changes: %d, each applied (kernel = compiled) after %s", changes, durations(applied))
		Expect(changes).To(BeNumerically(">=", 30))
		expectSteady("through unrelated changes", flows)
	}, SpecTimeout(10*time.Minute))
})

func nsRef(name string) *metav1.PartialObjectMetadata {
	// No labels: patchLabels then only sets keys and keeps the name label the API
	// server maintains.
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}
}
