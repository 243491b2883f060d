#!/usr/bin/env bash
# The Pulumi stack's tests: cloud-init (Debian's) validates the rendered cloud-config against
# cloud-init's own schema (`cloud-init schema --config-file`). pulumi and pulumi-azure-native come
# with the dr package's `azure` extra (10-python.sh); the Pulumi CLI is not needed (mock runtime).
# Idempotent; --no-install-recommends keeps it to the schema tool and its Python modules.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v cloud-init >/dev/null; then
  apt-get install -y -q --no-install-recommends cloud-init >/dev/null
fi
