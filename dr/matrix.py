"""Support matrices: what Azure Site Recovery can protect, as data (`dr/data/support/<profile>.yaml`).

A spec selects one with `support_profile:` (default `azure-2026`, the current one, deployable today, and
`dr discover`'s default too; `asr-2015` keeps the seed's rules for a spec that names it). The rules in
`dr.rules` read only these models, so a new profile is a new data file, not new code.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field
from ruamel.yaml import YAML

from dr.errors import UsageError
from dr.osinfo import version_tuple


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MachineLimits(_Data):
    max_disks: int
    max_disk_gb: float
    allow_clustered: bool
    allow_uefi: bool
    allow_secure_boot: bool
    allow_bitlocker: bool
    require_ascii_names: bool
    architectures: list[str]


class VmwareLimits(_Data):
    versions: list[str]
    require_tools_running: bool


class WindowsLimits(_Data):
    versions: list[str]
    allow_dynamic_disks: bool


class Distribution(_Data):
    name: str
    versions: list[str] = Field(default_factory=list)
    min: str | None = None
    max: str | None = None

    def supports(self, version: str) -> bool:
        if self.versions:
            return version_tuple(version) in {version_tuple(v) for v in self.versions}
        wanted = version_tuple(version)
        low = version_tuple(self.min) if self.min else ()
        high = version_tuple(self.max) if self.max else (10**6,)
        return bool(wanted) and low <= wanted <= high

    def describe(self) -> str:
        if self.versions:
            return f"{self.name} {', '.join(self.versions)}"
        return f"{self.name} {self.min or ''}-{self.max or ''}"


class LinuxLimits(_Data):
    distributions: list[Distribution]
    file_systems: list[str]
    multipath: list[str]
    volume_managers: list[str]
    forbidden_controllers: list[str]
    exact_nics: int | None


class ProcessServerLimits(_Data):
    os: list[str]


class AzureLimits(_Data):
    geo_redundant: list[str]


class SupportMatrix(_Data):
    profile: str
    title: str
    machine: MachineLimits
    vmware: VmwareLimits
    windows: WindowsLimits
    linux: LinuxLimits
    process_server: ProcessServerLimits
    azure: AzureLimits


PROFILES = ("asr-2015", "asr-2023", "azure-2026")


@cache
def support_matrix(profile: str) -> SupportMatrix:
    """The bundled matrix for `profile` (read once per process; immutable)."""
    if profile not in PROFILES:
        raise UsageError(f"unknown support profile {profile!r}; choose one of {', '.join(PROFILES)}")
    text = resources.files("dr").joinpath("data", "support", f"{profile}.yaml").read_text(encoding="utf-8")
    return SupportMatrix.model_validate(YAML(typ="safe").load(text))
