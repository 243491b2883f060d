#!/usr/bin/env bash
# `dr lab` (dr/lab): the whole estate on this machine. Network namespaces and the bridge (iproute2),
# sshd in each source machine for push installation (openssh-server, ssh-keygen from openssh-client),
# loop devices with ext4 (util-linux, mount, e2fsprogs). Azurite comes from 50-azurite.sh. Idempotent.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "70-lab: not root, skipping the Debian packages (the lab's root-only tests will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
need=()
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null && command -v unshare >/dev/null && command -v nsenter >/dev/null || need+=(util-linux)
command -v mount >/dev/null || need+=(mount)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get install -y -q "${need[@]}" >/dev/null
fi
# sshd's privilege separation directory (the Debian service creates it at start; the lab runs sshd itself)
mkdir -p /run/sshd
