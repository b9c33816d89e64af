// Package privilege proves the agent runs with least privilege: the lab agent talks to
// the API server as the Helm chart's own ServiceAccount, bound to the chart's own
// ClusterRole, and enforces (with the chart's ClusterNetworkPolicy CRD installed); that
// identity is refused everything the agent does not need (ClusterNetworkPolicies it
// only reads, status included); and the agent works with exactly the capabilities the
// chart's DaemonSet grants (CAP_NET_ADMIN, conntrack revocation included) and fails
// clearly with none. Its metrics endpoint, secure by default, answers only a token
// bound to the chart's metrics-reader ClusterRole (issue #11 item 10), over HTTPS, with
// the certificate it is given when it is given one.
//
// Run (as root, with bin/k8s and bin/helm built):
//
//	NFTPOLICY_AGENT=/path/to/nftpolicy-agent go test -count=1 -v ./test/privilege/
package privilege

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/internal/testns"
	helmchart "github.com/nftpolicy/nftpolicy/test/chart"
)

// releaseNamespace is where the README installs the chart (helm install --namespace
// kube-system); the ServiceAccount and the binding's subject are rendered into it.
const releaseNamespace = "kube-system"

// helmBinary is $HELM or bin/helm; the test skips without it.
func helmBinary(t testing.TB) string {
	t.Helper()
	h := helmchart.Helm(helmchart.RepoRoot(t))
	if _, err := exec.LookPath(h); err != nil {
		testns.SkipUnlessRequired(t, "no helm at %s: run `make helm` (or set $HELM)", h)
	}
	return h
}

// chart is the chart rendered with its default values.
type chart struct {
	objs           []*unstructured.Unstructured
	daemonSet      *appsv1.DaemonSet
	clusterRole    *rbacv1.ClusterRole // the agent's
	metricsReader  *rbacv1.ClusterRole // for scrapers of the agent's /metrics
	binding        *rbacv1.ClusterRoleBinding
	serviceAccount *corev1.ServiceAccount
	cnpCRD         *unstructured.Unstructured // the ClusterNetworkPolicy CRD (standard channel by default)
}

// renderChart runs `helm template` with the default values and decodes the objects the
// tests need, strictly (a misspelt field fails here).
func renderChart(t testing.TB) *chart {
	t.Helper()
	helm := helmBinary(t)
	c := &chart{objs: helmchart.Template(t, helm, helmchart.RepoRoot(t), releaseNamespace)}
	for _, u := range c.objs {
		var into any
		switch u.GetKind() {
		case "DaemonSet":
			c.daemonSet = &appsv1.DaemonSet{}
			into = c.daemonSet
		case "ClusterRole":
			r := &rbacv1.ClusterRole{}
			if strings.HasSuffix(u.GetName(), "-metrics-reader") {
				c.metricsReader = r
			} else {
				c.clusterRole = r
			}
			into = r
		case "ClusterRoleBinding":
			c.binding = &rbacv1.ClusterRoleBinding{}
			into = c.binding
		case "ServiceAccount":
			c.serviceAccount = &corev1.ServiceAccount{}
			into = c.serviceAccount
		case "CustomResourceDefinition":
			c.cnpCRD = u
			into = &apiextensionsv1.CustomResourceDefinition{}
		default:
			continue
		}
		data, err := yaml.Marshal(u.Object)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(data, into); err != nil {
			t.Fatalf("%s %s does not decode strictly: %v", u.GetKind(), u.GetName(), err)
		}
	}
	if c.daemonSet == nil || c.clusterRole == nil || c.metricsReader == nil || c.binding == nil || c.serviceAccount == nil || c.cnpCRD == nil {
		t.Fatalf("the default rendering lacks a DaemonSet, the agent's or the metrics-reader ClusterRole, a ClusterRoleBinding, a ServiceAccount or the ClusterNetworkPolicy CRD: %d objects", len(c.objs))
	}
	return c
}

// rbacObjects returns exactly the rendered ClusterRoles (the agent's and
// metrics-reader), ClusterRoleBinding and ServiceAccount, as rendered, for applying to
// the lab's API server.
func (c *chart) rbacObjects() []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, u := range c.objs {
		switch u.GetKind() {
		case "ClusterRole", "ClusterRoleBinding", "ServiceAccount":
			out = append(out, u.DeepCopy())
		}
	}
	return out
}

// agentContainer is the DaemonSet's only container.
func (c *chart) agentContainer(t testing.TB) *corev1.Container {
	t.Helper()
	cs := c.daemonSet.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("want one container in the DaemonSet, got %d", len(cs))
	}
	return &cs[0]
}

// addedCaps returns the capabilities the chart adds, lower-case without "CAP_" (as
// setpriv spells them).
func (c *chart) addedCaps(t testing.TB) []string {
	t.Helper()
	sc := c.agentContainer(t).SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the agent container has no securityContext.capabilities")
	}
	var out []string
	for _, cp := range sc.Capabilities.Add {
		out = append(out, strings.ToLower(strings.TrimPrefix(string(cp), "CAP_")))
	}
	return out
}

// TestChartSecurityContext checks what the rendered DaemonSet grants the agent: one
// capability (NET_ADMIN, with every other dropped), no privilege escalation, not
// privileged, a read-only root filesystem, the runtime's seccomp profile, and no host
// namespace or host path beyond the network namespace it must program; and that the
// pod runs as the chart's ServiceAccount, which the chart's binding ties to its role.
func TestChartSecurityContext(t *testing.T) {
	c := renderChart(t)
	spec := c.daemonSet.Spec.Template.Spec
	ctr := c.agentContainer(t)
	sc := ctr.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the agent container has no securityContext.capabilities")
	}
	if got := sc.Capabilities.Drop; !slices.Equal(got, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop = %v, want [ALL]: the runtime's default set (CHOWN, SETUID, NET_RAW, ...) would stay", got)
	}
	if got := sc.Capabilities.Add; !slices.Equal(got, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("capabilities.add = %v, want exactly [NET_ADMIN]", got)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false (no_new_privs off: a setuid or file-capability binary could gain more)")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("the container is privileged")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true: the agent writes nothing to disk")
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile = %v, want RuntimeDefault", sc.SeccompProfile)
	}
	if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
		t.Errorf("procMount = %v, want Default", *sc.ProcMount)
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork is off: the agent must program the node's own netfilter")
	}
	if spec.HostPID || spec.HostIPC {
		t.Errorf("hostPID=%v hostIPC=%v: the agent needs neither", spec.HostPID, spec.HostIPC)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s mounts host path %s: the agent needs none", v.Name, v.HostPath.Path)
		}
	}
	if spec.ServiceAccountName != c.serviceAccount.Name {
		t.Errorf("serviceAccountName = %q, want the chart's ServiceAccount %q", spec.ServiceAccountName, c.serviceAccount.Name)
	}
	if c.serviceAccount.Namespace != releaseNamespace {
		t.Errorf("ServiceAccount namespace %q, want the release namespace %q", c.serviceAccount.Namespace, releaseNamespace)
	}
	if got := c.binding.RoleRef; got.Kind != "ClusterRole" || got.Name != c.clusterRole.Name {
		t.Errorf("binding roleRef = %+v, want ClusterRole %s", got, c.clusterRole.Name)
	}
	if !slices.ContainsFunc(c.binding.Subjects, func(s rbacv1.Subject) bool {
		return s.Kind == "ServiceAccount" && s.Name == c.serviceAccount.Name && s.Namespace == c.serviceAccount.Namespace
	}) || len(c.binding.Subjects) != 1 {
		t.Errorf("binding subjects = %+v, want only ServiceAccount %s/%s", c.binding.Subjects, c.serviceAccount.Namespace, c.serviceAccount.Name)
	}
	for _, r := range append(slices.Clone(c.clusterRole.Rules), c.metricsReader.Rules...) {
		for _, v := range r.Verbs {
			if v == "*" || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") || slices.Contains(r.NonResourceURLs, "*") {
				t.Errorf("ClusterRole rule %+v uses a wildcard", r)
			}
		}
	}
	t.Logf("container securityContext: drop %v, add %v, allowPrivilegeEscalation=%v, readOnlyRootFilesystem=%v, seccomp %s",
		sc.Capabilities.Drop, sc.Capabilities.Add, *sc.AllowPrivilegeEscalation, *sc.ReadOnlyRootFilesystem, sc.SeccompProfile.Type)
}
