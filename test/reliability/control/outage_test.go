package control

import (
	"net/http"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

const fullSyncs = `nftpolicy_sync_duration_seconds_count{phase="full"}`

var _ = Describe("API server outage", func() {
	It("keeps the last ruleset for 30 s, reports not-ready, and catches up without a full rebuild", func(ctx SpecContext) {
		a := agents["node2"]
		fullBefore, err := a.metric(ctx, fullSyncs)
		Expect(err).NotTo(HaveOccurred())
		p := startProber(clientPod.NS, 3*time.Millisecond, targets()...)
		defer p.Stop()
		from := time.Now()
		settle(ctx, p, from, 200)

		Expect(cl.StopAPIServer()).To(Succeed())
		stopped := time.Now()
		restarted := false
		defer func() {
			if !restarted {
				Expect(cl.StartAPIServer()).To(Succeed())
			}
		}()
		Eventually(ctx, a.readyz).WithTimeout(10*time.Second).WithPolling(50*time.Millisecond).
			Should(Equal(http.StatusInternalServerError), "agent /readyz with the API server down")
		notReady := time.Since(stopped)
		// The outage lasts 30 s: the agents keep running and stay not-ready all along.
		Consistently(ctx, func(g Gomega) {
			for _, n := range cl.Nodes() {
				g.Expect(agents[n.Name].proc.Exited()).To(BeFalse(), "agent on %s exited", n.Name)
			}
			g.Expect(a.readyz(ctx)).To(Equal(http.StatusInternalServerError))
		}).WithTimeout(30*time.Second - time.Since(stopped)).WithPolling(500 * time.Millisecond).Should(Succeed())
		outage := time.Since(stopped)
		outageEnd := time.Now()

		Expect(cl.StartAPIServer()).To(Succeed())
		restarted = true
		back := time.Now()
		Eventually(ctx, a.readyz).WithTimeout(2 * time.Minute).WithPolling(50 * time.Millisecond).Should(Equal(http.StatusOK))
		readyAgain := time.Since(back)
		end := settle(ctx, p, time.Now(), 200)
		p.Stop()
		v := p.Judge(from, end, baseline)
		vOutage := p.Judge(stopped, outageEnd, baseline)
		for _, n := range cl.Nodes() {
			Expect(agents[n.Name].proc.Exited()).To(BeFalse(), "agent on %s exited", n.Name)
		}

		// Caught up: a change made once the API server is back is enforced.
		Expect(allowOnly(ctx, "denied")).To(Succeed())
		changed := time.Now()
		expectEnforced(ctx, map[string]bool{"denied": true})
		enforced := time.Since(changed)
		Expect(allowOnly(ctx, "server")).To(Succeed())
		expectEnforced(ctx, baseline)

		fullAfter, err := a.metric(ctx, fullSyncs)
		Expect(err).NotTo(HaveOccurred())
		report("API server outage %v: %d probes during it, %d in all: wrongly allowed %d, wrongly denied %d, network errors %d; "+
			"agent not-ready %v after the stop, ready %v after the restart; change after the return enforced in %v; full syncs %v → %v",
			outage.Round(time.Millisecond), vOutage.total, v.total, v.wronglyAllowed, v.wronglyDenied, v.netErrors,
			notReady.Round(time.Millisecond), readyAgain.Round(time.Millisecond), enforced.Round(time.Millisecond), fullBefore, fullAfter)
		Expect(vOutage.total).To(BeNumerically(">=", 5000), "probes during the outage")
		Expect(v.wronglyAllowed).To(BeZero(), "%s", v)
		Expect(v.wronglyDenied).To(BeZero(), "%s", v)
		Expect(v.netErrors).To(BeZero(), "%s", v)
		Expect(fullAfter).To(Equal(fullBefore), "full table replaces after the outage")
	}, NodeTimeout(5*time.Minute))
})
