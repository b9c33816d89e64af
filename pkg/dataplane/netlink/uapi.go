package netlink

import (
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The nf_tables vocabulary of the dataplane: the address family of its table, the
// kernel constants it needs, and the user data TLV types it writes.

const family = unix.NFPROTO_INET

// nf_tables constants that golang.org/x/sys/unix (or google/nftables) does not define,
// or defines under a misleading name. Values from
// include/uapi/linux/netfilter/nf_tables.h.
const (
	nftaChainFlags    = 10 // NFTA_CHAIN_FLAGS
	nftaChainUserdata = 12 // NFTA_CHAIN_USERDATA (kernel >= 5.10)
	nftaSetDescConcat = 2  // NFTA_SET_DESC_CONCAT
	nftaSetFieldLen   = 1  // NFTA_SET_FIELD_LEN
	nftaSetElemKeyEnd = 10 // NFTA_SET_ELEM_KEY_END
	nftaRuleUserdata  = unix.NFTA_RULE_USERDATA
	nftSetConcat      = 0x80 // NFT_SET_CONCAT
	nftDataVerdict    = 0xffffff00
	nftChainBinding   = 0x4 // NFT_CHAIN_BINDING
	nftaHookDevs      = 4   // NFTA_HOOK_DEVS
	nfAccept          = 1   // NF_ACCEPT
)

// Userdata TLV types. Comments use libnftnl's numbering so that `nft list` shows them.
const (
	udataRuleComment  = userdata.TypeComment                  // NFTNL_UDATA_RULE_COMMENT
	udataChainComment = 0                                     // NFTNL_UDATA_CHAIN_COMMENT
	udataSetKeyOrder  = userdata.NFTNL_UDATA_SET_KEYBYTEORDER // NFTNL_UDATA_SET_KEYBYTEORDER
	udataSetComment   = userdata.NFTNL_UDATA_SET_COMMENT      // NFTNL_UDATA_SET_COMMENT
	udataElemFlags    = userdata.NFTNL_UDATA_SET_ELEM_FLAGS   // NFTNL_UDATA_SET_ELEM_FLAGS
	udataElemOpen     = 1                                     // NFTNL_SET_ELEM_F_INTERVAL_OPEN
	byteorderBig      = 2                                     // BYTEORDER_BIG_ENDIAN in nft
)
