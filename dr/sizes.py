"""The bundled Azure VM size catalog: what the planner picks failover sizes from.

The data lives in `dr/data/vm_sizes.yaml` with its sources noted there. A support profile selects
which sizes are offered: `asr-2015` (the seed's default) offers the seed-era A0-A7, D1-D4 and
D11-D14 sizes; `asr-2023` adds Dv5 and Ev5.

    >>> smallest_fitting("asr-2015", vcpus=2, memory_gb=8, data_disks=1, nics=1).name
    'Standard_A5'
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ruamel.yaml import YAML

PROFILES: tuple[str, ...] = ("asr-2015", "asr-2023")


@dataclass(frozen=True)
class VmSize:
    name: str
    vcpus: int
    memory_gb: float  # GB (GiB for Dv5/Ev5, as Microsoft lists them)
    max_data_disks: int
    max_nics: int
    family: str  # the regional vCPU quota family, e.g. standardDFamily
    profiles: tuple[str, ...] = PROFILES

    def fits(self, vcpus: int, memory_gb: float, data_disks: int, nics: int) -> bool:
        return (
            self.vcpus >= vcpus
            and self.memory_gb >= memory_gb
            and self.max_data_disks >= data_disks
            and self.max_nics >= nics
        )

    def sort_key(self) -> tuple[int, float, int, int, str]:
        """"Smallest" means fewest vCPUs, then least memory, fewest disks and NICs, then name."""
        return (self.vcpus, self.memory_gb, self.max_data_disks, self.max_nics, self.name)


@lru_cache(maxsize=1)
def _all_sizes() -> tuple[VmSize, ...]:
    text = resources.files("dr").joinpath("data/vm_sizes.yaml").read_text(encoding="utf-8")
    data = YAML(typ="safe").load(text)
    sizes = []
    for row in data["sizes"]:
        sizes.append(
            VmSize(
                name=str(row["name"]),
                vcpus=int(row["vcpus"]),
                memory_gb=float(row["memory_gb"]),
                max_data_disks=int(row["max_data_disks"]),
                max_nics=int(row["max_nics"]),
                family=str(row["family"]),
                profiles=tuple(str(p) for p in row["profiles"]),
            )
        )
    return tuple(sizes)


@lru_cache(maxsize=len(PROFILES) + 1)
def _sorted_catalog(profile: str) -> tuple[VmSize, ...]:
    return tuple(sorted((s for s in _all_sizes() if profile in s.profiles), key=VmSize.sort_key))


def catalog(profile: str) -> list[VmSize]:
    """The sizes the profile offers, smallest first (an unknown profile offers none)."""
    return list(_sorted_catalog(profile))


def smallest_fitting(profile: str, vcpus: int, memory_gb: float, data_disks: int, nics: int) -> VmSize | None:
    """The smallest size of the profile with at least these vCPUs, GB, data disks and NICs."""
    for size in _sorted_catalog(profile):
        if size.fits(vcpus, memory_gb, data_disks, nics):
            return size
    return None


def by_name(name: str) -> VmSize | None:
    """A size by its Azure name (case-insensitive, e.g. `Standard_D14`), whatever the profile."""
    wanted = name.strip().lower()
    for size in _all_sizes():
        if size.name.lower() == wanted:
            return size
    return None
