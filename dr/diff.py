"""What a change to the spec costs: two plans compared, for a pull-request comment or a bot.

`diff_estates(old, new)` plans both estates and lists what changes in protected machines, disks,
IOPS, servers (configuration, process, master target), storage accounts, vCPU quota and bandwidth.
`PlanDiff.quota_exceeded` is the CI gate: the new plan needs more vCPUs than the spec declares
(`dr diff` exits with `dr.errors.EXIT_QUOTA`).

`dr diff FILE --base REF` reads the same file at a git ref: `git archive REF` of the whole
repository is unpacked into a temporary directory, so includes resolve as they did at that ref.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from dr.errors import DrError, SpecUnreadable
from dr.model import Estate
from dr.plan import Plan, make_plan
from dr.plan.packing import r3


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Change(_Out):
    """One named thing (machine, disk, server, account) that is added, removed or changed."""

    name: str
    kind: str  # "added" | "removed" | "changed"
    fields: dict[str, list[Any]]  # field -> [before, after] (for added/removed: the one side's values)
    added: list[str] = []  # members (machines, disks) that join it
    removed: list[str] = []  # members that leave it


class Section(_Out):
    title: str
    changes: list[Change]


class QuotaDelta(_Out):
    total_before: int
    total_after: int
    declared_before: int
    declared_after: int
    shortfall_after: int
    by_family: dict[str, list[int]]  # family -> [before, after], only the families that change


class BandwidthDelta(_Out):
    site: str
    mbps_before: float | None
    mbps_after: float | None
    declared_mbps: float | None
    initial_replication_hours_before: float | None
    initial_replication_hours_after: float | None
    rpo_at_risk: bool


class PlanDiff(_Out):
    estate: str
    base: str  # what the old side is ("OLD.yaml", "origin/main:dr.yaml", "nothing")
    machines: Section
    disks: Section
    machines_before: int
    machines_after: int
    disks_before: int
    disks_after: int
    iops_before: float
    iops_after: float
    config_servers: Section
    process_servers: Section
    master_targets: Section
    storage_accounts: Section
    failover_vms: Section
    quota: QuotaDelta
    bandwidth: list[BandwidthDelta]
    errors: list[dict[str, str]]
    warnings: list[dict[str, str]]  # every warning of the new plan
    new_warnings: list[dict[str, str]]  # those the old plan did not have
    resources: dict[str, Any] | None  # dr.preview.resource_delta, when available
    resources_note: str

    @property
    def quota_exceeded(self) -> bool:
        return self.quota.total_after > self.quota.declared_after

    @property
    def empty(self) -> bool:
        sections = (self.machines, self.disks, self.config_servers, self.process_servers,
                    self.master_targets, self.storage_accounts, self.failover_vms)
        return not any(s.changes for s in sections) and not self.quota.by_family


def _compare(title: str, old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]],
             members: str | None = None) -> Section:
    """Items by name: added, removed, or changed (fields that differ; `members` as set changes)."""
    changes: list[Change] = []
    for name in new:
        if name not in old:
            values = {k: [v] for k, v in new[name].items() if k != members}
            changes.append(Change(name=name, kind="added", fields=values,
                                  added=list(new[name].get(members, [])) if members else []))
    for name in old:
        if name not in new:
            values = {k: [v] for k, v in old[name].items() if k != members}
            changes.append(Change(name=name, kind="removed", fields=values,
                                  removed=list(old[name].get(members, [])) if members else []))
    for name in new:
        if name in old:
            before, after = old[name], new[name]
            fields = {k: [before.get(k), v] for k, v in after.items() if k != members and before.get(k) != v}
            joined: list[str] = []
            left: list[str] = []
            if members:
                had, has = list(before.get(members, [])), list(after.get(members, []))
                had_set, has_set = set(had), set(has)
                joined = [m for m in has if m not in had_set]
                left = [m for m in had if m not in has_set]
            if fields or joined or left:
                changes.append(Change(name=name, kind="changed", fields=fields, added=joined, removed=left))
    return Section(title=title, changes=changes)


def _items(rows: list[BaseModel], key: str, keep: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        data = row.model_dump(mode="json")
        out[str(data[key])] = {k: data[k] for k in keep}
    return out


def _machines(estate: Estate | None) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    machines: dict[str, dict[str, Any]] = {}
    disks: dict[str, dict[str, Any]] = {}
    if estate is None:
        return machines, disks
    for m in estate.protected_machines:
        machines[m.name] = {
            "site": m.site, "os": m.os, "vcpus": m.vcpus, "memory_gb": m.memory_gb, "disks": len(m.disks),
            "iops": r3(sum(d.iops for d in m.disks)),
            "churn_gb_per_day": r3(sum(d.churn_gb_per_day for d in m.disks)),
        }
        for d in m.disks:
            disks[f"{m.name}/{d.name}"] = {"size_gb": d.size_gb, "iops": d.iops, "churn_gb_per_day": d.churn_gb_per_day}
    return machines, disks


def resource_delta(old: Estate | None, new: Estate) -> tuple[dict[str, Any] | None, str]:
    """The Pulumi resource delta when `dr.preview` and pulumi are installed; else None and why."""
    try:
        import pulumi  # noqa: F401

        from dr.preview import resource_delta as delta
    except ImportError as err:
        return None, f"resource delta left out: {err.name or 'dr.preview'} is not installed"
    if old is None:
        return None, "resource delta left out: there is no old estate to compare with"
    try:
        return dict(delta(old, new)), "resource delta from dr.preview (Pulumi's mock runtime)"
    except DrError as err:
        return None, f"resource delta left out: {err}"


def diff_estates(old: Estate | None, new: Estate, *, base: str, resources: bool = True) -> PlanDiff:
    """Plan both estates (None: nothing existed before) and compare the plans."""
    new_plan = make_plan(new)
    old_plan = make_plan(old) if old is not None else None
    return diff_plans(old_plan, new_plan, old, new, base=base, resources=resources)


def diff_plans(old_plan: Plan | None, new_plan: Plan, old: Estate | None, new: Estate, *, base: str,
               resources: bool = True) -> PlanDiff:
    def rows(plan: Plan | None, attr: str) -> list[BaseModel]:
        return list(getattr(plan, attr)) if plan is not None else []

    old_m, old_d = _machines(old)
    new_m, new_d = _machines(new)
    cs_keep = ("size", "volumes")
    ps_keep = ("site", "vcpus", "memory_gb", "cache_gb", "churn_gb_per_day", "machines")
    mts_keep = ("os", "size", "protected_disks", "machines")
    sa_keep = ("purpose", "source_iops", "target_iops", "disks")
    vm_keep = ("size", "vcpus", "family")
    old_q = old_plan.quota if old_plan else None
    families = sorted(set(new_plan.quota.vcpus_by_family) | set(old_q.vcpus_by_family if old_q else {}))
    by_family = {}
    for family in families:
        before = old_q.vcpus_by_family.get(family, 0) if old_q else 0
        after = new_plan.quota.vcpus_by_family.get(family, 0)
        if before != after:
            by_family[family] = [before, after]
    old_bw = {b.site: b for b in (old_plan.bandwidth if old_plan else [])}
    bandwidth = []
    for b in new_plan.bandwidth:
        o = old_bw.get(b.site)
        bandwidth.append(BandwidthDelta(
            site=b.site, mbps_before=o.mbps_for_rpo if o else None, mbps_after=b.mbps_for_rpo,
            declared_mbps=b.declared_mbps,
            initial_replication_hours_before=o.initial_replication_hours if o else None,
            initial_replication_hours_after=b.initial_replication_hours, rpo_at_risk=b.rpo_at_risk,
        ))
    for site, o in old_bw.items():
        if all(b.site != site for b in new_plan.bandwidth):
            bandwidth.append(BandwidthDelta(
                site=site, mbps_before=o.mbps_for_rpo, mbps_after=None, declared_mbps=o.declared_mbps,
                initial_replication_hours_before=o.initial_replication_hours,
                initial_replication_hours_after=None, rpo_at_risk=False,
            ))
    delta, note = resource_delta(old, new) if resources else (None, "resource delta not requested")
    return PlanDiff(
        estate=new_plan.estate,
        base=base,
        machines=_compare("protected machines", old_m, new_m),
        disks=_compare("disks", old_d, new_d),
        machines_before=old_plan.protected_machines if old_plan else 0,
        machines_after=new_plan.protected_machines,
        disks_before=old_plan.protected_disks if old_plan else 0,
        disks_after=new_plan.protected_disks,
        iops_before=old_plan.source_iops if old_plan else 0.0,
        iops_after=new_plan.source_iops,
        config_servers=_compare("configuration servers",
                                _items(rows(old_plan, "config_servers"), "name", (*cs_keep, "machines")),
                                _items(rows(new_plan, "config_servers"), "name", (*cs_keep, "machines")), "machines"),
        process_servers=_compare("process servers", _items(rows(old_plan, "process_servers"), "name", ps_keep),
                                 _items(rows(new_plan, "process_servers"), "name", ps_keep), "machines"),
        master_targets=_compare("master targets", _items(rows(old_plan, "master_targets"), "name", mts_keep),
                                _items(rows(new_plan, "master_targets"), "name", mts_keep), "machines"),
        storage_accounts=_compare("storage accounts", _items(rows(old_plan, "storage_accounts"), "name", sa_keep),
                                  _items(rows(new_plan, "storage_accounts"), "name", sa_keep), "disks"),
        failover_vms=_compare("failover VMs", _items(rows(old_plan, "failover_vms"), "machine", vm_keep),
                              _items(rows(new_plan, "failover_vms"), "machine", vm_keep)),
        quota=QuotaDelta(
            total_before=old_q.total_vcpus if old_q else 0,
            total_after=new_plan.quota.total_vcpus,
            declared_before=old_q.declared_vcpus if old_q else 0,
            declared_after=new_plan.quota.declared_vcpus,
            shortfall_after=new_plan.quota.shortfall_vcpus,
            by_family=by_family,
        ),
        bandwidth=bandwidth,
        errors=[e.model_dump() for e in new_plan.errors],
        warnings=[w.model_dump() for w in new_plan.warnings],
        new_warnings=[w.model_dump() for w in new_plan.warnings
                      if old_plan is None or w not in old_plan.warnings],
        resources=delta,
        resources_note=note,
    )


def git_toplevel(path: Path) -> Path:
    try:
        out = subprocess.run(["git", "-C", str(path.parent.resolve()), "rev-parse", "--show-toplevel"],
                             check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise SpecUnreadable(
            f"{path}: --base needs the file inside a git repository ({detail.strip()}); "
            "compare two files instead: dr diff OLD NEW"
        ) from None
    return Path(out.stdout.strip())


@contextmanager
def checkout_at(path: Path, ref: str) -> Iterator[Path | None]:
    """The same file at a git ref, with the whole tree beside it (None: the file is new since ref)."""
    top = git_toplevel(path)
    relative = path.resolve().relative_to(top)
    try:
        archive = subprocess.run(["git", "-C", str(top), "archive", "--format=tar", ref],
                                 check=True, capture_output=True)
    except subprocess.CalledProcessError as err:
        raise SpecUnreadable(
            f"git ref {ref!r}: {err.stderr.decode(errors='replace').strip()}; fetch it first "
            "(git fetch origin main) or name another ref"
        ) from None
    with tempfile.TemporaryDirectory(prefix="dr-diff-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        old = Path(tmp) / relative
        yield old if old.exists() else None


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if len(value) <= 8 else f"{len(value)} items"
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def _change_line(change: Change) -> str:
    sign = {"added": "+", "removed": "-", "changed": "~"}[change.kind]
    parts = []
    for field, values in change.fields.items():
        if change.kind == "changed":
            parts.append(f"{field} {_value(values[0])} -> {_value(values[1])}")
        else:
            parts.append(f"{field} {_value(values[0])}")
    if change.added:
        parts.append("+ " + ", ".join(change.added))
    if change.removed:
        parts.append("- " + ", ".join(change.removed))
    return f"{sign} {change.name}" + (f": {'; '.join(parts)}" if parts else "")


def _sections(diff: PlanDiff) -> list[Section]:
    return [diff.machines, diff.disks, diff.config_servers, diff.process_servers, diff.master_targets,
            diff.storage_accounts, diff.failover_vms]


def render_diff_text(diff: PlanDiff) -> str:
    out = [f"dr diff {diff.estate}: against {diff.base}"]
    if diff.empty:
        out.append("no change in machines, disks, servers, accounts or quota")
    for section in _sections(diff):
        if section.changes:
            out += ["", section.title]
            out += ["  " + _change_line(c) for c in section.changes]
    q = diff.quota
    out += ["", f"protected machines {diff.machines_before} -> {diff.machines_after}, disks "
            f"{diff.disks_before} -> {diff.disks_after}",
            f"source IOPS {diff.iops_before:g} -> {diff.iops_after:g}",
            f"vCPU {q.total_before} -> {q.total_after} (declared {q.declared_after}, shortfall {q.shortfall_after})"]
    out += [f"  {family}: {v[0]} -> {v[1]}" for family, v in q.by_family.items()]
    for b in diff.bandwidth:
        risk = ", RPO AT RISK" if b.rpo_at_risk else ""
        out.append(
            f"bandwidth {b.site}: {_value(b.mbps_before)} -> {_value(b.mbps_after)} Mbps for RPO "
            f"(declared {_value(b.declared_mbps)}), initial replication {_value(b.initial_replication_hours_before)} "
            f"-> {_value(b.initial_replication_hours_after)} h{risk}"
        )
    if diff.quota_exceeded:
        out.append(f"QUOTA: the new plan needs {q.total_after} vCPU, {q.declared_after} declared: "
                   f"request {q.shortfall_after} more")
    out += [f"error: {e['path']}: {e['message']}" for e in diff.errors]
    out += [f"new warning: {w['path']}: {w['message']}" for w in diff.new_warnings]
    if diff.resources is not None:
        out += ["", "Azure resources (Pulumi)"] + ["  " + line for line in _resource_lines(diff.resources)]
    else:
        out.append(diff.resources_note)
    return "\n".join(out) + "\n"


def render_diff_markdown(diff: PlanDiff) -> str:
    q = diff.quota
    gate = (f":x: **Quota**: the new plan needs {q.total_after} vCPU; {q.declared_after} declared. "
            f"Request {q.shortfall_after} more from Azure support." if diff.quota_exceeded
            else f":white_check_mark: Quota: {q.total_after} of {q.declared_after} vCPU.")
    out = [f"### DR plan change for `{diff.estate}`", "", f"Against `{diff.base}`.", "", gate, ""]
    if diff.errors:
        out += ["**The new plan has errors:**", ""] + [f"- `{e['path']}`: {e['message']}" for e in diff.errors] + [""]
    if diff.new_warnings:
        out += ["**New warnings:**", ""] + [f"- `{w['path']}`: {w['message']}" for w in diff.new_warnings] + [""]
    out += ["| | before | after |", "|---|---|---|",
            f"| protected machines | {diff.machines_before} | {diff.machines_after} |",
            f"| protected disks | {diff.disks_before} | {diff.disks_after} |",
            f"| source IOPS | {diff.iops_before:g} | {diff.iops_after:g} |",
            f"| vCPU (total) | {q.total_before} | {q.total_after} |"]
    out += [f"| vCPU {family} | {v[0]} | {v[1]} |" for family, v in q.by_family.items()]
    for b in diff.bandwidth:
        out.append(f"| Mbps for RPO at {b.site} | {_value(b.mbps_before)} | {_value(b.mbps_after)} |")
        out.append(f"| initial replication h at {b.site} | {_value(b.initial_replication_hours_before)} | "
                   f"{_value(b.initial_replication_hours_after)} |")
    out.append("")
    if diff.empty:
        out += ["No change in machines, disks, servers, accounts or quota.", ""]
    for section in _sections(diff):
        if section.changes:
            out += [f"**{section.title.capitalize()}**", "", "```diff"]
            out += [_change_line(c) for c in section.changes]
            out += ["```", ""]
    if diff.resources is not None:
        out += ["**Azure resources** (Pulumi)", "", "```diff", *_resource_lines(diff.resources), "```", ""]
    else:
        out += [f"_{diff.resources_note}_", ""]
    return "\n".join(out)


def _resource_lines(delta: dict[str, Any]) -> list[str]:
    """`+ Type name`, `- Type name`, `~ Type name: key old -> new` from dr.preview.resource_delta."""
    def kind(row: dict[str, Any]) -> str:
        return str(row.get("type", "")).rsplit(":", 1)[-1]

    lines = [f"+ {kind(r)} {r.get('name', '')}" for r in delta.get("added", [])]
    lines += [f"- {kind(r)} {r.get('name', '')}" for r in delta.get("removed", [])]
    for row in delta.get("changed", []):
        changes = row.get("changes", {})
        detail = "; ".join(f"{k} {_value(v.get('old'))} -> {_value(v.get('new'))}" for k, v in changes.items())
        lines.append(f"~ {kind(row)} {row.get('name', '')}" + (f": {detail}" if detail else ""))
    return lines or ["(no resource changes)"]
