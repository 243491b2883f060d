"""Operating system names as people write them, parsed to compare with a support matrix.

    "Windows Server 2012 R2"            -> windows, "Windows Server 2012 R2"
    "Microsoft Windows Server 2008 R2 (64-bit) SP1" -> windows, "Windows Server 2008 R2 SP1"
    "CentOS 6.5", "Red Hat Enterprise Linux 8.6", "SLES 11 SP3", "Ubuntu 22.04" -> linux, distro, version
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Family = Literal["windows", "linux"]

# Spellings of each distribution, longest first; the canonical name is the matrix's.
_DISTROS: tuple[tuple[str, str], ...] = (
    ("red hat enterprise linux", "RHEL"),
    ("redhat enterprise linux", "RHEL"),
    ("rhel", "RHEL"),
    ("suse linux enterprise server", "SLES"),
    ("suse linux enterprise", "SLES"),
    ("sles", "SLES"),
    ("oracle linux", "Oracle Linux"),
    ("oracle enterprise linux", "Oracle Linux"),
    ("ol", "Oracle Linux"),
    ("centos", "CentOS"),
    ("ubuntu", "Ubuntu"),
    ("debian", "Debian"),
    ("rocky linux", "Rocky Linux"),
    ("almalinux", "AlmaLinux"),
)


@dataclass(frozen=True)
class OsInfo:
    family: Family
    name: str        # canonical: "Windows Server 2012 R2" or the distribution ("CentOS")
    version: str     # "2012 R2" for Windows; "6.5" / "11.3" (SP as minor) for Linux

    @property
    def canonical(self) -> str:
        return self.name if self.family == "windows" else f"{self.name} {self.version}"


def version_tuple(version: str) -> tuple[int, ...]:
    """'6.5' -> (6, 5); '11.3' -> (11, 3); '22.04' -> (22, 4); junk -> ()."""
    parts = re.findall(r"\d+", version)
    return tuple(int(p) for p in parts)


def parse_os(text: str) -> OsInfo | None:
    """Parse an OS name; None when it is neither a known Windows Server nor a known Linux."""
    lowered = " ".join(text.lower().replace("(64-bit)", " ").replace("(32-bit)", " ").split())
    lowered = lowered.removeprefix("microsoft ")
    windows = re.search(r"windows server (\d{4})(\s+r2)?(?:.*?\bsp\s*(\d))?", lowered)
    if windows:
        year, r2, sp = windows.groups()
        version = year + (" R2" if r2 else "")
        name = f"Windows Server {version}" + (f" SP{sp}" if sp else "")
        return OsInfo("windows", name, version + (f" SP{sp}" if sp else ""))
    for spelling, canonical in _DISTROS:
        match = re.match(rf"{re.escape(spelling)}\b[^\d]*(\d+(?:\.\d+)*)?(?:\s*sp\s*(\d+))?", lowered)
        if match:
            number, sp = match.groups()
            version = number or ""
            if sp:  # SLES 11 SP3 -> 11.3
                version = f"{version.split('.')[0]}.{sp}"
            return OsInfo("linux", canonical, version)
    if re.search(r"\blinux\b", lowered):
        return OsInfo("linux", "Linux", "".join(re.findall(r"\d+(?:\.\d+)*", lowered)[:1]))
    return None
