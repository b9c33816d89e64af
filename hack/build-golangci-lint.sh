#!/usr/bin/env bash
# Builds golangci-lint from the Go module proxy into bin/golangci-lint and reuses it when it
# is already there at the wanted version. It is built with the go command of this machine
# (not downloaded as a release binary) because golangci-lint must be built with a Go at least
# as new as the code it analyses; golangci-lint/v2 has no replace directives, so
# `go install pkg@version` is enough. `make lint` runs it with .golangci.yml.
set -euo pipefail

GOLANGCI_LINT_VERSION="${GOLANGCI_LINT_VERSION:-v2.15.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/bin}"
mkdir -p "$out"

# `golangci-lint version --short` prints the module version without the leading v.
if [ -x "$out/golangci-lint" ] && [ "v$("$out/golangci-lint" version --short 2>/dev/null)" = "$GOLANGCI_LINT_VERSION" ]; then
  printf '==> golangci-lint %s already in %s\n' "$GOLANGCI_LINT_VERSION" "$out" >&2
  exit 0
fi
printf '==> building golangci-lint %s from the module proxy (a few minutes on 2 cores)\n' "$GOLANGCI_LINT_VERSION" >&2
GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
  "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
printf '==> golangci-lint %s built into %s\n' "$("$out/golangci-lint" version --short)" "$out" >&2
