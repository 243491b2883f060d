"""`dr show`: a readable summary of an estate, as data first (JSON), then rendered as text or Markdown."""

from __future__ import annotations

from typing import Any

from dr.duration import format_duration
from dr.model import Action, Estate


def _action(action: Action) -> str:
    if action.kind == "manual":
        return f"manual: {action.manual}"
    if action.kind == "script":
        return f"script: {action.script} (timeout {format_duration(action.timeout)})"
    return f"runbook: {action.runbook}"


def summary(estate: Estate) -> dict[str, Any]:
    machines = []
    for m in estate.machines:
        group = estate.group_of(m.name)
        machines.append({
            "name": m.name, "site": m.site, "kind": m.kind, "os": m.os, "vcpus": m.vcpus,
            "memory_gb": m.memory_gb, "nics": m.nics, "disks": len(m.disks),
            "size_gb": sum(d.size_gb for d in m.disks), "iops": sum(d.iops for d in m.disks),
            "churn_gb_per_day": sum(d.churn_gb_per_day for d in m.disks),
            "protection_group": group.name if group else None,
        })
    return {
        "estate": estate.estate,
        "support_profile": estate.support_profile,
        "azure": {
            "region": estate.azure.region, "resource_group": estate.azure.resource_group,
            "connectivity": estate.azure.connectivity, "vnet": estate.azure.network.vnet,
            "address_space": estate.azure.network.address_space,
            "storage_redundancy": estate.azure.storage_redundancy, "quota_vcpus": estate.azure.quota.vcpus,
        },
        "sites": [{
            "name": s.name,
            "vcenter": s.vcenter.host if s.vcenter else None,
            "esxi_hosts": [h.host for h in s.esxi_hosts],
            "process_servers": [p.name for p in s.process_servers],
            "bandwidth_mbps": s.bandwidth_mbps,
        } for s in estate.sites],
        "machines": machines,
        "protection_groups": [{
            "name": g.name, "members": list(g.members),
            "multi_vm_consistency": g.policy.multi_vm_consistency,
            "rpo_threshold": format_duration(g.policy.rpo_threshold),
            "retention": format_duration(g.policy.retention),
            "app_consistent_every": format_duration(g.policy.app_consistent_every)
            if g.policy.app_consistent_every else None,
        } for g in estate.protection_groups],
        "recovery_plans": [{
            "name": p.name,
            "failback": p.failback,
            "groups": [{
                "name": g.name, "machines": list(g.machines),
                "before": [_action(a) for a in g.before], "after": [_action(a) for a in g.after],
            } for g in p.groups],
            "traffic_manager": p.traffic_manager.profile if p.traffic_manager else None,
        } for p in estate.recovery_plans],
        "notifications": {"email": list(estate.notifications.email),
                          "events": list(estate.notifications.events)},
    }


_MACHINE_COLUMNS = [("name", "machine"), ("site", "site"), ("kind", "kind"), ("os", "os"), ("vcpus", "vCPU"),
                    ("memory_gb", "GB RAM"), ("disks", "disks"), ("size_gb", "disk GB"), ("iops", "IOPS"),
                    ("churn_gb_per_day", "churn GB/day"), ("protection_group", "group")]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def to_markdown(data: dict[str, Any]) -> str:
    az = data["azure"]
    out = [f"## Estate `{data['estate']}` ({data['support_profile']})", "",
           f"Azure: {az['region']}, resource group `{az['resource_group']}`, {az['connectivity']}, "
           f"VNet `{az['vnet']}` {az['address_space']}, storage {az['storage_redundancy']}, "
           f"quota {az['quota_vcpus']} vCPUs", "", "### Machines", "",
           "| " + " | ".join(h for _, h in _MACHINE_COLUMNS) + " |",
           "|" + " --- |" * len(_MACHINE_COLUMNS)]
    for m in data["machines"]:
        out.append("| " + " | ".join(_cell(m[k]) for k, _ in _MACHINE_COLUMNS) + " |")
    out += ["", "### Protection groups", ""]
    for g in data["protection_groups"]:
        mvc = ", multi-VM consistent" if g["multi_vm_consistency"] else ""
        out.append(f"- **{g['name']}**: {', '.join(g['members'])} (RPO alert {g['rpo_threshold']}, "
                   f"retention {g['retention']}, app-consistent every {g['app_consistent_every'] or 'never'}{mvc})")
    out += ["", "### Recovery plans", ""]
    for p in data["recovery_plans"]:
        tm = f" (Traffic Manager `{p['traffic_manager']}`)" if p["traffic_manager"] else ""
        out.append(f"- **{p['name']}**{tm}")
        for i, g in enumerate(p["groups"], 1):
            actions = "; ".join([*(f"before {a}" for a in g["before"]), *(f"after {a}" for a in g["after"])])
            out.append(f"  {i}. {g['name']}: {', '.join(g['machines'])}" + (f" ({actions})" if actions else ""))
    return "\n".join(out) + "\n"


def to_text(data: dict[str, Any], *, colour: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(no_color=not colour, highlight=False, soft_wrap=True, width=None if colour else 160)
    az = data["azure"]
    console.print(f"[bold]{data['estate']}[/bold] ({data['support_profile']}): Azure {az['region']}, "
                  f"resource group {az['resource_group']}, {az['connectivity']}, quota {az['quota_vcpus']} vCPUs")
    for site in data["sites"]:
        where = site["vcenter"] or ", ".join(site["esxi_hosts"]) or "physical only"
        console.print(f"site {site['name']}: {where}; process servers: {', '.join(site['process_servers']) or '-'}; "
                      f"bandwidth {_cell(site['bandwidth_mbps'])} Mbps")
    table = Table(box=None, show_edge=False, pad_edge=False)
    for key, header in _MACHINE_COLUMNS:
        table.add_column(header, justify="right" if key in ("vcpus", "memory_gb", "disks", "size_gb", "iops",
                                                            "churn_gb_per_day") else "left")
    for m in data["machines"]:
        table.add_row(*(_cell(m[k]) for k, _ in _MACHINE_COLUMNS))
    console.print(table)
    for g in data["protection_groups"]:
        console.print(f"protection group {g['name']}: {', '.join(g['members'])}; RPO alert {g['rpo_threshold']}, "
                      f"retention {g['retention']}" + (", multi-VM consistent" if g["multi_vm_consistency"] else ""))
    for p in data["recovery_plans"]:
        console.print(f"recovery plan {p['name']}:")
        for i, g in enumerate(p["groups"], 1):
            console.print(f"  {i}. {g['name']}: {', '.join(g['machines'])}")
            for a in g["before"]:
                console.print(f"     before: {a}")
            for a in g["after"]:
                console.print(f"     after: {a}")
