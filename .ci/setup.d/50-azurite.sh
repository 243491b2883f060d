#!/usr/bin/env bash
# Azurite, the Azure Storage emulator (npm), for the data path's page blob tests. Idempotent.
# Installed project-locally into .ci/cache/node_modules (git-ignored); tests/agent/conftest.py finds it.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -x .ci/cache/node_modules/.bin/azurite-blob ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  apt-get install -y -q nodejs npm >/dev/null
fi
mkdir -p .ci/cache
npm install --silent --no-audit --no-fund --prefix .ci/cache azurite@3 >/dev/null
test -x .ci/cache/node_modules/.bin/azurite-blob
