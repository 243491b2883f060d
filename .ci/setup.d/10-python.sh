#!/usr/bin/env bash
# The dr package with every extra, and the agent package (installable on its own), editable.
set -euo pipefail
extras="azure,vmware,agent,server,postgres,docs,dev"
if [ -f agent/pyproject.toml ]; then
  pip install -q -e "./agent[capture,azure,metrics]" -e ".[$extras]"
else
  pip install -q -e ".[$extras]"
fi
