// Command pause is the pod sandbox image of the conformance cluster
// (registry.k8s.io/pause, which cannot be pulled here): it holds the pod's
// namespaces open, reaps orphaned children as PID 1 must, and exits on SIGTERM or
// SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
