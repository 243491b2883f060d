#!/usr/bin/env bash
# Capture (agent/dr_agent/capture): FUSE for the write-splitter, ext4 tools and util-linux
# (losetup, blkdiscard, fstrim, mount) for the loop-device tests. Idempotent.
# Tracking mode needs tracefs; the tracker mounts it at /sys/kernel/tracing itself when missing.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "40-capture: not root, skipping the Debian packages (the root-only tests will skip)" >&2
  exit 0
fi
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null && command -v blkdiscard >/dev/null && command -v fstrim >/dev/null || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get install -y -q fuse3 e2fsprogs util-linux >/dev/null
fi
# /dev/fuse exists once the module is loaded (built in on most kernels; harmless when it is)
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
# mfusepy (the agent's 'capture' extra) is installed by 10-python.sh with the agent package
python -c "import mfusepy" 2>/dev/null || pip install -q "mfusepy>=1.0"
