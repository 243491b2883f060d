"""What every sizing rule reads: the protected machines of the estate, indexed once, and where the
rules write their errors and warnings."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from dr.model import Estate, Machine
from dr.plan.result import Issue


def os_family(machine: Machine) -> str:
    """'windows' or 'linux': Windows sources go to Windows master targets, the rest to Linux ones."""
    return "windows" if "windows" in machine.os.lower() else "linux"


@dataclass
class Notes:
    """Errors and warnings in the order the rules find them (one plan run owns one Notes)."""

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(Issue(path=path, message=message))

    def warning(self, path: str, message: str) -> None:
        self.warnings.append(Issue(path=path, message=message))


@dataclass(frozen=True)
class Inputs:
    """The protected machines and, computed once, the per-machine sums every rule reads."""

    estate: Estate
    machines: tuple[Machine, ...]  # protected machines, in spec order
    index: dict[str, int]  # machine name -> position in estate.machines (for spec paths)
    disks: tuple[int, ...]  # per protected machine: its disk count (a volume is a disk)
    churn: tuple[float, ...]  # GB/day
    iops: tuple[float, ...]  # source IOPS
    used: tuple[float, ...]  # GB of data to replicate initially (used_gb, else size_gb)
    family: tuple[str, ...]  # 'windows' | 'linux'

    @classmethod
    def of(cls, estate: Estate) -> Inputs:
        index: dict[str, int] = {}
        for position, machine in enumerate(estate.machines):
            index.setdefault(machine.name, position)
        machines = tuple(estate.protected_machines)
        return cls(
            estate=estate,
            machines=machines,
            index=index,
            disks=tuple(len(m.disks) for m in machines),
            churn=tuple(sum(d.churn_gb_per_day for d in m.disks) for m in machines),
            iops=tuple(sum(d.iops for d in m.disks) for m in machines),
            used=tuple(
                sum(d.size_gb if d.used_gb is None else min(d.used_gb, d.size_gb) for d in m.disks)
                for m in machines
            ),
            family=tuple(os_family(m) for m in machines),
        )

    def path(self, machine: str, *rest: str | int) -> str:
        parts: list[str | int] = ["machines", self.index.get(machine, 0), *rest]
        return ".".join(str(p) for p in parts)

    def site_path(self, site: str, *rest: str | int) -> str:
        for position, candidate in enumerate(self.estate.sites):
            if candidate.name == site:
                return ".".join(str(p) for p in ["sites", position, *rest])
        return "sites"


def name_stem(estate: Estate) -> str:
    """Letters and digits of the estate name (at most 12) plus a 6-hex hash of the estate's identity.

    Storage account names are global in Azure: 3-24 lower-case letters and digits. The hash of
    estate name, region, resource group and subscription (`dr.azure.naming.subscription_key`: the
    id when the spec's reference resolves, else the reference) keeps two estates called alike, and
    two deployments of one spec in two subscriptions, apart; the stem is stable for the same spec
    and subscription, so a plan re-run keeps its names.
    """
    from dr.azure.naming import subscription_key

    letters = re.sub(r"[^a-z0-9]", "", estate.estate.lower())[:12] or "dr"
    subscription = subscription_key(estate.azure.subscription)
    identity = f"{estate.estate}\n{estate.azure.region}\n{estate.azure.resource_group}\n{subscription}".encode()
    return letters + hashlib.sha256(identity).hexdigest()[:6]
