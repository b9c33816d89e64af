#!/usr/bin/env bash
# Builds the offline kind node image (make kind-image): Kubernetes v1.37.2 on Debian 12,
# made only from Debian packages and the Go module proxy, for machines that reach no
# image registry. docs/kind.md says what each piece is and why.
#
#   hack/kind/node-image.sh [IMAGE]     build it into the Docker engine (default
#                                       $KIND_NODE_IMAGE, nftpolicy/kind-node:v1.37.2)
#
# Pieces (built by make kind-image's prerequisites):
#   bin/conformance   kubelet kubeadm kubectl kube-controller-manager kube-scheduler
#                     kube-proxy agnhost pause          (hack/conformance/build.sh)
#   bin/k8s           kube-apiserver                    (hack/build-control-plane.sh)
#   bin/kind          etcd coredns flanneld crictl capwrap (hack/kind/build.sh)
#   Debian bookworm   the node's root file system (systemd, containerd, runc, CNI
#                     plugins, iptables, nftables, conntrack) and the base layer of
#                     the kube-proxy, Flannel and CNP-suite agnhost images, from mmdebstrap
#   kind's module     the base image's entrypoint, systemd units and sysctls
#                     (sigs.k8s.io/kind images/base/files), unmodified
# Cached: the two Debian trees (keyed by their package lists) and the final root file
# system (keyed by the hash of every input) in bin/kind/cache; a rebuild with nothing
# changed only re-imports that tar when the engine lacks the image.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="${1:-${KIND_NODE_IMAGE:-nftpolicy/kind-node:v1.37.2}}"
K8S_VERSION="${K8S_VERSION:-v1.37.2}"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
SUITE="${KIND_DEBIAN_SUITE:-bookworm}"
CONF_BIN="$root/bin/conformance"
K8S_BIN="$root/bin/k8s"
KIND_BIN="$root/bin/kind"
cache="$KIND_BIN/cache"
files="$root/hack/kind/node"
mkdir -p "$cache"

log() { printf '==> [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'kind-image: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it unpacks a root file system with device nodes and owners)"

for f in "$CONF_BIN"/{kubelet,kubeadm,kubectl,kube-controller-manager,kube-scheduler,kube-proxy,agnhost,pause} \
  "$K8S_BIN/kube-apiserver" "$KIND_BIN"/{etcd,coredns,flanneld,crictl,capwrap} "$root/bin/image"; do
  [ -x "$f" ] || die "$f is missing: build it with make kind-image"
done
if ! command -v mmdebstrap >/dev/null; then
  log "installing mmdebstrap from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
fi
# The image goes into a Docker engine: the harness's own when none answers.
"$root/hack/kind/cluster.sh" docker-up

# The images kubeadm deploys, at the tags it asks for: the slots are named by kubeadm
# (kubeadm config images list), filled with what bin/ holds at those versions.
mapfile -t wanted < <("$CONF_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
[ "${#wanted[@]}" -gt 0 ] || die "kubeadm config images list printed nothing"
image_for() { printf '%s\n' "${wanted[@]}" | grep -E "/$1:" || die "kubeadm lists no $1 image"; }
ETCD_IMAGE="$(image_for etcd)"
COREDNS_IMAGE="$(image_for coredns)"
PAUSE_IMAGE="$(image_for pause)"
etcd_tag="${ETCD_IMAGE##*:}"
coredns_tag="${COREDNS_IMAGE##*:}"
[ "$(cat "$KIND_BIN/etcd.version")" = "v${etcd_tag%-*}" ] ||
  die "kubeadm deploys etcd $etcd_tag but bin/kind/etcd is $(cat "$KIND_BIN/etcd.version"): set KIND_ETCD_VERSION in hack/kind/build.sh"
[ "$(cat "$KIND_BIN/coredns.version")" = "$coredns_tag" ] ||
  die "kubeadm deploys CoreDNS $coredns_tag but bin/kind/coredns is $(cat "$KIND_BIN/coredns.version"): set KIND_COREDNS_VERSION"
grep -q "sandbox_image = \"$PAUSE_IMAGE\"" "$files/etc/containerd/config.toml" ||
  die "kubeadm's pause image is $PAUSE_IMAGE: update sandbox_image in hack/kind/node/etc/containerd/config.toml"
FLANNEL_IMAGE="docker.io/flannel/flannel:$(cat "$KIND_BIN/flanneld.version")"
# The e2e suite's agnhost, at the version its image manifest names.
kube_dir="$(cd / && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
agnhost_tag="$(sed -n 's/.*configs\[Agnhost\] = Config{list.PromoterE2eRegistry, "agnhost", "\([^"]*\)"}.*/\1/p' "$kube_dir/test/utils/image/manifest.go")"
[ -n "$agnhost_tag" ] || die "cannot read agnhost's version from k8s.io/kubernetes@$K8S_VERSION test/utils/image/manifest.go"
AGNHOST_IMAGE="registry.k8s.io/e2e-test-images/agnhost:$agnhost_tag"
# The ClusterNetworkPolicy conformance suite's agnhost (make conformance), at the tag its
# base manifests name: the same binary on the Debian layer, since they start it with
# /bin/bash -c.
cnp_version="$(go -C "$root" list -m -f '{{.Version}}' sigs.k8s.io/network-policy-api)"
cnp_dir="$(cd / && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/network-policy-api@$cnp_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
mapfile -t cnp_agnhost < <(grep -o 'registry\.k8s\.io/e2e-test-images/agnhost:[^" ]*' "$cnp_dir/conformance/base/manifests.yaml" | sort -u)
[ "${#cnp_agnhost[@]}" = 1 ] ||
  die "want one agnhost image in sigs.k8s.io/network-policy-api@$cnp_version conformance/base/manifests.yaml, found ${#cnp_agnhost[@]}: ${cnp_agnhost[*]}"
AGNHOST_CNP_IMAGE="${cnp_agnhost[0]}"

# debian NAME PACKAGES...: a cached Debian root file system tar in $cache/NAME.tar.
debian() {
  local name="$1"
  shift
  local key
  key="$SUITE reproducible $(printf '%s\n' "$@" | sort | tr '\n' ' ')"
  if [ -f "$cache/$name.tar" ] && [ "$(cat "$cache/$name.tar.version" 2>/dev/null)" = "$key" ]; then
    return
  fi
  log "making the Debian $SUITE root file system $name with mmdebstrap"
  rm -f "$cache/$name.tar"
  # SOURCE_DATE_EPOCH: mmdebstrap clamps times and drops its logs, so the same packages
  # give the same tree.
  SOURCE_DATE_EPOCH=0 mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "$*")" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
    "$SUITE" "$cache/$name.tmp.tar"
  mv "$cache/$name.tmp.tar" "$cache/$name.tar"
  echo "$key" >"$cache/$name.tar.version"
}
# The node: what kind's base image installs, from Debian (containerd and runc are
# Debian's 1.6 and 1.1 instead of kind's own builds), plus the CNI plugins.
debian node-rootfs systemd systemd-sysv containerd runc containernetworking-plugins \
  conntrack iptables nftables iproute2 ethtool util-linux mount kmod libseccomp2 pigz \
  bash ca-certificates curl jq procps socat ebtables iputils-ping
# kube-proxy and flanneld run iptables, nft and conntrack from their image.
debian net-base iptables nftables conntrack iproute2 kmod ipset ca-certificates

kind_dir="$(cd / && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
[ -d "$kind_dir/images/base/files" ] || die "cannot download sigs.k8s.io/kind@$KIND_VERSION"

# The cache key of the whole image: every input's bytes.
inputs="$( (
  sha256sum "$CONF_BIN"/{kubelet,kubeadm,kubectl,kube-controller-manager,kube-scheduler,kube-proxy,agnhost,pause} \
    "$K8S_BIN/kube-apiserver" "$KIND_BIN"/{etcd,coredns,flanneld,crictl,capwrap} \
    "$cache/node-rootfs.tar.version" "$cache/net-base.tar.version" "$0"
  echo "$AGNHOST_IMAGE $AGNHOST_CNP_IMAGE"
  find "$files" "$kind_dir/images/base/files" -type f -print0 | sort -z | xargs -0 sha256sum
) | sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "io.nftpolicy.kind-node.inputs"}}' "$IMAGE" 2>/dev/null)" = "$inputs" ]; then
  log "node image $IMAGE is up to date ($inputs)"
  exit 0
fi
final="$cache/node-image.tar"
if [ ! -f "$final" ] || [ "$(cat "$final.version" 2>/dev/null)" != "$inputs" ]; then
  work="$(mktemp -d /var/tmp/nftpolicy-kind-image.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
  export SOURCE_DATE_EPOCH=0
  log "building the images the node carries"
  img() { "$root/bin/image" -out "$work/images/$1.tar" "${@:2}" >/dev/null; }
  img kube-apiserver -ref "registry.k8s.io/kube-apiserver:$K8S_VERSION" \
    -file "$K8S_BIN/kube-apiserver:/usr/local/bin/kube-apiserver" -entrypoint /usr/local/bin/kube-apiserver
  img kube-controller-manager -ref "registry.k8s.io/kube-controller-manager:$K8S_VERSION" \
    -file "$CONF_BIN/kube-controller-manager:/usr/local/bin/kube-controller-manager" -entrypoint /usr/local/bin/kube-controller-manager
  img kube-scheduler -ref "registry.k8s.io/kube-scheduler:$K8S_VERSION" \
    -file "$CONF_BIN/kube-scheduler:/usr/local/bin/kube-scheduler" -entrypoint /usr/local/bin/kube-scheduler
  img kube-proxy -ref "registry.k8s.io/kube-proxy:$K8S_VERSION" -layer "$cache/net-base.tar" \
    -file "$CONF_BIN/kube-proxy:/usr/local/bin/kube-proxy" -entrypoint /usr/local/bin/kube-proxy
  img etcd -ref "$ETCD_IMAGE" -file "$KIND_BIN/etcd:/usr/local/bin/etcd" -entrypoint /usr/local/bin/etcd
  img coredns -ref "$COREDNS_IMAGE" -file "$KIND_BIN/coredns:/coredns" -entrypoint /coredns
  img pause -ref "$PAUSE_IMAGE" -file "$CONF_BIN/pause:/pause" -entrypoint /pause -user 65535:65535
  img agnhost -ref "$AGNHOST_IMAGE" -file "$CONF_BIN/agnhost:/agnhost" -entrypoint /agnhost -cmd pause
  if [ "$AGNHOST_CNP_IMAGE" != "$AGNHOST_IMAGE" ]; then
    img agnhost-cnp -ref "$AGNHOST_CNP_IMAGE" -layer "$cache/net-base.tar" \
      -file "$CONF_BIN/agnhost:/agnhost" -entrypoint /agnhost -cmd pause
  fi
  img flannel -ref "$FLANNEL_IMAGE" -layer "$cache/net-base.tar" \
    -file "$KIND_BIN/flanneld:/opt/bin/flanneld" -entrypoint /opt/bin/flanneld

  log "assembling the node's root file system"
  rootfs="$work/rootfs"
  mkdir -p "$rootfs"
  tar -C "$rootfs" --numeric-owner -xpf "$cache/node-rootfs.tar"
  base="$kind_dir/images/base/files"
  # kind's base image files, as its Dockerfile copies them.
  install -m 0755 "$base"/usr/local/bin/* "$rootfs/usr/local/bin/"
  mkdir -p "$rootfs/kind/bin" "$rootfs/etc/systemd/system/kubelet.service.d" "$rootfs/etc/sysctl.d" \
    "$rootfs/etc/default" "$rootfs/etc/containerd" "$rootfs/etc/kubernetes/manifests" "$rootfs/kind/images"
  install -m 0755 "$base"/kind/bin/* "$rootfs/kind/bin/"
  install -m 0644 "$base"/etc/crictl.yaml "$rootfs/etc/"
  install -m 0644 "$base"/etc/default/* "$rootfs/etc/default/"
  install -m 0644 "$base"/etc/sysctl.d/* "$rootfs/etc/sysctl.d/"
  install -m 0644 "$base"/etc/systemd/system/*.service "$base"/etc/systemd/system/*.slice "$rootfs/etc/systemd/system/"
  install -m 0644 "$base"/etc/systemd/system/kubelet.service.d/* "$rootfs/etc/systemd/system/kubelet.service.d/"
  # Ours: containerd's configuration for Debian's containerd 1.6, the sandbox
  # adaptation, the image import before the kubelet.
  cp -a "$files"/. "$rootfs/"
  # kind's containerd unit starts /usr/local/bin/containerd; Debian's is in /usr/bin.
  ln -sf /usr/bin/containerd "$rootfs/usr/local/bin/containerd"
  mkdir -p "$rootfs/opt/cni"
  ln -sfn /usr/lib/cni "$rootfs/opt/cni/bin"
  install -m 0755 "$CONF_BIN"/{kubelet,kubeadm,kubectl} "$rootfs/usr/bin/"
  install -m 0755 "$KIND_BIN/crictl" "$KIND_BIN/capwrap" "$rootfs/usr/local/bin/"
  cp "$work"/images/*.tar "$rootfs/kind/images/"
  printf '%s' "$K8S_VERSION" >"$rootfs/kind/version"
  # As kind's base Dockerfile: only the units kind wants start at boot.
  find "$rootfs/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$rootfs"/lib/systemd/system/multi-user.target.wants/* "$rootfs"/etc/systemd/system/*.wants/* \
    "$rootfs"/lib/systemd/system/local-fs.target.wants/* "$rootfs"/lib/systemd/system/sockets.target.wants/*udev* \
    "$rootfs"/lib/systemd/system/sockets.target.wants/*initctl* "$rootfs"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$rootfs/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "$rootfs/sbin/init"
  systemctl --root="$rootfs" enable kubelet.service containerd.service undo-mount-hacks.service nftpolicy-images.service >/dev/null 2>&1
  systemctl --root="$rootfs" mask systemd-binfmt.service >/dev/null 2>&1
  # Debian starts update-alternatives at iptables-nft; kind's entrypoint picks the mode
  # the host uses at every boot.
  log "writing the root file system to $final"
  tar -C "$rootfs" --numeric-owner --sort=name --mtime=@0 -cf "$final.tmp.tar" .
  mv "$final.tmp.tar" "$final"
  echo "$inputs" >"$final.version"
fi
log "importing $final as $IMAGE"
docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
  --change 'ENV container=docker' \
  --change "LABEL io.nftpolicy.kind-node.inputs=$inputs" \
  --change "LABEL io.nftpolicy.kind-node.kubernetes=$K8S_VERSION" \
  "$final" "$IMAGE" >/dev/null
log "node image $IMAGE ready"
