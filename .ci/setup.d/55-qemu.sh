#!/usr/bin/env bash
# qemu-img (Debian's qemu-utils): the VHD tests read exported disks with another implementation of
# the format (`qemu-img info -f vpc`, `qemu-img compare`). Idempotent.
set -euo pipefail
if command -v qemu-img >/dev/null; then
  exit 0
fi
apt-get install -y -q qemu-utils >/dev/null
command -v qemu-img >/dev/null
