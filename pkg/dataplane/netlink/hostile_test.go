package netlink

import (
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/internal/npeval/hostile"
	"github.com/nftpolicy/nftpolicy/pkg/compiler"
	"github.com/nftpolicy/nftpolicy/pkg/dataplane"
	"github.com/nftpolicy/nftpolicy/pkg/model"
)

// TestHostileRulesetInKernel applies the largest ruleset of the hostile cluster
// (internal/npeval/hostile: ipBlocks of the whole address space minus 500 excepts per
// family, hundreds of peers and ports, 63-character names truncated into chain names)
// to a throwaway namespace and reads it back: the kernel must take every set, interval
// and name as compiled.
func TestHostileRulesetInKernel(t *testing.T) {
	ns := newNetNS(t)
	cl := hostile.Cluster()
	var biggest *compiler.Result
	for _, node := range []string{"n1", "n2"} {
		res := compiler.Compile(&model.Snapshot{NodeName: node, Pods: cl.Pods, Namespaces: cl.Namespaces, Policies: cl.Policies},
			compiler.Options{Table: DefaultTable, Revocation: true})
		if biggest == nil || res.Ruleset.Stats().Elements > biggest.Ruleset.Stats().Elements {
			biggest = res
		}
	}
	if err := biggest.Ruleset.Validate(); err != nil {
		t.Fatalf("hostile ruleset invalid: %v", err)
	}
	st := biggest.Ruleset.Stats()
	if st.Elements < 2*hostile.ManyExcepts {
		t.Fatalf("hostile ruleset has %d elements; the excepts alone should give %d", st.Elements, 2*hostile.ManyExcepts)
	}
	d := newDataplane(t, ns)
	start := time.Now()
	res := apply(t, d, biggest.Ruleset, dataplane.ApplyOptions{})
	t.Logf("applied %+v in %v (%d ops)", st, time.Since(start), res.Ops)
	requireKernel(t, d, biggest.Ruleset)
}
