package control

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// foreignVIP is a ClusterIP-like address that the kube-proxy-like table DNATs to
// the denied pod.
const foreignVIP = "10.96.250.10"

// foreignTables creates, in every node, tables other software would own: a
// kube-proxy-like NAT table DNATing foreignVIP:80 to the denied pod, a filter table
// whose forward chain (priority 0, after ours) explicitly accepts the denied
// traffic, and — where iptables-nft exists — an iptables rule accepting it too. It
// returns the tables to compare (family and name) and registers their removal.
func foreignTables(ctx context.Context) []string {
	GinkgoHelper()
	dst := denied.IPv4.String()
	script := fmt.Sprintf(`
table ip kube-proxy-test {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		ip daddr %[1]s tcp dport 80 dnat to %[2]s:%[3]d
	}
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr %[1]s tcp dport 80 dnat to %[2]s:%[3]d
	}
}
table inet other-filter {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip daddr %[2]s tcp dport %[3]d accept
	}
}
`, foreignVIP, dst, serverPort)
	tables := []string{"ip kube-proxy-test", "inet other-filter"}
	_, iptErr := exec.LookPath("iptables-nft")
	if iptErr == nil {
		tables = append(tables, "ip filter")
	} else {
		fmt.Fprintln(GinkgoWriter, "iptables-nft not installed: no iptables rule in the coexistence set")
	}
	for _, n := range cl.Nodes() {
		cmd := n.NS.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		out, err := cmd.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s: nft -f: %s", n.Name, out)
		if iptErr == nil {
			Expect(n.NS.Exec(ctx, "iptables-nft", "-A", "FORWARD", "-d", dst, "-p", "tcp", "--dport", fmt.Sprint(serverPort), "-j", "ACCEPT")).Error().NotTo(HaveOccurred())
		}
	}
	DeferCleanup(func(ctx SpecContext) {
		for _, n := range cl.Nodes() {
			for _, t := range tables {
				Expect(nft(ctx, n, append([]string{"delete", "table"}, strings.Fields(t)...)...)).Error().NotTo(HaveOccurred())
			}
		}
	})
	return tables
}

// snapshot lists tables in every node (counters zeroed, handles shown: a table
// deleted and re-created would differ).
func snapshot(ctx context.Context, tables []string) map[string]string {
	GinkgoHelper()
	out := map[string]string{}
	for _, n := range cl.Nodes() {
		for _, t := range tables {
			s, err := nft(ctx, n, append([]string{"-a", "list", "table"}, strings.Fields(t)...)...)
			Expect(err).NotTo(HaveOccurred(), "%s: list table %s", n.Name, t)
			out[n.Name+": "+t] = counters.ReplaceAllString(s, "counter")
		}
	}
	return out
}

func mustAddrPort(addr string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), port)
}

const sigterm = syscall.SIGTERM
