package traffic

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

const raceNS = "race"

var (
	deniedLabels  = map[string]string{"app": "denied"}
	guardedLabels = map[string]string{"app": "guarded"}
)

// countAfter is the number of attempts that started after t.
func (p *prober) countAfter(t time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.recs {
		if r.start.After(t) {
			n++
		}
	}
	return n
}

// tally counts passed and failed attempts.
func tally(recs []probeRecord) (passed, failed int) {
	for _, r := range recs {
		if r.passed {
			passed++
		} else {
			failed++
		}
	}
	return passed, failed
}

func expectDenied(ctx context.Context, from *lab.ClusterPod, to netip.AddrPort, what string) {
	GinkgoHelper()
	expectReach(ctx, from, to, false, what)
}

func expectAllowed(ctx context.Context, from *lab.ClusterPod, to netip.AddrPort, what string) {
	GinkgoHelper()
	expectReach(ctx, from, to, true, what)
}

// expectReach waits until new connections from from to to get through (allowed) or not,
// and checks that it stays so for a second.
func expectReach(ctx context.Context, from *lab.ClusterPod, to netip.AddrPort, allowed bool, what string) {
	GinkgoHelper()
	Eventually(func() bool { return probeOnce(ctx, from, to) }).WithTimeout(10*time.Second).WithPolling(50*time.Millisecond).
		Should(Equal(allowed), "%s: %s → %s", what, from, to)
	Consistently(func() bool { return probeOnce(ctx, from, to) }).WithTimeout(time.Second).WithPolling(100*time.Millisecond).
		Should(Equal(allowed), "%s: %s → %s", what, from, to)
}

var _ = Describe("Pod lifecycle races", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		Expect(k8s.Create(ctx, isolate(raceNS, "deny-new", deniedLabels))).To(Succeed())
		Expect(k8s.Create(ctx, allowFrom(raceNS, "guard", guardedLabels,
			map[string]string{"kubernetes.io/metadata.name": ns}, map[string]string{"role": "client"}))).To(Succeed())
		waitConverged(ctx, 30*time.Second)
	})

	It("enforces a new pod once its IP is in the API: measures the window to the kernel", func(ctx SpecContext) {
		const trials = 5
		var toKernel, toLastPass []time.Duration
		passedAfterWrite := 0
		for i := range trials {
			sp, err := cluster.StagePod(ctx, lab.PodSpec{Namespace: raceNS, Name: fmt.Sprintf("new-%d", i), Node: "node2",
				Labels: deniedLabels, Ports: lab.TCPUDPPorts(podPort)})
			Expect(err).NotTo(HaveOccurred())
			ip, target := sp.IPv4, sp.AddrPort(lab.IPv4, podPort)
			pr := startProber(attacker.NS, target, 4, 50*time.Millisecond, 0)
			// Wired but unknown to the API, the pod is reachable — the CNI's window, which
			// no policy agent can close. Seeing it pass shows the prober can see a pass.
			Eventually(func() int { p, _ := tally(pr.snapshot()); return p }).WithTimeout(5*time.Second).
				Should(BeNumerically(">", 0), "the prober never reached the staged pod")
			Expect(sp.CreateObject(ctx, true)).To(Succeed())
			Expect(sp.SetStatus(ctx, corev1.PodRunning, true)).To(Succeed())
			written := time.Now()
			Eventually(func() (bool, error) { return mapHas(ctx, node2, compiler.MapIngressV4, ip) }).
				WithTimeout(10 * time.Second).WithPolling(2 * time.Millisecond).Should(BeTrue())
			inKernel := time.Now()
			// Keep probing for a while after the address is in the map.
			Eventually(func() int { return pr.countAfter(inKernel.Add(300 * time.Millisecond)) }).
				WithTimeout(10 * time.Second).Should(BeNumerically(">=", 20))
			recs := pr.Stop()
			var lastPass time.Time
			afterKernel := 0
			for _, r := range recs {
				if !r.passed {
					continue
				}
				lastPass = r.end
				if r.start.After(written) {
					passedAfterWrite++
				}
				if r.start.After(inKernel) {
					afterKernel++
				}
			}
			toKernel = append(toKernel, inKernel.Sub(written))
			toLastPass = append(toLastPass, lastPass.Sub(written))
			p, f := tally(recs)
			report("new pod %d: status with IP written → in node2's ingress map %v; last passing probe ended %v after the write; %d passed, %d denied, %d passed after the map had it",
				i, inKernel.Sub(written).Round(time.Millisecond), lastPass.Sub(written).Round(time.Millisecond), p, f, afterKernel)
			Expect(afterKernel).To(BeZero(), "probes passed after the pod's address was in the kernel")
			Expect(cluster.DeletePod(ctx, sp.ClusterPod)).To(Succeed())
		}
		report("new pod window: IP written → kernel: %s; IP written → last passing probe: %s; probes started after the write that passed: %d",
			durations(toKernel), durations(toLastPass), passedAfterWrite)
	}, SpecTimeout(5*time.Minute))

	It("applies the Running pod's policy when a Completed pod holds the same IP", func(ctx SpecContext) {
		for i, c := range []struct {
			old, new map[string]string
			client   bool
		}{
			{old: map[string]string{"app": "open"}, new: deniedLabels, client: false},
			{old: deniedLabels, new: guardedLabels, client: true},
		} {
			ip := netip.AddrFrom4([4]byte{10, 244, 2, byte(240 + i)})
			target := netip.AddrPortFrom(ip, podPort)
			old, err := cluster.CreatePodObjectOnly(ctx, lab.PodSpec{Namespace: raceNS, Name: fmt.Sprintf("old-%d", i), Node: "node2",
				Labels: c.old, IPs: []netip.Addr{ip}})
			Expect(err).NotTo(HaveOccurred())
			Expect(cluster.SetPodPhase(ctx, old, corev1.PodSucceeded)).To(Succeed())
			cur, err := cluster.CreatePod(ctx, lab.PodSpec{Namespace: raceNS, Name: fmt.Sprintf("reuse-%d", i), Node: "node2",
				Labels: c.new, IPs: []netip.Addr{ip}, Ports: lab.TCPUDPPorts(podPort)})
			Expect(err).NotTo(HaveOccurred())
			check := func(what string) {
				GinkgoHelper()
				waitConverged(ctx, 15*time.Second)
				expectDenied(ctx, attacker, target, what)
				if c.client {
					expectAllowed(ctx, client1, target, what)
				} else {
					expectDenied(ctx, client1, target, what)
				}
			}
			check(fmt.Sprintf("case %d: Completed and Running pod share %s", i, ip))
			// Deleting the Completed pod must not take the address from the Running one.
			Expect(cluster.DeletePod(ctx, old)).To(Succeed())
			check(fmt.Sprintf("case %d: Completed pod deleted", i))
			// A stale Completed pod appearing after the Running one changes nothing.
			late, err := cluster.CreatePodObjectOnly(ctx, lab.PodSpec{Namespace: raceNS, Name: fmt.Sprintf("late-%d", i), Node: "node2",
				Labels: c.old, IPs: []netip.Addr{ip}, Phase: corev1.PodSucceeded})
			Expect(err).NotTo(HaveOccurred())
			check(fmt.Sprintf("case %d: a Completed pod claims the address later", i))
			Expect(cluster.DeletePod(ctx, late)).To(Succeed())
			Expect(cluster.DeletePod(ctx, cur)).To(Succeed())
		}
	}, SpecTimeout(5*time.Minute))

	It("enforces a pod from Pending (no IP) through Pending with an IP to Running without a gap", func(ctx SpecContext) {
		sp, err := cluster.StagePod(ctx, lab.PodSpec{Namespace: raceNS, Name: "pending", Node: "node2",
			Labels: guardedLabels, Ports: lab.TCPUDPPorts(podPort)})
		Expect(err).NotTo(HaveOccurred())
		target := sp.AddrPort(lab.IPv4, podPort)
		Expect(sp.CreateObject(ctx, true)).To(Succeed())
		Expect(sp.SetStatus(ctx, corev1.PodPending, false)).To(Succeed())
		waitConverged(ctx, 15*time.Second)
		Expect(mapHas(ctx, node2, compiler.MapIngressV4, sp.IPv4)).To(BeFalse(), "a pod without an IP has no element")
		Expect(sp.SetStatus(ctx, corev1.PodPending, true)).To(Succeed())
		waitConverged(ctx, 15*time.Second)
		expectDenied(ctx, attacker, target, "Pending with an IP")
		expectAllowed(ctx, client1, target, "Pending with an IP")

		bad := startProber(attacker.NS, target, 2, 100*time.Millisecond, 0)
		good := startProber(client1.NS, target, 1, 500*time.Millisecond, 2*time.Millisecond)
		Expect(sp.SetStatus(ctx, corev1.PodRunning, true)).To(Succeed())
		switched := time.Now()
		waitConverged(ctx, 15*time.Second)
		Eventually(func() int { return good.countAfter(switched.Add(time.Second)) }).WithTimeout(10 * time.Second).Should(BeNumerically(">", 0))
		badPassed, badDenied := tally(bad.Stop())
		goodRecs := good.Stop()
		goodPassed, goodDenied := tally(goodRecs)
		for _, r := range goodRecs {
			if !r.passed {
				report("burst: allowed probe denied at %s after %v: %v", r.start.Format("15:04:05.000"), r.end.Sub(r.start).Round(time.Millisecond), r.err)
			}
		}
		report("Pending → Running: attacker %d passed / %d denied; client %d passed / %d denied", badPassed, badDenied, goodPassed, goodDenied)
		Expect(badPassed).To(BeZero(), "the attacker got through during Pending → Running")
		Expect(goodDenied).To(BeZero(), "the client was denied during Pending → Running")
		Expect(goodPassed).To(BeNumerically(">", 0))
		Expect(cluster.DeletePod(ctx, sp.ClusterPod)).To(Succeed())
	}, SpecTimeout(3*time.Minute))

	It("enforces a pod bound to a node through the binding subresource on that node only", func(ctx SpecContext) {
		sp, err := cluster.StagePod(ctx, lab.PodSpec{Namespace: raceNS, Name: "bound", Node: "node2",
			Labels: deniedLabels, Ports: lab.TCPUDPPorts(podPort)})
		Expect(err).NotTo(HaveOccurred())
		Expect(sp.CreateObject(ctx, false)).To(Succeed())
		obj := &corev1.Pod{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: raceNS, Name: "bound"}, obj)).To(Succeed())
		Expect(obj.Spec.NodeName).To(BeEmpty())
		waitConverged(ctx, 15*time.Second)
		Expect(sp.Bind(ctx)).To(Succeed())
		Expect(sp.SetStatus(ctx, corev1.PodRunning, true)).To(Succeed())
		waitConverged(ctx, 15*time.Second)
		Expect(mapHas(ctx, node2, compiler.MapIngressV4, sp.IPv4)).To(BeTrue(), "node2 enforces its pod")
		Expect(mapHas(ctx, node1, compiler.MapIngressV4, sp.IPv4)).To(BeFalse(), "node1 must not dispatch another node's pod")
		expectDenied(ctx, attacker, sp.AddrPort(lab.IPv4, podPort), "bound pod")
		// nodeName is immutable once set: a "node name change" cannot happen to a pod.
		patch := []byte(`{"spec":{"nodeName":"node1"}}`)
		err = k8s.Patch(ctx, obj, clientRawMerge(patch))
		Expect(err).To(HaveOccurred(), "the API server accepted a nodeName change")
		Expect(apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) || apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(cluster.DeletePod(ctx, sp.ClusterPod)).To(Succeed())
	}, SpecTimeout(3*time.Minute))

	It("gets no probe wrong through a burst of 2000 pods created and deleted, and converges", func(ctx SpecContext) {
		const pods, workers = 2000, 16
		Expect(k8s.Create(ctx, allowFrom("burst", "burst-guard", map[string]string{}, nil, map[string]string{"role": "client"}))).To(Succeed())
		// The keeper's peers include every burst pod: node2's peer set churns with them.
		Expect(k8s.Create(ctx, allowFrom(ns, "keeper-from-burst", map[string]string{"app": "keeper"},
			map[string]string{"kubernetes.io/metadata.name": "burst"}, map[string]string{"role": "client"}))).To(Succeed())
		waitConverged(ctx, 30*time.Second)
		keeperAddr := keeper.AddrPort(lab.IPv4, podPort)
		Expect(probeOnce(ctx, client1, keeperAddr)).To(BeTrue())
		Expect(probeOnce(ctx, attacker, keeperAddr)).To(BeFalse())

		good := startProber(client1.NS, keeperAddr, 2, 500*time.Millisecond, 2*time.Millisecond)
		bad := startProber(attacker.NS, keeperAddr, 2, 100*time.Millisecond, 0)
		name := func(i int) string { return fmt.Sprintf("b-%04d", i) }
		run := func(fn func(i int) error) (time.Duration, error) {
			start := time.Now()
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make([]error, workers)
			for w := range workers {
				wg.Go(func() {
					for {
						i := int(next.Add(1)) - 1
						if i >= pods || ctx.Err() != nil {
							return
						}
						if err := fn(i); err != nil {
							errs[w] = err
							return
						}
					}
				})
			}
			wg.Wait()
			return time.Since(start), errors.Join(errs...)
		}
		created, err := run(func(i int) error {
			node := "node1"
			if i%2 == 1 {
				node = fmt.Sprintf("virtual-%d", i%10)
			}
			ip := netip.AddrFrom4([4]byte{10, 80, byte(i / 250), byte(i%250 + 1)})
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "burst", Name: name(i),
					Labels: map[string]string{"role": "client", "app": fmt.Sprintf("b%d", i%5)}},
				Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: lab.PodImage}}},
			}
			obj, err := cs.CoreV1().Pods("burst").Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}}
			_, err = cs.CoreV1().Pods("burst").UpdateStatus(ctx, obj, metav1.UpdateOptions{})
			return err
		})
		Expect(err).NotTo(HaveOccurred())
		peak := waitConverged(ctx, 3*time.Minute)
		rs, err := kernelTable(ctx, node1)
		Expect(err).NotTo(HaveOccurred())
		elements := 0
		for _, s := range rs.Sets {
			elements += len(s.Elements)
		}
		zero := int64(0)
		deleted, err := run(func(i int) error {
			err := cs.CoreV1().Pods("burst").Delete(ctx, name(i), metav1.DeleteOptions{GracePeriodSeconds: &zero})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		})
		Expect(err).NotTo(HaveOccurred())
		after := waitConverged(ctx, 3*time.Minute)
		goodRecs := good.Stop()
		goodPassed, goodDenied := tally(goodRecs)
		for _, r := range goodRecs {
			if !r.passed {
				report("burst: allowed probe denied at %s after %v: %v", r.start.Format("15:04:05.000"), r.end.Sub(r.start).Round(time.Millisecond), r.err)
			}
		}
		badPassed, badDenied := tally(bad.Stop())
		report("burst: %d pods created in %v (%.0f pods/s, create + status), kernel = compiled %v after the last write (node1 %d elements); deleted in %v (%.0f pods/s), converged %v after",
			pods, created.Round(time.Millisecond), float64(pods)/created.Seconds(), peak.Round(time.Millisecond), elements,
			deleted.Round(time.Millisecond), float64(pods)/deleted.Seconds(), after.Round(time.Millisecond))
		report("burst probes: allowed pair %d passed / %d denied; denied pair %d passed / %d denied", goodPassed, goodDenied, badPassed, badDenied)
		Expect(goodDenied).To(BeZero(), "allowed probes denied during the burst")
		Expect(badPassed).To(BeZero(), "denied probes passed during the burst")
		Expect(goodPassed).To(BeNumerically(">", 0))
		Expect(badDenied).To(BeNumerically(">", 0))
	}, SpecTimeout(15*time.Minute))
})

// snapshot returns the records so far.
func (p *prober) snapshot() []probeRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]probeRecord(nil), p.recs...)
}
