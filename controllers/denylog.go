package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/nflog"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// podAt returns the key of the pod owning an address, "" when none does. The listener
// runs on its own goroutine, so it takes the sync lock for the lookup: logged packets
// are rate-limited, and a lookup is one map access in the engine's index.
func (s *Syncer) podAt(a netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.engine == nil {
		return ""
	}
	if p := s.engine.OwnerOf(a); p != nil {
		return p.Key()
	}
	return ""
}

// RunDenyLog receives the packets the isolation chains log (compiler.Options.LogDenied)
// on nflog group and logs one "denied connection" line per packet, until ctx ends. The
// audit-deny chains of audit mode log to the same group: their packets pass, and get a
// "would deny" line naming the audited policies.
func (s *Syncer) RunDenyLog(ctx context.Context, group uint16) error {
	l, err := nflog.Listen(group)
	if err != nil {
		return fmt.Errorf("denied-connection log: %w", err)
	}
	// Closing the socket is what ends a blocked Receive.
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	log := s.Log.WithName("denied")
	for {
		pkts, err := l.Receive()
		if ctx.Err() != nil {
			return nil
		}
		for _, p := range pkts {
			rs := s.rulesetFor(p.Prefix)
			if kv, ok := describeDenied(p, rs, s.podAt); ok {
				log.Info("denied connection", kv...)
			} else if kv, ok := describeWouldDeny(p, rs, s.podAt); ok {
				log.Info("would deny", kv...)
			}
		}
		if err != nil {
			// Lost packets (ENOBUFS) or an undecodable one: the log is best effort,
			// enforcement does not depend on it, so go on.
			log.Error(err, "receiving logged packets")
			if !errors.Is(err, nflog.ErrMalformed) && !errors.Is(err, unix.ENOBUFS) {
				return fmt.Errorf("denied-connection log: %w", err)
			}
		}
	}
}

// rulesetFor returns the ruleset that names the policies of a packet logged with
// prefix: the applied one, or the one being applied when only it has the chain. The
// kernel logs packets in a new ruleset's chains from the moment it commits, a little
// before Apply returns and the Syncer notes it; a lookup in the applied ruleset alone
// would then log such a packet without its policies (seen in the lab: the first "would
// deny" line right after a policy change).
func (s *Syncer) rulesetFor(prefix string) *ruleset.Ruleset {
	chain := strings.TrimSuffix(prefix, " ")
	applied := s.Applied()
	if applied != nil && applied.Owners.Chain(chain) != nil {
		return applied
	}
	if next := s.applying.Load(); next != nil && next.Owners.Chain(chain) != nil {
		return next
	}
	return applied
}

// describeDenied turns a logged packet into the key-values of its log line: source and
// destination (the pod's ns/name, or the address when no pod owns it), protocol and
// destination port, the direction and the policies isolating the pod, read from the
// owners of the isolation chain the prefix names in the applied ruleset. ok is false
// for packets that are not ours.
func describeDenied(p nflog.Packet, applied *ruleset.Ruleset, podAt func(netip.Addr) string) (kv []any, ok bool) {
	chain, dir, ok := compiler.IsolationChainOf(p.Prefix)
	if !ok {
		return nil, false
	}
	return describeLogged(p, chain, dir, applied, podAt), true
}

// describeWouldDeny is describeDenied for the packets an audit-deny chain logs: a
// connection that the audited policies the chain's owner names would deny, and that
// passes. ok is false for packets of other chains.
func describeWouldDeny(p nflog.Packet, applied *ruleset.Ruleset, podAt func(netip.Addr) string) (kv []any, ok bool) {
	chain, dir, ok := compiler.AuditDenyChainOf(p.Prefix)
	if !ok {
		return nil, false
	}
	return describeLogged(p, chain, dir, applied, podAt), true
}

// describeLogged is the line of a packet logged by chain: its ends, port, direction,
// the policies of the chain's owner (the compiler gives every log rule its own chain's
// name, audit mode's copies included) and, for a ClusterNetworkPolicy Deny rule's
// chain, the rule its drop names.
func describeLogged(p nflog.Packet, chain string, dir compiler.Direction, applied *ruleset.Ruleset, podAt func(netip.Addr) string) []any {
	who := func(a netip.Addr) string {
		if key := podAt(a); key != "" {
			return key
		}
		return a.String()
	}
	var policies []string
	var rule string
	if applied != nil {
		if co := applied.Owners.Chain(chain); co != nil {
			for _, ref := range co.Policies {
				policies = append(policies, ref.String())
			}
			if n := len(co.Rules); n > 0 && co.Rules[n-1].Cluster != nil {
				rule = co.Rules[n-1].ClusterText(co.Direction)
			}
		}
	}
	kv := []any{"src", who(p.Src), "dst", who(p.Dst), "proto", ruleset.ProtoName(p.Proto)}
	if p.DPort != 0 {
		kv = append(kv, "port", int(p.DPort))
	}
	kv = append(kv, "direction", string(dir), "policies", policies, "chain", chain)
	if rule != "" {
		kv = append(kv, "rule", rule)
	}
	return kv
}
