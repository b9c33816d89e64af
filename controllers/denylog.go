package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/model"
	"github.com/nftpolicy/nftpolicy/pkg/nflog"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// notePodAddrs records which pod owns each address, for the denied-connection log: the
// listener runs on its own goroutine and must not touch the engine. Called after each
// applied sync, with the sync lock held, only when LogDenied is set.
func (s *Syncer) notePodAddrs() {
	m := map[netip.Addr]string{}
	s.engine.EachPod(func(p *model.Pod) {
		for _, ip := range p.IPs {
			if _, taken := m[ip]; !taken {
				m[ip] = p.Key()
			}
		}
	})
	s.podsByAddr.Store(&m)
}

// RunDenyLog receives the packets the isolation chains log (compiler.Options.LogDenied)
// on nflog group and logs one "denied connection" line per packet, until ctx ends.
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
			var pods map[netip.Addr]string
			if m := s.podsByAddr.Load(); m != nil {
				pods = *m
			}
			if kv, ok := describeDenied(p, s.Applied(), pods); ok {
				log.Info("denied connection", kv...)
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

// describeDenied turns a logged packet into the key-values of its log line: source and
// destination (the pod's ns/name, or the address when no pod owns it), protocol and
// destination port, and the policies isolating the pod, read from the jump rules of
// the isolation chain the prefix names. ok is false for packets that are not ours.
func describeDenied(p nflog.Packet, applied *ruleset.Ruleset, pods map[netip.Addr]string) (kv []any, ok bool) {
	chain, ok := compiler.IsolationChainOf(p.Prefix)
	if !ok {
		return nil, false
	}
	who := func(a netip.Addr) string {
		if key, ok := pods[a]; ok {
			return key
		}
		return a.String()
	}
	var policies []string
	if applied != nil {
		if ch := applied.Chain(chain); ch != nil {
			for _, r := range ch.Rules {
				if r.Verdict.Kind == ruleset.VerdictJump {
					policies = append(policies, r.Comment)
				}
			}
		}
	}
	direction := "ingress"
	if strings.HasPrefix(chain, "isolate-eg-") {
		direction = "egress"
	}
	kv = []any{"src", who(p.Src), "dst", who(p.Dst), "proto", ruleset.ProtoName(p.Proto)}
	if p.DPort != 0 {
		kv = append(kv, "port", int(p.DPort))
	}
	return append(kv, "direction", direction, "policies", policies, "chain", chain), true
}
