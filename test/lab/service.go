package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ServiceTable is the nftables table (family inet) in which the lab
// implements ClusterIPs in every node, as kube-proxy's nftables mode does in
// its table "kube-proxy".
const ServiceTable = "nftpolicy-lab-svc"

// maxServices keeps serviceAddr inside the service CIDRs.
const maxServices = 9000

// hairpinMark marks connections a pod makes to itself through a ClusterIP
// (kube-proxy's masquerade bit): they are masqueraded, otherwise the pod
// would receive a packet from its own address and drop it as a martian.
const hairpinMark = 0x4000

// Service is a ClusterIP Service of a Cluster.
type Service struct {
	Namespace, Name string
	Selector        map[string]string
	// Ports are as created (protocol and targetPort defaulted).
	Ports []corev1.ServicePort
	// ClusterIPs has the IPv4 ClusterIP, then the IPv6 one if dual-stack.
	ClusterIPs []netip.Addr

	c *Cluster
	// guarded by c.mu
	endpoints []*ClusterPod
}

// Key returns "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

func (s *Service) String() string { return s.Key() }

// ClusterIP returns the ClusterIP of family f (invalid if none).
func (s *Service) ClusterIP(f Family) netip.Addr {
	for _, a := range s.ClusterIPs {
		if (f == IPv6) == a.Is6() {
			return a
		}
	}
	return netip.Addr{}
}

// AddrPort returns the ClusterIP of family f with port.
func (s *Service) AddrPort(f Family, port int) netip.AddrPort {
	return netip.AddrPortFrom(s.ClusterIP(f), uint16(port))
}

// Endpoints returns the pods currently behind the Service: Running pods of
// its namespace matching its selector.
func (s *Service) Endpoints() []*ClusterPod {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return slices.Clone(s.endpoints)
}

// Services returns the Services in creation order.
func (c *Cluster) Services() []*Service {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.services)
}

// CreateService creates a ClusterIP Service: it allocates ClusterIPs (from
// 10.96.0.0/16 and, dual-stack, fd00:10:96::/112), creates the Service
// object with them, and programs DNAT from every ClusterIP and port to the
// endpoints' addresses and target ports in every node (kube-proxy's
// ClusterIP path; no masquerade except for hairpin connections). Endpoints
// are the Running pods of namespace ns matching selector; they follow the
// pods created, deleted, relabelled and re-phased through the Cluster.
// targetPort defaults to port and may name a container port.
func (c *Cluster) CreateService(ctx context.Context, ns, name string, selector map[string]string, ports []corev1.ServicePort) (*Service, error) {
	c.podOps.Lock()
	defer c.podOps.Unlock()
	if err := c.checkOpen(); err != nil {
		return nil, fmt.Errorf("create service %s/%s: %w", ns, name, err)
	}
	if len(ports) == 0 {
		return nil, fmt.Errorf("create service %s/%s: no ports", ns, name)
	}
	s := &Service{Namespace: ns, Name: name, Selector: maps.Clone(selector), Ports: slices.Clone(ports), c: c}
	for i := range s.Ports {
		sp := &s.Ports[i]
		if sp.Protocol == "" {
			sp.Protocol = corev1.ProtocolTCP
		}
		if sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal == 0 {
			sp.TargetPort = intstr.FromInt32(sp.Port)
		}
	}
	c.mu.Lock()
	for _, o := range c.services {
		if o.Namespace == ns && o.Name == name {
			c.mu.Unlock()
			return nil, fmt.Errorf("create service %s/%s: already exists", ns, name)
		}
	}
	n := c.nextSvc
	c.nextSvc++
	c.mu.Unlock()
	if n >= maxServices {
		return nil, fmt.Errorf("create service %s/%s: no free ClusterIP", ns, name)
	}
	for _, f := range c.families() {
		s.ClusterIPs = append(s.ClusterIPs, serviceAddr(n, f))
	}

	obj := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			Selector:  maps.Clone(selector),
			Ports:     slices.Clone(s.Ports),
			ClusterIP: s.ClusterIPs[0].String(),
		},
	}
	policy := corev1.IPFamilyPolicySingleStack
	if c.opts.DualStack {
		policy = corev1.IPFamilyPolicyRequireDualStack
	}
	obj.Spec.IPFamilyPolicy = &policy
	for _, a := range s.ClusterIPs {
		obj.Spec.ClusterIPs = append(obj.Spec.ClusterIPs, a.String())
		fam := corev1.IPv4Protocol
		if a.Is6() {
			fam = corev1.IPv6Protocol
		}
		obj.Spec.IPFamilies = append(obj.Spec.IPFamilies, fam)
	}
	if err := c.client.Create(ctx, obj); err != nil {
		return nil, fmt.Errorf("create service %s/%s: %w", ns, name, err)
	}
	c.mu.Lock()
	c.services = append(c.services, s)
	c.mu.Unlock()
	if err := errors.Join(c.syncServices(ctx), c.saveState()); err != nil {
		return nil, fmt.Errorf("create service %s/%s: %w", ns, name, err)
	}
	c.logf("service %s: ClusterIP %s -> %s", s.Key(), joinList(s.ClusterIPs), strings.Join(PodKeys(s.Endpoints()), ", "))
	return s, nil
}

// DeleteService deletes the Service object and its DNAT rules.
func (c *Cluster) DeleteService(ctx context.Context, s *Service) error {
	c.podOps.Lock()
	defer c.podOps.Unlock()
	if err := c.checkOpen(); err != nil {
		return fmt.Errorf("delete service %s: %w", s.Key(), err)
	}
	c.mu.Lock()
	c.services = slices.DeleteFunc(c.services, func(o *Service) bool { return o == s })
	c.mu.Unlock()
	obj := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name}}
	var errs []error
	if err := c.client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, err)
	}
	errs = append(errs, c.syncServices(ctx), c.saveState())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete service %s: %w", s.Key(), err)
	}
	return nil
}

// syncServices recomputes every Service's endpoints from the cluster's pods
// and replaces the service table in every node in one transaction each.
// Callers hold podOps.
func (c *Cluster) syncServices(ctx context.Context) error {
	c.mu.Lock()
	if len(c.services) == 0 && !c.svcTable {
		c.mu.Unlock()
		return nil
	}
	for _, s := range c.services {
		s.endpoints = nil
		if len(s.Selector) == 0 {
			continue // a Service without selector gets no endpoints
		}
		sel := labels.SelectorFromSet(s.Selector)
		for _, p := range c.pods {
			if p.Namespace == s.Namespace && p.phase == corev1.PodRunning && sel.Matches(labels.Set(p.labels)) {
				s.endpoints = append(s.endpoints, p)
			}
		}
	}
	text := c.renderServicesLocked()
	c.svcTable = len(c.services) > 0
	c.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i, n := range c.nodes {
		wg.Go(func() {
			cmd := n.NS.Command(ctx, "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(text)
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("program services in %s: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// renderServicesLocked renders the service table as an nft script that
// replaces it atomically (or deletes it when there are no services):
//
//	table inet nftpolicy-lab-svc {
//		chain services {
//			ip daddr 10.96.0.10 meta l4proto tcp th dport 80 goto svc-app/backend/tcp/80-v4
//		}
//		chain svc-app/backend/tcp/80-v4 {
//			numgen random mod 2 vmap { 0 : goto ep-app/backend/tcp/80-v4-0, 1 : goto ... }
//		}
//		chain ep-app/backend/tcp/80-v4-0 {
//			ip saddr 10.244.2.10 meta mark set meta mark | 0x4000   # hairpin
//			meta l4proto tcp dnat ip to 10.244.2.10:8080
//		}
//		prerouting (dstnat) and output (-100): jump services
//		postrouting (srcnat): masquerade marked (hairpin) connections
//	}
func (c *Cluster) renderServicesLocked() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", ServiceTable, ServiceTable)
	if len(c.services) == 0 {
		return b.String()
	}
	var dispatch []string
	var chains strings.Builder
	for _, s := range c.services {
		for _, sp := range s.Ports {
			proto := strings.ToLower(string(sp.Protocol))
			for _, f := range c.families() {
				cip := s.ClusterIP(f)
				if !cip.IsValid() {
					continue
				}
				ipk, natk := "ip", "ip"
				if f == IPv6 {
					ipk, natk = "ip6", "ip6"
				}
				type ep struct {
					addr netip.Addr
					port int32
				}
				var eps []ep
				for _, p := range s.endpoints {
					a := p.Addr(f)
					port := targetPort(p, sp)
					if a.IsValid() && port != 0 {
						eps = append(eps, ep{a, port})
					}
				}
				if len(eps) == 0 {
					// No endpoints: no rule; the packet goes nowhere.
					continue
				}
				svcChain := fmt.Sprintf("svc-%s/%s/%s/%d-%s", s.Namespace, s.Name, proto, sp.Port, strings.ToLower(f.String()))
				dispatch = append(dispatch, fmt.Sprintf("\t\t%s daddr %s meta l4proto %s th dport %d goto %s comment %q",
					ipk, cip, proto, sp.Port, svcChain, s.Key()+" "+proto+"/"+strconv.Itoa(int(sp.Port))))
				var vmap []string
				for i, e := range eps {
					epChain := fmt.Sprintf("ep-%s-%d", strings.TrimPrefix(svcChain, "svc-"), i)
					vmap = append(vmap, fmt.Sprintf("%d : goto %s", i, epChain))
					dst := netip.AddrPortFrom(e.addr, uint16(e.port))
					fmt.Fprintf(&chains, "\tchain %s {\n", epChain)
					fmt.Fprintf(&chains, "\t\t%s saddr %s meta mark set meta mark | %#x comment \"hairpin\"\n", ipk, e.addr, hairpinMark)
					fmt.Fprintf(&chains, "\t\tmeta l4proto %s dnat %s to %s\n\t}\n", proto, natk, dst)
				}
				fmt.Fprintf(&chains, "\tchain %s {\n\t\tnumgen random mod %d vmap { %s }\n\t}\n", svcChain, len(eps), strings.Join(vmap, ", "))
			}
		}
	}
	fmt.Fprintf(&b, "table inet %s {\n", ServiceTable)
	b.WriteString("\tcomment \"nftpolicy lab: ClusterIP DNAT, as kube-proxy\"\n")
	b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n")
	// nft accepts the name dstnat only on prerouting; -100 is its value.
	b.WriteString("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n")
	fmt.Fprintf(&b, "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"+
		"\t\tmeta mark & %#x == 0 return\n\t\tmeta mark set meta mark ^ %#x masquerade\n\t}\n", hairpinMark, hairpinMark)
	b.WriteString("\tchain services {\n")
	for _, d := range dispatch {
		b.WriteString(d + "\n")
	}
	b.WriteString("\t}\n")
	b.WriteString(chains.String())
	b.WriteString("}\n")
	return b.String()
}

// targetPort resolves the service port's target port on pod p: a number as
// is, a name through the pod's ports of the same protocol (0 if the pod has
// no such port, which makes it no endpoint of this port).
func targetPort(p *ClusterPod, sp corev1.ServicePort) int32 {
	if sp.TargetPort.Type == intstr.Int {
		return sp.TargetPort.IntVal
	}
	for _, cp := range p.ports {
		if cp.Name == sp.TargetPort.StrVal && cp.Protocol == sp.Protocol {
			return cp.ContainerPort
		}
	}
	return 0
}
