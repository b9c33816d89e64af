#!/usr/bin/env bash
# The kind test bed: multi-node Kubernetes clusters in Docker containers, each node with
# its own network namespace and its own nftpolicy agent (installed with Helm).
#
#   hack/kind/cluster.sh up       create the cluster, install the CNI and nftpolicy
#   hack/kind/cluster.sh down     delete it and everything the harness started
#   hack/kind/cluster.sh env      print KUBECONFIG and the cluster's variables
#   hack/kind/cluster.sh docker-up  only make sure a Docker engine answers (see below)
#
# Settings (environment):
#   KIND_CLUSTER       cluster name (default nftpolicy)
#   KIND_NODE_IMAGE    auto (default): kind's stock node image and kindnet when Docker Hub
#                      answers, else the offline image (make kind-image,
#                      nftpolicy/kind-node:v1.37.2) with Flannel; or an image reference
#   KIND_CNI           flannel | kindnet (default: kindnet on the stock image, else flannel)
#   KIND_TOPOLOGY      vxlan | host-gw, Flannel's backend (default vxlan)
#   KIND_PROXY_MODE    iptables | nftables, kube-proxy's mode (default iptables)
#   KIND_IP_FAMILY     ipv4 | ipv6 | dual (default ipv4)
#   KIND_WORKERS       worker nodes beside the control plane (default 2)
#   KIND_AGENT_ARGS    extra Helm --set flags for the chart
#
# Docker: when no Docker engine answers, this starts Debian's dockerd itself (installing
# docker.io first if needed) with its data under /var/lib/nftpolicy-kind and records that
# it did; `down` stops that daemon, removes its data and puts back the host's iptables
# and nftables as they were before it started. A Docker engine that was already running
# is used as it is and left running. Where this host's capability bounding set lacks
# capabilities a privileged container asks for (a sandboxed CI machine), the daemon this
# script starts runs containers through hack/kind/capwrap, which drops just those; on
# any other host nothing is wrapped. It is a property of the test harness, never of the
# product or its chart.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
KIND_CLUSTER="${KIND_CLUSTER:-nftpolicy}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-auto}"
KIND_TOPOLOGY="${KIND_TOPOLOGY:-vxlan}"
KIND_PROXY_MODE="${KIND_PROXY_MODE:-iptables}"
KIND_IP_FAMILY="${KIND_IP_FAMILY:-ipv4}"
KIND_WORKERS="${KIND_WORKERS:-2}"
KIND_AGENT_ARGS="${KIND_AGENT_ARGS:-}"
OFFLINE_IMAGE="${KIND_OFFLINE_IMAGE:-nftpolicy/kind-node:v1.37.2}"
IMAGE="${IMAGE:-docker.io/nftpolicy/agent:dev}"
IMAGE_ARCHIVE="${IMAGE_ARCHIVE:-$root/_out/image/nftpolicy-agent.oci.tar}"
KIND="${KIND:-$root/bin/kind/kind}"
HELM="${HELM:-$root/bin/helm}"
KUBECTL="${KUBECTL:-$root/bin/conformance/kubectl}"
STATE=/var/lib/nftpolicy-kind   # the daemon's data, capwrap
RUN=/run/nftpolicy-kind         # the daemon's pid and sockets
CGROUP_PARENT=nftpolicy-kind    # the cgroup parent of the daemon's containers
OUT="$root/_out/kind"
KUBECONFIG_FILE="$OUT/$KIND_CLUSTER.kubeconfig"
MAKE="${MAKE:-make}"
# The host's sysctls dockerd changes (forwarding for its bridges, bridge netfilter), saved
# before it starts and restored after it stops.
HOST_SYSCTLS=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

log() { printf '==> [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'kind: %s\n' "$*" >&2; exit 1; }
kubectl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ---------------------------------------------------------------------------- Docker

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# bounding_set_full: the capability bounding set holds every capability the kernel has.
bounding_set_full() {
  local bnd last
  bnd="$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)"
  last="$(cat /proc/sys/kernel/cap_last_cap)"
  [ $((16#$bnd)) -eq $(((1 << (last + 1)) - 1)) ]
}

docker_up() {
  if docker_answers; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "no Docker engine answers, and starting one needs root"
  if ! command -v dockerd >/dev/null; then
    log "installing docker.io from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
  fi
  command -v docker >/dev/null || die "no docker client after installing docker.io"
  mkdir -p "$STATE" "$RUN"
  # What the daemon changes on the host, to put back after it stops.
  if [ ! -f "$RUN/host-iptables.v4" ]; then
    iptables-save >"$RUN/host-iptables.v4" 2>/dev/null || true
    ip6tables-save >"$RUN/host-iptables.v6" 2>/dev/null || true
    nft list tables >"$RUN/host-nft-tables" 2>/dev/null || true
    # Paths dockerd creates outside its data and exec roots (its trust key, the plugin
    # socket directory): removed at the end unless they were here before.
    local p
    for p in /etc/docker/key.json /etc/docker /run/docker/plugins /run/docker; do
      [ -e "$p" ] || echo "$p"
    done >"$RUN/host-new-paths"
    local k
    for k in "${HOST_SYSCTLS[@]}"; do
      echo "$k=$(sysctl -n "$k" 2>/dev/null)"
    done >"$RUN/host-sysctls"
  fi
  # A cgroup parent of its own: what a crashed daemon leaves running is found there, and
  # nothing else on the host is.
  local args=(--data-root "$STATE/docker" --exec-root "$RUN/docker" --pidfile "$RUN/dockerd.pid"
    --cgroup-parent "/$CGROUP_PARENT")
  if ! bounding_set_full; then
    log "this host's capability bounding set is not full: containers run through capwrap (test harness only)"
    go -C "$root" build -trimpath -o "$STATE/capwrap" ./hack/kind/capwrap
    args+=(--add-runtime "capwrap=$STATE/capwrap" --default-runtime capwrap)
  fi
  log "starting dockerd (data in $STATE/docker, log $OUT/dockerd.log)"
  mkdir -p "$OUT"
  setsid dockerd "${args[@]}" >"$OUT/dockerd.log" 2>&1 </dev/null &
  echo "started by hack/kind/cluster.sh" >"$RUN/dockerd.owned"
  local deadline=$((SECONDS + 60))
  until docker_answers; do
    [ "$SECONDS" -lt "$deadline" ] || { tail -20 "$OUT/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
    sleep 0.5
  done
}

# docker_down: stops the daemon this script started and puts the host back.
docker_down() {
  [ -f "$RUN/dockerd.owned" ] || return 0
  local pid
  pid="$(cat "$RUN/dockerd.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd ($pid)"
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # containerd and shims the daemon ran (their sockets are under $RUN/docker), and what a
  # crashed daemon left running in its containers (the cgroup parent $CGROUP_PARENT under
  # each cgroup v1 controller, or in the cgroup v2 tree): kill, then remove those cgroups.
  pkill -f "containerd.*$RUN/docker" 2>/dev/null || true
  local procs
  procs="$(find "/sys/fs/cgroup/pids/$CGROUP_PARENT" "/sys/fs/cgroup/$CGROUP_PARENT" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)"
  if [ -n "$procs" ]; then
    log "killing $(echo "$procs" | wc -l) processes left in Docker's containers"
    # shellcheck disable=SC2086 # one PID per word
    kill -9 $procs 2>/dev/null || true
    sleep 1
  fi
  find /sys/fs/cgroup/*/"$CGROUP_PARENT" "/sys/fs/cgroup/$CGROUP_PARENT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  # Docker's mounts, then its data.
  { grep -o " $STATE/[^ ]*\| $RUN/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$STATE" "$RUN/docker"
  # Docker's bridges and its netfilter changes.
  { ip -o link show type bridge 2>/dev/null || true; } | awk -F': ' '{print $2}' | { grep -E '^(docker0|br-[0-9a-f]{12})$' || true; } |
    while read -r br; do ip link delete "$br" 2>/dev/null || true; done
  restore_netfilter
  if [ -f "$RUN/host-new-paths" ]; then
    local p
    while read -r p; do
      if [ -d "$p" ]; then rmdir "$p" 2>/dev/null || true; else rm -f "$p"; fi
    done <"$RUN/host-new-paths"
  fi
  rm -f "$RUN/dockerd.owned" "$RUN/dockerd.pid" "$RUN/host-new-paths"
  rmdir "$RUN" 2>/dev/null || true
}

# restore_netfilter: the iptables tables Docker changed go back to their saved state; the
# tables it created go away.
restore_netfilter() {
  local fam save restore
  for fam in v4 v6; do
    [ -f "$RUN/host-iptables.$fam" ] || continue
    if [ $fam = v4 ]; then save=iptables-save restore=iptables-restore; else save=ip6tables-save restore=ip6tables-restore; fi
    local table
    for table in $("$save" 2>/dev/null | sed -n 's/^\*//p'); do
      if ! grep -qx "\*$table" "$RUN/host-iptables.$fam"; then
        "${save%-save}" -t "$table" -F 2>/dev/null || true
        "${save%-save}" -t "$table" -X 2>/dev/null || true
      fi
    done
    "$restore" <"$RUN/host-iptables.$fam" 2>/dev/null || true
  done
  if [ -f "$RUN/host-nft-tables" ]; then
    nft list tables 2>/dev/null | while read -r _ fam name; do
      grep -qx "table $fam $name" "$RUN/host-nft-tables" || nft delete table "$fam" "$name" 2>/dev/null || true
    done
  fi
  if [ -f "$RUN/host-sysctls" ]; then
    local kv
    while read -r kv; do
      [ -n "${kv#*=}" ] && sysctl -qw "$kv" 2>/dev/null || true
    done <"$RUN/host-sysctls"
  fi
  rm -f "$RUN"/host-iptables.* "$RUN/host-nft-tables" "$RUN/host-sysctls"
}

# ---------------------------------------------------------------------------- cluster

# resolve_image: sets NODE_IMAGE and CNI from KIND_NODE_IMAGE / KIND_CNI.
resolve_image() {
  NODE_IMAGE="$KIND_NODE_IMAGE"
  if [ "$NODE_IMAGE" = auto ]; then
    # kind's stock image lives on Docker Hub: a registry that answers (401 without a
    # token) means it can be pulled.
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 https://registry-1.docker.io/v2/ 2>/dev/null || true)"
    if [ "$code" = 401 ] || [ "$code" = 200 ]; then
      NODE_IMAGE=stock
    else
      NODE_IMAGE="$OFFLINE_IMAGE"
      log "Docker Hub does not answer: using the offline node image $NODE_IMAGE"
    fi
  fi
  if [ "$NODE_IMAGE" = stock ]; then
    CNI="${KIND_CNI:-kindnet}"
  else
    CNI="${KIND_CNI:-flannel}"
  fi
  case "$CNI" in flannel | kindnet) ;; *) die "KIND_CNI=$CNI: want flannel or kindnet" ;; esac
  if [ "$NODE_IMAGE" = "$OFFLINE_IMAGE" ]; then
    log "building the offline node image (make kind-image; cached)"
    "$MAKE" -C "$root" --no-print-directory kind-image KIND_NODE_IMAGE="$OFFLINE_IMAGE" >&2
  fi
}

subnets() {
  case "$KIND_IP_FAMILY" in
    ipv4) POD_SUBNET=10.244.0.0/16 SERVICE_SUBNET=10.96.0.0/16 ;;
    ipv6) POD_SUBNET=fd00:10:244::/56 SERVICE_SUBNET=fd00:10:96::/112 ;;
    dual) POD_SUBNET=10.244.0.0/16,fd00:10:244::/56 SERVICE_SUBNET=10.96.0.0/16,fd00:10:96::/112 ;;
    *) die "KIND_IP_FAMILY=$KIND_IP_FAMILY: want ipv4, ipv6 or dual" ;;
  esac
}

kind_config() {
  local image_line=""
  [ "$NODE_IMAGE" = stock ] || image_line="  image: $NODE_IMAGE"
  cat <<CONF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
name: $KIND_CLUSTER
networking:
  ipFamily: $KIND_IP_FAMILY
  podSubnet: "$POD_SUBNET"
  serviceSubnet: "$SERVICE_SUBNET"
  kubeProxyMode: $KIND_PROXY_MODE
  disableDefaultCNI: $([ "$CNI" = kindnet ] && echo false || echo true)
nodes:
- role: control-plane
$image_line
CONF
  local i
  for ((i = 0; i < KIND_WORKERS; i++)); do
    echo "- role: worker"
    [ -z "$image_line" ] || echo "$image_line"
  done
  # Kubernetes 1.35+ refuses cgroup v1 unless told otherwise; harmless on cgroup v2.
  cat <<'CONF'
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  failCgroupV1: false
CONF
}

# flannel_manifest: hack/kind/flannel.yaml for this cluster; Flannel's networks are the
# cluster's pod subnets (POD_SUBNET, one per family).
flannel_manifest() {
  local conf="" cidr flannel_image
  flannel_image="docker.io/flannel/flannel:$(cat "$root/bin/kind/flanneld.version")"
  for cidr in ${POD_SUBNET//,/ }; do
    case "$cidr" in
      *:*) conf+="\"EnableIPv6\": true, \"IPv6Network\": \"$cidr\", " ;;
      *) conf+="\"Network\": \"$cidr\", " ;;
    esac
  done
  case "$POD_SUBNET" in *.*) conf+="\"EnableIPv4\": true, " ;; *) conf+="\"EnableIPv4\": false, " ;; esac
  conf="{$conf\"Backend\": {\"Type\": \"$KIND_TOPOLOGY\"}}"
  sed -e "s|\${NET_CONF}|$conf|" -e "s|\${FLANNEL_IMAGE}|$flannel_image|" "$root/hack/kind/flannel.yaml"
}

cmd_up() {
  [ "$(id -u)" = 0 ] || [ -n "${DOCKER_HOST:-}" ] || docker_answers || die "run as root (or with a Docker engine you can use)"
  for f in "$KIND" "$HELM" "$KUBECTL" "$IMAGE_ARCHIVE"; do
    [ -e "$f" ] || die "$f is missing: run it through make kind"
  done
  case "$KIND_TOPOLOGY" in vxlan | host-gw) ;; *) die "KIND_TOPOLOGY=$KIND_TOPOLOGY: want vxlan or host-gw" ;; esac
  case "$KIND_PROXY_MODE" in iptables | nftables) ;; *) die "KIND_PROXY_MODE=$KIND_PROXY_MODE: want iptables or nftables" ;; esac
  mkdir -p "$OUT"
  docker_up
  subnets
  resolve_image
  if "$KIND" get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    log "deleting the existing cluster $KIND_CLUSTER"
    "$KIND" delete cluster --name "$KIND_CLUSTER" >&2
  fi
  kind_config >"$OUT/$KIND_CLUSTER.kind.yaml"
  log "creating kind cluster $KIND_CLUSTER: $((KIND_WORKERS + 1)) nodes, $CNI$([ "$CNI" = flannel ] && echo " $KIND_TOPOLOGY"), kube-proxy $KIND_PROXY_MODE, $KIND_IP_FAMILY"
  "$KIND" create cluster --config "$OUT/$KIND_CLUSTER.kind.yaml" --kubeconfig "$KUBECONFIG_FILE" \
    --wait 0s --retain >&2 || { dump_diagnostics; die "kind create cluster failed (nodes kept for inspection: make kind-down removes them)"; }
  if [ "$CNI" = flannel ]; then
    log "installing Flannel ($KIND_TOPOLOGY)"
    flannel_manifest | kubectl apply -f - >/dev/null
  fi
  log "waiting for the nodes to be Ready"
  kubectl wait --for=condition=Ready nodes --all --timeout=5m >/dev/null || { dump_diagnostics; die "nodes did not become Ready"; }
  log "loading $IMAGE into the nodes"
  "$KIND" load image-archive "$IMAGE_ARCHIVE" --name "$KIND_CLUSTER" >&2
  log "installing nftpolicy with helm"
  # shellcheck disable=SC2086 # KIND_AGENT_ARGS is a list of flags
  "$HELM" --kubeconfig "$KUBECONFIG_FILE" upgrade --install nftpolicy "$root/config/helm/nftpolicy" \
    --namespace kube-system \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
    $KIND_AGENT_ARGS --wait --timeout 5m >/dev/null || { dump_diagnostics; die "helm install failed"; }
  # helm --wait counts a DaemonSet ready with maxUnavailable pods still unready; the rollout
  # status waits for every node's agent.
  kubectl -n kube-system rollout status daemonset/nftpolicy-agent --timeout=3m >&2
  local node
  for node in $("$KIND" get nodes --name "$KIND_CLUSTER"); do
    docker exec "$node" nft list table inet nftpolicy >/dev/null 2>&1 ||
      die "the agent on $node is ready but table inet nftpolicy is not in that node's kernel"
  done
  kubectl get nodes -o wide >&2
  kubectl -n kube-system get pods -l app.kubernetes.io/name=nftpolicy -o wide >&2
  cat >&2 <<MSG

nftpolicy runs on every node of kind cluster "$KIND_CLUSTER".
  export KUBECONFIG=$KUBECONFIG_FILE
  $KUBECTL get pods -A -o wide
  docker exec $KIND_CLUSTER-worker nft list table inet nftpolicy
  $([ "$KIND_CLUSTER" = nftpolicy ] || echo "KIND_CLUSTER=$KIND_CLUSTER ")make kind-down        # removes the cluster$([ -f "$RUN/dockerd.owned" ] && echo " and the Docker engine this started")
MSG
}

dump_diagnostics() {
  local node
  for node in $("$KIND" get nodes --name "$KIND_CLUSTER" 2>/dev/null); do
    echo "---- $node: failed units, kubelet and containerd (last lines)" >&2
    docker exec "$node" systemctl --failed --no-legend 2>/dev/null >&2 || true
    docker exec "$node" journalctl -u kubelet -u containerd -u nftpolicy-images --no-pager -n 30 2>/dev/null >&2 || true
  done
  [ -f "$KUBECONFIG_FILE" ] && kubectl get pods -A -o wide >&2 2>/dev/null || true
}

# cmd_down: every cluster, node container, network and image of the test bed goes, and
# the daemon this script started (with its changes to the host). Safe to run any time,
# also after a crashed run.
cmd_down() {
  if docker_answers; then
    local c
    for c in $("$KIND" get clusters 2>/dev/null || true); do
      [ "$c" = "$KIND_CLUSTER" ] || [ -f "$RUN/dockerd.owned" ] || continue
      log "deleting kind cluster $c"
      "$KIND" delete cluster --name "$c" >&2 || true
    done
    if [ -f "$RUN/dockerd.owned" ]; then
      docker network rm kind >/dev/null 2>&1 || true
    fi
  fi
  docker_down
  rm -f "$KUBECONFIG_FILE"
}

cmd_env() {
  echo "KUBECONFIG=$KUBECONFIG_FILE"
  echo "KIND_CLUSTER=$KIND_CLUSTER"
}

case "${1:-}" in
  up) cmd_up ;;
  docker-up) mkdir -p "$OUT" && docker_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|env|docker-up" >&2; exit 2 ;;
esac
