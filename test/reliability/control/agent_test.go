package control

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nftpolicy/nftpolicy/test/lab"
)

// agentMetricsAddr is where the agents serve /metrics inside their node namespace.
const agentMetricsAddr = "127.0.0.1:19090"

// resyncPeriod is the agents' --resync-period: the drift tests wait for repairs
// in multiples of it.
const resyncPeriod = 2 * time.Second

// agentSeq numbers agent processes: each start has its own PID file and log.
var agentSeq atomic.Int64

// agentRun is one agent process in a node namespace, started by the tests (not by
// the lab) so that a test can choose the binary, the signal and the moment.
type agentRun struct {
	node    *lab.ClusterNode
	bin     string
	proc    *lab.Process
	started time.Time
	http    *http.Client
}

// startAgent starts bin in node's namespace and returns at once (see waitReady).
func startAgent(c *lab.Cluster, node *lab.ClusterNode, bin string) (*agentRun, error) {
	name := fmt.Sprintf("rel-agent-%s-%d", node.Name, agentSeq.Add(1))
	args := []string{bin,
		"--kubeconfig", c.Kubeconfig(), "--node-name", node.Name,
		"--health-probe-bind-address", lab.AgentHealthAddr,
		"--metrics-bind-address", agentMetricsAddr,
		// Plain HTTP on the namespace's loopback: these tests read the metrics, and
		// test/privilege tests the secure endpoint.
		"--metrics-secure=false",
		"--resync-period", resyncPeriod.String(),
	}
	a := &agentRun{node: node, bin: bin, http: node.NS.HTTPClient(5 * time.Second)}
	a.started = time.Now()
	p, err := c.Lab().StartProcess(node.NS, name, filepath.Join(c.LogDir(), name+".log"), args...)
	if err != nil {
		return nil, fmt.Errorf("start agent on %s: %w", node.Name, err)
	}
	a.proc = p
	return a, nil
}

// readyz returns the agent's /readyz status code.
func (a *agentRun) readyz(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+lab.AgentHealthAddr+"/readyz", nil)
	if err != nil {
		return 0, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("readyz of agent on %s: %w", a.node.Name, err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// waitReady polls /readyz until 200; it fails at once if the agent exits.
func (a *agentRun) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if code, err := a.readyz(ctx); err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-a.proc.Done():
			return fmt.Errorf("agent on %s exited before it was ready: %w; log:\n%s", a.node.Name, a.proc.ExitErr(), a.logTail(20))
		case <-ctx.Done():
			return fmt.Errorf("agent on %s not ready: %w; log:\n%s", a.node.Name, ctx.Err(), a.logTail(20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (a *agentRun) logTail(n int) string {
	b, _ := os.ReadFile(a.proc.LogFile)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop sends sig and waits for the exit (SIGKILL after the lab's stop timeout).
func (a *agentRun) stop(sig os.Signal) error {
	if err := a.proc.Stop(sig); err != nil {
		return fmt.Errorf("stop agent on %s: %w", a.node.Name, err)
	}
	return nil
}

// metric returns the value of the sample whose name and labels are exactly series
// (e.g. `nftpolicy_sync_duration_seconds_count{phase="full"}`); a series not exposed
// yet reads as 0 (counters of a label value appear on first use).
func (a *agentRun) metric(ctx context.Context, series string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentMetricsAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape agent on %s: %w", a.node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scrape agent on %s: %s", a.node.Name, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err != nil {
				return 0, fmt.Errorf("metric %s: %w", series, err)
			}
			return v, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("scrape agent on %s: %w", a.node.Name, err)
	}
	return 0, nil
}

// copyBinary copies the agent binary to dir (another path for the roll test).
func copyBinary(src, dir string) (string, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "nftpolicy-agent-rolled")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		return "", err
	}
	return dst, nil
}

// firstSyncLine is the agent's own log line of its first apply (its timing), or "".
func (a *agentRun) firstSyncLine() string {
	b, _ := os.ReadFile(a.proc.LogFile)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "first ruleset applied") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
