package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStopTimeout is how long Process.Stop waits after the signal before
// it sends SIGKILL.
const DefaultStopTimeout = 10 * time.Second

// Process is a long-running command started inside a namespace.
type Process struct {
	Name    string
	LogFile string
	PidFile string
	// StopTimeout overrides DefaultStopTimeout for Stop.
	StopTimeout time.Duration

	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed

	stopMu sync.Mutex
}

// StartProcess starts args inside ns ("ip netns exec <ns> args...", which
// execs, so the recorded PID is the command's own) with stdout and stderr
// appended to logFile (discarded if empty). The PID is recorded in
// pidDir/<name>.pid so that Cleanup can kill the process after a crash of the
// test binary. The process runs in its own process group and is killed
// (SIGKILL) if the test binary dies.
func StartProcess(ns *Netns, pidDir, name, logFile string, args ...string) (*Process, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("start %s in %s: no command", name, ns.Name())
	}
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("start %s in %s: invalid name", name, ns.Name())
	}
	absPidDir, err := filepath.Abs(pidDir)
	if err == nil {
		err = os.MkdirAll(absPidDir, 0o755)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: pid dir: %w", name, ns.Name(), err)
	}
	pidFile := filepath.Join(absPidDir, name+".pid")
	if _, err := os.Stat(pidFile); err == nil {
		return nil, fmt.Errorf("start %s in %s: %s exists (name in use?)", name, ns.Name(), pidFile)
	}

	out, err := os.Open(os.DevNull)
	if logFile != "" {
		out.Close()
		out, err = os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: log: %w", name, ns.Name(), err)
	}

	// No context: the lifetime is managed by Stop.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name()}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), pidEnv+"="+pidFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// Pdeathsig fires when the *thread* that forked dies; the
		// goroutine below keeps that thread locked and alive until the
		// process has been reaped.
		Pdeathsig: syscall.SIGKILL,
	}
	p := &Process{Name: name, LogFile: logFile, PidFile: pidFile, cmd: cmd, done: make(chan struct{})}

	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			out.Close()
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns.Name(), err)
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		p.kill()
		<-p.done
		return nil, fmt.Errorf("start %s in %s: %w", name, ns.Name(), err)
	}
	return p, nil
}

// Pid returns the process ID (also its process group ID).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitErr says why a process that should be running is not: its exit error once it
// has exited, an error for a clean exit (status 0) too; nil while it runs.
func (p *Process) ExitErr() error {
	select {
	case <-p.done:
		if p.err == nil {
			return errors.New("exited with status 0")
		}
		return p.err
	default:
		return nil
	}
}

// Err returns the process's exit error (nil for exit status 0) once it has
// exited, nil before.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

func (p *Process) kill() {
	_ = unix.Kill(-p.Pid(), unix.SIGKILL)
}

// Stop sends sig to the process group and waits for the process to exit; if
// it has not exited after StopTimeout, the group is killed with SIGKILL. The
// PID file is removed. Stop returns an error only if the process could not be
// stopped; how it exited is reported by Err. Stopping an exited process is a
// no-op.
func (p *Process) Stop(sig os.Signal) error {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	defer os.Remove(p.PidFile)
	if p.Exited() {
		return nil
	}
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("stop %s: unsupported signal %v", p.Name, sig)
	}
	if err := unix.Kill(-p.Pid(), s); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", p.Name, p.Pid(), err)
	}
	timeout := p.StopTimeout
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	p.kill()
	t.Reset(5 * time.Second)
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("stop %s (pid %d): still running after SIGKILL", p.Name, p.Pid())
	}
}
