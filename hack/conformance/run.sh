#!/usr/bin/env bash
# `make conformance`: the upstream Kubernetes NetworkPolicy e2e suite against nftpolicy
# on a one-node cluster of this machine (hack/conformance/cluster.sh).
#
#  1. installs the Debian packages the cluster needs when they are missing
#  2. brings the cluster up (tearing down what a crashed run left first)
#  3. imports the agent image (make image) into the node's containerd and installs
#     config/helm/nftpolicy with helm (pullPolicy Never), waits for the DaemonSet
#  4. runs the suite: ginkgo --procs=$CONFORMANCE_PROCS --focus=Netpol
#     --skip=SCTPConnectivity, JUnit report in _out/conformance/junit.xml; for each
#     failed spec the evidence (matrices, policies, nft table, agent log) goes to
#     _out/conformance/evidence/
#  5. tears everything down, even when a step failed, and ends with the line
#     "N passed, M failed" counted from the JUnit report
# Exits non-zero when a spec failed or the cluster could not run the suite.
# The binaries come from make prerequisites (conformance-build, image, helm).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
OUT_DIR="$root/_out/conformance"
CONF_BIN="${CONF_BIN:-$root/bin/conformance}"
HELM="${HELM:-$root/bin/helm}"
PROCS="${CONFORMANCE_PROCS:-4}"
FOCUS="${CONFORMANCE_FOCUS:-Netpol}"
SKIP="${CONFORMANCE_SKIP:-SCTPConnectivity}"
IMAGE="${IMAGE:-docker.io/nftpolicy/agent:dev}"
IMAGE_ARCHIVE="${IMAGE_ARCHIVE:-$root/_out/image/nftpolicy-agent.oci.tar}"
cluster="$root/hack/conformance/cluster.sh"

log() { printf '==> [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'conformance: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it runs a kubelet and containerd)"
# One run at a time: a second one would tear the first one's cluster down.
exec 9>/run/lock/nftpolicy-conformance.lock
flock -n 9 || die "another make conformance is running (/run/lock/nftpolicy-conformance.lock)"
for f in "$CONF_BIN/e2e-netpol.test" "$CONF_BIN/ginkgo" "$CONF_BIN/kubectl" "$HELM" "$IMAGE_ARCHIVE" "$root/bin/image"; do
  [ -e "$f" ] || die "$f is missing: run it through make conformance"
done

# ---- 1. packages
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v socat >/dev/null || need+=(socat)
command -v nft >/dev/null || need+=(nftables)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

rm -rf "$OUT_DIR/evidence" "$OUT_DIR/junit.xml" "$OUT_DIR/ginkgo.log" "$OUT_DIR/agent.log" "$OUT_DIR/nft-table.txt"
mkdir -p "$OUT_DIR/evidence"
eval "$("$cluster" env)" # KUBECONFIG NODE_NAME CONTAINERD_SOCK STATE OUT
kubectl() { "$CONF_BIN/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }

# summary: "N passed, M failed" from the JUnit report. Suite-level nodes (BeforeSuite…)
# count only when they failed: then no spec could run.
summary() {
  local junit="$OUT_DIR/junit.xml"
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

finish() {
  local rc=$?
  set +e
  log "collecting the agent log and ruleset into $OUT_DIR"
  cat "$STATE"/pod-logs/kube-system_nftpolicy-agent-*/agent/*.log >"$OUT_DIR/agent.log" 2>/dev/null
  nft list table inet nftpolicy >"$OUT_DIR/nft-table.txt" 2>&1
  log "tearing the cluster down"
  "$cluster" down
  local line
  line="$(summary)"
  ls "$OUT_DIR/evidence"/*.txt >/dev/null 2>&1 && log "evidence of failed specs: $OUT_DIR/evidence/"
  log "JUnit report: $OUT_DIR/junit.xml; logs: $OUT_DIR (cluster/ holds the components')"
  echo "$line"
  case "$line" in
    *" 0 failed") exit "$rc" ;;
    *) exit 1 ;;
  esac
}
trap finish EXIT

# ---- 2. cluster
log "bringing the cluster up"
"$cluster" up

# ---- 3. nftpolicy
log "importing $IMAGE and installing the chart"
ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$IMAGE_ARCHIVE" >/dev/null
ctr -a "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -x "$IMAGE" >/dev/null || die "$IMAGE_ARCHIVE did not import as $IMAGE"
"$HELM" --kubeconfig "$KUBECONFIG" install nftpolicy "$root/config/helm/nftpolicy" \
  --namespace kube-system \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set logLevel=1 \
  --wait --timeout 3m
kubectl -n kube-system rollout status daemonset/nftpolicy-agent --timeout=2m
kubectl -n kube-system get pods -o wide
nft list table inet nftpolicy >/dev/null || die "the agent is ready but table inet nftpolicy is not in the kernel"

# ---- 4. the suite
log "running the NetworkPolicy suite: focus $FOCUS, skip $SKIP, $PROCS processes"
set +e
# GO111MODULE=off: the CLI compares its version with `go list -m` run beside the
# binary, i.e. with nftpolicy's go.mod, not with the suite's own (the same as the CLI's,
# hack/conformance/build.sh builds both from one module graph).
GO111MODULE=off NFTPOLICY_EVIDENCE_DIR="$OUT_DIR/evidence" \
  NFTPOLICY_AGENT_LOGS="$STATE/pod-logs/kube-system_nftpolicy-agent-*/agent/*.log" \
  "$CONF_BIN/ginkgo" --procs="$PROCS" --focus="$FOCUS" --skip="$SKIP" --no-color \
  --junit-report=junit.xml --output-dir="$OUT_DIR" --timeout=60m \
  "$CONF_BIN/e2e-netpol.test" -- \
  --kubeconfig="$KUBECONFIG" --provider=skeleton --disable-log-dump=true \
  --e2e-output-dir="$OUT_DIR/e2e" 2>&1 | tee "$OUT_DIR/ginkgo.log"
suite_rc=${PIPESTATUS[0]}
set -e
log "suite finished (ginkgo exit code $suite_rc)"
exit "$suite_rc"
