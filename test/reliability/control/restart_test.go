package control

import (
	"os"
	"slices"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("Agent restarts", func() {
	It("gives no wrong verdict while the agent is killed, stopped and rolled to a new binary", func(ctx SpecContext) {
		rolled, err := copyBinary(agentBin, GinkgoT().TempDir())
		Expect(err).NotTo(HaveOccurred())
		p := startProber(clientPod.NS, 3*time.Millisecond, targets()...)
		defer p.Stop()

		type step struct {
			name     string
			sig      os.Signal
			bin      string
			from, to time.Time
			down     time.Duration // signal sent → new agent ready
		}
		steps := []*step{
			{name: "SIGKILL", sig: syscall.SIGKILL, bin: agentBin},
			{name: "SIGTERM", sig: syscall.SIGTERM, bin: agentBin},
			{name: "roll", sig: syscall.SIGTERM, bin: rolled},
		}
		for _, s := range steps {
			s.from = time.Now()
			settle(ctx, p, s.from, 200) // the verdicts before, as a reference
			stopAt := time.Now()
			Expect(agents["node2"].stop(s.sig)).To(Succeed())
			agents["node2"] = nil
			a, err := startAgent(cl, n2, s.bin)
			Expect(err).NotTo(HaveOccurred())
			agents["node2"] = a
			Expect(a.waitReady(ctx, time.Minute)).To(Succeed())
			s.down = time.Since(stopAt)
			// Keep probing after ready: a wrong ruleset applied late would show here.
			s.to = settle(ctx, p, time.Now(), 500)
		}
		p.Stop()
		for _, s := range steps {
			v := p.Judge(s.from, s.to, baseline)
			report("restart %s (%s): %d probes, wrongly allowed %d, wrongly denied %d, network errors %d; agent stopped → new one ready %v",
				s.name, s.bin, v.total, v.wronglyAllowed, v.wronglyDenied, v.netErrors, s.down.Round(time.Millisecond))
			Expect(v.total).To(BeNumerically(">=", 700), s.name)
			Expect(v.wronglyAllowed).To(BeZero(), "%s: %s", s.name, v)
			Expect(v.wronglyDenied).To(BeZero(), "%s: %s", s.name, v)
			Expect(v.netErrors).To(BeZero(), "%s: %s", s.name, v)
		}
	}, NodeTimeout(5*time.Minute))

	It("enforces a policy change made while the agent was down within 1 s of its start", func(ctx SpecContext) {
		p := startProber(clientPod.NS, 2*time.Millisecond, targets()...)
		defer p.Stop()
		var lat []time.Duration
		open := "server"
		for i := range 6 {
			other := map[string]string{"server": "denied", "denied": "server"}[open]
			before := map[string]bool{open: true}
			Expect(agents["node2"].stop(syscall.SIGTERM)).To(Succeed())
			agents["node2"] = nil
			Expect(allowOnly(ctx, other)).To(Succeed())
			changed := time.Now()
			// While the agent is down the last ruleset stays in force (fail closed):
			// the change is not enforced yet, and nothing else changes either.
			settle(ctx, p, changed, 200)
			a, err := startAgent(cl, n2, agentBin)
			Expect(err).NotTo(HaveOccurred())
			agents["node2"] = a
			started := a.started
			Expect(a.waitReady(ctx, time.Minute)).To(Succeed())
			v := p.Judge(changed, started, before)
			Expect(v.wronglyAllowed+v.wronglyDenied+v.netErrors).To(BeZero(), "agent down, old ruleset: %s", v)

			// Both targets flipped, and stayed flipped for a while.
			var flip time.Time
			Eventually(ctx, func() error {
				end := time.Now().Add(-probeTimeout - 100*time.Millisecond)
				opened, ok1 := p.FlipTime(other, connected, started, end)
				closed, ok2 := p.FlipTime(open, timedOut, started, end)
				if !ok1 || !ok2 {
					return errorf("not flipped yet: %s opened %v, %s closed %v", other, ok1, open, ok2)
				}
				flip = opened
				if closed.After(flip) {
					flip = closed
				}
				if end.Sub(flip) < 500*time.Millisecond {
					return errorf("flipped at %v, not yet stable", flip.Sub(started))
				}
				return nil
			}).WithTimeout(time.Minute).WithPolling(100 * time.Millisecond).Should(Succeed())
			d := flip.Sub(started)
			lat = append(lat, d)
			report("change while down #%d (%s now denied, %s now allowed): process start → enforced %v; agent: %s",
				i+1, open, other, d.Round(time.Millisecond), a.firstSyncLine())
			Expect(d).To(BeNumerically("<", time.Second), "process start → change enforced")
			open = other
		}
		slices.Sort(lat)
		report("change while down: p50 %v, max %v over %d repetitions", lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), len(lat))
	}, NodeTimeout(5*time.Minute))
})
