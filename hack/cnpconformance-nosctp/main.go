// Command cnpconformance-nosctp writes test/cnpconformance/nosctp: the tests of the
// ClusterNetworkPolicy conformance suite (sigs.k8s.io/network-policy-api at the version
// in go.mod, read from the module this command is built with) that probe SCTP among
// TCP and UDP, without their SCTP probes, for kernels without SCTP (see
// test/cnpconformance/nosctpgen and docs/conformance.md). Run it after a bump of the
// module:
//
//	go run ./hack/cnpconformance-nosctp   # or: make cnp-conformance-generate
//
// It replaces every file of the output directory that it generated before (files
// whose first line says so) and leaves the others (doc.go) alone.
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/nftpolicy/nftpolicy/test/cnpconformance/nosctpgen"
)

func main() {
	out := flag.String("o", "test/cnpconformance/nosctp", "the directory to write the package into")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "cnpconformance-nosctp:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	src, err := nosctpgen.ModuleSource()
	if err != nil {
		return err
	}
	res, err := nosctpgen.Generate(src)
	if err != nil {
		return err
	}
	if err := nosctpgen.Write(dir, res); err != nil {
		return err
	}
	names := make([]string, 0, len(res.Files))
	for name := range res.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Printf("%s %s: %d tests; %d rewritten without their SCTP probes, %d SCTP-only (skipped without SCTP); wrote %s: %s\n",
		src.Module, src.Version, len(res.Tests), len(res.Removed), len(res.SCTPOnly), dir, strings.Join(names, " "))
	return nil
}
