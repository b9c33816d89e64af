package netlink

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// handles strips "# handle N" annotations and blank lines so listings compare as text.
var handles = regexp.MustCompile(`\s*# handle \d+`)

// listing returns `nft list table` with its top-level blocks (sets, maps, chains) sorted:
// nft lists objects in creation order, which differs between the two encodings.
func listing(t *testing.T, nsFd int) string {
	out := nft(t, nsFd, "list", "table", "inet", "nftpolicy")
	var blocks []string
	var cur []string
	for _, l := range strings.Split(handles.ReplaceAllString(out, ""), "\n") {
		if strings.TrimSpace(l) == "" || l == "}" || strings.HasPrefix(l, "table ") {
			continue
		}
		if strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "\t\t") && len(cur) > 0 && strings.TrimSpace(l) != "}" {
			blocks = append(blocks, strings.Join(cur, "\n"))
			cur = nil
		}
		cur = append(cur, strings.TrimRight(l, " "))
	}
	blocks = append(blocks, strings.Join(cur, "\n"))
	sort.Strings(blocks)
	return strings.Join(blocks, "\n")
}

// compiled is a realistic ruleset: what the compiler makes of a few policies using every
// kind of peer and port, dual-stack.
func compiled(t *testing.T) *ruleset.Ruleset {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p80, named, end := intstr.FromInt32(80), intstr.FromString("http"), int32(9000)
	p8000 := intstr.FromInt32(8000)
	pod := func(ns, name, ip4, ip6 string, l map[string]string) *model.Pod {
		return &model.Pod{Namespace: ns, Name: name, NodeName: "n1", Labels: l, Phase: corev1.PodRunning,
			IPs:   []netip.Addr{netip.MustParseAddr(ip4), netip.MustParseAddr(ip6)},
			Ports: []model.NamedPort{{Name: "http", Protocol: tcp, Port: 8080}}}
	}
	snap := &model.Snapshot{NodeName: "n1",
		Pods: []*model.Pod{
			pod("app", "frontend", "10.244.1.2", "fd00::2", map[string]string{"app": "frontend"}),
			pod("app", "backend", "10.244.1.3", "fd00::3", map[string]string{"app": "backend"}),
			pod("other", "client", "10.244.2.4", "fd00::4", map[string]string{"app": "client"}),
		},
		Namespaces: map[string]*model.Namespace{"app": {Name: "app"}, "other": {Name: "other"}},
		Policies: []*networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "backend-policy"}, Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}, {Protocol: &tcp, Port: &named}, {Protocol: &tcp, Port: &p8000, EndPort: &end}}},
					{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}}},
				},
			}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "egress"}, Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp}}},
					{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "2001:db8::/32"}}}},
				},
			}},
		},
	}
	res := compiler.Compile(snap, compiler.Options{})
	if len(res.Problems) > 0 {
		t.Fatalf("compile problems: %v", res.Problems)
	}
	return res.Ruleset
}

// TestRenderMatchesKernel: the nft text Render prints (what `render` and the docs show)
// loads with `nft -f`, and nft lists it exactly as it lists the table the netlink
// dataplane programmed from the same ruleset — the two encodings agree.
func TestRenderMatchesKernel(t *testing.T) {
	rs := compiled(t)

	viaNetlink := newNetNS(t)
	apply(t, newDataplane(t, viaNetlink), rs, dataplane.ApplyOptions{})
	want := listing(t, viaNetlink)

	if got := renderedListing(t, rs); got != want {
		t.Errorf("nft lists the rendered ruleset differently from the netlink one:\n--- netlink\n%s\n--- rendered\n%s", want, got)
	}
}

// renderedListing loads the nft text Render prints for rs with `nft -f` into a new
// namespace and returns how nft lists it, for comparing with the netlink encoding.
func renderedListing(t *testing.T, rs *ruleset.Ruleset) string {
	t.Helper()
	viaText := newNetNS(t)
	file := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(file, []byte(ruleset.Render(rs)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := inNS(t, viaText, "nft", "-f", file); err != nil {
		t.Fatalf("nft -f refused the rendered ruleset: %v\n%s\n%s", err, out, ruleset.Render(rs))
	}
	return listing(t, viaText)
}
