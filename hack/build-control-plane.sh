#!/usr/bin/env bash
# Builds envtest's control plane (kube-apiserver and etcd) from the Go module proxy into
# bin/k8s/ and reuses what is already there. Each binary is built in a throwaway module
# of its own: k8s.io/kubernetes cannot be required as a normal dependency (its go.mod
# replaces the staging modules with ./staging paths), and mixing it with etcd's server
# module breaks version resolution.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
STAGING_VERSION="${STAGING_VERSION:-v0.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/bin/k8s}"
mkdir -p "$out"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log() { printf '==> %s\n' "$*" >&2; }

build_apiserver() {
  if [ -x "$out/kube-apiserver" ] && "$out/kube-apiserver" --version 2>/dev/null | grep "$K8S_VERSION" >/dev/null; then
    log "kube-apiserver $K8S_VERSION already in $out"
    return
  fi
  log "building kube-apiserver $K8S_VERSION from the module proxy (a few minutes)"
  local mod="$work/apiserver"
  mkdir -p "$mod"
  cd "$mod"
  cat > go.mod <<GOMOD
module nftpolicy.local/hack/apiserver

go 1.26
GOMOD
  printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' > tools.go
  sed -i '1i //go:build tools' tools.go
  go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
  # Every staging module k8s.io/kubernetes replaces with a ./staging path is published
  # under its own path at the matching v0.x version: point the replaces there.
  local kmod
  kmod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  sed -n '/^replace (/,/^)/p' "$kmod" | awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' |
    while read -r m; do go mod edit -replace="$m=$m@$STAGING_VERSION"; done
  go mod tidy >/dev/null 2>&1 || go mod tidy
  local pkg=k8s.io/component-base/version
  CGO_ENABLED=0 go build -trimpath -o "$out/kube-apiserver" \
    -ldflags "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean -X $pkg/verflag.programName=kube-apiserver" \
    k8s.io/kubernetes/cmd/kube-apiserver
  cd "$root"
}

build_etcd() {
  if [ -x "$out/etcd" ] && "$out/etcd" --version 2>/dev/null | grep "${ETCD_VERSION#v}" >/dev/null; then
    log "etcd $ETCD_VERSION already in $out"
    return
  fi
  log "building etcd $ETCD_VERSION from the module proxy"
  local mod="$work/etcd"
  mkdir -p "$mod"
  cd "$mod"
  cat > go.mod <<GOMOD
module nftpolicy.local/hack/etcd

go 1.26
GOMOD
  printf '//go:build tools\n\npackage main\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  cd "$root"
}

build_etcd
build_apiserver
log "control plane ready in $out"
