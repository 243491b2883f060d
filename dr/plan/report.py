"""A plan for people: plain text for a terminal, Markdown for a pull request, HTML for a browser.

Every server and account is printed with what it carries and the reasons (rule and numbers) that
put it there, so a reviewer can check each decision by hand.
"""

from __future__ import annotations

import click

from dr.plan.result import Plan


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if abs(value) < 1e15 else str(value)


def _short(items: list[str], limit: int = 12) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... (+{len(items) - limit} more)"


def summary_line(plan: Plan) -> str:
    q = plan.quota
    return (
        f"{plan.protected_machines} protected machine(s), {plan.protected_disks} disk(s), "
        f"{_num(plan.source_iops)} source IOPS -> {len(plan.config_servers)} configuration, "
        f"{len(plan.process_servers)} process and {len(plan.master_targets)} master target server(s), "
        f"{len(plan.storage_accounts)} storage account(s), {q.total_vcpus} vCPU of {q.declared_vcpus} declared"
    )


def render_text(plan: Plan, *, colour: bool = False) -> str:
    """Plain text; `colour` (a terminal) makes headings bold, errors red, warnings and risks yellow."""

    def style(text: str, **how: object) -> str:
        return click.style(text, **how) if colour else text  # type: ignore[arg-type]

    out: list[str] = [style(f"Plan for {plan.estate} ({plan.support_profile})", bold=True), summary_line(plan), ""]

    def block(title: str) -> None:
        out.append(style(title, bold=True))
        out.append("-" * len(title))

    def reasons(rs: list[str]) -> None:
        out.extend(f"      because: {r}" for r in rs)

    block("Configuration servers")
    for cs in plan.config_servers:
        out.append(f"  {cs.name}  {cs.size}  {cs.volumes}/{cs.capacity} volumes  machines: {_short(cs.machines)}")
        reasons(cs.reasons)
    out.append("")
    block("Process servers")
    for ps in plan.process_servers:
        origin = "declared" if ps.declared else "added"
        out.append(
            f"  {ps.name}  site {ps.site}  {origin}  {ps.vcpus} vCPU, {_num(ps.memory_gb)} GB, "
            f"{_num(ps.cache_gb)} GB cache  {_num(ps.churn_gb_per_day)} GB/day  machines: {_short(ps.machines)}"
        )
        reasons(ps.reasons)
    out.append("")
    block("Master target servers")
    for mts in plan.master_targets:
        out.append(
            f"  {mts.name}  {mts.os}  {mts.size}  {mts.protected_disks}/{mts.capacity} disks  "
            f"retention in {mts.retention_account}  machines: {_short(mts.machines)}"
        )
        reasons(mts.reasons)
    out.append("")
    block("Storage accounts")
    for sa in plan.storage_accounts:
        out.append(
            f"  {sa.name}  {sa.purpose}  {sa.redundancy}  {_num(sa.source_iops)} source IOPS -> "
            f"{_num(sa.target_iops)}/{sa.max_iops} IOPS  disks: {_short(sa.disks)}"
        )
        reasons(sa.reasons)
    out.append("")
    block("Failover VMs")
    for vm in plan.failover_vms:
        out.append(f"  {vm.machine}  {vm.size}  {vm.vcpus} vCPU  {vm.family}")
        reasons(vm.reasons)
    out.append("")
    block("Quota")
    for family, count in plan.quota.vcpus_by_family.items():
        out.append(f"  {family}: {count} vCPU")
    out.append(
        f"  total {plan.quota.total_vcpus} vCPU, declared {plan.quota.declared_vcpus}, "
        f"shortfall {plan.quota.shortfall_vcpus}"
    )
    reasons(plan.quota.reasons)
    out.append("")
    block("Bandwidth")
    for bw in plan.bandwidth:
        risk = style("  RPO AT RISK", fg="yellow", bold=True) if bw.rpo_at_risk else ""
        out.append(
            f"  {bw.site}: {_num(bw.mbps_for_rpo)} Mbps for RPO, {_num(bw.declared_mbps)} Mbps declared, "
            f"initial replication {_num(bw.initial_replication_hours)} h{risk}"
        )
        reasons(bw.reasons)
    if plan.errors:
        out += ["", style("Errors", fg="red", bold=True)]
        out += [f"  {e.path}: {e.message}" for e in plan.errors]
    if plan.warnings:
        out += ["", style("Warnings", fg="yellow", bold=True)]
        out += [f"  {w.path}: {w.message}" for w in plan.warnings]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _why(reasons: list[str]) -> str:
    return "<br>".join(reasons)


def render_markdown(plan: Plan) -> str:
    q = plan.quota
    out = [f"## Plan for `{plan.estate}` ({plan.support_profile})", "", summary_line(plan), ""]
    if plan.errors:
        out += ["**Errors**", ""] + [f"- `{e.path}`: {e.message}" for e in plan.errors] + [""]
    if plan.warnings:
        out += ["**Warnings**", ""] + [f"- `{w.path}`: {w.message}" for w in plan.warnings] + [""]
    out += ["### Configuration servers", ""]
    out += _table(["name", "size", "volumes", "machines", "why"],
                  [[c.name, c.size, f"{c.volumes}/{c.capacity}", _short(c.machines), _why(c.reasons)]
                   for c in plan.config_servers])
    out += ["", "### Process servers", ""]
    out += _table(["name", "site", "size", "GB/day", "machines", "why"],
                  [[p.name, p.site, f"{p.vcpus} vCPU, {_num(p.memory_gb)} GB, {_num(p.cache_gb)} GB cache",
                    _num(p.churn_gb_per_day), _short(p.machines), _why(p.reasons)] for p in plan.process_servers])
    out += ["", "### Master target servers", ""]
    out += _table(["name", "os", "size", "disks", "machines", "retention account", "why"],
                  [[m.name, m.os, m.size, f"{m.protected_disks}/{m.capacity}", _short(m.machines),
                    m.retention_account, _why(m.reasons)] for m in plan.master_targets])
    out += ["", "### Storage accounts", ""]
    out += _table(["name", "purpose", "source IOPS", "IOPS", "disks", "why"],
                  [[s.name, s.purpose, _num(s.source_iops), f"{_num(s.target_iops)}/{s.max_iops}",
                    _short(s.disks), _why(s.reasons)] for s in plan.storage_accounts])
    out += ["", "### Failover VMs and quota", ""]
    out += _table(["machine", "size", "vCPU", "family"],
                  [[v.machine, v.size, str(v.vcpus), v.family] for v in plan.failover_vms])
    out += [""]
    out += _table(["family", "vCPU"], [[f, str(c)] for f, c in q.vcpus_by_family.items()])
    out += ["", f"Total **{q.total_vcpus}** vCPU, declared {q.declared_vcpus}, shortfall **{q.shortfall_vcpus}**.", ""]
    out += ["### Bandwidth", ""]
    out += _table(["site", "Mbps for RPO", "declared Mbps", "initial replication h", "RPO at risk", "why"],
                  [[b.site, _num(b.mbps_for_rpo), _num(b.declared_mbps), _num(b.initial_replication_hours),
                    "yes" if b.rpo_at_risk else "no", _why(b.reasons)] for b in plan.bandwidth])
    return "\n".join(out) + "\n"


def render_html(plan: Plan) -> str:
    from dr.blueprints import render

    return render("reports/plan.html.j2", plan=plan, summary=summary_line(plan), num=_num)
