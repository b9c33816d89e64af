package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// StopAPIServer kills the cluster's kube-apiserver (SIGKILL, as in a crash) and
// leaves etcd, the certificates and the forwarders into the nodes in place, so that
// StartAPIServer brings back the same API server: same port, same data, same serving
// certificate and client CA (clients and kubeconfigs stay valid). While it is down,
// connections through the node forwarders are refused. SIGKILL rather than envtest's
// SIGTERM: a graceful stop waits for the clients' watches to drain (more than 30 s
// with agents connected), and an outage is what is wanted, not a drain.
func (c *Cluster) StopAPIServer() error {
	if err := c.checkOpen(); err != nil {
		return fmt.Errorf("stop API server: %w", err)
	}
	if c.env == nil || c.env.ControlPlane.APIServer == nil {
		return errors.New("stop API server: the cluster has no control plane")
	}
	start := time.Now()
	// The wrapper script records the PID (startControlPlane); it is the process
	// group leader, as envtest starts it with Setpgid.
	b, err := os.ReadFile(filepath.Join(c.lab.PidDir(), "kube-apiserver.pid"))
	if err != nil {
		return fmt.Errorf("stop API server: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("stop API server: bad PID file %q", b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop API server: kill %d: %w", pid, err)
	}
	// envtest reaps it and notes the exit; its Stop then only tidies up. Until it
	// has noted the exit, Stop would signal a process group that is gone (ESRCH).
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.env.ControlPlane.APIServer.Stop()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("stop API server: %w", err)
		}
		time.Sleep(20 * time.Millisecond) // envtest offers no exit notification to wait on
	}
	c.logf("API server killed (pid %d) in %v", pid, time.Since(start).Round(10*time.Millisecond))
	return nil
}

// StartAPIServer starts the API server stopped by StopAPIServer again with the same
// command line and waits until it reports healthy. The certificates in the lab's
// kube-apiserver directory are reused (envtest creates them only when missing), the
// client CA is the one in memory, and the secure port is the one chosen at the first
// start, so the test client, the agents' kubeconfig and the forwarders work unchanged.
func (c *Cluster) StartAPIServer() error {
	if err := c.checkOpen(); err != nil {
		return fmt.Errorf("start API server: %w", err)
	}
	if c.env == nil || c.env.ControlPlane.APIServer == nil {
		return errors.New("start API server: the cluster has no control plane")
	}
	api := c.env.ControlPlane.APIServer
	before := api.SecureServing.Port
	// startControlPlane closed its handle of the log once the first process had
	// it; the new process appends to the same file.
	logFile, err := os.OpenFile(filepath.Join(c.logDir, "kube-apiserver.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start API server: %w", err)
	}
	defer logFile.Close()
	api.Out, api.Err = logFile, logFile
	start := time.Now()
	if err := api.Start(); err != nil {
		return fmt.Errorf("start API server (log in %s): %w", c.logDir, err)
	}
	if api.SecureServing.Port != before {
		// Nothing would reach it: the forwarders and kubeconfigs name the old port.
		return fmt.Errorf("start API server: came back on port %s, not %s", api.SecureServing.Port, before)
	}
	c.logf("API server started again in %v", time.Since(start).Round(10*time.Millisecond))
	return nil
}
