package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/nftpolicy/nftpolicy/pkg/manifest"
	"github.com/nftpolicy/nftpolicy/pkg/reach"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// list collects a repeatable flag whose values may also be comma-separated.
type list []string

func (l *list) String() string { return strings.Join(*l, ",") }
func (l *list) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// runReach is `nftpolicy reach`: the matrix of one state (manifests or the cluster),
// or with --after the cells that change between two states.
func runReach(args []string, stdin io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("reach", flag.ContinueOnError)
	var c common
	c.register(fs)
	var before, after, namespaces, ports, addrs list
	fs.Var(&before, "before", "The state before: manifest file, directory or -; repeatable or comma-separated (default with --after: the cluster).")
	fs.Var(&after, "after", "The state after (e.g. the pull request's manifests): print only the cells that change; exit 1 when a flow becomes denied. Without --before: the cluster with these manifests applied.")
	fs.Var(&namespaces, "namespace", "Only pods of this namespace as sources and destinations; repeatable or comma-separated (all by default).")
	fs.Var(&namespaces, "n", "Short for --namespace.")
	fs.Var(&ports, "port", "Destination port, 80/TCP; repeatable or comma-separated (default: every container port the destination pods declare, else 80/TCP).")
	fs.Var(&addrs, "to-addr", "Also judge connections to this address (e.g. 169.254.169.254); repeatable or comma-separated.")
	family := fs.String("family", "ipv4", "Address family: ipv4, ipv6 or both.")
	ipv6 := fs.Bool("ipv6", false, "Short for --family ipv6.")
	output := fs.String("o", "text", "Output: text, json or html.")
	expand := fs.Bool("expand", false, "List the pods of mixed blocks (text) or the cells of every block (json).")
	kubeconfig := fs.String("kubeconfig", "", "Read the cluster's state through this kubeconfig (default: $KUBECONFIG or ~/.kube/config when no -f or --before is given).")
	if err := parse(fs, args); err != nil {
		return err
	}
	opts := reach.Options{Namespaces: namespaces, Compiler: c.options()}
	for _, p := range ports {
		pt, err := reach.ParsePort(p)
		if err != nil {
			return fmt.Errorf("reach: --port: %w", err)
		}
		opts.Ports = append(opts.Ports, pt)
	}
	var err error
	if opts.Addrs, err = reach.ParseAddrs(addrs); err != nil {
		return fmt.Errorf("reach: --to-addr: %w", err)
	}
	if *ipv6 {
		*family = "ipv6"
	}
	switch strings.ToLower(*family) {
	case "ipv4", "4":
		opts.Families = []ruleset.Family{ruleset.IPv4}
	case "ipv6", "6":
		opts.Families = []ruleset.Family{ruleset.IPv6}
	case "both", "dual":
		opts.Families = []ruleset.Family{ruleset.IPv4, ruleset.IPv6}
	default:
		return fmt.Errorf("reach: --family %q: want ipv4, ipv6 or both", *family)
	}
	switch *output {
	case "text", "json", "html":
	default:
		return fmt.Errorf("reach: -o %q: want text, json or html", *output)
	}
	switch {
	case len(before) > 0 && len(after) == 0:
		return errors.New("reach: --before needs --after")
	case len(after) > 0 && len(c.files) > 0:
		return errors.New("reach: -f and --before/--after exclude each other")
	}
	load := func(side string, paths []string) (*manifest.Objects, error) {
		if len(paths) == 0 {
			objs, err := fromCluster(*kubeconfig)
			if err != nil {
				return nil, fmt.Errorf("reach: %s: the cluster: %w", side, err)
			}
			return objs, nil
		}
		objs, err := manifest.Load(paths, stdin)
		if err != nil {
			return nil, fmt.Errorf("reach: %s: %w", side, err)
		}
		return objs, nil
	}

	if len(after) == 0 {
		objs, err := load("state", c.files)
		if err != nil {
			return err
		}
		m, err := reach.Compute(objs, opts)
		if err != nil {
			return fmt.Errorf("reach: %w", err)
		}
		switch *output {
		case "json":
			err = m.WriteJSON(out, *expand)
		case "html":
			err = m.WriteHTML(out)
		default:
			err = m.WriteText(out, *expand)
		}
		if err != nil {
			return fmt.Errorf("reach: write: %w", err)
		}
		return nil
	}

	b, err := load("--before", before)
	if err != nil {
		return err
	}
	a, err := load("--after", after)
	if err != nil {
		return err
	}
	if len(before) == 0 {
		// Against the cluster, --after is a change to it (what `kubectl apply -f` of a
		// pull request would make of it): a repository of policies and Deployments
		// has no pods of its own, and the cluster's pods are what it acts on.
		a = b.Apply(a)
	}
	d, err := reach.Diff(b, a, opts)
	if err != nil {
		return fmt.Errorf("reach: %w", err)
	}
	switch *output {
	case "json":
		err = d.WriteJSON(out)
	case "html":
		err = d.WriteHTML(out)
	default:
		err = d.WriteText(out)
	}
	if err != nil {
		return fmt.Errorf("reach: write: %w", err)
	}
	if d.Revoked > 0 {
		return errFound
	}
	return nil
}
