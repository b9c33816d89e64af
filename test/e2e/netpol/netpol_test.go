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

func skipUnlessLab() {
	if os.Geteuid() != 0 {
		Skip("the lab needs root (network namespaces, nftables)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		Skip("nft is not installed (apt-get install nftables)")
	}
	if _, err := lab.ControlPlaneDir(""); err != nil {
		Skip(fmt.Sprintf("no control plane: %v (run `make envtest-assets`)", err))
	}
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
				skipUnlessLab()
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
							Skip(skip.Reason)
						}
						// The error holds the expected and observed matrices and the steps.
						Expect(err).NotTo(HaveOccurred())
					}, SpecTimeout(3*time.Minute))
				}
			}
		})
	}
})
