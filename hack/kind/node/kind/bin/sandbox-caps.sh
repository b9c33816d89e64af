#!/bin/sh
# Runs before containerd (containerd.service.d/10-sandbox-caps.conf). A privileged pod
# (kube-proxy) asks runc for every capability, and a pod sandbox lowers its
# oom_score_adj: both fail where this node's capability bounding set lacks a capability
# (a sandboxed CI host without CAP_SYS_RESOURCE). Only there, this points containerd's
# runc at /usr/local/bin/capwrap (which drops the capabilities the host cannot grant)
# and sets restrict_oom_score_adj. With a full bounding set it changes nothing.
set -eu
config=/etc/containerd/config.toml
bnd="$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)"
last="$(cat /proc/sys/kernel/cap_last_cap)"
full="$(printf '%x' $(( (1 << (last + 1)) - 1 )))"
if [ "$(printf '%x' "0x$bnd")" = "$full" ]; then
  exit 0
fi
echo "sandbox-caps: capability bounding set $bnd is not full ($full): runc through capwrap, restrict_oom_score_adj on" >&2
sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$config"
if ! grep -q 'BinaryName = "/usr/local/bin/capwrap"' "$config"; then
  sed -i 's|^\(\s*\)SystemdCgroup = true|\1SystemdCgroup = true\n\1BinaryName = "/usr/local/bin/capwrap"|' "$config"
fi
