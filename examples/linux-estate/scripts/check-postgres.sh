#!/bin/sh
# After the database group of plan `orders`: every recovered PostgreSQL server answers, reached by its
# VM name in the recovery network (Azure's internal DNS resolves VM names inside the VNet, so the
# runner must run there). The plan context comes in $DR_CONTEXT (see dr.failover.actions).
set -eu
if ! command -v pg_isready >/dev/null 2>&1; then
    echo "pg_isready is not installed on the runner: apt-get install postgresql-client" >&2
    exit 1
fi
vms=$(python3 -c '
import json, os
context = json.load(open(os.environ["DR_CONTEXT"]))
print(" ".join((context["machines"][m]["recovery"] or {}).get("vm", m) for m in context.get("group_machines", [])))
')
for vm in $vms; do
    pg_isready -h "$vm" -p 5432 -t 30 >/dev/null || { echo "$vm: PostgreSQL does not answer on port 5432" >&2; exit 1; }
    echo "$vm: PostgreSQL answers"
done
