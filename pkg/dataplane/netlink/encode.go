package netlink

import (
	"fmt"
	"math"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink/nfnl"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Lifting IR objects to nf_tables messages: tables, chains and sets (their
// elements are in elements.go, their rules in rules.go).

// keyDatatypes maps IR key types to nft datatypes (their "magic" is what nft needs to
// print the set).
var keyDatatypes = map[ruleset.KeyType]nftables.SetDatatype{
	ruleset.KeyIPv4Addr: nftables.TypeIPAddr,
	ruleset.KeyIPv6Addr: nftables.TypeIP6Addr,
	ruleset.KeyL4Proto:  nftables.TypeInetProto,
	ruleset.KeyPort:     nftables.TypeInetService,
	ruleset.KeyICMPv6:   nftables.TypeICMP6Type,
}

// setKey returns the key datatype magic and the key length. Concatenations pad every
// field to a 32-bit register, single fields are not padded.
func setKey(s *ruleset.Set) (magic, keyLen uint32, err error) {
	types := make([]nftables.SetDatatype, len(s.Key))
	for i, k := range s.Key {
		t, ok := keyDatatypes[k]
		if !ok {
			return 0, 0, fmt.Errorf("set %q: unsupported key type %q", s.Name, k)
		}
		types[i] = t
	}
	if len(types) == 1 {
		return types[0].GetNFTMagic(), types[0].Bytes, nil
	}
	t, err := nftables.ConcatSetType(types...)
	if err != nil {
		return 0, 0, fmt.Errorf("set %q: %w", s.Name, err)
	}
	return t.GetNFTMagic(), t.Bytes, nil
}

func padLen(n int) int { return (n + 3) &^ 3 }

func msgAddTable(table string) (nfnl.Message, error) {
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_TABLE_NAME, table)
	// No NLM_F_EXCL: adding an existing table is a no-op, which is how a full replace
	// makes sure the DELTABLE that follows cannot fail with ENOENT.
	return nfnl.NewMessage(family, unix.NFT_MSG_NEWTABLE, nl.Create, a, "add table inet "+table, nil)
}

func msgDelTable(table string) (nfnl.Message, error) {
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_TABLE_NAME, table)
	return nfnl.NewMessage(family, unix.NFT_MSG_DELTABLE, 0, a, "delete table inet "+table, nil)
}

var hookNums = map[ruleset.Hook]uint32{
	ruleset.HookPrerouting:  unix.NF_INET_PRE_ROUTING,
	ruleset.HookInput:       unix.NF_INET_LOCAL_IN,
	ruleset.HookForward:     unix.NF_INET_FORWARD,
	ruleset.HookOutput:      unix.NF_INET_LOCAL_OUT,
	ruleset.HookPostrouting: unix.NF_INET_POST_ROUTING,
}

func msgAddChain(table string, c *ruleset.Chain) (nfnl.Message, error) {
	what := fmt.Sprintf("add chain %q", c.Name)
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_CHAIN_TABLE, table)
	a.PutString(unix.NFTA_CHAIN_NAME, c.Name)
	if c.Base != nil {
		num, ok := hookNums[c.Base.Hook]
		if !ok {
			return nfnl.Message{}, fmt.Errorf("%s: unknown hook %q", what, c.Base.Hook)
		}
		if c.Base.Priority < math.MinInt32 || c.Base.Priority > math.MaxInt32 {
			return nfnl.Message{}, fmt.Errorf("%s: priority %d out of range", what, c.Base.Priority)
		}
		a.Nested(unix.NFTA_CHAIN_HOOK, func() {
			a.PutU32(unix.NFTA_HOOK_HOOKNUM, num)
			a.PutU32(unix.NFTA_HOOK_PRIORITY, uint32(int32(c.Base.Priority)))
		})
		a.PutU32(unix.NFTA_CHAIN_POLICY, nfAccept)
		a.PutString(unix.NFTA_CHAIN_TYPE, "filter")
	}
	if c.Comment != "" {
		a.Put(nftaChainUserdata, userdata.AppendString(nil, udataChainComment, c.Comment))
	}
	return nfnl.NewMessage(family, unix.NFT_MSG_NEWCHAIN, nl.Create, a, what, nil)
}

// msgNamed is a request that names one object of the table and nothing else.
func msgNamed(typ int, tableAttr, nameAttr uint16, table, name, what string) (nfnl.Message, error) {
	a := &nfnl.Attrs{}
	a.PutString(tableAttr, table)
	a.PutString(nameAttr, name)
	return nfnl.NewMessage(family, typ, 0, a, fmt.Sprintf("%s %q", what, name), nil)
}

func msgDelChain(table, name string) (nfnl.Message, error) {
	return msgNamed(unix.NFT_MSG_DELCHAIN, unix.NFTA_CHAIN_TABLE, unix.NFTA_CHAIN_NAME, table, name, "delete chain")
}

// msgFlushChain deletes all rules of a chain (DELRULE without a handle).
func msgFlushChain(table, name string) (nfnl.Message, error) {
	return msgNamed(unix.NFT_MSG_DELRULE, unix.NFTA_RULE_TABLE, unix.NFTA_RULE_CHAIN, table, name, "flush chain")
}

// setFlags are the kernel set flags of an IR set. NFT_SET_CONCAT goes only with interval
// concatenations (the pipapo backend); that is what nft does, and the kernel accepts
// KEY_END attributes only on such sets.
func setFlags(s *ruleset.Set) uint32 {
	var f uint32
	if s.Interval {
		f |= unix.NFT_SET_INTERVAL
		if len(s.Key) > 1 {
			f |= nftSetConcat
		}
	}
	if s.IsMap {
		f |= unix.NFT_SET_MAP
	}
	return f
}

func msgAddSet(table string, s *ruleset.Set, id uint32) (nfnl.Message, error) {
	what := fmt.Sprintf("add set %q", s.Name)
	magic, keyLen, err := setKey(s)
	if err != nil {
		return nfnl.Message{}, err
	}
	a := &nfnl.Attrs{}
	a.PutString(unix.NFTA_SET_TABLE, table)
	a.PutString(unix.NFTA_SET_NAME, s.Name)
	a.PutU32(unix.NFTA_SET_FLAGS, setFlags(s))
	a.PutU32(unix.NFTA_SET_KEY_TYPE, magic)
	a.PutU32(unix.NFTA_SET_KEY_LEN, keyLen)
	if s.IsMap {
		a.PutU32(unix.NFTA_SET_DATA_TYPE, nftDataVerdict)
	}
	if id != 0 {
		a.PutU32(unix.NFTA_SET_ID, id)
	}
	if setFlags(s)&nftSetConcat != 0 {
		// The field lengths of an interval concatenation (unpadded); the kernel needs
		// them for the pipapo backend. It refuses them (EINVAL) without
		// NFT_SET_CONCAT, i.e. on a plain concatenation, which is a hash.
		a.Nested(unix.NFTA_SET_DESC, func() {
			a.Nested(nftaSetDescConcat, func() {
				for _, k := range s.Key {
					a.Nested(unix.NFTA_LIST_ELEM, func() { a.PutU32(nftaSetFieldLen, uint32(k.Len())) })
				}
			})
		})
	}
	ud := userdata.AppendUint32(nil, udataSetKeyOrder, byteorderBig)
	if s.Comment != "" {
		ud = userdata.AppendString(ud, udataSetComment, s.Comment)
	}
	a.Put(unix.NFTA_SET_USERDATA, ud)
	return nfnl.NewMessage(family, unix.NFT_MSG_NEWSET, nl.Create, a, what, nil)
}

func msgDelSet(table, name string) (nfnl.Message, error) {
	return msgNamed(unix.NFT_MSG_DELSET, unix.NFTA_SET_TABLE, unix.NFTA_SET_NAME, table, name, "delete set")
}
