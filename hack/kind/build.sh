#!/usr/bin/env bash
# Builds the tools and node components of the kind test bed from the Go module proxy
# into bin/kind/ (each with a .version stamp; what is fresh is reused):
#   kind       sigs.k8s.io/kind, the cluster tool itself (unmodified)
#   etcd       the version kubeadm v1.37 deploys (its DefaultEtcdVersion)
#   coredns    the version kubeadm v1.37 deploys (its CoreDNSVersion)
#   flanneld   the CNI's daemon: VXLAN and host-gw backends (see below)
#   crictl     for `kind export logs` and debugging inside a node
#   capwrap    hack/kind/capwrap, the harness's OCI runtime wrapper (sandboxes only)
# The Kubernetes binaries (kubelet, kubeadm, kube-*) come from hack/conformance/build.sh
# (bin/conformance) and kube-apiserver from hack/build-control-plane.sh (bin/k8s).
set -euo pipefail

KIND_VERSION="${KIND_VERSION:-v0.33.0}"
ETCD_VERSION="${KIND_ETCD_VERSION:-v3.7.0}"
COREDNS_VERSION="${KIND_COREDNS_VERSION:-v1.14.6}"
FLANNEL_VERSION="${KIND_FLANNEL_VERSION:-v0.28.10}"
CRICTL_VERSION="${KIND_CRICTL_VERSION:-v1.37.0}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/bin/kind}"
mkdir -p "$out"
export CGO_ENABLED=0

log() { printf '==> %s\n' "$*" >&2; }
fresh() { [ -x "$out/$1" ] && [ "$(cat "$out/$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$out/$1.version"; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# install NAME VERSION PACKAGE@VERSION: `go install` of a module's command.
install_module() {
  local name="$1" version="$2" pkg="$3" start=$SECONDS
  fresh "$name" "$version" && return
  log "building $name $version from the module proxy"
  GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w $4" "$pkg"
  install -m 0755 "$work/gobin/$(basename "${pkg%@*}")" "$out/$name"
  stamp "$name" "$version"
  log "built $name in $((SECONDS - start)) s"
}

install_module kind "$KIND_VERSION" "sigs.k8s.io/kind@$KIND_VERSION" ""
install_module crictl "$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" \
  "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
install_module coredns "$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION" ""

if ! fresh etcd "$ETCD_VERSION"; then
  start=$SECONDS
  log "building etcd $ETCD_VERSION from the module proxy"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  go mod init etcd-build >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 || go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  stamp etcd "$ETCD_VERSION"
  cd "$root"
  log "built etcd in $((SECONDS - start)) s"
fi

# flanneld: its main package links every backend, and one of them (tencentvpc) needs a
# module version the proxy does not serve. The build copies the module, keeps only the
# backends the test bed runs (vxlan, host-gw) in main.go's imports, and builds that.
if ! fresh flanneld "$FLANNEL_VERSION"; then
  start=$SECONDS
  log "building flanneld $FLANNEL_VERSION (vxlan and host-gw backends) from the module proxy"
  dir="$(cd / && GOFLAGS=-mod=mod go mod download -json "github.com/flannel-io/flannel@$FLANNEL_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  [ -n "$dir" ] || { echo "cannot download flannel $FLANNEL_VERSION" >&2; exit 1; }
  cp -r "$dir" "$work/flannel" && chmod -R u+w "$work/flannel"
  sed -i -E '/"github.com\/flannel-io\/flannel\/pkg\/backend\/[a-z]+"/{/\/(vxlan|hostgw)"/!d}' "$work/flannel/main.go"
  go -C "$work/flannel" build -trimpath \
    -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION" -o "$out/flanneld" .
  stamp flanneld "$FLANNEL_VERSION"
  log "built flanneld in $((SECONDS - start)) s"
fi

# capwrap is ours: always rebuilt (a second with a warm cache).
go -C "$root" build -trimpath -ldflags "-s -w" -o "$out/capwrap" ./hack/kind/capwrap
log "kind tools ready in $out"
