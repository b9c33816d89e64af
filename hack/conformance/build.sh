#!/usr/bin/env bash
# Builds what the conformance clusters run, from the Go module proxy, into
# bin/conformance/ (or OUT) and reuses what is already there; `build.sh OUT NAME...`
# builds only the names given:
#   kubelet kubeadm kube-controller-manager kube-scheduler kube-proxy kubectl  (k8s.io/kubernetes)
#   agnhost                                                    (the e2e test image's binary)
#   e2e-netpol.test   the upstream e2e suite with only the NetworkPolicy specs linked
#   ginkgo            the ginkgo CLI at the version the suite was written against
#   pause             the pod sandbox (hack/conformance/pause)
# kube-apiserver and etcd come from hack/build-control-plane.sh (bin/k8s), shared with
# envtest. Everything of Kubernetes is built in one throwaway module that requires
# k8s.io/kubernetes and points its staging replaces at the published v0.x modules, as
# hack/build-control-plane.sh does; each binary carries a .version stamp beside it.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
STAGING_VERSION="${STAGING_VERSION:-v0.${K8S_VERSION#v1.}}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/bin/conformance}"
mkdir -p "$out"

log() { printf '==> %s\n' "$*" >&2; }

# The suite's stamp also covers its source here: an edit rebuilds it.
suite_src="$root/hack/conformance/e2e/netpol_test.go"
want_stamp() {
  if [ "$1" = e2e-netpol.test ]; then
    echo "$K8S_VERSION $(sha256sum "$suite_src" | cut -c1-16)"
  else
    echo "$K8S_VERSION"
  fi
}
# fresh NAME: the binary exists and was built from this version (and source).
fresh() { [ -x "$out/$1" ] && [ "$(cat "$out/$1.version" 2>/dev/null)" = "$(want_stamp "$1")" ]; }
stamp() { want_stamp "$1" > "$out/$1.version"; }

# The pause binary is ours: always rebuilt (a second with a warm cache).
CGO_ENABLED=0 go -C "$root" build -trimpath -ldflags "-s -w" -o "$out/pause" ./hack/conformance/pause

declare -A cmds=(
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [kubeadm]=k8s.io/kubernetes/cmd/kubeadm
  [agnhost]=k8s.io/kubernetes/test/images/agnhost
  [ginkgo]=github.com/onsi/ginkgo/v2/ginkgo
)
missing=()
for name in "${!cmds[@]}"; do fresh "$name" || missing+=("$name"); done
if ! fresh e2e-netpol.test; then
  missing+=(e2e-netpol.test)
  # The CLI must speak the suite's ginkgo version, which module resolution may move:
  # build both from one module graph.
  fresh ginkgo && missing+=(ginkgo)
fi
# build.sh OUT NAME...: only those (make kind needs just kubectl on a machine that pulls
# kind's stock node image).
if [ $# -gt 1 ]; then
  only=" ${*:2} "
  kept=()
  for name in "${missing[@]}"; do
    case "$only" in *" $name "*) kept+=("$name") ;; esac
  done
  missing=("${kept[@]}")
fi
if [ ${#missing[@]} -eq 0 ]; then
  log "conformance binaries $K8S_VERSION already in $out"
  exit 0
fi
log "building ${missing[*]} ($K8S_VERSION) from the module proxy; cold this takes ~10 minutes on 2 cores"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$root/hack/conformance/e2e/go.mod" "$suite_src" "$work/"
cd "$work"
{
  echo '//go:build tools'
  echo
  echo 'package netpol'
  echo
  echo 'import ('
  for name in "${!cmds[@]}"; do echo "	_ \"${cmds[$name]}\""; done
  echo ')'
} > tools.go
go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
kmod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[ -n "$kmod" ] || { echo "cannot download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
# Every staging module k8s.io/kubernetes replaces with a ./staging path is published
# under its own path at the matching v0.x version.
sed -n '/^replace (/,/^)/p' "$kmod" | awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' |
  while read -r m; do go mod edit -replace="$m=$m@$STAGING_VERSION"; done
go mod tidy >/dev/null 2>&1 || go mod tidy
log "ginkgo $(go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2) (the suite's and the CLI's)"

pkg=k8s.io/component-base/version
minor="${K8S_VERSION#v1.}"
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
export CGO_ENABLED=0
pkgs=()
for name in "${missing[@]}"; do
  [ "$name" = e2e-netpol.test ] || pkgs+=("${cmds[$name]}")
done
if [ ${#pkgs[@]} -gt 0 ]; then
  # One go build for all commands: the packages they share compile once.
  start=$SECONDS
  go build -trimpath -ldflags "$ldflags" -tags tools -o "$work/bin/" "${pkgs[@]}"
  for name in "${missing[@]}"; do
    [ "$name" = e2e-netpol.test ] && continue
    install -m 0755 "$work/bin/$(basename "${cmds[$name]}")" "$out/$name"
    stamp "$name"
  done
  log "built ${pkgs[*]} in $((SECONDS - start)) s"
fi
if ! fresh e2e-netpol.test; then
  start=$SECONDS
  go test -c -trimpath -ldflags "$ldflags" -o "$out/e2e-netpol.test" .
  stamp e2e-netpol.test
  log "built e2e-netpol.test in $((SECONDS - start)) s"
fi
log "conformance binaries ready in $out"
