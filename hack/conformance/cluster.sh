#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, for the upstream NetworkPolicy e2e suite.
#
#   hack/conformance/cluster.sh up      start it (tearing down any leftover first)
#   hack/conformance/cluster.sh down    stop it and remove everything it left behind
#   hack/conformance/cluster.sh env     print the variables the other scripts use
#
# The node is this machine's network namespace: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet and kube-proxy run as
# plain processes whose PIDs are recorded in $RUN/pids. One node, because the agent
# programs the netfilter of the network namespace it runs in: two nodes sharing the host
# namespace would have two agents fighting over one table.
#
# Everything it creates carries the "nftpc" name or lives under its own directories, so
# `down` removes exactly that, even after a crashed run:
#   addresses   node 10.210.0.1 on link nftpc-node (a bridge without ports); pods 10.211.0.0/24 on bridge
#               nftpc0; Services 10.212.0.0/16 (unroutable beyond the node: both ranges
#               route into that link, so nothing of the cluster leaves the machine)
#   state       $STATE (/var/lib/nftpolicy-conformance), $RUN (/run/nftpolicy-conformance)
#   cgroups     /sys/fs/cgroup/*/nftpc (the kubelet's cgroupRoot)
#   netfilter   kube-proxy's and kubelet's KUBE-* chains, table inet nftpolicy
#   sysctls     the values the kubelet and this script change are saved and restored
# Logs, certificates and kubeconfigs are in $OUT (_out/conformance/cluster) and stay.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd -P)"
K8S_BIN="${K8S_BIN:-$root/bin/k8s}"            # kube-apiserver, etcd (hack/build-control-plane.sh)
CONF_BIN="${CONF_BIN:-$root/bin/conformance}"  # the rest (hack/conformance/build.sh)
OUT="${OUT:-$root/_out/conformance/cluster}"
STATE="${STATE:-/var/lib/nftpolicy-conformance}"
RUN="${RUN:-/run/nftpolicy-conformance}"
NODE_NAME="${NODE_NAME:-nftpc-node}"
NODE_IP=10.210.0.1
NODE_LINK=nftpc-node
POD_CIDR=10.211.0.0/16
NODE_POD_CIDR=10.211.0.0/24
BRIDGE=nftpc0
CNI_NETWORK=nftpc-pods
SERVICE_CIDR=10.212.0.0/16
SERVICE_API_IP=10.212.0.1
SERVICE_DNS_IP=10.212.0.10
API_PORT=16443
ETCD_CLIENT_PORT=23790
ETCD_PEER_PORT=23800
CGROUP_ROOT=nftpc
CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.66.1
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
KUBECONFIG_ADMIN="$OUT/admin.kubeconfig"
# Sysctls changed by this script (ip_forward, bridge netfilter) and by the kubelet's
# kernel tunables; saved before `up`, restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: polls COMMAND every half second.
# COMMAND silences its own probes: a component that died must still be reported.
wait_for() {
  local what="$1" timeout="$2" deadline=$((SECONDS + $2))
  shift 2
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 0.5
  done
}

kubectl() { "$CONF_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# ---------------------------------------------------------------------------- processes

# start NAME BINARY ARGS...: runs a component in the background, logging to $OUT/NAME.log
# and recording its PID (and binary) in $RUN/pids.
start() {
  local name="$1" bin="$2"
  shift 2
  [ -x "$bin" ] || die "$bin is missing: run make conformance-build"
  mkdir -p "$RUN/pids"
  bin="$(readlink -f "$bin")"
  # 9>&-: not the lock of hack/conformance/run.sh, which must die with the run.
  setsid "$bin" "$@" >"$OUT/$name.log" 2>&1 </dev/null 9>&- &
  local pid=$! deadline=$((SECONDS + 10))
  echo "$pid $bin" >"$RUN/pids/$name"
  # Until the forked shell has exec'd the binary, /proc/PID/exe is bash: wait for the
  # exec, so that alive and stop recognise the process.
  while ! alive "$name"; do
    kill -0 "$pid" 2>/dev/null || return 0 # it died already: check reports it
    [ "$SECONDS" -lt "$deadline" ] || die "$name (PID $pid) did not exec $bin within 10 s"
    sleep 0.05
  done
}

# alive NAME: the recorded process runs, and is still the binary we started (PIDs are
# reused: never signal a process on the strength of a number alone).
alive() {
  local f="$RUN/pids/$1" pid bin
  [ -f "$f" ] || return 1
  read -r pid bin <"$f"
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$bin" ]
}

# check NAME: fails with the end of its log when a component has died.
check() {
  alive "$1" && return 0
  tail -n 30 "$OUT/$1.log" >&2 || true
  die "$1 exited; its log is $OUT/$1.log"
}

# stop NAME: SIGTERM, then SIGKILL after 20 s, only to the recorded PID.
stop() {
  local f="$RUN/pids/$1" pid bin deadline
  [ -f "$f" ] || return 0
  read -r pid bin <"$f"
  if alive "$1"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while alive "$1" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if alive "$1"; then
      log "$1 ($pid) ignored SIGTERM for 20 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while alive "$1" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
      alive "$1" && log "$1 ($pid) survives SIGKILL (uninterruptible sleep?)"
    fi
  fi
  rm -f "$f"
}

# ---------------------------------------------------------------------------- PKI

pki() {
  local d="$OUT/pki"
  mkdir -p "$d"
  [ -f "$d/ca.crt" ] && return 0
  log "certificates in $d"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj /CN=nftpolicy-conformance-ca -days 7 -out "$d/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/sa.key" 2>/dev/null
  openssl ec -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  # cert NAME SUBJECT [SANS]
  cert() {
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/$1.key" 2>/dev/null
    openssl req -new -key "$d/$1.key" -subj "$2" -out "$d/$1.csr" 2>/dev/null
    local ext="$d/$1.ext"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n' >"$ext"
    if [ -n "${3:-}" ]; then
      printf 'extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$3" >>"$ext"
    else
      printf 'extendedKeyUsage=clientAuth\n' >>"$ext"
    fi
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 7 -extfile "$ext" -out "$d/$1.crt" 2>/dev/null
    rm -f "$d/$1.csr" "$ext"
  }
  cert apiserver /CN=kube-apiserver \
    "IP:$SERVICE_API_IP,IP:$NODE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert admin "/O=system:masters/CN=kubernetes-admin"
  cert controller-manager /CN=system:kube-controller-manager
  cert scheduler /CN=system:kube-scheduler
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  cert proxy /CN=system:kube-proxy
  for n in admin controller-manager scheduler kubelet proxy; do
    cat >"$OUT/$n.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: conformance
    cluster:
      server: https://$NODE_IP:$API_PORT
      certificate-authority: $d/ca.crt
users:
  - name: $n
    user:
      client-certificate: $d/$n.crt
      client-key: $d/$n.key
contexts:
  - name: conformance
    context: {cluster: conformance, user: $n}
current-context: conformance
EOF
  done
}

# ---------------------------------------------------------------------------- host

save_sysctls() {
  [ -f "$STATE/sysctls" ] && return 0 # a crashed run saved the originals already
  mkdir -p "$STATE"
  local s
  for s in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$s" "$(sysctl -n "$s" 2>/dev/null || echo)"
  done >"$STATE/sysctls"
}

restore_sysctls() {
  [ -f "$STATE/sysctls" ] || return 0
  local line
  while IFS= read -r line; do
    [ -n "${line#*=}" ] && sysctl -q -w "$line" >/dev/null 2>&1 || true
  done <"$STATE/sysctls"
  rm -f "$STATE/sysctls"
}

network_up() {
  # This kernel has no dummy links: a bridge without ports does the same — it holds
  # the node address, and what is routed into it goes nowhere.
  ip link add "$NODE_LINK" type bridge
  ip addr add "$NODE_IP/32" dev "$NODE_LINK"
  ip link set "$NODE_LINK" up
  # Pod and Service addresses go no further than this machine: what kube-proxy does not
  # DNAT and what the pod bridge does not hold ends in the node link, which drops it.
  ip route add "$POD_CIDR" dev "$NODE_LINK"
  ip route add "$SERVICE_CIDR" dev "$NODE_LINK"
  sysctl -q -w net.ipv4.ip_forward=1
  # Bridged pod-to-pod traffic must pass the IPv4/IPv6 hooks (kube-proxy's and the
  # agent's); br_netfilter is built into this kernel, its switches are per namespace.
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
}

# ---------------------------------------------------------------------------- up

up() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  down
  mkdir -p "$OUT" "$STATE" "$RUN/pids"
  rm -f "$OUT"/*.log
  save_sysctls
  pki
  network_up
  local pki="$OUT/pki"

  log "etcd"
  start etcd "$K8S_BIN/etcd" --name nftpc --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "nftpc=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --listen-metrics-urls ""

  log "kube-apiserver on https://$NODE_IP:$API_PORT"
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address "$NODE_IP" --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --kubelet-preferred-address-types InternalIP,Hostname \
    --profiling=false
  wait_for "kube-apiserver /readyz" 120 apiserver_ready

  log "kube-controller-manager, kube-scheduler"
  start kube-controller-manager "$CONF_BIN/kube-controller-manager" \
    --kubeconfig "$OUT/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$OUT/controller-manager.kubeconfig" --authorization-kubeconfig "$OUT/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 20257 \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials=true --controllers '*' \
    --allocate-node-cidrs=true --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SERVICE_CIDR" --leader-elect=false
  start kube-scheduler "$CONF_BIN/kube-scheduler" \
    --kubeconfig "$OUT/scheduler.kubeconfig" \
    --authentication-kubeconfig "$OUT/scheduler.kubeconfig" --authorization-kubeconfig "$OUT/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 20259 --leader-elect=false

  containerd_up
  import_image "$AGNHOST_IMAGE" "$CONF_BIN/agnhost:/agnhost" --entrypoint /agnhost --cmd pause
  import_image "$PAUSE_IMAGE" "$CONF_BIN/pause:/pause" --entrypoint /pause --user 65535:65535

  kubelet_up
  kube_proxy_up
  log "cluster up: KUBECONFIG=$KUBECONFIG_ADMIN"
}

apiserver_ready() {
  check etcd && check kube-apiserver &&
    curl -sf --cacert "$OUT/pki/ca.crt" --cert "$OUT/pki/admin.crt" --key "$OUT/pki/admin.key" \
      "https://$NODE_IP:$API_PORT/readyz" >/dev/null 2>&1
}

containerd_up() {
  log "containerd on $CONTAINERD_SOCK"
  command -v containerd >/dev/null || die "containerd is missing: apt-get install containerd"
  mkdir -p "$STATE/containerd" "$RUN/containerd" "$STATE/cni/net.d"
  # The settings that worked on this machine (shared/reference/real-cluster): cgroupfs
  # (cgroup v1, no systemd), restrict_oom_score_adj (no CAP_SYS_RESOURCE), the sandbox
  # image we import, our own CNI configuration and IPAM directory.
  containerd config default |
    sed -e "s|^root = .*|root = \"$STATE/containerd\"|" \
      -e "s|^state = .*|state = \"$RUN/containerd\"|" \
      -e "/^\[grpc\]/,/^\[/ s|^  address = .*|  address = \"$CONTAINERD_SOCK\"|" \
      -e "/^\[ttrpc\]/,/^\[/ s|^  address = .*|  address = \"\"|" \
      -e "s|restrict_oom_score_adj = .*|restrict_oom_score_adj = true|" \
      -e "s|netns_mounts_under_state_dir = false|netns_mounts_under_state_dir = true|" \
      -e "s|sandbox_image = .*|sandbox_image = \"$PAUSE_IMAGE\"|" \
      -e "s|bin_dir = \"/opt/cni/bin\"|bin_dir = \"/usr/lib/cni\"|" \
      -e "s|conf_dir = \"/etc/cni/net.d\"|conf_dir = \"$STATE/cni/net.d\"|" \
      -e "s|SystemdCgroup = .*|SystemdCgroup = false|" \
      -e "s|^            Root = \"\"|            Root = \"$RUN/runc\"|" \
      -e "s|path = \"/opt/containerd\"|path = \"$STATE/containerd-opt\"|" \
      >"$STATE/containerd.toml"
  grep -q "address = \"$CONTAINERD_SOCK\"" "$STATE/containerd.toml" || die "could not set the containerd socket in $STATE/containerd.toml"
  grep -q 'restrict_oom_score_adj = true' "$STATE/containerd.toml" || die "could not set restrict_oom_score_adj in $STATE/containerd.toml"
  cat >"$STATE/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  start containerd "$(command -v containerd)" --config "$STATE/containerd.toml"
  wait_for "containerd" 60 containerd_ready
}

containerd_ready() { check containerd && ctr -a "$CONTAINERD_SOCK" version >/dev/null 2>&1; }

# import_image REF SRC:DEST IMAGE-FLAGS...: a FROM-scratch image of one static binary.
import_image() {
  local ref="$1" file="$2"
  shift 2
  local tar="$STATE/images/$(echo "$ref" | tr '/:' '__').oci.tar"
  mkdir -p "$STATE/images"
  "$root/bin/image" -ref "$ref" -file "$file" "$@" -out "$tar" >/dev/null
  ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$tar" >/dev/null
  log "imported $ref"
}

kubelet_up() {
  log "kubelet ($NODE_NAME)"
  local ctrl
  # The kubelet's cgroupRoot must exist in every hierarchy; cpuset needs its cpus and
  # mems filled before children can be made.
  for ctrl in /sys/fs/cgroup/*/; do
    [ -d "$ctrl" ] && mkdir -p "$ctrl$CGROUP_ROOT"
  done
  if [ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.mems"
  fi
  mkdir -p "$STATE/kubelet" "$STATE/pod-logs"
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $OUT/pki/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$SERVICE_DNS_IP]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $STATE/pod-logs
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
maxPods: 250
EOF
  start kubelet "$CONF_BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$OUT/kubelet.kubeconfig" \
    --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" --v 1
  wait_for "node $NODE_NAME to register" 120 node_registered
  wait_for "node $NODE_NAME to be Ready" 120 node_ready
}

node_registered() { check kubelet && kubectl get node "$NODE_NAME" >/dev/null 2>&1; }
node_ready() {
  check kubelet &&
    [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

kube_proxy_up() {
  log "kube-proxy (iptables)"
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $OUT/proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false
# Leave the machine's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start kube-proxy "$CONF_BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
  wait_for "kube-proxy to program the kubernetes Service" 60 proxy_ready
}

proxy_ready() {
  check kube-proxy && curl -sf http://127.0.0.1:10256/healthz >/dev/null 2>&1 &&
    iptables -w -t nat -S KUBE-SERVICES 2>/dev/null | grep "$SERVICE_API_IP/32" >/dev/null
}

# ---------------------------------------------------------------------------- down

down() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  mkdir -p "$OUT"
  local n
  # The kubelet first, so that it restarts nothing; then every container of ours.
  for n in kube-proxy kubelet kube-scheduler kube-controller-manager; do stop "$n"; done
  kill_cgroup_tree
  kill_shims
  stop containerd
  # kube-apiserver hangs on SIGTERM once etcd is gone: stop it first.
  stop kube-apiserver
  stop etcd
  remove_pod_netns
  unmount_under "$STATE" "$RUN"
  remove_cgroups
  ip link del "$BRIDGE" 2>/dev/null || true
  ip link del "$NODE_LINK" 2>/dev/null || true # its routes go with it
  netfilter_cleanup
  restore_sysctls
  host_files_cleanup
  rm -rf --one-file-system "$STATE" "$RUN"
}

# host_files_cleanup: what the kubelet and containerd write outside their directories:
# CNI result caches of our sandboxes, /var/log/containers links into our pod logs, and
# the kubelet's hard-wired /var/lib/kubelet/device-plugins socket.
host_files_cleanup() {
  local id link
  for id in $(ls "$STATE/containerd/io.containerd.grpc.v1.cri/sandboxes" 2>/dev/null); do
    rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null || true
  done
  # Sockets of shims that had exited already (see kill_shims).
  for id in $(ls "$RUN/containerd/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null); do
    rm -f "$(shim_socket "$id")"
  done
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
  for link in /var/log/containers/*.log; do
    [ -L "$link" ] || continue
    case "$(readlink "$link")" in "$STATE"/*) rm -f "$link" ;; esac
  done
  rmdir /var/log/containers 2>/dev/null || true
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}

# kill_cgroup_tree: SIGKILL every process in the kubelet's cgroupRoot (all pods'
# containers), polling until the tree is empty.
kill_cgroup_tree() {
  local base=/sys/fs/cgroup/pids/$CGROUP_ROOT deadline=$((SECONDS + 30)) pids
  [ -d "$base" ] || base=/sys/fs/cgroup/memory/$CGROUP_ROOT
  [ -d "$base" ] || return 0
  while :; do
    pids="$({ find "$base" -name cgroup.procs -exec cat {} + 2>/dev/null || true; } | sort -u)"
    [ -z "$pids" ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && { log "processes left in $base: $pids"; return 0; }
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
}

# kill_shims: the containerd-shim processes serving our containerd socket (found by
# their command line, which names the socket under $RUN), and their sockets, which
# containerd 1.6 puts in /run/containerd/s/ named by the sha256 of
# <containerd address>/<namespace>/<shim id>.
kill_shims() {
  local p cmd id
  for p in /proc/[0-9]*; do
    # stderr first: a process gone since the glob makes the input redirection fail.
    cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
    case "$cmd" in
      *containerd-shim*"$CONTAINERD_SOCK"*)
        kill -KILL "${p#/proc/}" 2>/dev/null || true
        id="$(sed -n 's/.* -id \([^ ]*\) .*/\1/p' <<<"$cmd ")"
        [ -n "$id" ] && rm -f "$(shim_socket "$id")"
        ;;
    esac
  done
}

shim_socket() { echo "/run/containerd/s/$(printf '%s' "$CONTAINERD_SOCK/k8s.io/$1" | sha256sum | cut -d' ' -f1)"; }

# remove_pod_netns: pod network namespaces are mounted under containerd's state
# directory (netns_mounts_under_state_dir; unmount_under removes them). Should any be
# in /var/run/netns/cni-* (containerd's default, beside everyone else's), remove only
# those holding an address of our pod range.
remove_pod_netns() {
  local ns
  for ns in /var/run/netns/cni-*; do
    [ -e "$ns" ] || continue
    if ip -n "$(basename "$ns")" -4 -o addr show 2>/dev/null | grep " ${NODE_POD_CIDR%.0/24}\." >/dev/null; then
      ip netns delete "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
    fi
  done
}

# unmount_under DIR...: unmounts every mount point below the directories, deepest first.
unmount_under() {
  local d m
  for d in "$@"; do
    awk -v d="$d" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
}

remove_cgroups() {
  local ctrl
  for ctrl in /sys/fs/cgroup/*/; do
    [ -d "$ctrl$CGROUP_ROOT" ] || continue
    find "$ctrl$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# netfilter_cleanup: kube-proxy's own cleanup, then every KUBE-* chain the kubelet or
# kube-proxy left in the host's iptables (and the jumps to them), then the agent's table.
netfilter_cleanup() {
  if [ -x "$CONF_BIN/kube-proxy" ]; then
    "$CONF_BIN/kube-proxy" --cleanup >"$OUT/kube-proxy-cleanup.log" 2>&1 || true
  fi
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      { "$ipt" -w -t "$table" -S 2>/dev/null || true; } | sed -n 's/^-A \([A-Z]* .*-j KUBE-\)/-D \1/p' |
        while read -r rule; do eval "$ipt -w -t $table $rule" 2>/dev/null || true; done
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  nft delete table inet nftpolicy 2>/dev/null || true
  # iptables-nft leaves its tables behind once their rules are gone: remove those that
  # hold no rule and no dropping policy (an empty accept-all table changes nothing).
  local fam
  for fam in ip ip6; do
    ipt=iptables
    [ "$fam" = ip6 ] && ipt=ip6tables
    command -v "$ipt-save" >/dev/null || continue
    for table in filter nat mangle; do
      nft list table "$fam" "$table" >/dev/null 2>&1 || continue
      if ! "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A |^:[A-Z-]+ (DROP|REJECT)' >/dev/null; then
        nft delete table "$fam" "$table" 2>/dev/null || true
      fi
    done
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env)
    printf 'KUBECONFIG=%s\nNODE_NAME=%s\nNODE_IP=%s\nCONTAINERD_SOCK=%s\nSTATE=%s\nOUT=%s\n' \
      "$KUBECONFIG_ADMIN" "$NODE_NAME" "$NODE_IP" "$CONTAINERD_SOCK" "$STATE" "$OUT"
    ;;
  *) die "usage: $0 up|down|env" ;;
esac
