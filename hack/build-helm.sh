#!/usr/bin/env bash
# Builds the helm CLI from the Go module proxy into bin/helm and reuses it when it is
# already there at the wanted version. helm.sh/helm/v3 has no replace directives, so
# `go install pkg@version` (a throwaway module of the go command's own) is enough; the
# ldflags are those of helm's Makefile, without which `helm version` says v3.x-dev
# and lint/template assume an older Kubernetes.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/bin}"
mkdir -p "$out"

if [ -x "$out/helm" ] && [ "$("$out/helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
  printf '==> helm %s already in %s\n' "$HELM_VERSION" "$out" >&2
  exit 0
fi
printf '==> building helm %s from the module proxy (about a minute on 2 cores)\n' "$HELM_VERSION" >&2
# The Kubernetes version helm lint/template default to: that of the client-go helm links.
gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[ -n "$gomod" ] || { echo "cannot download helm.sh/helm/v3@$HELM_VERSION" >&2; exit 1; }
minor="$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]; exit}' "$gomod")"
pkg=helm.sh/helm/v3
GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w \
  -X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.gitTreeState=clean \
  -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$minor \
  -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$minor" \
  "$pkg/cmd/helm@$HELM_VERSION"
"$out/helm" version --template '==> helm {{.Version}} built into '"$out"'{{"\n"}}' >&2
