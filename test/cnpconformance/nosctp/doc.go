// Package nosctp holds, generated, the tests of the ClusterNetworkPolicy conformance
// suite (sigs.k8s.io/network-policy-api, conformance/tests) that probe SCTP among TCP
// and UDP, each without its SCTP probes: test/cnpconformance runs them instead of
// upstream's on a kernel without SCTP, where every SCTP probe fails whatever the policy
// says. Every other file of this package is written by hack/cnpconformance-nosctp
// (test/cnpconformance/nosctpgen, which says how) from the module at the version in
// go.mod, and TestGeneratedUpToDate there fails when they differ from what it writes
// now: regenerate after a bump of the module.
package nosctp

//go:generate go run ../../../hack/cnpconformance-nosctp -o .
