#!/usr/bin/env bash
# debootstrap (Debian's package): tests/stacks/test_first_boot.py builds a fresh Debian root file
# system and runs a master target's rendered cloud-init in it. Idempotent.
set -euo pipefail
if command -v debootstrap >/dev/null; then
  exit 0
fi
apt-get install -y -q debootstrap >/dev/null
command -v debootstrap >/dev/null
