#!/bin/sh
# Imports the container images this node image carries (/kind/images/*.tar: the
# control plane, kube-proxy, etcd, CoreDNS, pause, Flannel, agnhost) into containerd's
# k8s.io namespace, once per node, before the kubelet starts (nftpolicy-images.service).
# There is no registry to pull them from.
set -eu
marker=/var/lib/nftpolicy-images.done
[ -e "$marker" ] && exit 0
snapshotter="$(sed -n 's/^\s*snapshotter = "\(.*\)"/\1/p' /etc/containerd/config.toml | head -n1)"
i=0
until ctr version >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 120 ] || { echo "containerd did not answer" >&2; exit 1; }
  sleep 0.5
done
for f in /kind/images/*.tar; do
  ctr --namespace=k8s.io images import --snapshotter="${snapshotter:-overlayfs}" "$f" >/dev/null
done
touch "$marker"
