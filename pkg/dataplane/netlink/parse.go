package netlink

import (
	"encoding/binary"
	"syscall"

	"github.com/google/nftables/userdata"
	nl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/pkg/dataplane/netlink/nfnl"
	"github.com/nftpolicy/nftpolicy/pkg/ruleset"
)

// Wire parsing: the attributes of the nf_tables objects a dump returns, into raw*
// values, before anything is lifted to the IR.

// The raw* types hold what the kernel dumps, before it is turned into the IR.

type rawTable struct {
	name  string
	flags uint32
}

type rawSet struct {
	name, table                      string
	flags, keyType, keyLen, dataType uint32
	hasDataType                      bool
	fieldLens                        []uint32
	comment                          string
}

type rawElem struct {
	key, keyEnd []byte
	flags       uint32
	verdict     *ruleset.Verdict
	hasData     bool
}

type rawChain struct {
	name, table, typ string
	hasHook          bool
	hooknum          uint32
	prio             int32
	dev              bool
	policy           *uint32
	flags            uint32
	comment          string
}

type rawExpr struct {
	name string
	data []byte
}

type rawRule struct {
	table, chain string
	exprs        []rawExpr
	udata        []byte
}

func parseTable(m syscall.NetlinkMessage) (rawTable, error) {
	var t rawTable
	ad, err := nfnl.MessageDecoder(m)
	if err != nil {
		return t, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TABLE_NAME:
			t.name = ad.String()
		case unix.NFTA_TABLE_FLAGS:
			t.flags = ad.Uint32()
		}
	}
	return t, ad.Err()
}

func parseSet(m syscall.NetlinkMessage) (rawSet, error) {
	var s rawSet
	ad, err := nfnl.MessageDecoder(m)
	if err != nil {
		return s, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_TABLE:
			s.table = ad.String()
		case unix.NFTA_SET_NAME:
			s.name = ad.String()
		case unix.NFTA_SET_FLAGS:
			s.flags = ad.Uint32()
		case unix.NFTA_SET_KEY_TYPE:
			s.keyType = ad.Uint32()
		case unix.NFTA_SET_KEY_LEN:
			s.keyLen = ad.Uint32()
		case unix.NFTA_SET_DATA_TYPE:
			s.dataType = ad.Uint32()
			s.hasDataType = true
		case unix.NFTA_SET_DESC:
			ad.Nested(func(nad *nl.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() != nftaSetDescConcat {
						continue
					}
					nad.Nested(func(cad *nl.AttributeDecoder) error {
						for cad.Next() {
							cad.Nested(func(fad *nl.AttributeDecoder) error {
								fad.ByteOrder = binary.BigEndian
								for fad.Next() {
									if fad.Type() == nftaSetFieldLen {
										s.fieldLens = append(s.fieldLens, fad.Uint32())
									}
								}
								return nil
							})
						}
						return nil
					})
				}
				return nil
			})
		case unix.NFTA_SET_USERDATA:
			if c, ok := userdata.GetString(ad.Bytes(), udataSetComment); ok {
				s.comment = c
			}
		}
	}
	return s, ad.Err()
}

// dataValue extracts NFTA_DATA_VALUE from a nested data attribute.
func dataValue(b []byte) []byte {
	ad, err := nfnl.NewDecoder(b)
	if err != nil {
		return nil
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_DATA_VALUE {
			return ad.Bytes()
		}
	}
	return nil
}

// parseVerdictData decodes NFTA_DATA_VERDICT { CODE, CHAIN }.
func parseVerdictData(b []byte) *ruleset.Verdict {
	ad, err := nfnl.NewDecoder(b)
	if err != nil {
		return nil
	}
	for ad.Next() {
		if ad.Type() != unix.NFTA_DATA_VERDICT {
			continue
		}
		v := &ruleset.Verdict{}
		ad.Nested(func(vad *nl.AttributeDecoder) error {
			vad.ByteOrder = binary.BigEndian
			for vad.Next() {
				switch vad.Type() {
				case unix.NFTA_VERDICT_CODE:
					v.Kind = verdictKind(int32(vad.Uint32()))
				case unix.NFTA_VERDICT_CHAIN:
					v.Chain = vad.String()
				}
			}
			return nil
		})
		return v
	}
	return nil
}

func parseElems(m syscall.NetlinkMessage) (table, set string, elems []rawElem, err error) {
	ad, err := nfnl.MessageDecoder(m)
	if err != nil {
		return "", "", nil, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			table = ad.String()
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			ad.Nested(func(lad *nl.AttributeDecoder) error {
				for lad.Next() {
					var e rawElem
					lad.Nested(func(ead *nl.AttributeDecoder) error {
						ead.ByteOrder = binary.BigEndian
						for ead.Next() {
							switch ead.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								e.key = dataValue(ead.Bytes())
							case nftaSetElemKeyEnd:
								e.keyEnd = dataValue(ead.Bytes())
							case unix.NFTA_SET_ELEM_FLAGS:
								e.flags = ead.Uint32()
							case unix.NFTA_SET_ELEM_DATA:
								e.hasData = true
								e.verdict = parseVerdictData(ead.Bytes())
							}
						}
						return nil
					})
					elems = append(elems, e)
				}
				return nil
			})
		}
	}
	return table, set, elems, ad.Err()
}

func parseChain(m syscall.NetlinkMessage) (rawChain, error) {
	var c rawChain
	ad, err := nfnl.MessageDecoder(m)
	if err != nil {
		return c, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_CHAIN_TABLE:
			c.table = ad.String()
		case unix.NFTA_CHAIN_NAME:
			c.name = ad.String()
		case unix.NFTA_CHAIN_TYPE:
			c.typ = ad.String()
		case unix.NFTA_CHAIN_POLICY:
			p := ad.Uint32()
			c.policy = &p
		case nftaChainFlags:
			c.flags = ad.Uint32()
		case unix.NFTA_CHAIN_HOOK:
			c.hasHook = true
			ad.Nested(func(had *nl.AttributeDecoder) error {
				had.ByteOrder = binary.BigEndian
				for had.Next() {
					switch had.Type() {
					case unix.NFTA_HOOK_HOOKNUM:
						c.hooknum = had.Uint32()
					case unix.NFTA_HOOK_PRIORITY:
						c.prio = int32(had.Uint32())
					case unix.NFTA_HOOK_DEV, nftaHookDevs:
						c.dev = true
					}
				}
				return nil
			})
		case nftaChainUserdata:
			if s, ok := userdata.GetString(ad.Bytes(), udataChainComment); ok {
				c.comment = s
			}
		}
	}
	return c, ad.Err()
}

func parseRule(m syscall.NetlinkMessage) (rawRule, error) {
	var r rawRule
	ad, err := nfnl.MessageDecoder(m)
	if err != nil {
		return r, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			r.table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			r.udata = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(lad *nl.AttributeDecoder) error {
				for lad.Next() {
					var e rawExpr
					lad.Nested(func(ead *nl.AttributeDecoder) error {
						e = parseExpr(ead)
						return nil
					})
					r.exprs = append(r.exprs, e)
				}
				return nil
			})
		}
	}
	return r, ad.Err()
}

// parseExpr reads one expression of a rule: NFTA_EXPR_NAME and NFTA_EXPR_DATA.
func parseExpr(ad *nl.AttributeDecoder) rawExpr {
	var e rawExpr
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			e.name = ad.String()
		case unix.NFTA_EXPR_DATA:
			e.data = ad.Bytes()
		}
	}
	return e
}
