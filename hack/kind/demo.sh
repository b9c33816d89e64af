#!/usr/bin/env bash
# `make kind-demo`: the demo's workload and policies (config/samples/demo) on the kind
# cluster of `make kind`, with the connectivity matrix before and after, probed from
# inside the pods (agnhost connect, TCP 8080), across nodes.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
KIND_CLUSTER="${KIND_CLUSTER:-nftpolicy}"
KUBECONFIG="${KUBECONFIG:-$root/_out/kind/$KIND_CLUSTER.kubeconfig}"
KUBECTL="${KUBECTL:-$root/bin/conformance/kubectl}"
samples="$root/config/samples/demo"
kubectl() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }
log() { printf '\n==> %s\n' "$*"; }
[ -f "$KUBECONFIG" ] || { echo "kind-demo: no cluster ($KUBECONFIG): run make kind first" >&2; exit 1; }

pods=(ingress-nginx/ingress app/frontend app/backend other/client)
servers=(app/frontend app/backend)

# matrix: one row per client (from), one column per server (to), as make demo prints it:
# "." connected, "X" refused or timed out, "-" the pod itself.
matrix() {
  local ip c s
  declare -A ips
  for s in "${servers[@]}"; do
    ips[$s]="$(kubectl -n "${s%/*}" get pod "${s#*/}" -o jsonpath='{.status.podIP}')"
  done
  printf '  %-24s' "from \\ to"
  for s in "${servers[@]}"; do printf '%-22s' "$s"; done
  echo
  for c in "${pods[@]}"; do
    printf '  %-24s' "$c"
    for s in "${servers[@]}"; do
      if [ "$c" = "$s" ]; then
        printf '%-22s' "-"
      elif kubectl -n "${c%/*}" exec "${c#*/}" -- /agnhost connect --timeout=2s "${ips[$s]}:8080" >/dev/null 2>&1; then
        printf '%-22s' "."
      else
        printf '%-22s' "X"
      fi
    done
    echo
  done
}

log "The demo's workload (config/samples/demo/workload.yaml)"
kubectl apply -f "$samples/workload.yaml" >/dev/null
kubectl delete -f "$samples/policies.yaml" --ignore-not-found >/dev/null
for p in "${pods[@]}"; do
  kubectl -n "${p%/*}" wait --for=condition=Ready "pod/${p#*/}" --timeout=3m >/dev/null
done
kubectl get pods -n ingress-nginx -o wide --no-headers | awk '{print "  ingress-nginx/" $1, "on", $7, $6}'
kubectl get pods -n app -o wide --no-headers | awk '{print "  app/" $1, "on", $7, $6}'
kubectl get pods -n other -o wide --no-headers | awk '{print "  other/" $1, "on", $7, $6}'

log "Reachability without policies (TCP 8080)"
matrix

log "Applying config/samples/demo/policies.yaml: app/backend-policy (backend only from frontend), app/frontend-from-ingress"
kubectl apply -f "$samples/policies.yaml"
want="$(cat <<'WANT'
ingress-nginx/ingress . X
app/frontend - .
app/backend X -
other/client X X
WANT
)"
deadline=$((SECONDS + 30))
while :; do
  got="$(matrix)"
  norm="$(echo "$got" | tail -n +2 | awk '{print $1, $2, $3}')"
  [ "$norm" = "$want" ] && break
  [ "$SECONDS" -lt "$deadline" ] || { echo "$got"; echo "kind-demo: the matrix is not the expected one after 30 s" >&2; exit 1; }
done

log "Reachability with the policies: only the ingress controller reaches the frontend, only the frontend reaches the backend"
echo "$got"
node="$(kubectl -n app get pod backend -o jsonpath='{.spec.nodeName}')"
log "backend-policy in the kernel of $node (the backend's node): docker exec $node nft list table inet nftpolicy | grep -A3 backend-policy"
docker exec "$node" nft list table inet nftpolicy | grep -A3 'chain pol-in-.*backend-policy' || true
echo
echo "OK: enforced across nodes. Remove the demo with: kubectl delete -f config/samples/demo/"
