// Package netpol runs every case of test/netpol — the upstream NetworkPolicy e2e
// connectivity tests and our additions — against real traffic: a lab cluster of two
// nodes (network namespaces) with the agent in each, in both CNI topologies, over IPv4
// and IPv6, probing each pod's IP and its Service ClusterIP.
//
// Run one case: go test ./test/e2e/netpol -ginkgo.focus 'default-deny-ingress'
package netpol

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/lab"
	"github.com/nftpolicy/nftpolicy/test/netpol"
)

func TestNetpolOnTheLab(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "e2e: NetworkPolicy cases on the lab")
}

// agentBinary is the agent `make build` produced (NFTPOLICY_AGENT), or a fresh build.
func agentBinary() string {
	if bin := os.Getenv("NFTPOLICY_AGENT"); bin != "" {
		return bin
	}
	bin := filepath.Join(GinkgoT().TempDir(), "nftpolicy-agent")
	build := exec.Command("go", "build", "-o", bin, "./cmd/nftpolicy-agent")
	build.Dir = "../../.."
	out, err := build.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), string(out))
	return bin
}

var _ = Describe("NetworkPolicy cases", func() {
	// Both topologies run dual-stack, every case once per family.
	for _, topology := range []lab.Topology{lab.Routed, lab.BridgeVXLAN} {
		Describe(fmt.Sprintf("on the %s topology", topology), Ordered, ContinueOnFailure, func() {
			var (
				cluster *lab.Cluster
				env     *netpol.LabEnv
			)
			BeforeAll(func(ctx context.Context) {
				lab.SkipUnlessCluster(GinkgoT())
				var err error
				cluster, err = lab.StartCluster(ctx, lab.ClusterOptions{Nodes: 2, Topology: topology, DualStack: true,
					AgentBinary: agentBinary(), Progress: GinkgoWriter, AgentArgs: strings.Fields(os.Getenv("EXTRA_AGENT_ARGS"))})
				Expect(err).NotTo(HaveOccurred())
				DeferCleanup(cluster.Close)
				env, err = netpol.NewLabEnv(ctx, cluster, netpol.NewModel(netpol.DefaultPlacement))
				Expect(err).NotTo(HaveOccurred())
			})
			for _, c := range netpol.AllCases() {
				for _, fam := range []lab.Family{lab.IPv4, lab.IPv6} {
					It(fmt.Sprintf("%s [%s]", c.FullName(), fam), func(ctx context.Context) {
						Expect(netpol.Reset(ctx, env)).To(Succeed())
						Expect(env.WaitIdle(ctx, 20*time.Second)).To(Succeed())
						err := netpol.RunCase(ctx, env, &c, netpol.RunOptions{Family: fam})
						var skip *netpol.SkipError
						if errors.As(err, &skip) {
							// The lab lacks only SCTP, on kernels without it: what the
							// agent must do there is report SCTP ports as Unsupported.
							Expect(c.Needs.SCTP && !lab.SCTPSupported()).To(BeTrue(), "the lab cannot run the case: %s", skip.Reason)
							expectSCTPUnsupported(ctx, env)
							return
						}
						// The error holds the expected and observed matrices and the steps.
						Expect(err).NotTo(HaveOccurred())
					}, SpecTimeout(3*time.Minute))
				}
			}
		})
	}
})

// expectSCTPUnsupported creates a policy allowing only SCTP into namespace x and waits
// for the agents, on a kernel without SCTP, to report its port as Unsupported in an
// Event on the policy (compiler.ErrUnsupported; the policy still isolates its pods).
func expectSCTPUnsupported(ctx context.Context, env *netpol.LabEnv) {
	sctp, port := corev1.ProtocolSCTP, intstr.FromInt32(80)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: netpol.X, Name: "allow-sctp-only"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &sctp, Port: &port}}}},
		},
	}
	Expect(env.Client().Create(ctx, np)).To(Succeed())
	DeferCleanup(func(ctx context.Context) { Expect(env.Client().Delete(ctx, np)).To(Succeed()) })
	Eventually(func(g Gomega) {
		var events eventsv1.EventList
		g.Expect(env.Client().List(ctx, &events, client.InNamespace(netpol.X))).To(Succeed())
		var reasons []string
		for _, ev := range events.Items {
			if ev.Regarding.UID == np.UID {
				reasons = append(reasons, ev.Reason+": "+ev.Note)
			}
		}
		g.Expect(reasons).To(ContainElement(And(HavePrefix("Unsupported: spec.ingress[0].ports[0]"), ContainSubstring("no SCTP"))))
	}).WithContext(ctx).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
}
