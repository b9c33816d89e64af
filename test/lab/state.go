package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// stateFile, in the lab's directory, describes a running cluster to other
// processes (`nftpolicy-lab probe`).
const stateFile = "cluster.json"

// ClusterState is what a running cluster publishes about itself.
type ClusterState struct {
	Prefix     string         `json:"prefix"`
	Topology   Topology       `json:"topology"`
	Kubeconfig string         `json:"kubeconfig"`
	LogDir     string         `json:"logDir"`
	Nodes      []NodeState    `json:"nodes"`
	Pods       []PodState     `json:"pods"`
	Services   []ServiceState `json:"services"`
}

// NodeState describes a node.
type NodeState struct {
	Name  string       `json:"name"`
	Netns string       `json:"netns"`
	IPs   []netip.Addr `json:"ips"`
}

// PodState describes a pod with a network presence.
type PodState struct {
	Key   string       `json:"key"` // ns/name
	Node  string       `json:"node"`
	Netns string       `json:"netns"` // the node's for host-network pods
	IPs   []netip.Addr `json:"ips"`
}

// ServiceState describes a Service.
type ServiceState struct {
	Key        string       `json:"key"`
	ClusterIPs []netip.Addr `json:"clusterIPs"`
	Ports      []int32      `json:"ports"`
}

// State returns the cluster's current description.
func (c *Cluster) State() *ClusterState {
	st := &ClusterState{Prefix: c.Prefix(), Topology: c.opts.Topology, Kubeconfig: c.kubeconfig, LogDir: c.logDir}
	for _, n := range c.nodes {
		st.Nodes = append(st.Nodes, NodeState{Name: n.Name, Netns: n.NS.Name(), IPs: n.addrs()})
	}
	for _, p := range c.Pods() {
		if p.NS != nil {
			st.Pods = append(st.Pods, PodState{Key: p.Key(), Node: p.Node.Name, Netns: p.NS.Name(), IPs: p.IPs()})
		}
	}
	for _, s := range c.Services() {
		ss := ServiceState{Key: s.Key(), ClusterIPs: s.ClusterIPs}
		for _, sp := range s.Ports {
			ss.Ports = append(ss.Ports, sp.Port)
		}
		st.Services = append(st.Services, ss)
	}
	return st
}

// saveState writes State to the lab's directory, replacing the file
// atomically.
func (c *Cluster) saveState() error {
	b, err := json.MarshalIndent(c.State(), "", "  ")
	if err != nil {
		return fmt.Errorf("save cluster state: %w", err)
	}
	path := filepath.Join(c.lab.Dir(), stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("save cluster state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save cluster state: %w", err)
	}
	return nil
}

// LoadClusterState reads the state of the live cluster with prefix in
// stateDir (DefaultStateDir if empty); an empty prefix picks the only live
// cluster.
func LoadClusterState(stateDir, prefix string) (*ClusterState, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	if prefix == "" {
		live, err := LiveLabs(stateDir)
		if err != nil {
			return nil, err
		}
		var clusters []string
		for _, l := range live {
			if _, err := os.Stat(filepath.Join(stateDir, l.Prefix, stateFile)); err == nil {
				clusters = append(clusters, l.Prefix)
			}
		}
		switch len(clusters) {
		case 0:
			return nil, fmt.Errorf("no running lab cluster in %s (start one with `nftpolicy-lab up`)", stateDir)
		case 1:
			prefix = clusters[0]
		default:
			return nil, fmt.Errorf("several running lab clusters (%s): choose one", strings.Join(clusters, ", "))
		}
	}
	b, err := os.ReadFile(filepath.Join(stateDir, prefix, stateFile))
	if err != nil {
		return nil, fmt.Errorf("load cluster state: %w", err)
	}
	var st ClusterState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("load cluster state %s: %w", prefix, err)
	}
	return &st, nil
}

// Pod returns the pod with key ns/name, or nil.
func (s *ClusterState) Pod(key string) *PodState {
	i := slices.IndexFunc(s.Pods, func(p PodState) bool { return p.Key == key })
	if i < 0 {
		return nil
	}
	return &s.Pods[i]
}

// Addr returns the pod's address of family f (invalid if none).
func (p *PodState) Addr(f Family) netip.Addr {
	for _, a := range p.IPs {
		if (f == IPv6) == a.Is6() {
			return a
		}
	}
	return netip.Addr{}
}

// ProbeMatrix probes proto/port over family f between all pods of the
// state, from outside the process that owns the cluster.
func (s *ClusterState) ProbeMatrix(ctx context.Context, f Family, proto string, port int, opts ProbeOptions) (*Matrix, error) {
	if len(s.Pods) == 0 {
		return nil, errors.New("the cluster has no pods")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultClusterProbeTimeout
	}
	var cases []Case
	for _, from := range s.Pods {
		ns, err := OpenNetns(from.Netns)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		for _, to := range s.Pods {
			a := to.Addr(f)
			if !a.IsValid() {
				return nil, fmt.Errorf("pod %s has no %s address", to.Key, f)
			}
			cases = append(cases, Case{FromName: from.Key, From: ns, ToName: to.Key,
				To: netip.AddrPortFrom(a, uint16(port)), Proto: proto, ExpectReply: to.Key})
		}
	}
	opts.Parallelism = len(cases)
	results, err := ProbeCases(ctx, cases, opts)
	return MatrixFromResults(fmt.Sprintf("%s/%d %s", proto, port, f), cases, results), err
}

// Probe probes to from pod from (a key) of the state.
func (s *ClusterState) Probe(ctx context.Context, from string, to netip.AddrPort, proto string, opts ProbeOptions) (ProbeResult, error) {
	p := s.Pod(from)
	if p == nil {
		return ProbeResult{}, fmt.Errorf("no pod %s", from)
	}
	ns, err := OpenNetns(p.Netns)
	if err != nil {
		return ProbeResult{}, err
	}
	defer ns.Close()
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultClusterProbeTimeout
	}
	return ProbeDetail(ctx, ns, to, proto, opts.Timeout)
}
