// Package nfnl is the nf_tables netlink transport of the dataplane: message framing,
// batches (NFNL_MSG_BATCH_BEGIN ... NFNL_MSG_BATCH_END) sent in one sendmsg, sequence
// numbers and acknowledgements, errors attributed to the message — and the attribute
// inside it — that caused them, GET requests and dumps (with NLM_F_DUMP_INTR), and the
// building and parsing of netlink attributes. It knows nothing of the ruleset IR:
// package netlink lifts the IR to nf_tables messages and back, and uses this package to
// talk to the kernel.
//
// It is hand-written, the way nft (libmnl + libnftnl) does it, because the Conn of
// github.com/google/nftables v0.3.0 does not serve what the dataplane needs:
//
//   - Chain comments: its Chain has no user data (NFTA_CHAIN_USERDATA), so every chain
//     comment would be lost, and the diff would replace the table whenever a chain
//     comment differs from the read-back one.
//   - Set comments: GetSets reads only NFTNL_UDATA_SET_MERGE_ELEMENTS out of the set's
//     user data and drops the comment.
//   - Faithful read-back of every expression: its rule dump silently skips expressions it
//     does not know (exprsFromBytes: "continue // unsupported expression type"), so a
//     hand-made rule could read back as one of ours. Package netlink parses the
//     expression list itself and refuses any expression it did not write (it still uses
//     google/nftables/expr to marshal and unmarshal the ones it knows).
//   - Per-object error attribution: Flush joins the errors of a failed batch without
//     saying which message failed. Here the sequence number of an error names the
//     message, and the extended ACK's attribute offset (NLMSGERR_ATTR_OFFS) names the
//     set element or rule expression inside it (see Span).
//   - Element chunking and big batches: Flush asks for an ACK of every message (a receive
//     buffer of about 1 KiB of skb truesize per object: ENOBUFS on a batch of 100k
//     elements), has no NLM_F_DUMP_INTR handling for dumps, and leaves the 16-bit
//     attribute length to the caller (a set with thousands of elements overflows it).
//     Here only the last message of a batch asks for an ACK, the send buffer grows to
//     the batch, a nested attribute longer than 65535 bytes is an error instead of a
//     silently wrapped length, and package netlink splits element lists into messages.
package nfnl
