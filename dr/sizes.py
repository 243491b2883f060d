"""The bundled Azure VM size catalog: what the planner picks failover and server sizes from.

The data lives in `dr/data/vm_sizes.yaml` with its sources and the date they were checked. A
support profile selects which sizes are offered: `asr-2015` (the seed's) offers the seed-era
A0-A7, D1-D4 and D11-D14 sizes; `asr-2023` adds Dv5 and Ev5; `azure-2026` (current) offers
Dsv5, Dasv5 and Esv5 only. Each size knows its VM generations (Gen2 = UEFI boot) and, when
Microsoft announced one, its retirement date: `status(today)` says retired, retiring or current.

    >>> smallest_fitting("asr-2015", vcpus=2, memory_gb=8, data_disks=1, nics=1).name
    'Standard_A5'
    >>> smallest_fitting("azure-2026", vcpus=2, memory_gb=8, data_disks=1, nics=1, generation=2).name
    'Standard_D2s_v5'
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from ruamel.yaml import YAML

PROFILES: tuple[str, ...] = ("asr-2015", "asr-2023", "azure-2026")
CURRENT_PROFILE = "azure-2026"  # deployable today (vm_sizes.yaml, checked 2026-12-01)
SizeStatus = Literal["current", "retiring", "retired"]
ServerRole = Literal["config_server", "master_target_small", "master_target_large"]


@dataclass(frozen=True)
class VmSize:
    name: str
    vcpus: int
    memory_gb: float  # GB (GiB for the v5 sizes, as Microsoft lists them)
    max_data_disks: int
    max_nics: int
    family: str  # the regional vCPU quota family, e.g. standardDSv5Family
    profiles: tuple[str, ...] = PROFILES
    generations: tuple[int, ...] = (1,)  # Hyper-V generations the size boots: 1 (BIOS), 2 (UEFI)
    retires: datetime.date | None = None  # Microsoft's announced retirement date, if any
    source: str = ""  # where the figures come from (a key of vm_sizes.yaml's sources)
    retirement_source: str = ""
    preference: int = 0  # the family's place in vm_sizes.yaml's `families`: equal sizes go to the first

    def fits(self, vcpus: int, memory_gb: float, data_disks: int, nics: int) -> bool:
        return (
            self.vcpus >= vcpus
            and self.memory_gb >= memory_gb
            and self.max_data_disks >= data_disks
            and self.max_nics >= nics
        )

    def boots(self, generation: int | None) -> bool:
        """Whether a disk of this Hyper-V generation (None: either) can boot on the size."""
        return generation is None or generation in self.generations

    def status(self, today: datetime.date | None = None) -> SizeStatus:
        if self.retires is None:
            return "current"
        return "retired" if self.retires <= (today or datetime.date.today()) else "retiring"

    def retirement(self, today: datetime.date | None = None) -> str:
        """'' for a current size, else one phrase: what happens when, and the source."""
        state = self.status(today)
        if state == "current":
            return ""
        verb = "was retired on" if state == "retired" else "retires on"
        return f"{self.name} {verb} {self.retires} ({self.retirement_source})"

    def sort_key(self) -> tuple[int, float, int, int, int, str]:
        """"Smallest" means fewest vCPUs, then least memory, fewest disks and NICs; between equals,
        the family listed first (so the current profile keeps to Dsv5, the servers' family, and one
        quota request covers most of the estate), then name."""
        return (self.vcpus, self.memory_gb, self.max_data_disks, self.max_nics, self.preference, self.name)


def _date(value: Any) -> datetime.date | None:
    if value is None:
        return None
    if isinstance(value, datetime.date):
        return value
    return datetime.date.fromisoformat(str(value))


@lru_cache(maxsize=1)
def _data() -> Any:
    text = resources.files("dr").joinpath("data/vm_sizes.yaml").read_text(encoding="utf-8")
    return YAML(typ="safe").load(text)


@lru_cache(maxsize=1)
def _all_sizes() -> tuple[VmSize, ...]:
    data = _data()
    families = data["families"]
    sizes = []
    for row in data["sizes"]:
        family = families[str(row["family"])]
        sizes.append(
            VmSize(
                name=str(row["name"]),
                vcpus=int(row["vcpus"]),
                memory_gb=float(row["memory_gb"]),
                max_data_disks=int(row["max_data_disks"]),
                max_nics=int(row["max_nics"]),
                family=str(row["family"]),
                profiles=tuple(str(p) for p in row["profiles"]),
                generations=tuple(int(g) for g in family["generations"]),
                retires=_date(family.get("retires")),
                source=str(family.get("source", "")),
                retirement_source=str(family.get("retirement_source", "")),
                preference=list(families).index(str(row["family"])),
            )
        )
    return tuple(sizes)


@lru_cache(maxsize=len(PROFILES) + 1)
def _sorted_catalog(profile: str) -> tuple[VmSize, ...]:
    return tuple(sorted((s for s in _all_sizes() if profile in s.profiles), key=VmSize.sort_key))


def catalog(profile: str) -> list[VmSize]:
    """The sizes the profile offers, smallest first (an unknown profile offers none)."""
    return list(_sorted_catalog(profile))


def smallest_fitting(
    profile: str, vcpus: int, memory_gb: float, data_disks: int, nics: int, *, generation: int | None = None
) -> VmSize | None:
    """The smallest size of the profile with at least these vCPUs, GB, data disks and NICs that
    boots a disk of `generation` (2 for a UEFI machine; None: either)."""
    for size in _sorted_catalog(profile):
        if size.fits(vcpus, memory_gb, data_disks, nics) and size.boots(generation):
            return size
    return None


def by_name(name: str) -> VmSize | None:
    """A size by its Azure name (case-insensitive, e.g. `Standard_D14`), whatever the profile."""
    wanted = name.strip().lower()
    for size in _all_sizes():
        if size.name.lower() == wanted:
            return size
    return None


def server_size(profile: str, role: ServerRole) -> VmSize:
    """The size the profile plans for an always-on server (`servers:` in vm_sizes.yaml)."""
    servers = _data()["servers"]
    name = str(servers.get(profile, servers["asr-2015"])[role])
    size = by_name(name)
    assert size is not None, f"vm_sizes.yaml names {name} as the {role} of {profile} but does not list it"
    return size


def generation_of(firmware: str) -> int:
    """The Hyper-V generation a machine's boot disk needs: UEFI boots Generation 2 only."""
    return 2 if firmware == "uefi" else 1
