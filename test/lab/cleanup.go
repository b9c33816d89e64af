package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPrefixBase starts every prefix made by NewPrefix.
const DefaultPrefixBase = "npt-"

// DefaultStateDir holds one lock file and one directory (PID files) per live
// lab. It is on tmpfs, like /run/netns, so it goes away on reboot together
// with the namespaces it describes.
const DefaultStateDir = "/run/nftpolicy-lab"

// pidEnv marks processes started by StartProcess with the absolute path of
// their PID file, so that cleanup never kills a process that merely reused a
// recorded PID.
const pidEnv = "NFTPOLICY_LAB_PIDFILE"

var validPrefix = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// NewPrefix returns a fresh random prefix of the form "npt-xxxx-".
func NewPrefix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return DefaultPrefixBase + string(b) + "-"
}

// Cleanup removes what a lab with the given prefix left behind: it kills the
// processes recorded in pidDir (if not empty), kills every process still
// inside a namespace whose name starts with prefix, and deletes those
// namespaces. It is safe to call for a prefix that has nothing left.
func Cleanup(prefix, pidDir string) error {
	if !validPrefix.MatchString(prefix) {
		return fmt.Errorf("cleanup: refusing invalid or empty prefix %q", prefix)
	}
	var errs []error
	if pidDir != "" {
		errs = append(errs, killRecorded(pidDir))
	}
	names, err := ListNetns(prefix)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	for _, name := range names {
		// Processes inside a namespace we created are ours by construction.
		out, err := run(ctx, "ip", "netns", "pids", name)
		if err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", name, err))
		}
		for _, f := range strings.Fields(string(out)) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 1 || pid == os.Getpid() {
				continue
			}
			if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("cleanup %s: kill %d: %w", name, pid, err))
			}
		}
		if _, err := run(ctx, "ip", "netns", "del", name); err != nil {
			if _, serr := os.Stat(filepath.Join(NetnsDir, name)); !errors.Is(serr, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("cleanup: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// killRecorded SIGKILLs the process group of every process recorded in a
// *.pid file in pidDir that still carries our marker, and removes the files.
func killRecorded(pidDir string) error {
	files, err := filepath.Glob(filepath.Join(pidDir, "*.pid"))
	if err != nil {
		return fmt.Errorf("cleanup pid dir %s: %w", pidDir, err)
	}
	var errs []error
	for _, f := range files {
		abs, _ := filepath.Abs(f)
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("cleanup: %w", err))
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err == nil && pid > 1 && hasMarker(pid, abs) {
			// StartProcess puts each process in its own process group.
			if err := unix.Kill(-pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("cleanup: kill process group %d (%s): %w", pid, f, err))
			}
			_ = unix.Kill(pid, unix.SIGKILL) // best effort; the group kill above covers it
			if !waitGone(pid, 5*time.Second) {
				errs = append(errs, fmt.Errorf("cleanup: process %d (%s) still alive after SIGKILL", pid, f))
			}
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cleanup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// hasMarker reports whether process pid carries pidEnv=pidFile in its
// environment.
func hasMarker(pid int, pidFile string) bool {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	want := []byte(pidEnv + "=" + pidFile)
	for _, kv := range bytes.Split(env, []byte{0}) {
		if bytes.Equal(kv, want) {
			return true
		}
	}
	return false
}

// waitGone polls until pid no longer exists or is a zombie.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// Field 3 (state) follows the parenthesised command name.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CleanupStale cleans up after labs that died without Close: every lab
// registered in stateDir (DefaultStateDir if empty) whose lock is no longer
// held by a live process is removed with Cleanup. Live labs, also those of
// concurrently running test binaries, are left alone.
func CleanupStale(stateDir string) error {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	locks, err := filepath.Glob(filepath.Join(stateDir, "*.lock"))
	if err != nil {
		return fmt.Errorf("cleanup stale labs in %s: %w", stateDir, err)
	}
	var errs []error
	for _, lockPath := range locks {
		prefix := strings.TrimSuffix(filepath.Base(lockPath), ".lock")
		f, err := tryLock(lockPath, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if f == nil {
			continue // held by a live lab
		}
		dir := filepath.Join(stateDir, prefix)
		err = Cleanup(prefix, filepath.Join(dir, "pids"))
		if err == nil {
			err = os.RemoveAll(dir)
		}
		if err == nil {
			err = os.Remove(lockPath)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("cleanup stale lab %s: %w", prefix, err))
		}
		f.Close()
	}
	return errors.Join(errs...)
}

// tryLock opens (creating it if create is set) and exclusively flocks
// lockPath without blocking. It returns (nil, nil) when another process holds
// the lock or the file vanished. The returned file is the current lock file
// (it is re-checked after locking, so a concurrent remove cannot trick us).
func tryLock(lockPath string, create bool) (*os.File, error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	for {
		f, err := os.OpenFile(lockPath, flags, 0o644)
		if errors.Is(err, os.ErrNotExist) && !create {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		// The holder removes the file before unlocking; make sure we locked
		// the file that is still at lockPath.
		var fst, pst unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		err = unix.Stat(lockPath, &pst)
		if err == nil && fst.Ino == pst.Ino && fst.Dev == pst.Dev {
			return f, nil
		}
		f.Close()
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if !create {
			return nil, nil
		}
	}
}

// ownerFile, in a lab's directory, holds the PID of the process that owns the
// lab (the one holding its lock).
const ownerFile = "owner.pid"

// generatedPrefix matches the prefixes NewPrefix makes, at the start of a
// namespace name.
var generatedPrefix = regexp.MustCompile(`^` + regexp.QuoteMeta(DefaultPrefixBase) + `[a-z0-9]{4}-`)

// LiveLab is a lab whose owner still holds its lock.
type LiveLab struct {
	Prefix   string
	StateDir string
	// OwnerPID is the owning process (0 if unknown).
	OwnerPID int
}

// LiveLabs lists the labs registered in stateDir (DefaultStateDir if empty)
// whose lock is held by a live process.
func LiveLabs(stateDir string) ([]LiveLab, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	locks, err := filepath.Glob(filepath.Join(stateDir, "*.lock"))
	if err != nil {
		return nil, fmt.Errorf("list live labs in %s: %w", stateDir, err)
	}
	var live []LiveLab
	for _, lockPath := range locks {
		if f, err := tryLock(lockPath, false); err != nil || f != nil {
			if f != nil {
				f.Close() // not held: a dead lab, CleanupStale's business
			}
			continue
		}
		prefix := strings.TrimSuffix(filepath.Base(lockPath), ".lock")
		ll := LiveLab{Prefix: prefix, StateDir: stateDir}
		if b, err := os.ReadFile(filepath.Join(stateDir, prefix, ownerFile)); err == nil {
			ll.OwnerPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		live = append(live, ll)
	}
	return live, nil
}

// CleanupAll removes every leftover of dead labs on this machine: the labs
// registered in stateDir whose owner died (CleanupStale: recorded processes,
// namespaces, state), and namespaces with a generated prefix
// (DefaultPrefixBase) that belong to no live lab in stateDir. Live labs are
// left alone and returned.
func CleanupAll(stateDir string) ([]LiveLab, error) {
	errs := []error{CleanupStale(stateDir)}
	live, err := LiveLabs(stateDir)
	if err != nil {
		return nil, errors.Join(append(errs, err)...)
	}
	names, err := ListNetns(DefaultPrefixBase)
	if err != nil {
		return live, errors.Join(append(errs, err)...)
	}
	orphans := map[string]bool{}
	for _, name := range names {
		prefix := generatedPrefix.FindString(name)
		if prefix == "" || slices.ContainsFunc(live, func(l LiveLab) bool { return l.Prefix == prefix }) {
			continue
		}
		orphans[prefix] = true
	}
	for prefix := range orphans {
		errs = append(errs, Cleanup(prefix, ""))
	}
	return live, errors.Join(errs...)
}

// StopLiveLabs asks the owners of live labs to stop (SIGTERM; an owner such
// as `nftpolicy-lab up` then tears its lab down) and waits until their locks
// are released or timeout has passed.
func StopLiveLabs(live []LiveLab, timeout time.Duration) error {
	var errs []error
	for _, l := range live {
		if l.OwnerPID <= 1 || l.OwnerPID == os.Getpid() {
			errs = append(errs, fmt.Errorf("stop live lab %s: owner unknown", l.Prefix))
			continue
		}
		if err := unix.Kill(l.OwnerPID, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("stop live lab %s: signal owner %d: %w", l.Prefix, l.OwnerPID, err))
		}
	}
	deadline := time.Now().Add(timeout)
	for _, l := range live {
		lockPath := filepath.Join(l.StateDir, l.Prefix+".lock")
		for {
			f, err := tryLock(lockPath, false)
			if f != nil {
				f.Close()
			}
			if err != nil || f != nil {
				break // released (the owner died or closed the lab)
			}
			if _, serr := os.Stat(lockPath); errors.Is(serr, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("stop live lab %s: owner %d still holds it after %v", l.Prefix, l.OwnerPID, timeout))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}
