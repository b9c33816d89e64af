// Upstream-mirroring test cases: this file ports upstream's netpol e2e suite
// (test/e2e/network/netpol/network_policy.go) case by case and stays in upstream's shape
// on purpose, repetition included, so that each case can be compared line by line with
// its upstream original (the Upstream field names it) and updated when upstream changes.
// Do not fold its cases into helpers or tables; `duplicates` lists its repeated runs, and
// they are meant.

package netpol

import (
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// UpstreamVersion is the Kubernetes release whose netpol e2e suite the cases port.
const UpstreamVersion = "v1.37.2"

// UpstreamCases returns every connectivity test of upstream's
// test/e2e/network/netpol/network_policy.go at UpstreamVersion, in file order: the same
// topology, policies, ports, protocols and expected reachability. Upstream names the
// namespaces with a random prefix (nsX, nsY, nsZ); here they are x, y, z. Where upstream
// sleeps (after deleting policies) the runner's polling takes its place.
func UpstreamCases() []Case {
	return []Case{
		{
			Context: ContextTCP, Name: "should support a 'default-deny-ingress' policy", Upstream: "network_policy.go:80",
			Pods: Refs("x/a", "x/b", "y/a", "y/b"),
			Run: func(r *Run) {
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-ingress", metav1.LabelSelector{}, SetSpecIngressRules())
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should support a 'default-deny-all' policy", Upstream: "network_policy.go:110",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-all", metav1.LabelSelector{}, SetSpecIngressRules(), SetSpecEgressRules())
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector", Upstream: "network_policy.go:129",
			Pods: Refs("x/a", "x/b", "x/c", "y/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{podSelector(podName("b"))}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("x-a-allows-x-b", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				reachability.Expect("x/b", "x/a", true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy to allow ingress traffic for a target", Upstream: "network_policy.go:155",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				r.Step("having a deny all ingress policy")
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-all", metav1.LabelSelector{}, SetSpecIngressRules())
				r.CreatePolicy(X, policy)

				// Allow ingress only to x/a, from any pod in any namespace.
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{}, NamespaceSelector: &metav1.LabelSelector{}},
				}}
				allowPolicy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-all-to-a", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, allowPolicy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", true)
				reachability.ExpectAllIngress("x/b", false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy to allow ingress traffic from pods in all namespaces", Upstream: "network_policy.go:182",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsSelector(map[string]string{})}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-from-another-ns", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", Upstream: "network_policy.go:200",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-ns-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				// disallow all traffic from the x or z namespaces
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on PodSelector with MatchExpressions", Upstream: "network_policy.go:222",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				allowedPods := metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: PodNameLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{"b"},
				}}}
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &allowedPods}}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("x-a-allows-x-b", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				reachability.Expect("x/b", "x/a", true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on NamespaceSelector with MatchExpressions", Upstream: "network_policy.go:249",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				allowedNamespaces := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: NamespaceNameLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{Y},
				}}}
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: allowedNamespaces}}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-match-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				// disallow all traffic from the x or z namespaces
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on PodSelector or NamespaceSelector", Upstream: "network_policy.go:278",
			Pods: Refs("x/a", "x/b", "x/c", "y/a"),
			Run: func(r *Run) {
				allowedNamespaces := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: NamespaceNameLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{X},
				}}}
				podBAllowlisting := &metav1.LabelSelector{MatchLabels: podName("b")}
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: allowedNamespaces}, {PodSelector: podBAllowlisting},
				}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-match-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.Expect("x/a", "x/a", false)
				reachability.Expect("x/c", "x/a", false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on PodSelector and NamespaceSelector", Upstream: "network_policy.go:312",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "z/b"),
			Run: func(r *Run) {
				allowedNamespaces := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: NamespaceNameLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{X},
				}}}
				allowedPod := &metav1.LabelSelector{MatchLabels: podName("b")}
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: allowedNamespaces, PodSelector: allowedPod},
				}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-podselector-and-nsselector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				reachability.Expect("y/b", "x/a", true)
				reachability.Expect("z/b", "x/a", true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors", Upstream: "network_policy.go:347",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "y/c"),
			Run: func(r *Run) {
				allowedNamespaces := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: NamespaceNameLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{X},
				}}}
				allowedPod := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: PodNameLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{"b", "c"},
				}}}
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: allowedNamespaces, PodSelector: allowedPod},
				}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-z-pod-b-c", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.Expect("y/a", "x/a", false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on any PodSelectors", Upstream: "network_policy.go:382",
			Pods: Refs("x/a", "x/b", "x/c"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{}
				for _, label := range []map[string]string{podName("b"), podName("c")} {
					ingressRule.From = append(ingressRule.From, podSelector(label))
				}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-x-pod-b-c", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				// Connect Pods b and c to pod a from namespace x
				reachability.Expect("x/b", "x/a", true)
				reachability.Expect("x/c", "x/a", true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", Upstream: "network_policy.go:407",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "z/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(Y), podName("a"))}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-pod-a-via-namespace-pod-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				reachability.Expect("y/a", "x/a", true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on Ports", Upstream: "network_policy.go:438",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "z/a"),
			Run: func(r *Run) {
				r.Step("Creating a network allowPort81Policy which only allows allow listed namespaces (y) to connect on exactly one port (81)")
				ingressRule := networkingv1.NetworkPolicyIngressRule{
					From:  []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))},
					Ports: []networkingv1.NetworkPolicyPort{port(proto(TCP), 81)},
				}
				allowPort81Policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-ns-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, allowPort81Policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: Y}, Peer{Namespace: X, Pod: "a"}, true)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)
				r.Validate(81, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce multiple, stacked policies with overlapping podSelectors", Upstream: "network_policy.go:468",
			Pods: Refs("x/a", "x/b", "y/a", "y/b", "z/a"),
			Run: func(r *Run) {
				r.Step("Creating a network allowPort81Policy which only allows allow listed namespaces (y) to connect on exactly one port (81)")
				ingressRule := networkingv1.NetworkPolicyIngressRule{
					From:  []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))},
					Ports: []networkingv1.NetworkPolicyPort{port(proto(TCP), 81)},
				}
				allowPort81Policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-ns-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, allowPort81Policy)

				reachabilityALLOW := r.Reachability(true)
				reachabilityALLOW.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachabilityALLOW.ExpectPeer(Peer{Namespace: Y}, Peer{Namespace: X, Pod: "a"}, true)
				reachabilityALLOW.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)

				r.Step("Verifying traffic on port 81.")
				r.Validate(81, TCP, reachabilityALLOW)

				reachabilityDENY := r.Reachability(true)
				reachabilityDENY.ExpectAllIngress("x/a", false)

				r.Step("Verifying traffic on port 80.")
				r.Validate(80, TCP, reachabilityDENY)

				ingressRule = networkingv1.NetworkPolicyIngressRule{
					From:  []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))},
					Ports: []networkingv1.NetworkPolicyPort{port(proto(TCP), 80)},
				}
				allowPort80Policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-ns-selector-80", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, allowPort80Policy)

				r.Step("Verifying that we can add a policy to unblock port 80")
				r.Validate(80, TCP, reachabilityALLOW)
			},
		},
		{
			Context: ContextTCP, Name: "should support allow-all policy", Upstream: "network_policy.go:513",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				r.Step("Creating a network policy which allows all traffic.")
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-all", map[string]string{}, SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{}))
				r.CreatePolicy(X, policy)

				r.Step("Testing pods can connect to both ports when an 'allow-all' policy is present.")
				reachability := r.Reachability(true)
				r.Validate(80, TCP, reachability)
				r.Validate(81, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should allow ingress access on one named port", Upstream: "network_policy.go:531",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				r.Step("Blocking all ports other then 81 in the entire namespace")
				ingressRules := networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{namedPort(nil, "serve-81-tcp")}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-all", map[string]string{}, SetSpecIngressRules(ingressRules))
				r.CreatePolicy(X, policy)

				reachabilityPort81 := r.Reachability(true)
				r.Validate(81, TCP, reachabilityPort81)

				// disallow all traffic to the x namespace
				reachabilityPort80 := r.Reachability(true)
				reachabilityPort80.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(80, TCP, reachabilityPort80)
			},
		},
		{
			Context: ContextTCP, Name: "should allow ingress access from namespace on one named port", Upstream: "network_policy.go:555",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{
					From:  []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))},
					Ports: []networkingv1.NetworkPolicyPort{namedPort(proto(TCP), "serve-80-tcp")},
				}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-ns-selector-80", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				// disallow all traffic from the x or z namespaces
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)

				r.Step("Verify that port 80 is allowed for namespace y")
				r.Validate(80, TCP, reachability)

				r.Step("Verify that port 81 is blocked for all namespaces including y")
				reachabilityFAIL := r.Reachability(true)
				reachabilityFAIL.ExpectAllIngress("x/a", false)
				r.Validate(81, TCP, reachabilityFAIL)
			},
		},
		{
			Context: ContextTCP, Name: "should allow egress access on one named port", Upstream: "network_policy.go:590",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				egressRule := networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{namedPort(nil, "serve-80-tcp")}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-egress", map[string]string{}, SetSpecEgressRules(egressRule))
				r.CreatePolicy(X, policy)

				reachabilityPort80 := r.Reachability(true)
				r.Validate(80, TCP, reachabilityPort80)

				// meanwhile no traffic over 81 should work, since our egress policy is on 80
				reachabilityPort81 := r.Reachability(true)
				reachabilityPort81.ExpectPeer(Peer{Namespace: X}, Peer{}, false)
				r.Validate(81, TCP, reachabilityPort81)
			},
		},
		{
			Context: ContextTCP, Name: "should not allow all ports if it cannot limit to the requested port", Upstream: "network_policy.go:618",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				r.Step("Creating a network policy for the server which allows traffic only on a (non-existent) named port.")
				ingressRule := networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{namedPort(proto(TCP), "no-such-port")}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ingress-on-nonexistent-port", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				r.Step("Trying to connect to TCP port 80, which should be blocked by implicit isolation.")
				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce updated policy", Upstream: "network_policy.go:637",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				r.Step("Using the simplest possible mutation: start with allow all, then switch to deny all")
				// part 1) allow all
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-all-mutate-to-deny-all", map[string]string{}, SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{}))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				r.Validate(81, TCP, reachability)

				// part 2) update the policy to deny all
				policy.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
				r.UpdatePolicy(X, policy)

				reachabilityDeny := r.Reachability(true)
				reachabilityDeny.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(81, TCP, reachabilityDeny)
			},
		},
		{
			Context: ContextTCP, Name: "should allow ingress access from updated namespace", Upstream: "network_policy.go:663",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				// Upstream's DeferCleanup(DeleteNamespaceLabel, nsY, "ns2") is RunCase's reset.
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsSelector(map[string]string{"ns2": "updated"})}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-ns-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				r.Validate(80, TCP, reachability)

				// add a new label
				r.AddNamespaceLabel(Y, "ns2", "updated")

				// anything from namespace 'y' should be able to get to x/a
				reachabilityWithLabel := r.Reachability(true)
				reachabilityWithLabel.ExpectAllIngress("x/a", false)
				reachabilityWithLabel.ExpectPeer(Peer{Namespace: Y}, Peer{}, true)
				r.Validate(80, TCP, reachabilityWithLabel)
			},
		},
		{
			Context: ContextTCP, Name: "should allow ingress access from updated pod", Upstream: "network_policy.go:696",
			Pods: Refs("x/a", "x/b"),
			Run: func(r *Run) {
				// Upstream's DeferCleanup(ResetPodLabels, nsX, "b") is RunCase's reset.
				matchLabels := map[string]string{"pod": "b", "pod2": "updated"}
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{podSelector(matchLabels)}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-pod-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				r.Validate(80, TCP, reachability)

				r.AddPodLabels("x/b", matchLabels)

				r.Step("x/b is able to reach x/a when label is updated")
				reachabilityWithLabel := r.Reachability(true)
				reachabilityWithLabel.ExpectAllIngress("x/a", false)
				reachabilityWithLabel.Expect("x/b", "x/a", true)
				r.Validate(80, TCP, reachabilityWithLabel)
			},
		},
		{
			Context: ContextTCP, Name: "should deny ingress from pods on other namespaces", Upstream: "network_policy.go:727",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				ingressRules := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{podSelector(map[string]string{})}}
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-empty-policy", metav1.LabelSelector{}, SetSpecIngressRules(ingressRules))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: Y}, Peer{Namespace: X}, false)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should deny ingress access to updated pod", Upstream: "network_policy.go:748",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				// Upstream's DeferCleanup(ResetPodLabels, nsX, "a") is RunCase's reset.
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-ingress-via-label-selector",
					metav1.LabelSelector{MatchLabels: map[string]string{"target": "isolated"}}, SetSpecIngressRules())
				r.CreatePolicy(X, policy)

				r.Step("Verify that everything can reach x/a")
				reachability := r.Reachability(true)
				r.Validate(80, TCP, reachability)

				r.AddPodLabels("x/a", map[string]string{"target": "isolated"})

				reachabilityIsolated := r.Reachability(true)
				reachabilityIsolated.ExpectAllIngress("x/a", false)
				r.Validate(80, TCP, reachabilityIsolated)
			},
		},
		{
			Context: ContextTCP, Name: "should deny egress from pods based on PodSelector", Upstream: "network_policy.go:773",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-egress-pod-a", metav1.LabelSelector{MatchLabels: podName("a")}, SetSpecEgressRules())
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllEgress("x/a", false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should deny egress from all pods in a namespace", Upstream: "network_policy.go:790",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-egress-ns-x", metav1.LabelSelector{}, SetSpecEgressRules())
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should work with Ingress, Egress specified together", Upstream: "network_policy.go:807",
			Pods: Refs("x/a", "x/b", "x/c", "y/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{podSelector(podName("b"))}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-pod-selector", podName("a"), SetSpecIngressRules(ingressRule))
				// add an egress rule on to it... (no protocol: the API default, TCP; don't use named ports)
				policy.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{port(nil, 80)}}}
				policy.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress, networkingv1.PolicyTypeIngress}
				r.CreatePolicy(X, policy)

				reachabilityPort80 := r.Reachability(true)
				reachabilityPort80.ExpectAllIngress("x/a", false)
				reachabilityPort80.Expect("x/b", "x/a", true)
				r.Validate(80, TCP, reachabilityPort80)

				r.Step("validating that port 81 doesn't work")
				// meanwhile no egress traffic on 81 should work, since our egress policy is on 80
				reachabilityPort81 := r.Reachability(true)
				reachabilityPort81.ExpectAllIngress("x/a", false)
				reachabilityPort81.ExpectAllEgress("x/a", false)
				reachabilityPort81.Expect("x/b", "x/a", true)
				r.Validate(81, TCP, reachabilityPort81)
			},
		},
		{
			Context: ContextTCP, Name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)", Upstream: "network_policy.go:849",
			Pods: Refs("x/a", "y/a", "y/b"),
			Run: func(r *Run) {
				// x/a --> y/a and y/b
				// Egress allowed to y/a only. Egress to y/b should be blocked
				// Ingress on y/a and y/b allow traffic from x/a
				// Expectation: traffic from x/a to y/a allowed only, traffic from x/a to y/b denied by egress policy

				// Building egress policy for x/a to y/a only
				egressRule1 := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(Y), podName("a"))}}
				egressPolicy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-to-ns-y-pod-a", podName("a"), SetSpecEgressRules(egressRule1))
				r.CreatePolicy(X, egressPolicy)

				// Creating ingress policy to allow from x/a to y/a and y/b
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(X), podName("a"))}}
				allowIngressPolicyPodA := GenNetworkPolicyWithNameAndPodMatchLabel("allow-from-xa-on-ya-match-selector", podName("a"), SetSpecIngressRules(ingressRule))
				allowIngressPolicyPodB := GenNetworkPolicyWithNameAndPodMatchLabel("allow-from-xa-on-yb-match-selector", podName("b"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(Y, allowIngressPolicyPodA)
				r.CreatePolicy(Y, allowIngressPolicyPodB)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X, Pod: "a"}, Peer{}, false)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: Y, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: X, Pod: "a"}, Peer{Namespace: Y, Pod: "a"}, true)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: Y, Pod: "b"}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", Upstream: "network_policy.go:907",
			Pods: Refs("x/a", "y/a", "y/b"),
			Run: func(r *Run) {
				egressRule1 := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(Y), podName("a"))}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-to-ns-y-pod-a", podName("a"), SetSpecEgressRules(egressRule1))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllEgress("x/a", false)
				reachability.Expect("x/a", "y/a", true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol", Upstream: "network_policy.go:936",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Protocol: proto(TCP)}}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ingress-by-proto", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachabilityTCP := r.Reachability(true)
				r.Validate(80, TCP, reachabilityTCP)

				reachabilityUDP := r.Reachability(true)
				reachabilityUDP.ExpectPeer(Peer{}, Peer{Namespace: X, Pod: "a"}, false)
				r.Validate(80, UDP, reachabilityUDP)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence", Upstream: "network_policy.go:957",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				ingressRules := networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{port(nil, 80)}}
				policyAllowOnlyPort80 := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ingress-port-80", map[string]string{}, SetSpecIngressRules(ingressRules))
				r.CreatePolicy(X, policyAllowOnlyPort80)

				r.Step("The policy targets port 80 -- so let's make sure traffic on port 81 is blocked")
				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(81, TCP, reachability)

				r.Step("Allowing all ports")
				policyAllowAll := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ingress", map[string]string{}, SetSpecIngressRules(networkingv1.NetworkPolicyIngressRule{}))
				r.CreatePolicy(X, policyAllowAll)

				reachabilityAll := r.Reachability(true)
				r.Validate(81, TCP, reachabilityAll)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce multiple egress policies with egress allow-all policy taking precedence", Upstream: "network_policy.go:985",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				egressRule := networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{port(nil, 80)}}
				policyAllowPort80 := GenNetworkPolicyWithNameAndPodMatchLabel("allow-egress-port-80", map[string]string{}, SetSpecEgressRules(egressRule))
				r.CreatePolicy(X, policyAllowPort80)

				r.Step("Making sure ingress doesn't work other than port 80")
				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{}, false)
				r.Validate(81, TCP, reachability)

				r.Step("Allowing all ports")
				policyAllowAll := GenNetworkPolicyWithNameAndPodMatchLabel("allow-egress", map[string]string{}, SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{}))
				r.CreatePolicy(X, policyAllowAll)

				reachabilityAll := r.Reachability(true)
				r.Validate(81, TCP, reachabilityAll)
			},
		},
		{
			Context: ContextTCP, Name: "should stop enforcing policies after they are deleted", Upstream: "network_policy.go:1013",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				r.Step("Creating a network policy for the server which denies all traffic.")
				// Deny all traffic into and out of "x".
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-all", metav1.LabelSelector{}, SetSpecIngressRules(), SetSpecEgressRules())
				r.CreatePolicy(X, policy)

				// Expect all traffic into, and out of "x" to be False.
				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{}, false)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(80, TCP, reachability)

				// Upstream sleeps 3 s here "to keep CI stable"; Validate polls instead.
				r.DeletePolicies()

				// Now the policy is deleted, we expect all connectivity to work again.
				reachabilityAll := r.Reachability(true)
				r.Validate(80, TCP, reachabilityAll)
			},
		},
		{
			Context: ContextTCP, Name: "should allow egress access to server in CIDR block", Upstream: "network_policy.go:1043",
			Pods: Refs("x/a", "y/a", "y/b"),
			Run: func(r *Run) {
				// The CIDR is y/b's address of the run's family (/32 or /128).
				podServerCIDR := r.HostCIDR("y/b")
				egressRule1 := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{ipBlock(podServerCIDR)}}
				policyAllowCIDR := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-cidr-egress-rule", podName("a"), SetSpecEgressRules(egressRule1))
				r.CreatePolicy(X, policyAllowCIDR)

				reachability := r.Reachability(true)
				reachability.ExpectAllEgress("x/a", false)
				reachability.Expect("x/a", "y/b", true)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce except clause while egress access to server in CIDR block", Upstream: "network_policy.go:1074",
			Pods: Refs("x/a", "x/b", "x/c"),
			Run: func(r *Run) {
				// Create a rule that allows egress to a large set of IPs around
				// podB, but not podB itself.
				podServerAllowCIDR := r.LargeCIDR("x/b")
				podServerExceptList := []string{r.HostCIDR("x/b")}
				egressRule1 := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{ipBlock(podServerAllowCIDR, podServerExceptList...)}}
				policyAllowCIDR := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-cidr-egress-rule", podName("a"), SetSpecEgressRules(egressRule1))
				r.CreatePolicy(X, policyAllowCIDR)

				reachability := r.Reachability(true)
				reachability.Expect("x/a", "x/b", false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", Upstream: "network_policy.go:1109",
			Pods: Refs("x/a", "x/b", "x/c"),
			Run: func(r *Run) {
				// Create a rule that allows egress to a large set of IPs around
				// podB, but not podB itself.
				podServerAllowCIDR := r.LargeCIDR("x/b")
				podServerExceptList := []string{r.HostCIDR("x/b")}
				egressRule1 := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{ipBlock(podServerAllowCIDR, podServerExceptList...)}}
				policyAllowCIDR := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-cidr-egress-rule", podName("a"), SetSpecEgressRules(egressRule1))
				r.CreatePolicy(X, policyAllowCIDR)

				reachability := r.Reachability(true)
				reachability.Expect("x/a", "x/b", false)
				r.Validate(80, TCP, reachability)

				// Replace the policy (same name, upstream updates it) with one that allows
				// access to podB only.
				podBIP := r.HostCIDR("x/b")
				egressRule3 := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{ipBlock(podBIP)}}
				allowPolicy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-cidr-egress-rule", podName("a"), SetSpecEgressRules(egressRule3))
				r.UpdatePolicy(X, allowPolicy)

				reachabilityAllow := r.Reachability(true)
				reachabilityAllow.ExpectAllEgress("x/a", false)
				reachabilityAllow.Expect("x/a", "x/b", true)
				r.Validate(80, TCP, reachabilityAllow)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector", Upstream: "network_policy.go:1159",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				targetLabels := podName("a")

				r.Step("Creating a network policy for pod-a which allows Egress traffic to pod-b.")
				allowEgressPolicy := GenNetworkPolicyWithNameAndPodSelector("allow-egress-for-target",
					metav1.LabelSelector{MatchLabels: targetLabels}, SetSpecEgressRules(networkingv1.NetworkPolicyEgressRule{}))
				r.CreatePolicy(X, allowEgressPolicy)

				allowEgressReachability := r.Reachability(true)
				r.Validate(80, TCP, allowEgressReachability)

				r.Step("Creating a network policy for pod-a that denies traffic from pod-b.")
				denyAllIngressPolicy := GenNetworkPolicyWithNameAndPodSelector("deny-ingress-via-label-selector", metav1.LabelSelector{MatchLabels: targetLabels}, SetSpecIngressRules())
				r.CreatePolicy(X, denyAllIngressPolicy)

				denyIngressToXReachability := r.Reachability(true)
				denyIngressToXReachability.ExpectAllIngress("x/a", false)
				r.Validate(80, TCP, denyIngressToXReachability)
			},
		},
		{
			Context: ContextTCP, Name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP", Upstream: "network_policy.go:1200",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				r.Step("Creating a default-deny ingress policy.")
				// Empty podSelector blocks the entire namespace
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-ingress", metav1.LabelSelector{}, SetSpecIngressRules())
				r.CreatePolicy(X, policy)

				r.Step("Creating a network policy for the server which allows traffic only via SCTP on port 81.")
				ingressRule := networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{port(proto(SCTP), 81)}}
				policy = GenNetworkPolicyWithNameAndPodMatchLabel("allow-only-sctp-ingress-on-port-81", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				r.Step("Trying to connect to TCP port 81, which should be blocked by the deny-ingress policy.")
				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(81, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP", Upstream: "network_policy.go:1228",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				r.Step("Creating a network policy for the server which allows traffic only via SCTP on port 80.")
				ingressRule := networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{port(proto(SCTP), 80)}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-only-sctp-ingress-on-port-80", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				r.Step("Trying to connect to TCP port 81, which should be blocked by implicit isolation.")
				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				r.Validate(81, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should not allow access by TCP when a policy specifies only UDP", Upstream: "network_policy.go:1248",
			Pods: Refs("x/a", "y/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{port(proto(UDP), 81)}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-only-udp-ingress-on-port-81", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				r.Step("Creating a network policy for the server which allows traffic only via UDP on port 81.")
				// Probing with TCP, so all traffic should be dropped.
				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				r.Validate(81, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label", Upstream: "network_policy.go:1270",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsSelector(map[string]string{NamespaceNameLabel: Y})}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-client-a-via-ns-selector-for-immutable-ns-label", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)
				r.Validate(80, TCP, reachability)
			},
		},
		{
			Context: ContextTCP, Name: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label", Upstream: "network_policy.go:1297",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				allowedNamespaces := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: NamespaceNameLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{Y},
				}}}
				egressRule := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: allowedNamespaces}}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-match-selector-for-immutable-ns-label", podName("a"), SetSpecEgressRules(egressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X, Pod: "a"}, Peer{Namespace: Y}, false)
				r.Validate(80, TCP, reachability)
			},
		},

		// "Netpol [LinuxOnly]": NetworkPolicy between server and client using UDP.
		{
			Context: ContextUDP, Name: "should support a 'default-deny-ingress' policy", Upstream: "network_policy.go:1337",
			Pods: Refs("x/a", "x/b", "y/a", "y/b"),
			Run: func(r *Run) {
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-all", metav1.LabelSelector{}, SetSpecIngressRules())
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(80, UDP, reachability)
			},
		},
		{
			Context: ContextUDP, Name: "should enforce policy based on Ports", Upstream: "network_policy.go:1355",
			Pods: Refs("x/a", "x/b", "y/a", "z/a"),
			Run: func(r *Run) {
				r.Step("Creating a network policy allowPort81Policy which only allows allow listed namespaces (y) to connect on exactly one port (81)")
				ingressRule := networkingv1.NetworkPolicyIngressRule{
					From:  []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))},
					Ports: []networkingv1.NetworkPolicyPort{port(proto(UDP), 81)},
				}
				allowPort81Policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ingress-on-port-81-ns-x", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, allowPort81Policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)
				r.Validate(81, UDP, reachability)
			},
		},
		{
			Context: ContextUDP, Name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", Upstream: "network_policy.go:1384",
			Pods: Refs("x/a", "x/b", "y/a"),
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(Y), podName("a"))}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-pod-a-via-namespace-pod-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				reachability.Expect("y/a", "x/a", true)
				r.Validate(80, UDP, reachability)
			},
		},

		// "Netpol [Feature:SCTPConnectivity] [LinuxOnly]": NetworkPolicy between server and
		// client using SCTP.
		{
			Context: ContextSCTP, Name: "should support a 'default-deny-ingress' policy", Upstream: "network_policy.go:1429",
			Pods:  Refs("x/a", "x/b", "y/a", "y/b"),
			Needs: Needs{SCTP: true},
			Run: func(r *Run) {
				policy := GenNetworkPolicyWithNameAndPodSelector("deny-all", metav1.LabelSelector{}, SetSpecIngressRules())
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{}, Peer{Namespace: X}, false)
				r.Validate(80, SCTP, reachability)
			},
		},
		{
			Context: ContextSCTP, Name: "should enforce policy based on Ports", Upstream: "network_policy.go:1447",
			Pods:  Refs("x/a", "x/b", "y/a", "z/a"),
			Needs: Needs{SCTP: true},
			Run: func(r *Run) {
				r.Step("Creating a network allowPort81Policy which only allows allow listed namespaces (y) to connect on exactly one port (81)")
				ingressRule := networkingv1.NetworkPolicyIngressRule{
					From:  []networkingv1.NetworkPolicyPeer{nsSelector(nsName(Y))},
					Ports: []networkingv1.NetworkPolicyPort{port(proto(SCTP), 81)},
				}
				allowPort81Policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ingress-on-port-81-ns-x", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, allowPort81Policy)

				reachability := r.Reachability(true)
				reachability.ExpectPeer(Peer{Namespace: X}, Peer{Namespace: X, Pod: "a"}, false)
				reachability.ExpectPeer(Peer{Namespace: Z}, Peer{Namespace: X, Pod: "a"}, false)
				r.Validate(81, SCTP, reachability)
			},
		},
		{
			Context: ContextSCTP, Name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", Upstream: "network_policy.go:1476",
			Pods:  Refs("x/a", "x/b", "y/a"),
			Needs: Needs{SCTP: true},
			Run: func(r *Run) {
				ingressRule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsPodSelector(nsName(Y), podName("a"))}}
				policy := GenNetworkPolicyWithNameAndPodMatchLabel("allow-ns-y-pod-a-via-namespace-pod-selector", podName("a"), SetSpecIngressRules(ingressRule))
				r.CreatePolicy(X, policy)

				reachability := r.Reachability(true)
				reachability.ExpectAllIngress("x/a", false)
				reachability.Expect("y/a", "x/a", true)
				r.Validate(80, SCTP, reachability)
			},
		},
	}
}
