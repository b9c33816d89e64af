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

# built BINARY VERSION: $out/BINARY exists and its --version names VERSION.
built() {
  if [ -x "$out/$1" ] && "$out/$1" --version 2>/dev/null | grep "$2" >/dev/null; then
    log "$1 $2 already in $out"
    return 0
  fi
  return 1
}

# tools_module NAME PACKAGE MODULE@VERSION: creates and enters a throwaway module that
# imports PACKAGE (behind a build tag, for go mod tidy) and requires MODULE@VERSION.
tools_module() {
  local mod="$work/$1"
  mkdir -p "$mod"
  cd "$mod"
  printf 'module nftpolicy.local/hack/%s\n\ngo 1.26\n' "$1" > go.mod
  printf '//go:build tools\n\npackage main\n\nimport _ "%s"\n' "$2" > tools.go
  go mod edit -require="$3"
}

build_apiserver() {
  built kube-apiserver "$K8S_VERSION" && return
  log "building kube-apiserver $K8S_VERSION from the module proxy (a few minutes)"
  tools_module apiserver k8s.io/kubernetes/cmd/kube-apiserver "k8s.io/kubernetes@$K8S_VERSION"
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
  built etcd "${ETCD_VERSION#v}" && return
  log "building etcd $ETCD_VERSION from the module proxy"
  tools_module etcd go.etcd.io/etcd/server/v3 "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  cd "$root"
}

build_etcd
build_apiserver
log "control plane ready in $out"
