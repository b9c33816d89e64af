package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// agentProcessName names node's agent process (and its PID file).
func agentProcessName(node string) string { return "agent-" + node }

// AgentLogFile returns the path of node's agent log (appended across
// restarts).
func (c *Cluster) AgentLogFile(node string) string {
	return filepath.Join(c.logDir, agentProcessName(node)+".log")
}

// AgentLog returns the content of node's agent log ("" if none).
func (c *Cluster) AgentLog(node string) string {
	b, _ := os.ReadFile(c.AgentLogFile(node))
	return string(b)
}

// Agent returns node's agent process, or nil if none was started.
func (c *Cluster) Agent(node string) *Process {
	n := c.Node(node)
	if n == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return n.agent
}

// StartAgent starts the agent in node's namespace
//
//	ip netns exec <node> <agent> --kubeconfig <file> --node-name <node>
//	  --health-probe-bind-address 127.0.0.1:19091 --metrics-bind-address 0
//	  --metrics-secure=false <AgentArgs...>
//
// and waits until its /readyz answers 200 (the first ruleset is in the
// kernel). It fails if the agent is already running. A test that turns metrics on
// (--metrics-bind-address in AgentArgs) reads them in plain HTTP: the endpoint is on
// the loopback of a namespace the lab made, and what is under test is the metrics, not
// their transport (test/privilege tests the secure endpoint).
func (c *Cluster) StartAgent(ctx context.Context, node string) error {
	if c.opts.AgentBinary == "" {
		return fmt.Errorf("start agent on %s: the cluster has no agent binary (ClusterOptions.AgentBinary)", node)
	}
	n := c.Node(node)
	if n == nil {
		return fmt.Errorf("start agent: no node %q", node)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("start agent on %s: cluster is closed", node)
	}
	if n.agent != nil && !n.agent.Exited() {
		c.mu.Unlock()
		return fmt.Errorf("start agent on %s: already running (pid %d)", node, n.agent.Pid())
	}
	n.agent = nil
	c.mu.Unlock()

	args := append([]string{c.opts.AgentBinary,
		"--kubeconfig", c.kubeconfig,
		"--node-name", node,
		"--health-probe-bind-address", AgentHealthAddr,
		"--metrics-bind-address", "0",
		"--metrics-secure=false",
	}, c.opts.AgentArgs...)
	p, err := c.lab.StartProcess(n.NS, agentProcessName(node), c.AgentLogFile(node), args...)
	if err != nil {
		return fmt.Errorf("start agent on %s: %w", node, err)
	}
	c.mu.Lock()
	n.agent = p
	c.mu.Unlock()
	start := time.Now()
	if err := c.waitAgentReady(ctx, n, p); err != nil {
		return fmt.Errorf("start agent on %s: %w; log %s:\n%s", node, err, p.LogFile, tail(c.AgentLog(node), 20))
	}
	c.logf("%s: agent ready (pid %d) in %v", node, p.Pid(), time.Since(start).Round(10*time.Millisecond))
	return nil
}

// waitAgentReady polls the agent's /readyz inside the node namespace.
func (c *Cluster) waitAgentReady(ctx context.Context, n *ClusterNode, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.AgentReadyTimeout)
	defer cancel()
	hc := n.NS.HTTPClient(time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+AgentHealthAddr+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.Done():
			return fmt.Errorf("agent exited before it was ready: %w", p.ExitErr())
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// StopAgent sends sig to node's agent and waits for it to exit (SIGKILL
// after the process's StopTimeout). With SIGTERM the agent leaves its table
// in the kernel (fail closed).
func (c *Cluster) StopAgent(node string, sig os.Signal) error {
	p := c.Agent(node)
	if p == nil {
		return fmt.Errorf("stop agent on %s: no agent", node)
	}
	if err := p.Stop(sig); err != nil {
		return fmt.Errorf("stop agent on %s: %w", node, err)
	}
	return nil
}

// RestartAgent stops node's agent with SIGTERM and starts it again.
func (c *Cluster) RestartAgent(ctx context.Context, node string) error {
	if p := c.Agent(node); p != nil {
		if err := c.StopAgent(node, syscall.SIGTERM); err != nil {
			return err
		}
	}
	return c.StartAgent(ctx, node)
}

// closeAgent stops node's agent and removes its table.
func (c *Cluster) closeAgent(n *ClusterNode) error {
	var errs []error
	c.mu.Lock()
	p := n.agent
	c.mu.Unlock()
	if p != nil {
		errs = append(errs, p.Stop(syscall.SIGTERM))
	}
	if c.opts.AgentBinary != "" {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if _, err := n.NS.Exec(ctx, c.opts.AgentBinary, "cleanup"); err != nil {
			errs = append(errs, fmt.Errorf("agent cleanup on %s: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ClusterPoliciesWatchedLog is what an agent logs once it watches ClusterNetworkPolicies
// (controllers/clusterpolicies.go).
const ClusterPoliciesWatchedLog = "ClusterNetworkPolicies are served; watching them"

// WaitAgentsLog waits until the log of every node's agent contains line.
func (c *Cluster) WaitAgentsLog(ctx context.Context, line string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		missing := ""
		for _, n := range c.Nodes() {
			if !strings.Contains(c.AgentLog(n.Name), line) {
				missing = n.Name
				break
			}
		}
		if missing == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent of %s did not log %q within %v", missing, line, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
