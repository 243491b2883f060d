"""Every rule of the seed's support matrix (and of references) has a failing example here.

Each case starts from a valid bundled example, changes one thing, and expects one finding at the
right dotted path, with the right severity and message.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dr.loader import Document, load_document
from dr.validate import check_data
from tests.conftest import ROOT

Edit = tuple[tuple[Any, ...], Any]


def apply(data: dict[str, Any], edits: list[Edit]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for path, value in edits:
        node: Any = out
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return out


def as_seed(doc: Document, edits: list[Edit]) -> Document:
    """A bundled example (written for the current profile) as the seed's 2015 estate would be."""
    return Document(apply(doc.data, [(("support_profile",), "asr-2015"), *edits]), doc.source, doc.path)


# The seed's rules are tested on the examples as the seed wrote them (vSphere 5.x, CentOS/Oracle 6.x).
SHAREPOINT = as_seed(load_document(ROOT / "examples/sharepoint/dr.yaml"), [(("sites", 0, "vcenter", "version"), "5.5")])
LINUX = as_seed(load_document(ROOT / "examples/linux-estate/dr.yaml"), [
    (("sites", 0, "vcenter", "version"), "5.1"), (("machines", 0, "os"), "CentOS 6.6"),
    (("machines", 1, "os"), "Oracle Linux 6.5"), (("machines", 2, "os"), "Oracle Linux 6.5"),
    (("machines", 3, "os"), "CentOS 6.5"), (("machines", 4, "os"), "CentOS 6.5"),
])


def findings_for(doc: Any, edits: list[Edit]) -> list[tuple[str, str, str]]:
    report = check_data(apply(doc.data, edits), doc.source, doc.path)
    return [(f.severity, f.dotted, f.message) for f in report.findings]


def disks(n: int, size: float = 10) -> list[dict[str, Any]]:
    return [{"name": f"d{i}", "size_gb": size} for i in range(n)]


# (id, document, edits, expected dotted path, severity, message fragment)
CASES: list[tuple[str, Any, list[Edit], str, str, str]] = [
    # A source machine.
    ("at most 32 disks", SHAREPOINT, [(("machines", 1, "disks"), disks(33))],
     "machines.1.disks", "error", "33 disks, at most 32 per machine"),
    ("32 disks are fine", SHAREPOINT, [(("machines", 1, "disks"), disks(32))], "", "", ""),
    ("disk at most 1023 GB", SHAREPOINT, [(("machines", 0, "disks", 0, "size_gb"), 1024)],
     "machines.0.disks.0.size_gb", "error", "1024 GB, at most 1023 GB per disk"),
    ("no clustered servers", SHAREPOINT, [(("machines", 1, "clustered"), True)],
     "machines.1.clustered", "error", "clustered servers cannot be protected"),
    ("no UEFI boot", SHAREPOINT, [(("machines", 0, "firmware"), "uefi")],
     "machines.0.firmware", "error", "UEFI boot is not supported in asr-2015"),
    ("no BitLocker", SHAREPOINT, [(("machines", 0, "bitlocker"), True)],
     "machines.0.bitlocker", "error", "BitLocker"),
    ("powered off is a warning", SHAREPOINT, [(("machines", 3, "power_state"), "off")],
     "machines.3.power_state", "warning", "powered off"),
    ("VMware tools not installed", SHAREPOINT, [(("machines", 2, "tools"), "not_installed")],
     "machines.2.tools", "error", "VMware tools are not installed"),
    ("VMware tools not running", SHAREPOINT, [(("machines", 2, "tools"), "not_running")],
     "machines.2.tools", "error", "VMware tools are not running"),
    ("ASCII machine name", SHAREPOINT, [(("machines", 4, "name"), "wéb02"),
                                        (("protection_groups", 0, "members", 4), "wéb02"),
                                        (("recovery_plans", 0, "groups", 3, "machines", 1), "wéb02")],
     "machines.4.name", "error", "not an English (ASCII) name"),
    ("ASCII mount point", LINUX, [(("machines", 0, "disks", 0, "mount_points"), ["/données"])],
     "machines.0.disks.0.mount_points.0", "error", "not an English (ASCII) path"),
    ("ASCII device name", LINUX, [(("machines", 0, "disks", 0, "device"), "/dev/sdä")],
     "machines.0.disks.0.device", "error", "not an English (ASCII) name"),
    ("ASCII script path", LINUX, [(("recovery_plans", 0, "groups", 0, "after", 0, "script"), "scripts/prüfen.sh")],
     "recovery_plans.0.groups.0.after.0.script", "error", "not an English (ASCII) path"),
    ("vCenter 5.1 or 5.5", SHAREPOINT, [(("sites", 0, "vcenter", "version"), "6.0")],
     "sites.0.vcenter.version", "error", "vSphere 6.0 is not supported in asr-2015"),
    ("ESXi 5.1 or 5.5", SHAREPOINT, [(("sites", 0, "esxi_hosts"), [
        {"host": "esx1", "version": "5.0", "user": "root", "password": {"env": "ESX_PW"}}])],
     "sites.0.esxi_hosts.0.version", "error", "vSphere 5.0 is not supported"),
    # Windows.
    ("Windows 2008 R2 needs SP1", SHAREPOINT, [(("machines", 0, "os"), "Windows Server 2008 R2")],
     "machines.0.os", "error", "'Windows Server 2008 R2' is not supported in asr-2015"),
    ("Windows 2008 R2 SP1 is fine", SHAREPOINT, [(("machines", 0, "os"), "Windows Server 2008 R2 SP1")], "", "", ""),
    ("Windows 2016 not in 2015", SHAREPOINT, [(("machines", 0, "os"), "Windows Server 2016")],
     "machines.0.os", "error", "is not supported in asr-2015"),
    ("no dynamic disks", SHAREPOINT, [(("machines", 1, "dynamic_disks"), True)],
     "machines.1.dynamic_disks", "error", "dynamic disks are not supported"),
    ("NICs within the Azure size", SHAREPOINT, [(("machines", 0, "nics"), 9)],
     "machines.0.nics", "error", "9 NICs, but no Azure size in asr-2015 takes more than 8"),
    ("NICs within the chosen size", SHAREPOINT, [(("machines", 0, "nics"), 4),
                                                 (("machines", 0, "azure_size"), "Standard_A2")],
     "machines.0.nics", "error", "4 NICs, but Standard_A2 takes at most"),
    ("unknown azure_size", SHAREPOINT, [(("machines", 0, "azure_size"), "Standard_A33")],
     "machines.0.azure_size", "error", "unknown Azure size 'Standard_A33'"),
    # Linux.
    ("64-bit only", LINUX, [(("machines", 0, "arch"), "x86")],
     "machines.0.arch", "error", "64-bit (x86_64) machines only"),
    ("CentOS 6.4-6.6 only", LINUX, [(("machines", 0, "os"), "CentOS 7.2")],
     "machines.0.os", "error", "'CentOS 7.2' is not supported in asr-2015"),
    ("Oracle Linux 6.4/6.5 only", LINUX, [(("machines", 1, "os"), "Oracle Linux 6.6")],
     "machines.1.os", "error", "'Oracle Linux 6.6' is not supported"),
    ("SLES 11 SP3 is fine", LINUX, [(("machines", 1, "os"), "SUSE Linux Enterprise Server 11 SP3")], "", "", ""),
    ("SLES 11 SP2 is not", LINUX, [(("machines", 1, "os"), "SLES 11 SP2")],
     "machines.1.os", "error", "'SLES 11 SP2' is not supported"),
    ("Ubuntu is not in 2015", LINUX, [(("machines", 1, "os"), "Ubuntu 14.04")],
     "machines.1.os", "error", "not supported in asr-2015"),
    ("unknown OS", LINUX, [(("machines", 1, "os"), "Plan 9")],
     "machines.1.os", "error", "unknown operating system 'Plan 9'"),
    ("file systems ext3/ext4/ReiserFS/XFS", LINUX, [(("machines", 1, "file_systems"), ["ext4", "zfs"])],
     "machines.1.file_systems.1", "error", "file system 'zfs' is not supported"),
    ("only device-mapper-multipath", LINUX, [(("machines", 3, "multipath"), "powerpath")],
     "machines.3.multipath", "error", "multipath 'powerpath' is not supported"),
    ("only LVM2", LINUX, [(("machines", 1, "volume_manager"), "veritas")],
     "machines.1.volume_manager", "error", "volume manager 'veritas' is not supported"),
    ("no HP CCISS controller", LINUX, [(("machines", 1, "controller"), "hp-cciss")],
     "machines.1.controller", "error", "controller 'hp-cciss' is not supported"),
    ("exactly 1 NIC on Linux", LINUX, [(("machines", 1, "nics"), 2)],
     "machines.1.nics", "error", "a Linux source must have exactly 1"),
    # Process server.
    ("process server on 2012 R2", SHAREPOINT, [(("sites", 0, "process_servers", 0, "os"), "Windows Server 2012")],
     "sites.0.process_servers.0.os", "error", "a process server runs Windows Server 2012 R2"),
    # Azure.
    ("one region: vault", SHAREPOINT, [(("azure", "vault_region"), "northeurope")],
     "azure.vault_region", "error", "every Azure component of an estate is in one region"),
    ("one region: storage", SHAREPOINT, [(("azure", "storage_region"), "eastus")],
     "azure.storage_region", "error", "one region"),
    ("geo-redundant storage", SHAREPOINT, [(("azure", "storage_redundancy"), "ZRS")],
     "azure.storage_redundancy", "error", "ZRS is not geo-redundant"),
    # References.
    ("group member exists", SHAREPOINT, [(("protection_groups", 0, "members", 0), "dc1")],
     "protection_groups.0.members.0", "error", "unknown machine 'dc1' (did you mean 'dc01'?)"),
    ("one protection group per machine", SHAREPOINT, [(("protection_groups",), [
        {"name": "a", "members": ["dc01", "sql01", "app01", "web01", "web02"]}, {"name": "b", "members": ["web02"]}])],
     "protection_groups.1.members.0", "error", "already in protection group 'a'"),
    ("plan holds only protected machines", SHAREPOINT,
     [(("protection_groups", 0, "members"), ["dc01", "sql01", "app01", "web01"])],
     "recovery_plans.0.groups.3.machines.1", "error", "'web02' is in no protection group"),
    ("plan machine exists", SHAREPOINT, [(("recovery_plans", 0, "groups", 0, "machines"), ["dc02"])],
     "recovery_plans.0.groups.0.machines.0", "error", "unknown machine 'dc02'"),
    ("unique machine names", SHAREPOINT, [(("machines", 4, "name"), "web01")],
     "machines.4.name", "error", "'web01' is defined twice"),
    ("unique plan names", SHAREPOINT, [(("recovery_plans",), [
        {"name": "p", "groups": [{"name": "g", "machines": ["dc01"]}]},
        {"name": "p", "groups": [{"name": "g", "machines": ["sql01"]}]}])],
     "recovery_plans.1.name", "error", "'p' is defined twice"),
    ("unique disk names", SHAREPOINT, [(("machines", 1, "disks", 2, "name"), "data")],
     "machines.1.disks.2.name", "error", "disk 'data' is defined twice"),
    ("machine site exists", SHAREPOINT, [(("machines", 0, "site"), "hq2")],
     "machines.0.site", "error", "unknown site 'hq2' (did you mean 'hq'?)"),
    ("failback refused for physical", LINUX, [(("recovery_plans", 1, "groups", 0, "machines"), ["pg01"])],
     "recovery_plans.1.groups.0.machines.0", "error", "failback is for VMware machines only"),
    ("physical server needs an address", LINUX, [(("machines", 3, "address"), None)],
     "machines.3.kind", "error", "add address:"),
    ("tools only on VMware", LINUX, [(("machines", 3, "tools"), "running")],
     "machines.3.tools", "error", "applies to VMware machines only"),
    # Unprotected machines are inventory: their problems are warnings.
    ("inventory problems are warnings", SHAREPOINT, [
        (("machines",), None)], "", "", ""),
]


def _inventory_case() -> list[Edit]:
    extra = {"name": "old01", "site": "hq", "kind": "vmware", "os": "Windows Server 2003", "vcpus": 1,
             "memory_gb": 2, "disks": [{"name": "c", "size_gb": 20}]}
    machines = [*copy.deepcopy(SHAREPOINT.data["machines"]), extra]
    return [(("machines",), machines)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule(case: tuple[str, Any, list[Edit], str, str, str]) -> None:
    name, doc, edits, path, severity, fragment = case
    if name == "inventory problems are warnings":
        found = findings_for(doc, _inventory_case())
        assert [(s, p) for s, p, _ in found] == [("warning", "machines.5.os")]
        assert "cannot be replicated" in found[0][2] and "in no protection group" in found[0][2]
        return
    found = findings_for(doc, edits)
    if not path:
        assert found == [], found
        return
    matching = [f for f in found if f[1] == path]
    assert matching, f"no finding at {path}; found {found}"
    assert matching[0][0] == severity
    assert fragment in matching[0][2], matching[0][2]


def test_asr_2023_profile_lifts_2015_limits() -> None:
    edits: list[Edit] = [
        (("support_profile",), "asr-2023"),
        (("sites", 0, "vcenter", "version"), "7.0"),
        (("machines", 0, "firmware"), "uefi"),
        (("machines", 0, "os"), "Windows Server 2022"),
        (("machines", 1, "disks"), disks(64, size=4096)),
    ]
    assert findings_for(SHAREPOINT, edits) == []
    worse: list[Edit] = [*edits, (("machines", 0, "secure_boot"), True), (("machines", 1, "disks"), disks(65))]
    paths = {p for _, p, _ in findings_for(SHAREPOINT, worse)}
    assert paths == {"machines.0.secure_boot", "machines.1.disks"}


def test_asr_2023_linux_versions() -> None:
    edits: list[Edit] = [(("support_profile",), "asr-2023"), (("sites", 0, "vcenter", "version"), "8.0"),
                         (("machines", 0, "os"), "Ubuntu 22.04"), (("machines", 1, "os"), "RHEL 9.2"),
                         (("machines", 2, "os"), "Debian 12"), (("machines", 3, "os"), "SLES 15 SP4"),
                         (("machines", 4, "os"), "CentOS 6.5")]
    found = findings_for(LINUX, edits)
    assert [(p, s) for s, p, _ in found] == [("machines.4.os", "error")]
