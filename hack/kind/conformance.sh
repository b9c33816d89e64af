#!/usr/bin/env bash
# `make conformance`: the upstream Kubernetes NetworkPolicy e2e suite, then the upstream
# ClusterNetworkPolicy conformance suite, against nftpolicy on kind clusters
# (hack/kind/cluster.sh): a control plane and two workers, one agent per node, installed
# with Helm (with the experimental channel of the ClusterNetworkPolicy CRD). One run of
# both suites per entry of CONFORMANCE_RUNS, each on a new cluster:
#
#   CONFORMANCE_RUNS="vxlan/iptables/ipv4 host-gw/nftables/ipv4 host-gw/iptables/ipv6" (default)
#     TOPOLOGY/PROXY/FAMILY: Flannel's backend (vxlan, host-gw), kube-proxy's mode
#     (iptables, nftables) and the cluster's IP family (ipv4, ipv6, dual)
#
# For each run, with the ClusterNetworkPolicies of hack/kind/conformance-background-cnps.yaml
# present (they select every pod and change no verdict; deleted after the suite):
# ginkgo --procs=$CONFORMANCE_PROCS --focus=Netpol --skip=SCTPConnectivity,
# JUnit report in _out/conformance/RUN/junit.xml, and for each failed spec the evidence
# (matrices, policies, every node's nft table, the agents' logs) in
# _out/conformance/RUN/evidence/. Then, on the same cluster, the ClusterNetworkPolicy
# suite (sigs.k8s.io/network-policy-api, test/cnpconformance) with --all-features:
# its go test output in _out/conformance/RUN/cnp.json (test2json) and cnp.log, its
# report in _out/conformance/RUN/cnp-report.yaml; on a kernel without SCTP the tests
# that probe SCTP among TCP and UDP run without their SCTP probes
# (test/cnpconformance/nosctp) and those that probe only SCTP are skipped.
# CONFORMANCE_CNP: gate (the default) counts its failures, report prints its line
# without letting them fail the run, off skips the suite. Two lines per run:
#   48 passed, 0 failed (kind, 3 nodes, flannel vxlan, kube-proxy iptables, ipv4)
#   cnp: 26 passed, 0 failed, 4 skipped (kind, 3 nodes, flannel vxlan, kube-proxy iptables, ipv4; SCTP: kernel has none; SCTP probes removed from 8 tests, 4 SCTP tests skipped)
# and exits non-zero when a spec or a CNP test failed (with CONFORMANCE_CNP=report, only
# a spec) or a cluster could not run the suite. Every cluster, and the Docker engine when the harness
# started it, is removed at the end, also after a failure or Ctrl-C (hack/kind/cluster.sh
# down).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
OUT_DIR="$root/_out/conformance"
CONF_BIN="${CONF_BIN:-$root/bin/conformance}"
PROCS="${CONFORMANCE_PROCS:-4}"
FOCUS="${CONFORMANCE_FOCUS:-Netpol}"
SKIP="${CONFORMANCE_SKIP:-SCTPConnectivity}"
RUNS="${CONFORMANCE_RUNS:-vxlan/iptables/ipv4 host-gw/nftables/ipv4 host-gw/iptables/ipv6}"
CNP_MODE="${CONFORMANCE_CNP:-gate}"
# The runs the ClusterNetworkPolicy suite follows the Netpol suite on: "first" (the
# default; the suite takes minutes, most of it waiting out probes expected to be denied,
# and the agent's CNP code does not depend on the CNI or kube-proxy mode) or "all".
CNP_RUNS="${CONFORMANCE_CNP_RUNS:-first}"
# One probe's connect timeout (the suite's default is 3s, paid twice per denial).
CNP_REQUEST_TIMEOUT="${CONFORMANCE_CNP_REQUEST_TIMEOUT:-1s}"
CNP_TEST="$CONF_BIN/cnp-conformance.test"
background_cnps="$root/hack/kind/conformance-background-cnps.yaml"
# A cluster name of its own: make kind's cluster (KIND_CLUSTER) is left alone.
export KIND_CLUSTER="${CONFORMANCE_CLUSTER:-nftpolicy-conformance}"
cluster="$root/hack/kind/cluster.sh"

log() { printf '==> [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'conformance: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it runs a Docker engine and kind clusters)"
exec 9>/run/lock/nftpolicy-conformance.lock
flock -n 9 || die "another make conformance is running (/run/lock/nftpolicy-conformance.lock)"
for f in "$CONF_BIN/e2e-netpol.test" "$CONF_BIN/ginkgo" "$CONF_BIN/kubectl"; do
  [ -e "$f" ] || die "$f is missing: run it through make conformance"
done
case "$CNP_RUNS" in first | all) ;; *) die "CONFORMANCE_CNP_RUNS=$CNP_RUNS: want first or all" ;; esac
case "$CNP_MODE" in
  report | gate) [ -e "$CNP_TEST" ] || die "$CNP_TEST is missing: run it through make conformance" ;;
  off) ;;
  *) die "CONFORMANCE_CNP=$CNP_MODE: want report, gate or off" ;;
esac
for run in $RUNS; do
  IFS=/ read -r topology proxy family <<<"$run"
  case "$topology/$proxy/$family" in
    vxlan/* | host-gw/*) ;;
    *) die "CONFORMANCE_RUNS entry $run: want TOPOLOGY/PROXY/FAMILY, e.g. vxlan/iptables/ipv4" ;;
  esac
done

# summary JUNIT: "N passed, M failed". Suite-level nodes (BeforeSuite…) count only when
# they failed: then no spec could run.
summary() {
  local junit="$1"
  if [ ! -f "$junit" ]; then
    echo "0 passed, 1 failed"
    return
  fi
  awk '
    /<testcase / {
      name = $0; sub(/.*<testcase name="/, "", name); sub(/".*/, "", name)
      status = $0; sub(/.*status="/, "", status); sub(/".*/, "", status)
      suite = (name ~ /^\[(Synchronized)?(Before|After)Suite\]|^\[Report(Before|After)Suite\]|^\[DeferCleanup \(Suite\)\]/)
      if (status == "passed") { if (!suite) passed++ }
      else if (status != "skipped" && status != "pending") { failed++; print "FAILED: " name > "/dev/stderr" }
    }
    END { printf "%d passed, %d failed\n", passed, failed }
  ' "$junit"
}

# cnp_summary JSON: "N passed, M failed[, K skipped]" of the ClusterNetworkPolicy suite,
# from go test's events (test2json): its tests are the subtests TestConformance/<name>.
# A test the suite skips through its SkipTests (SCTP only, on a kernel without SCTP)
# passes, having logged "Skipping <name>": counted skipped. A failure outside every
# test (setup: the base pods, the CRDs) counts as one failure.
cnp_summary() {
  local json="$1"
  if [ ! -s "$json" ]; then
    echo "0 passed, 1 failed"
    return
  fi
  awk '
    {
      action = ""; test = ""
      if (match($0, /"Action":"[a-z]+"/)) action = substr($0, RSTART + 10, RLENGTH - 11)
      if (match($0, /"Test":"[^"]*"/)) test = substr($0, RSTART + 8, RLENGTH - 9)
      if (test == "TestConformance") {
        if (action == "pass" || action == "fail" || action == "skip") top = action
        next
      }
      if (test !~ /^TestConformance\/[^\/]+$/) next
      name = substr(test, 17)
      if (action == "output" && index($0, "Skipping " name "\\n")) skipped_by_suite[name] = 1
      if (action == "pass" || action == "fail" || action == "skip") result[name] = action
    }
    END {
      for (name in result) {
        if (result[name] == "fail") { failed++; print "CNP FAILED: " name > "/dev/stderr" }
        else if (result[name] == "skip" || skipped_by_suite[name]) skipped++
        else passed++
      }
      if (top != "pass" && failed == 0) { failed = 1; print "CNP FAILED: TestConformance (" (top == "" ? "did not finish" : top) ")" > "/dev/stderr" }
      printf "%d passed, %d failed", passed, failed
      if (skipped) printf ", %d skipped", skipped
      printf "\n"
    }
  ' "$json"
}

lines=()
finish() {
  local rc=$?
  set +e
  log "tearing the kind test bed down"
  "$cluster" down
  local line failed=0
  for line in "${lines[@]}"; do
    echo "$line"
    # The ClusterNetworkPolicy suite's failures count only with CONFORMANCE_CNP=gate.
    case "$line" in "cnp: "*) [ "$CNP_MODE" = gate ] || continue ;; esac
    case "$line" in *" 0 failed "* | *" 0 failed,"*) ;; *) failed=1 ;; esac
  done
  [ ${#lines[@]} -gt 0 ] || { echo "0 passed, 1 failed (no run finished)"; failed=1; }
  [ "$failed" = 0 ] && exit "$rc"
  exit 1
}
trap finish EXIT
# Ctrl-C (or TERM) ends the run after the step in progress, which the signal reached
# too; finish then tears everything down. Bash runs the trap only when the step died of
# the signal; ginkgo catches it, finishes its cleanup and marks the specs it cut short
# "interrupted" in its JUnit report, which is read below.
interrupted=""
trap 'interrupted=1' INT TERM
stop_if_interrupted() {
  [ -z "$interrupted" ] && return
  lines+=("0 passed, 1 failed (interrupted)")
  exit 130
}

# The previous run's clusters, and whatever a crashed run left, go first.
"$cluster" down
version="$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
cnp_module="sigs.k8s.io/network-policy-api $(go -C "$root" list -m -f '{{.Version}}' sigs.k8s.io/network-policy-api 2>/dev/null || echo '?')"

# run_cnp NAME DIR DESC: the ClusterNetworkPolicy suite on the current cluster; adds
# its line.
run_cnp() {
  local name="$1" dir="$2" desc="$3" rc line note=""
  log "running the ClusterNetworkPolicy conformance suite ($cnp_module, --all-features)"
  set +e
  # test2json's markers (-test.v=test2json) are turned into events afterwards: one
  # run, both the events and a plain log.
  NFTPOLICY_CNP_CONFORMANCE=1 KUBECONFIG="$KUBECONFIG" "$CNP_TEST" \
    -test.run='^TestConformance$' -test.v=test2json -test.timeout=60m -request-timeout="$CNP_REQUEST_TIMEOUT" \
    -all-features -conformance-profiles=ClusterNetworkPolicy -report-output="$dir/cnp-report.yaml" \
    -organization=nftpolicy -project=nftpolicy -url=https://github.com/nftpolicy/nftpolicy \
    -version="$version" -contact=https://github.com/nftpolicy/nftpolicy/issues \
    -additional-info="make conformance (hack/kind/conformance.sh), run $name: $desc" \
    >"$dir/cnp.out" 2>&1
  rc=$?
  set -e
  go tool test2json -t -p cnpconformance <"$dir/cnp.out" >"$dir/cnp.json" || true
  tr -d '\026' <"$dir/cnp.out" >"$dir/cnp.log" && rm -f "$dir/cnp.out"
  # The test's own account of what ran (Plan.Note): upstream's tests, or on a kernel
  # without SCTP which were rewritten and skipped.
  note="$(sed -n 's/.*cnp-note: //p' "$dir/cnp.log" | head -n 1)"
  [ -z "$note" ] || note="; $note"
  line="$(cnp_summary "$dir/cnp.json")"
  [ "$rc" = 0 ] || case "$line" in *" 0 failed"*) line="${line/ 0 failed/ 1 failed}" ;; esac
  lines+=("cnp: $line ($desc$note)")
  log "cnp: $line ($desc$note); go test exit code $rc; log $dir/cnp.log, report $dir/cnp-report.yaml"
}

for run in $RUNS; do
  stop_if_interrupted
  IFS=/ read -r topology proxy family <<<"$run"
  name="$topology-$proxy-$family"
  dir="$OUT_DIR/$name"
  rm -rf "$dir" && mkdir -p "$dir/evidence"
  desc="kind, 3 nodes, flannel $topology, kube-proxy $proxy, $family"
  log "run $name: $desc"
  # The experimental channel of the ClusterNetworkPolicy CRD: --all-features runs the
  # tests of its experimental fields too.
  if ! KIND_TOPOLOGY="$topology" KIND_PROXY_MODE="$proxy" KIND_IP_FAMILY="$family" KIND_WORKERS=2 \
    KIND_AGENT_ARGS="--set logLevel=1 --set clusterNetworkPolicy.crds=experimental" \
    "$cluster" up 2>&1 | tee "$dir/cluster.log" >&2; then
    stop_if_interrupted
    lines+=("0 passed, 1 failed ($desc: the cluster did not come up, see $dir/cluster.log)")
    continue
  fi
  eval "$("$cluster" env)"
  nodes="$("$root/bin/kind/kind" get nodes --name "$KIND_CLUSTER" | sort | tr '\n' ' ')"
  # The NetworkPolicy suite runs with ClusterNetworkPolicies present that select every
  # pod (and change none of its verdicts): the tiers around each pod's NetworkPolicies.
  log "creating the background ClusterNetworkPolicies ($background_cnps)"
  "$CONF_BIN/kubectl" --kubeconfig "$KUBECONFIG" wait --for condition=established --timeout=60s \
    crd/clusternetworkpolicies.policy.networking.k8s.io >&2
  "$CONF_BIN/kubectl" --kubeconfig "$KUBECONFIG" apply -f "$background_cnps" >&2
  log "running the NetworkPolicy suite: focus $FOCUS, skip $SKIP, $PROCS processes"
  set +e
  # GO111MODULE=off: the CLI compares its version with `go list -m` run beside the binary,
  # i.e. with nftpolicy's go.mod, not with the suite's own (hack/conformance/build.sh
  # builds both from one module graph).
  GO111MODULE=off NFTPOLICY_EVIDENCE_DIR="$dir/evidence" \
    NFTPOLICY_RULESET_CMD="for n in $nodes; do echo \"--- \$n\"; docker exec \$n nft list table inet nftpolicy; done" \
    "$CONF_BIN/ginkgo" --procs="$PROCS" --focus="$FOCUS" --skip="$SKIP" --no-color \
    --junit-report=junit.xml --output-dir="$dir" --timeout=60m \
    "$CONF_BIN/e2e-netpol.test" -- \
    --kubeconfig="$KUBECONFIG" --provider=skeleton --disable-log-dump=true \
    --e2e-output-dir="$dir/e2e" >"$dir/ginkgo.log" 2>&1
  suite_rc=$?
  set -e
  grep -q 'status="interrupted"' "$dir/junit.xml" 2>/dev/null && interrupted=1
  stop_if_interrupted
  tail -n 5 "$dir/ginkgo.log" >&2
  log "suite finished (ginkgo exit code $suite_rc); collecting the rulesets"
  for n in $nodes; do
    docker exec "$n" nft list table inet nftpolicy >"$dir/nft-$n.txt" 2>&1 || true
  done
  line="$(summary "$dir/junit.xml")"
  [ "$suite_rc" = 0 ] || case "$line" in *" 0 failed") line="${line% 0 failed} 1 failed" ;; esac
  lines+=("$line ($desc)")
  log "$line ($desc); JUnit report $dir/junit.xml"
  ls "$dir/evidence"/*.txt >/dev/null 2>&1 && log "evidence of failed specs: $dir/evidence/"
  "$CONF_BIN/kubectl" --kubeconfig "$KUBECONFIG" delete --wait -f "$background_cnps" >&2
  if [ "$CNP_MODE" != off ] && { [ "$CNP_RUNS" = all ] || [ -z "${cnp_done:-}" ]; }; then
    cnp_done=1
    run_cnp "$name" "$dir" "$desc"
    stop_if_interrupted
    for n in $nodes; do
      docker exec "$n" nft list table inet nftpolicy >"$dir/cnp-nft-$n.txt" 2>&1 || true
    done
  fi
  log "collecting the agents' logs"
  "$CONF_BIN/kubectl" --kubeconfig "$KUBECONFIG" -n kube-system logs -l app.kubernetes.io/name=nftpolicy \
    --prefix --tail=-1 >"$dir/agent.log" 2>&1 || true
  "$root/bin/kind/kind" delete cluster --name "$KIND_CLUSTER" >&2 || true
done
