"""The inventory file: discovered machines as YAML a spec includes (`include: [inventory.yaml]`).

Rediscovery edits the file in place with ruamel.yaml's round trip: comments, key order and every
field discovery does not produce (tags, azure_size, clustered, a disk's iops/churn/used_gb, ...) are
kept; discovered fields are refreshed; machines of the same source that are gone are removed. The
result is a list of `Change`s (added, removed, changed with the fields) for a pull request.

A machine is matched to its entry by VMware instance UUID first (a renamed VM stays the same entry),
then by name. Only machines the source owns (same vCenter for `dr discover vcenter`) can be removed.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from dr.errors import SpecUnreadable
from dr.model import Machine, Replicability

HEADER = (
    "Inventory written by `dr discover`; include it from the spec: include: [{name}]\n"
    "Rediscovery refreshes discovered facts in place and keeps your comments and the fields it does\n"
    "not produce (tags, azure_size, clustered, per-disk iops/churn_gb_per_day, ...).\n"
)

# Machine fields discovery produces (refreshed on every run); all others are the user's.
MACHINE_FIELDS: tuple[str, ...] = (
    "name", "site", "kind", "address", "os", "arch", "vcpus", "memory_gb", "nics", "firmware", "secure_boot",
    "power_state", "tools", "file_systems", "volume_manager", "multipath", "vmware",
)
# Disk fields discovery produces; iops, churn_gb_per_day and used_gb are the profiler's or the user's.
DISK_FIELDS: tuple[str, ...] = (
    "name", "size_gb", "label", "device", "controller", "datastore", "thin", "mount_points", "file_system",
)
_REQUIRED = ("name", "site", "kind", "os", "vcpus", "memory_gb", "nics", "disks")

ChangeKind = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    machine: str
    details: tuple[str, ...] = ()
    replicable: bool | None = None
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"change": self.kind, "machine": self.machine, "details": list(self.details),
                "replicable": self.replicable, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Outcome:
    """What a write did: the changes, and the verdict of every machine the source reported."""

    path: Path
    changes: tuple[Change, ...]
    verdicts: tuple[tuple[str, Replicability], ...] = field(default=())

    @property
    def not_replicable(self) -> list[tuple[str, Replicability]]:
        return [(name, v) for name, v in self.verdicts if not v.replicable]


# ---------------------------------------------------------------------------------------------
# Reading and writing YAML (round trip).


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def load(path: Path) -> CommentedMap:
    """The inventory document (a new, commented one when the file does not exist yet)."""
    if not path.exists():
        doc = CommentedMap()
        doc.yaml_set_start_comment(HEADER.format(name=path.name))
        doc["machines"] = CommentedSeq()
        return doc
    try:
        data = _yaml().load(path.read_text(encoding="utf-8"))
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecUnreadable(f"{where}: not valid YAML ({problem}); fix the file or move it away") from None
    except OSError as err:
        raise SpecUnreadable(f"{path}: cannot read ({err.strerror}); check the path and permissions") from None
    except UnicodeDecodeError as err:
        raise SpecUnreadable(f"{path}: not UTF-8 text (byte {err.start}); name the inventory YAML file") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise SpecUnreadable(f"{path}: an inventory is a mapping with machines: [...], found {type(data).__name__}")
    machines = data.get("machines")
    if machines is None:
        data["machines"] = CommentedSeq()
    elif not isinstance(machines, CommentedSeq):
        raise SpecUnreadable(f"{path}: machines: must be a list, found {type(machines).__name__}")
    return data


def dump(doc: CommentedMap) -> str:
    stream = io.StringIO()
    _yaml().dump(doc, stream)
    return stream.getvalue()


def save(path: Path, doc: CommentedMap) -> None:
    """Write atomically (a temporary file renamed over the old one)."""
    text = dump(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Plain values of a machine, and in-place updates of the YAML nodes.


def _plain(value: Any) -> Any:
    """YAML nodes -> plain dicts/lists/scalars (for comparison and validation)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def machine_fields(machine: Machine) -> dict[str, Any]:
    """The discovered fields of `machine` as the YAML should hold them (unset optional ones left out)."""
    data = machine.model_dump(mode="json", by_alias=True)
    out: dict[str, Any] = {}
    for key in MACHINE_FIELDS:
        value = data.get(key)
        if key in _REQUIRED or (value not in (None, [], {}) and not (key == "secure_boot" and value is False)):
            out[key] = _drop_empty(value) if key == "vmware" else value
    out["disks"] = [
        {k: d[k] for k in DISK_FIELDS if d.get(k) not in (None, [])} for d in data["disks"]
    ]
    return out


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v not in (None, [], {})}
    return value


def _set_owned(node: CommentedMap, new: Mapping[str, Any], owned: Iterable[str]) -> None:
    """Make `node`'s owned keys equal `new` (in place; unchanged values and comments are untouched)."""
    for key in owned:
        if key not in new:
            if key in node:
                del node[key]
            continue
        value = new[key]
        current = node.get(key)
        if isinstance(value, dict) and isinstance(current, CommentedMap):
            _set_owned(current, value, list(dict.fromkeys([*current.keys(), *value.keys()])))
        elif _plain(current) != value or key not in node:
            node[key] = value


def _update_disks(node: CommentedMap, disks: Sequence[Mapping[str, Any]]) -> None:
    current = node.get("disks")
    if not isinstance(current, CommentedSeq):
        node["disks"] = [dict(d) for d in disks]
        return
    by_key: dict[str, CommentedMap] = {}
    for item in current:
        if isinstance(item, CommentedMap):
            for key in (item.get("device"), item.get("label"), item.get("name")):
                if key:
                    by_key.setdefault(f"{key}", item)
    kept: list[Any] = []
    for disk in disks:
        match = None
        for key in (disk.get("device"), disk.get("label"), disk.get("name")):
            if key and f"{key}" in by_key:
                match = by_key[f"{key}"]
                break
        if match is not None and all(match is not k for k in kept):
            _set_owned(match, disk, DISK_FIELDS)
            kept.append(match)
        else:
            kept.append(CommentedMap(disk))
    # Rebuild the list in discovery order, reusing the existing nodes (and their comments).
    for index in range(len(current) - 1, -1, -1):
        if all(current[index] is not k for k in kept):
            del current[index]
    for index, item in enumerate(kept):
        if index < len(current) and current[index] is item:
            continue
        if any(current[i] is item for i in range(len(current))):
            position = next(i for i in range(len(current)) if current[i] is item)
            del current[position]
        current.insert(index, item)


def _describe(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human lines for what differs between two plain machines (discovered fields only)."""
    details: list[str] = []
    for key in MACHINE_FIELDS:
        if key == "vmware":
            a, b = old.get(key) or {}, new.get(key) or {}
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    details.append(f"vmware.{sub}: {a.get(sub)!r} -> {b.get(sub)!r}")
        elif old.get(key) != new.get(key):
            details.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    old_disks = {d.get("name"): d for d in old.get("disks") or [] if isinstance(d, Mapping)}
    new_disks = {d.get("name"): d for d in new.get("disks") or [] if isinstance(d, Mapping)}
    for name in new_disks.keys() - old_disks.keys():
        details.append(f"disk {name} added ({new_disks[name].get('size_gb')} GB)")
    for name in old_disks.keys() - new_disks.keys():
        details.append(f"disk {name} removed")
    for name in sorted(new_disks.keys() & old_disks.keys(), key=str):
        for key in DISK_FIELDS:
            if old_disks[name].get(key) != new_disks[name].get(key):
                details.append(f"disk {name} {key}: {old_disks[name].get(key)!r} -> {new_disks[name].get(key)!r}")
    return details


def _verdict(node: CommentedMap, profile: str, path: Path) -> Replicability:
    """The support matrix applied to the machine as the file now describes it (hand-set fields count)."""
    from dr.rules import replicability

    data = _plain(node)
    data.pop("discovery", None)
    try:
        machine = Machine.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecUnreadable(
            f"{path}: machine {data.get('name')!r}: {where}: {first['msg']}; fix the hand-edited field"
        ) from None
    reasons = replicability(machine, profile)
    return Replicability(replicable=not reasons, reasons=reasons)


def _set_verdict(node: CommentedMap, verdict: Replicability) -> None:
    value = verdict.model_dump(mode="json")
    if not value["reasons"]:
        value.pop("reasons")
    _set_owned(node, {"discovery": value}, ["discovery"])


def merge(
    doc: CommentedMap,
    discovered: Sequence[Machine],
    *,
    owns: Callable[[Mapping[str, Any]], bool],
    profile: str,
    path: Path,
    sites: Sequence[Mapping[str, Any]] = (),
) -> tuple[list[Change], list[tuple[str, Replicability]]]:
    """Apply one discovery to `doc` in place. `owns(item)`: may this source remove that existing entry?"""
    machines: CommentedSeq = doc["machines"]
    by_uuid: dict[str, CommentedMap] = {}
    by_name: dict[str, CommentedMap] = {}
    for item in machines:
        if not isinstance(item, CommentedMap):
            continue
        uuid = (item.get("vmware") or {}).get("instance_uuid") if isinstance(item.get("vmware"), Mapping) else None
        if uuid:
            by_uuid[str(uuid)] = item
        if item.get("name"):
            by_name[str(item["name"])] = item
    changes: list[Change] = []
    verdicts: list[tuple[str, Replicability]] = []
    seen: list[CommentedMap] = []
    added: list[CommentedMap] = []
    for machine in discovered:
        fields = machine_fields(machine)
        uuid = machine.vmware.instance_uuid if machine.vmware else None
        node = by_uuid.get(uuid) if uuid else None
        if node is None:
            node = by_name.get(machine.name)
        if node is not None and any(node is s for s in seen):
            node = None  # two discovered machines cannot share one entry
        if node is None:
            node = CommentedMap()
            _set_owned(node, fields, MACHINE_FIELDS)
            node["disks"] = [CommentedMap(d) for d in fields["disks"]]
            verdict = _verdict(node, profile, path)
            _set_verdict(node, verdict)
            added.append(node)
            changes.append(Change("added", machine.name, (), verdict.replicable, tuple(verdict.reasons)))
        else:
            before = _plain(node)
            _set_owned(node, fields, MACHINE_FIELDS)
            _update_disks(node, fields["disks"])
            verdict = _verdict(node, profile, path)
            old_verdict = before.get("discovery") or {}
            _set_verdict(node, verdict)
            details = _describe(before, _plain(node))
            if bool(old_verdict.get("replicable")) != verdict.replicable or \
                    list(old_verdict.get("reasons") or []) != list(verdict.reasons):
                details.append(f"replicable: {old_verdict.get('replicable')!r} -> {verdict.replicable!r}")
            if details:
                changes.append(Change("changed", machine.name, tuple(details), verdict.replicable,
                                      tuple(verdict.reasons)))
        seen.append(node)
        verdicts.append((machine.name, verdict))
    for index in range(len(machines) - 1, -1, -1):
        item = machines[index]
        if isinstance(item, CommentedMap) and all(item is not s for s in seen) and owns(_plain(item)):
            changes.append(Change("removed", str(item.get("name"))))
            del machines[index]
    for node in sorted(added, key=lambda n: str(n["name"])):
        machines.append(node)
    if sites:
        existing = doc.get("sites")
        if not isinstance(existing, CommentedSeq):
            existing = CommentedSeq()
            doc["sites"] = existing
            doc.move_to_end("machines")
        names = {str(s.get("name")) for s in existing if isinstance(s, Mapping)}
        for site in sites:
            if site["name"] not in names:
                existing.append(CommentedMap(site))
    order = {"added": 0, "changed": 1, "removed": 2}
    changes.sort(key=lambda c: (order[c.kind], c.machine))
    return changes, verdicts


def write_discovery(
    path: Path,
    discovered: Sequence[Machine],
    *,
    owns: Callable[[Mapping[str, Any]], bool],
    profile: str,
    sites: Sequence[Mapping[str, Any]] = (),
    dry_run: bool = False,
) -> Outcome:
    """Load (or create) the inventory at `path`, merge `discovered`, write it back unless `dry_run`."""
    doc = load(path)
    changes, verdicts = merge(doc, discovered, owns=owns, profile=profile, path=path, sites=sites)
    if not dry_run:
        save(path, doc)
    return Outcome(path=path, changes=tuple(changes), verdicts=tuple(verdicts))


def owned_by_vcenter(vcenter: str, site: str) -> Callable[[Mapping[str, Any]], bool]:
    """Entries a rediscovery of `vcenter` may remove: VMware machines it discovered for `site`."""

    def owns(item: Mapping[str, Any]) -> bool:
        facts = item.get("vmware") or {}
        return item.get("kind") == "vmware" and item.get("site") == site and facts.get("vcenter") == vcenter

    return owns


def never(_: Mapping[str, Any]) -> bool:
    return False


# ---------------------------------------------------------------------------------------------
# Profiled figures written onto disks.


def apply_figures(
    doc: CommentedMap, figures: Mapping[str, Mapping[str, tuple[float, float]]]
) -> list[Change]:
    """Set `iops` and `churn_gb_per_day` on disks: figures[instance_uuid or name][device] = (iops, churn)."""
    changes: list[Change] = []
    for item in doc.get("machines") or []:
        if not isinstance(item, CommentedMap):
            continue
        facts = item.get("vmware") if isinstance(item.get("vmware"), Mapping) else {}
        key = str((facts or {}).get("instance_uuid") or item.get("name"))
        per_disk = figures.get(key)
        if per_disk is None:
            continue
        details = []
        for disk in item.get("disks") or []:
            if not isinstance(disk, CommentedMap):
                continue
            device = disk.get("device")
            if device not in per_disk:
                continue
            iops, churn = per_disk[device]
            for name, value in (("iops", iops), ("churn_gb_per_day", churn)):
                if disk.get(name) != value:
                    details.append(f"disk {disk.get('name')} {name}: {disk.get(name)!r} -> {value!r}")
                    disk[name] = value
        if details:
            changes.append(Change("changed", str(item.get("name")), tuple(details)))
    return changes


def machine_keys(doc: CommentedMap) -> dict[str, str]:
    """instance_uuid (or name) -> machine name, for the VMware machines of the file."""
    out: dict[str, str] = {}
    for item in doc.get("machines") or []:
        if isinstance(item, CommentedMap) and item.get("kind") == "vmware":
            facts = item.get("vmware") if isinstance(item.get("vmware"), Mapping) else {}
            out[str((facts or {}).get("instance_uuid") or item.get("name"))] = str(item.get("name"))
    return out


def disk_devices(doc: CommentedMap) -> dict[str, list[str]]:
    """instance_uuid (or name) -> the device instances (scsi0:0, ...) of its disks, as the file lists them."""
    out: dict[str, list[str]] = {}
    for item in doc.get("machines") or []:
        if not isinstance(item, CommentedMap) or item.get("kind") != "vmware":
            continue
        facts = item.get("vmware") if isinstance(item.get("vmware"), Mapping) else {}
        key = str((facts or {}).get("instance_uuid") or item.get("name"))
        out[key] = [str(d["device"]) for d in item.get("disks") or [] if isinstance(d, Mapping) and d.get("device")]
    return out


def render_changes(outcome_changes: Sequence[Change], fmt: str, *, title: str) -> str:
    """The change report as text or Markdown (JSON is rendered by the caller from `as_dict`)."""
    added = [c for c in outcome_changes if c.kind == "added"]
    removed = [c for c in outcome_changes if c.kind == "removed"]
    changed = [c for c in outcome_changes if c.kind == "changed"]
    lines: list[str] = []
    if fmt == "markdown":
        lines.append(f"### {title}")
        lines.append("")
        lines.append(f"{len(added)} added, {len(changed)} changed, {len(removed)} removed.")
        if outcome_changes:
            lines += ["", "| change | machine | details |", "|---|---|---|"]
            for c in outcome_changes:
                detail = "; ".join(c.details) if c.details else ""
                if c.kind == "added":
                    detail = "replicable" if c.replicable else "not replicable: " + "; ".join(c.reasons)
                lines.append(f"| {c.kind} | `{c.machine}` | {detail.replace('|', '/')} |")
        return "\n".join(lines)
    lines.append(f"{title}: {len(added)} added, {len(changed)} changed, {len(removed)} removed")
    for c in outcome_changes:
        mark = {"added": "+", "removed": "-", "changed": "~"}[c.kind]
        suffix = ""
        if c.kind == "added":
            suffix = "" if c.replicable else "  (not replicable)"
        lines.append(f"  {mark} {c.machine}{suffix}")
        for detail in c.details:
            lines.append(f"      {detail}")
    return "\n".join(lines)


__all__ = [
    "Change",
    "Outcome",
    "apply_figures",
    "disk_devices",
    "dump",
    "load",
    "machine_keys",
    "merge",
    "never",
    "owned_by_vcenter",
    "render_changes",
    "save",
    "write_discovery",
]
