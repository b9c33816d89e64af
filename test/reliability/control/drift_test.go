package control

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

const driftRepairs = "nftpolicy_drift_repairs_total"

// podSetWith returns the name of a set of our table on node2 whose elements include
// addr (the client's address is in the pod set of allow-client's rule).
func podSetWith(listing, addr string) string {
	GinkgoHelper()
	setRe := regexp.MustCompile(`(?m)^\s*set (\S+) \{`)
	locs := setRe.FindAllStringSubmatchIndex(listing, -1)
	for i, loc := range locs {
		end := len(listing)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		body := listing[loc[1]:end]
		if j := strings.Index(body, "\n\t}"); j >= 0 {
			body = body[:j]
		}
		if regexp.MustCompile(`[{ ,]` + regexp.QuoteMeta(addr) + `[ ,}\n]`).MatchString(body) {
			return listing[loc[2]:loc[3]]
		}
	}
	Fail(fmt.Sprintf("no set with %s in:\n%s", addr, listing))
	return ""
}

var _ = Describe("Drift and coexistence", Ordered, func() {
	var tables []string
	var foreign map[string]string

	BeforeAll(func(ctx SpecContext) {
		ensureBaseline(ctx)
		// Verdicts before the foreign tables exist, for comparison.
		p := startProber(clientPod.NS, 3*time.Millisecond, targets()...)
		from := time.Now()
		end := settle(ctx, p, from, 400)
		p.Stop()
		without := p.Judge(from, end, baseline)
		Expect(without.wronglyAllowed+without.wronglyDenied+without.netErrors).To(BeZero(), "%s", without)

		tables = foreignTables(ctx)
		foreign = snapshot(ctx, tables)
		// The explicit accepts of other tables do not bypass our drop: the denied pod
		// stays denied, directly and through the DNAT.
		p = startProber(clientPod.NS, 3*time.Millisecond, append(targets(),
			target{name: "denied-via-dnat", addr: mustAddrPort(foreignVIP, 80)})...)
		from = time.Now()
		end = settle(ctx, p, from, 600)
		p.Stop()
		with := p.Judge(from, end, baseline)
		report("coexistence, same verdicts: without foreign tables %v; with them %v", without.perTarget, with.perTarget)
		Expect(with.wronglyAllowed+with.wronglyDenied+with.netErrors).To(BeZero(), "%s", with)
		Expect(with.perTarget["denied-via-dnat"][timedOut]).To(BeNumerically(">", 50), "denied through the DNAT: %v", with.perTarget)
		// The foreign accept is real: without our table the denied pod would be reached.
	}, NodeTimeout(3*time.Minute))

	expectForeignUnchanged := func(ctx context.Context, step string) {
		GinkgoHelper()
		Expect(snapshot(ctx, tables)).To(Equal(foreign), "other tables after %s", step)
	}

	It("detects and repairs drift of our table within 2 resync periods", func(ctx SpecContext) {
		a := agents["node2"]
		want, err := listTable(ctx, n2, ourTable)
		Expect(err).NotTo(HaveOccurred())
		Expect(want).NotTo(BeEmpty())
		set := podSetWith(want, clientPod.IPv4.String())
		cases := []struct {
			name string
			cmd  []string
		}{
			{"nft flush table", []string{"flush", "table", "inet", "nftpolicy"}},
			{"nft delete table", []string{"delete", "table", "inet", "nftpolicy"}},
			{"deleted set element", []string{"delete", "element", "inet", "nftpolicy", set, "{", clientPod.IPv4.String(), "}"}},
			{"rule added by hand", []string{"insert", "rule", "inet", "nftpolicy", "ingress-forward",
				"ip", "daddr", denied.IPv4.String(), "tcp", "dport", fmt.Sprint(serverPort), "accept"}},
		}
		for _, c := range cases {
			before, err := a.metric(ctx, driftRepairs)
			Expect(err).NotTo(HaveOccurred())
			out, err := nft(ctx, n2, c.cmd...)
			Expect(err).NotTo(HaveOccurred(), "%s: %s", c.name, out)
			changed := time.Now()
			got, err := listTable(ctx, n2, ourTable)
			Expect(err).NotTo(HaveOccurred())
			Expect(got).NotTo(Equal(want), "%s changed nothing", c.name)

			var repaired time.Duration
			Eventually(ctx, func() (string, error) {
				s, err := listTable(ctx, n2, ourTable)
				repaired = time.Since(changed)
				return s, err
			}).WithTimeout(2*resyncPeriod).WithPolling(20*time.Millisecond).Should(Equal(want), "%s not repaired", c.name)
			Eventually(ctx, func() (float64, error) { return a.metric(ctx, driftRepairs) }).
				WithTimeout(5*time.Second).Should(BeNumerically(">", before), "%s: %s", c.name, driftRepairs)
			after, _ := a.metric(ctx, driftRepairs)
			report("drift %q repaired in %v (resync period %v); %s %v → %v", c.name, repaired.Round(time.Millisecond), resyncPeriod, driftRepairs, before, after)
			expectForeignUnchanged(ctx, c.name)
			Expect(probeOnceVerdict(denied)).To(Equal(timedOut), "denied after repairing %s", c.name)
			Expect(probeOnceVerdict(server)).To(Equal(connected), "server after repairing %s", c.name)
		}
	}, NodeTimeout(3*time.Minute))

	It("keeps our verdicts and leaves other tables alone through start, changes, restart and cleanup", func(ctx SpecContext) {
		p := startProber(clientPod.NS, 3*time.Millisecond, targets()...)
		defer p.Stop()
		type window struct {
			name     string
			allowed  map[string]bool
			from, to time.Time
		}
		var ws []window
		// Start: both agents stopped and started afresh (a full replace each).
		from := time.Now()
		for _, n := range cl.Nodes() {
			Expect(agents[n.Name].stop(sigterm)).To(Succeed())
			agents[n.Name] = nil
			a, err := startAgent(cl, n, agentBin)
			Expect(err).NotTo(HaveOccurred())
			agents[n.Name] = a
			Expect(a.waitReady(ctx, time.Minute)).To(Succeed())
		}
		ws = append(ws, window{"start", baseline, from, settle(ctx, p, time.Now(), 300)})
		expectForeignUnchanged(ctx, "start")
		// Policy changes: judged once enforced (the switch itself is not a verdict).
		for _, app := range []string{"denied", "server", "denied", "server"} {
			Expect(allowOnly(ctx, app)).To(Succeed())
			allowed := map[string]bool{app: true}
			expectEnforced(ctx, allowed)
			from := time.Now()
			ws = append(ws, window{"allow " + app, allowed, from, settle(ctx, p, from, 300)})
			expectForeignUnchanged(ctx, "allow "+app)
		}
		// Restart of the enforcing agent.
		from = time.Now()
		Expect(agents["node2"].stop(sigterm)).To(Succeed())
		agents["node2"] = nil
		a, err := startAgent(cl, n2, agentBin)
		Expect(err).NotTo(HaveOccurred())
		agents["node2"] = a
		Expect(a.waitReady(ctx, time.Minute)).To(Succeed())
		ws = append(ws, window{"restart", baseline, from, settle(ctx, p, time.Now(), 300)})
		expectForeignUnchanged(ctx, "restart")
		p.Stop()
		for _, w := range ws {
			v := p.Judge(w.from, w.to, w.allowed)
			report("coexistence %s: %s", w.name, v)
			Expect(v.total).To(BeNumerically(">=", 300), w.name)
			Expect(v.wronglyAllowed+v.wronglyDenied+v.netErrors).To(BeZero(), "%s: %s", w.name, v)
		}

		// cleanup removes our table and nothing else.
		Expect(agents["node2"].stop(sigterm)).To(Succeed())
		agents["node2"] = nil
		out, err := n2.NS.Exec(ctx, agentBin, "cleanup")
		Expect(err).NotTo(HaveOccurred(), string(out))
		Expect(listTable(ctx, n2, ourTable)).To(BeEmpty(), "our table after cleanup")
		expectForeignUnchanged(ctx, "cleanup")
		// Without our table, other-filter's accept is what decides: the denied pod is
		// reached — the accept the tests above proved harmless is a real one.
		Expect(probeOnceVerdict(denied)).To(Equal(connected), "denied pod without our table")
		// The next test starts from the baseline again (ensureBaseline restarts it).
	}, NodeTimeout(5*time.Minute))
})
