"""Runbook `open-traffic-manager-endpoint`: send SharePoint's users to the side that now serves them.

The recovery plan runs it after its web group, with the plan context as JSON on stdin (see
`dr.failover.actions`). The Pulumi stack declares the plan's Traffic Manager profile with priority
routing (endpoint `on-premises` first, `azure` second) and, without a declared `azure_endpoint`, a
static public IP `<profile>-azure` for the Azure front end. This runbook works out the change:

    test failover       nothing in production changes: it names the test front end to check
    to Azure            associate the public IP with the recovered front end, disable `on-premises`
    back on premises    enable `on-premises` again (priority 1 wins)

and prints it as the exact `az` commands, and records it as JSON beside the context file
(`traffic-manager.json`). It makes no call to Azure itself: run the printed commands (or let your
automation account run them); with DR_TRAFFIC_MANAGER_APPLY=1 and the `az` CLI logged in, it runs
them. Exit status 0 when the change is worked out (and applied, if asked), 2 when the plan has no
Traffic Manager, 1 when an `az` command fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def commands(context: dict[str, Any]) -> tuple[str, list[list[str]]]:
    tm = context["traffic_manager"]
    profile, rg = tm["profile"], context["resource_group"]
    front = [m for m in context.get("group_machines", []) if m in context["machines"]]
    if context["failover_type"] == "test":
        where = ", ".join(
            f"{m} ({(context['machines'][m]['recovery'] or {}).get('vm', m)})" for m in front) or "the web group"
        return (f"test failover: Traffic Manager profile {profile} is left as it is (production keeps "
                f"{tm['on_premises_endpoint']}); check the test front end {where} in {rg} on {context['network']}",
                [])
    endpoint = ["az", "network", "traffic-manager", "endpoint", "update", "--resource-group", rg,
                "--profile-name", profile, "--type", "externalEndpoints", "--name", "on-premises"]
    if context["direction"] == "azure-to-primary":
        return (f"fail back: enable endpoint on-premises ({tm['on_premises_endpoint']}) of profile {profile}; "
                "priority 1 answers again", [[*endpoint, "--endpoint-status", "Enabled"]])
    steps: list[list[str]] = []
    if not tm.get("azure_endpoint"):
        for machine in front:
            recovery = context["machines"][machine]["recovery"] or {}
            vm = recovery.get("vm", machine)
            steps.append(["az", "network", "nic", "ip-config", "update", "--resource-group", rg,
                          # the stack names a recovery VM's first NIC <vm>-nic0, its IP configuration primary
                          "--nic-name", f"{vm}-nic0", "--name", "primary",
                          "--public-ip-address", f"{profile}-azure"])
            break  # one public IP: it goes to the first front end (a load balancer would take them all)
    steps.append([*endpoint, "--endpoint-status", "Disabled"])
    target = tm.get("azure_endpoint") or f"public IP {profile}-azure on {front[0] if front else 'the front end'}"
    return (f"{context['failover_type']} failover: profile {profile} answers with its azure endpoint ({target}); "
            f"endpoint on-premises ({tm['on_premises_endpoint']}) disabled", steps)


def main() -> int:
    context = json.load(sys.stdin)
    if not context.get("traffic_manager"):
        print(f"plan {context['plan']} has no traffic_manager: add one to the plan, or remove this runbook "
              "from it", file=sys.stderr)
        return 2
    summary, steps = commands(context)
    print(summary)
    for step in steps:
        print("  " + shlex.join(step))
    folder = Path(os.environ.get("DR_CONTEXT", "context.json")).parent
    record = {"job": context["job"], "plan": context["plan"], "failover_type": context["failover_type"],
              "direction": context["direction"], "summary": summary, "commands": steps, "applied": False}
    if steps and os.environ.get("DR_TRAFFIC_MANAGER_APPLY") == "1":
        if shutil.which("az") is None:
            print("DR_TRAFFIC_MANAGER_APPLY=1 but the az CLI is not installed: install it, or run the commands "
                  "above by hand", file=sys.stderr)
            return 1
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{shlex.join(step[:5])} failed: {done.stderr.strip()}", file=sys.stderr)
                return 1
        record["applied"] = True
    (folder / "traffic-manager.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"recorded in {folder / 'traffic-manager.json'}" + ("" if record["applied"] else
                                                              " (not applied: DR_TRAFFIC_MANAGER_APPLY is not 1)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
