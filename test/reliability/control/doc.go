// Package control holds the control-plane reliability tests of the agent:
// restarts (SIGKILL, SIGTERM, a roll to a new binary), an API server outage, drift of
// the kernel table and coexistence with other nftables tables — each while a prober
// checks every few milliseconds that no connection gets a verdict the policies do not
// give it. They run on the lab (a routed two-node cluster with a real API server),
// need root, and take minutes: every test skips unless NFTPOLICY_RELIABILITY=1
// (`make test-reliability`).
package control
