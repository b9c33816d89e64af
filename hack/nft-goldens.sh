#!/usr/bin/env bash
# Captures the netlink messages nft itself sends for the objects the agent programs: the
# goldens of pkg/dataplane/netlink's TestNftGoldens (golden_test.go).
#
# For every pkg/dataplane/netlink/testdata/nft/<case>.nft it creates a throwaway network
# namespace, loads <case>.setup.nft there first if present (not captured: objects the
# case needs to exist), runs `nft -f <case>.nft` under strace and writes the bytes of
# every sendto/sendmsg nft made to <case>.golden, one syscall buffer per line in hex,
# and nft's own rendering of the rules' expressions (--debug=netlink) to <case>.netlink.
# Nothing outside the namespace is touched; the namespace is deleted on exit.
#
# Needs root, nft and strace (apt-get install strace). Run it after changing a .nft file
# or to check the goldens against another nft version:
#   hack/nft-goldens.sh            # all cases
#   hack/nft-goldens.sh rules      # one case
# then `go test ./pkg/dataplane/netlink -run TestNftGoldens`. The same is
# `go test ./pkg/dataplane/netlink -run TestNftGoldens -update`.
set -euo pipefail

dir="$(cd "$(dirname "$0")/.." && pwd)/pkg/dataplane/netlink/testdata/nft"
ns="nftgold-$$"
trace="$(mktemp)"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -f "$trace"; }
trap cleanup EXIT

for tool in nft strace ip; do
	command -v "$tool" >/dev/null || { echo "$0: $tool not found" >&2; exit 1; }
done

cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
	for f in "$dir"/*.nft; do
		case "$f" in *.setup.nft) continue ;; esac
		cases+=("$(basename "$f" .nft)")
	done
fi

version="$(nft --version)"
for c in "${cases[@]}"; do
	ip netns add "$ns"
	if [ -f "$dir/$c.setup.nft" ]; then
		ip netns exec "$ns" nft -f "$dir/$c.setup.nft"
	fi
	# -e write=all dumps the data of every sendto and sendmsg as hex lines
	# " | 00000  14 00 00 00 ...  ascii |"; -s 0 keeps the syscall lines short.
	# --debug=netlink prints the expressions of every rule as libnftnl sees them, kept
	# next to the golden for the reader (<case>.netlink); it changes nothing sent.
	ip netns exec "$ns" strace -qq -o "$trace" -e trace=sendto,sendmsg -e write=all -xx -s 0 \
		nft --debug=netlink -f "$dir/$c.nft" >"$dir/$c.netlink"
	[ -s "$dir/$c.netlink" ] || rm -f "$dir/$c.netlink" # no rules, nothing printed
	{
		echo "# $version: nft -f $c.nft, captured by hack/nft-goldens.sh"
		echo "# one line per sendto/sendmsg: the syscall, then the bytes in hex"
		awk '
			/^(sendto|sendmsg)\(/ { if (buf != "") print call, buf; call = substr($0, 1, index($0, "(") - 1); buf = ""; next }
			/^ \| [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]  / { hex = substr($0, 11, 49); gsub(/ /, "", hex); buf = buf hex }
			END { if (buf != "") print call, buf }
		' "$trace"
	} >"$dir/$c.golden"
	ip netns del "$ns"
	echo "wrote $dir/$c.golden"
done
