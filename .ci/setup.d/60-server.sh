#!/usr/bin/env bash
# Configuration server and failover tests: Debian's chromium for the dashboard screenshot test,
# psycopg for the PostgreSQL state store (the tests start PostgreSQL from /usr/local/bin when the
# binaries are there; under CI a missing one fails the run). Azurite comes from 50-azurite.sh. Idempotent.
set -euo pipefail
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null
  # PostgreSQL for the state store's tests (the image ships it; a bare Debian gets Debian's)
  command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
    || apt-get install -y -q postgresql >/dev/null
else
  echo "60-server: not root, skipping chromium (the dashboard test will skip)" >&2
fi
python -c "import psycopg" 2>/dev/null || pip install -q "psycopg[binary]>=3.1"
