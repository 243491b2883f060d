"""The semantic rules of a spec: the support matrix applied to machines, and references between parts.

Machine rules read only the `SupportMatrix` of the estate's profile. A machine in a protection group
that breaks one is an error; a machine in no group is inventory, and the same problem is a warning
(discovery lists what cannot be replicated without making the spec invalid).

Every message says what was found, what is allowed, and how to fix it.
"""

from __future__ import annotations

import difflib
import pathlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from dr.findings import Finding, Path, Severity
from dr.matrix import SupportMatrix, support_matrix
from dr.model import Action, Estate, EsxiHost, Machine, RecoveryPlan, VCenter
from dr.osinfo import parse_os

Problem = tuple[Path, Severity, str]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _ascii(text: str) -> bool:
    return text.isascii()


def _alternative(matrix: SupportMatrix) -> str:
    return "; or choose support_profile: asr-2023" if matrix.profile == "asr-2015" else ""


def _page_blob_problem(size_gb: float) -> str | None:
    """A disk too large for its replica: one Azure page blob (the limit is dr_agent.vhd's, with its source)."""
    from dr_agent.vhd import PAGE_BLOB_LIMIT_SOURCE, largest_disk

    gib = 1024**3  # bytes per GB as the spec counts sizes (discovery writes bytes / 2**30)
    if size_gb * gib <= largest_disk():
        return None
    return (f"{size_gb:g} GB: a disk replicates into one Azure page blob, which holds at most 8 TiB "
            f"({PAGE_BLOB_LIMIT_SOURCE}), so a disk of at most {largest_disk() / gib:.3f} GB; "
            "split the disk")


def machine_problems(machine: Machine, matrix: SupportMatrix) -> list[Problem]:
    """Support-matrix problems of one machine, with paths relative to the machine."""
    out: list[Problem] = []
    limits = matrix.machine
    prof = matrix.profile

    def err(path: Path, message: str) -> None:
        out.append((path, "error", message))

    if len(machine.disks) > limits.max_disks:
        err(("disks",), f"{len(machine.disks)} disks, at most {limits.max_disks} per machine in {prof}; "
            f"protect a machine with fewer disks{_alternative(matrix)}")
    for index, disk in enumerate(machine.disks):
        if disk.size_gb > limits.max_disk_gb:
            err(("disks", index, "size_gb"), f"{disk.size_gb:g} GB, at most {limits.max_disk_gb:g} GB per disk "
                f"in {prof}; shrink or split the disk{_alternative(matrix)}")
        elif (too_big := _page_blob_problem(disk.size_gb)) is not None:
            err(("disks", index, "size_gb"), too_big)
    if machine.clustered and not limits.allow_clustered:
        err(("clustered",), f"clustered servers cannot be protected in {prof}; remove the machine from its "
            "protection group or set clustered: false if it is not a cluster node")
    if machine.firmware == "uefi" and not limits.allow_uefi:
        err(("firmware",), f"UEFI boot is not supported in {prof}, only BIOS; convert the boot disk to "
            f"BIOS/MBR{_alternative(matrix)}")
    if machine.secure_boot and not limits.allow_secure_boot:
        err(("secure_boot",), f"Secure Boot is not supported in {prof}; turn it off before protection")
    if machine.bitlocker and not limits.allow_bitlocker:
        err(("bitlocker",), f"BitLocker-encrypted disks cannot be replicated in {prof}; turn BitLocker off")
    if machine.power_state == "off":
        out.append((("power_state",), "warning",
                    "the machine is powered off: it cannot replicate and RPO alerts will fire until it is on"))
    if machine.arch not in limits.architectures:
        err(("arch",), f"{machine.arch} is not supported in {prof}: 64-bit (x86_64) machines only")
    if machine.kind == "vmware":
        state = machine.tools_state
        if matrix.vmware.require_tools_running and state != "running":
            what = "not installed" if state == "not_installed" else "not running"
            err(("tools",), f"VMware tools are {what}; install and start them, replication needs them")
    elif machine.tools is not None:
        err(("tools",), "tools: applies to VMware machines only; remove it from this physical server")
    if machine.kind == "physical" and not machine.address:
        err(("kind",), "a physical server is found by its address: add address: <IP or host name>")

    if limits.require_ascii_names:
        if not _ascii(machine.name):
            err(("name",), f"{machine.name!r} is not an English (ASCII) name; rename the machine")
        for index, disk in enumerate(machine.disks):
            for attr in ("name", "device"):
                value = getattr(disk, attr)
                if value and not _ascii(value):
                    err(("disks", index, attr), f"{value!r} is not an English (ASCII) name; rename it")
            for m_index, mount in enumerate(disk.mount_points):
                if not _ascii(mount):
                    err(("disks", index, "mount_points", m_index),
                        f"mount point {mount!r} is not an English (ASCII) path; rename it")

    info = parse_os(machine.os)
    if info is None:
        err(("os",), f"unknown operating system {machine.os!r}; write it as e.g. 'Windows Server 2012 R2', "
            "'CentOS 6.5' or 'SLES 11 SP3'")
        return out
    if info.family == "windows":
        if info.name not in matrix.windows.versions:
            err(("os",), f"{machine.os!r} is not supported in {prof}; supported: "
                f"{', '.join(matrix.windows.versions)}")
        if machine.dynamic_disks and not matrix.windows.allow_dynamic_disks:
            err(("dynamic_disks",), f"dynamic disks are not supported in {prof}; convert them to basic disks")
        _nic_rule(machine, matrix, out)
    else:
        linux = matrix.linux
        supported = [d for d in linux.distributions if d.name == info.name and d.supports(info.version)]
        if not supported:
            listed = "; ".join(d.describe() for d in linux.distributions)
            err(("os",), f"{machine.os!r} is not supported in {prof}; supported Linux: {listed}")
        allowed_fs = {fs.lower() for fs in linux.file_systems}
        for index, fs in enumerate(machine.file_systems):
            if fs.lower() not in allowed_fs:
                err(("file_systems", index), f"file system {fs!r} is not supported in {prof}; supported: "
                    f"{', '.join(linux.file_systems)}")
        for index, disk in enumerate(machine.disks):
            if disk.file_system and disk.file_system.lower() not in allowed_fs:
                err(("disks", index, "file_system"), f"file system {disk.file_system!r} is not supported in "
                    f"{prof}; supported: {', '.join(linux.file_systems)}")
        _capture_rule(machine, out)
        if machine.multipath and machine.multipath.lower() not in linux.multipath:
            err(("multipath",), f"multipath {machine.multipath!r} is not supported; only "
                f"{', '.join(linux.multipath)}")
        if machine.volume_manager and machine.volume_manager.lower() not in linux.volume_managers:
            err(("volume_manager",), f"volume manager {machine.volume_manager!r} is not supported; only "
                f"{', '.join(linux.volume_managers)}")
        controllers = [("controller",), *[("disks", i, "controller") for i in range(len(machine.disks))]]
        for path in controllers:
            value = machine.controller if len(path) == 1 else machine.disks[int(path[1])].controller
            if value and value.lower() in linux.forbidden_controllers:
                err(path, f"controller {value!r} is not supported in {prof}; move the disks to another "
                    "controller")
        if linux.exact_nics is not None and machine.nics != linux.exact_nics:
            err(("nics",), f"{machine.nics} NICs; a Linux source must have exactly {linux.exact_nics} in {prof}")
        else:
            _nic_rule(machine, matrix, out)
    return out


def _capture_rule(machine: Machine, out: list[Problem]) -> None:
    """The agent freezes a disk's mount points at each of its points (tracking mode, app points):
    each must be a file system on that disk, so listed once per machine, as an absolute path. A
    file system listed on the wrong disk would be frozen while its writes go uncaptured."""
    owner: dict[str, str] = {}
    for index, disk in enumerate(machine.disks):
        for m_index, mount in enumerate(disk.mount_points):
            where: Path = ("disks", index, "mount_points", m_index)
            if not mount.startswith("/"):
                out.append((where, "error", f"mount point {mount!r} is not an absolute path; write it as "
                            "findmnt shows it, e.g. /var/lib/pgsql"))
            elif mount in owner:
                out.append((where, "error", f"{mount} is listed on disks {owner[mount]} and {disk.name}: a file "
                            "system lives on one disk, and the agent would freeze it for a disk whose writes it "
                            f"does not capture; keep it only under the disk it is mounted from (findmnt {mount})"))
            else:
                owner[mount] = disk.name


def _nic_rule(machine: Machine, matrix: SupportMatrix, out: list[Problem]) -> None:
    """The NIC count must fit the chosen Azure size (the override, else the largest the profile offers);
    an override must boot the machine's disk generation, and one Microsoft retired or is retiring
    is a warning (the stack refuses a retired one)."""
    from dr import sizes  # the planner's size catalog

    if machine.azure_size:
        size = sizes.by_name(machine.azure_size)
        offered = {s.name for s in sizes.catalog(matrix.profile)}
        if size is None or size.name not in offered:
            names = [s.name for s in sizes.catalog(matrix.profile)]
            out.append((("azure_size",), "error", f"unknown Azure size {machine.azure_size!r} in {matrix.profile}"
                        f"{did_you_mean(machine.azure_size, names)}"))
            return
        generation = sizes.generation_of(machine.firmware)
        if not size.boots(generation):
            out.append((("azure_size",), "error", f"{size.name} runs Generation 1 VMs only, and a UEFI machine "
                        "boots a Generation 2 disk: choose a size that supports Generation 2, such as "
                        "Standard_D4s_v5"))
        if size.status() != "current":
            out.append((("azure_size",), "warning", f"{size.retirement()}; choose a current size, such as one of "
                        f"support_profile {sizes.CURRENT_PROFILE}"))
        if machine.nics > size.max_nics:
            out.append((("nics",), "error", f"{machine.nics} NICs, but {size.name} takes at most {size.max_nics}; "
                        "choose a larger azure_size"))
        return
    largest = max((s.max_nics for s in sizes.catalog(matrix.profile)), default=0)
    if machine.nics > largest:
        out.append((("nics",), "error", f"{machine.nics} NICs, but no Azure size in {matrix.profile} takes "
                    f"more than {largest}; remove NICs"))


def replicability(machine: Machine, profile: str) -> list[str]:
    """Why `machine` cannot be replicated under `profile` (empty when it can), for discovery reports."""
    return [message for _, _, message in machine_problems(machine, support_matrix(profile))]


def _duplicates(names: Sequence[str]) -> Iterator[int]:
    counts = Counter(names)
    seen: set[str] = set()
    for index, name in enumerate(names):
        if counts[name] > 1 and name in seen:
            yield index
        seen.add(name)


def check(
    estate: Estate,
    *,
    unknown_ok: frozenset[str] = frozenset(),
    also_protected: frozenset[str] = frozenset(),
) -> list[Finding]:
    """Every semantic problem of `estate`.

    `unknown_ok`: names of items (machines, sites) already reported malformed and left out, so that
    references to them are not reported again; `also_protected`: members of left-out groups.
    """
    matrix = support_matrix(estate.support_profile)
    findings: list[Finding] = []

    def add(path: Path, severity: Severity, message: str) -> None:
        findings.append(Finding(severity, path, message))

    protected = {name for group in estate.protection_groups for name in group.members} | also_protected

    # Names are unique.
    for top, items in (("sites", estate.sites), ("machines", estate.machines),
                       ("protection_groups", estate.protection_groups), ("recovery_plans", estate.recovery_plans)):
        for index in _duplicates([item.name for item in items]):
            add((top, index, "name"), "error", f"{items[index].name!r} is defined twice; names must be unique")
    ps_names = [(s_i, p_i, ps.name) for s_i, site in enumerate(estate.sites)
                for p_i, ps in enumerate(site.process_servers)]
    for dup in _duplicates([name for _, _, name in ps_names]):
        s_i, p_i, name = ps_names[dup]
        add(("sites", s_i, "process_servers", p_i, "name"), "error",
            f"process server {name!r} is defined twice; names must be unique")

    # Sites: vSphere versions and process servers.
    path: Path
    for s_i, site in enumerate(estate.sites):
        hosts: list[tuple[Path, VCenter | EsxiHost]] = (
            [(("sites", s_i, "vcenter"), site.vcenter)] if site.vcenter else []
        )
        hosts += [(("sites", s_i, "esxi_hosts", h_i), host) for h_i, host in enumerate(site.esxi_hosts)]
        for path, host in hosts:
            if host is not None and host.version not in matrix.vmware.versions:
                add((*path, "version"), "error", f"vSphere {host.version} is not supported in {matrix.profile}; "
                    f"supported: {', '.join(matrix.vmware.versions)}")
        for p_i, ps in enumerate(site.process_servers):
            info = parse_os(ps.os)
            if info is None or info.name not in matrix.process_server.os:
                add(("sites", s_i, "process_servers", p_i, "os"), "error",
                    f"a process server runs {' or '.join(matrix.process_server.os)}, found {ps.os!r}")

    # Machines.
    site_names = [site.name for site in estate.sites]
    for m_i, machine in enumerate(estate.machines):
        base: Path = ("machines", m_i)
        for d_i in _duplicates([disk.name for disk in machine.disks]):
            add((*base, "disks", d_i, "name"), "error",
                f"disk {machine.disks[d_i].name!r} is defined twice on {machine.name}; disk names are unique")
        if machine.site in unknown_ok and machine.site not in site_names:
            pass
        elif machine.site not in site_names:
            add((*base, "site"), "error", f"unknown site {machine.site!r}{did_you_mean(machine.site, site_names)}; "
                "add it under sites: or fix the name")
        elif machine.kind == "vmware":
            site = estate.site(machine.site)
            if site.vcenter is None and not site.esxi_hosts:
                add((*base, "site"), "error", f"site {site.name!r} has no vcenter: or esxi_hosts: to reach this "
                    "VMware machine; add one, or make the machine kind: physical")
        is_protected = machine.name in protected
        for rel, severity, message in machine_problems(machine, matrix):
            if not is_protected and severity == "error":
                add((*base, *rel), "warning", f"cannot be replicated: {message} (inventory only: in no "
                    "protection group)")
            else:
                add((*base, *rel), severity, message)

    # Protection groups.
    machine_names = [m.name for m in estate.machines]
    known = set(machine_names) | unknown_ok
    first_group: dict[str, str] = {}
    for g_i, group in enumerate(estate.protection_groups):
        for x_i, member in enumerate(group.members):
            where: Path = ("protection_groups", g_i, "members", x_i)
            if member not in known:
                add(where, "error", f"unknown machine {member!r}{did_you_mean(member, machine_names)}")
            elif member in first_group:
                add(where, "error", f"{member!r} is already in protection group {first_group[member]!r}; "
                    "a machine is in at most one protection group")
            else:
                first_group[member] = group.name

    # Recovery plans.
    for p_i, plan in enumerate(estate.recovery_plans):
        seen: dict[str, str] = {}
        for g_i, pgroup in enumerate(plan.groups):
            for x_i, name in enumerate(pgroup.machines):
                path = ("recovery_plans", p_i, "groups", g_i, "machines", x_i)
                if name not in known:
                    add(path, "error", f"unknown machine {name!r}{did_you_mean(name, machine_names)}")
                    continue
                if name in unknown_ok:
                    continue
                if name not in protected:
                    add(path, "error", f"{name!r} is in no protection group; a recovery plan holds only "
                        "protected machines: add it to a protection group")
                if name in seen:
                    add(path, "error", f"{name!r} is already in group {seen[name]!r} of this plan")
                seen.setdefault(name, pgroup.name)
                if plan.failback and estate.machine(name).kind == "physical":
                    add(path, "error", f"{name!r} is a physical server: failback is for VMware machines only "
                        "(a physical server fails over to Azure and stays there); set failback: false or "
                        "move it to another plan")
        for d_i in _duplicates([g.name for g in plan.groups]):
            add(("recovery_plans", p_i, "groups", d_i, "name"), "error",
                f"group {plan.groups[d_i].name!r} is defined twice in plan {plan.name!r}")
        for g_i, pgroup in enumerate(plan.groups):
            for when in ("before", "after"):
                for a_i, action in enumerate(getattr(pgroup, when)):
                    if action.script and not _ascii(action.script):
                        add(("recovery_plans", p_i, "groups", g_i, when, a_i, "script"), "error",
                            f"script path {action.script!r} is not an English (ASCII) path; rename it")

    # Azure: one region, geo-redundant storage.
    azure = estate.azure
    for field in ("vault_region", "storage_region"):
        value = getattr(azure, field)
        if value is not None and value != azure.region:
            add(("azure", field), "error", f"{value!r} differs from azure.region {azure.region!r}; every Azure "
                "component of an estate is in one region")
    if azure.storage_redundancy not in matrix.azure.geo_redundant:
        add(("azure", "storage_redundancy"), "error", f"{azure.storage_redundancy} is not geo-redundant; replica "
            f"storage must be one of {', '.join(matrix.azure.geo_redundant)}")
    return findings


# ---------------------------------------------------------------------------------------------
# Files a recovery plan names (runbooks beside the spec, scripts relative to it): a missing one
# would stop a failover at that step, so validation and `dr failover` look before anything runs.


def _plan_actions(plan: RecoveryPlan) -> Iterator[tuple[int, str, int, Action]]:
    for g_i, pgroup in enumerate(plan.groups):
        for when in ("before", "after"):
            for a_i, action in enumerate(getattr(pgroup, when)):
                yield g_i, when, a_i, action


def _action_file_problem(action: Action, base: pathlib.Path) -> str | None:
    from dr.failover.actions import find_runbook
    from dr.failover.provider import FailoverError

    if action.runbook is not None:
        try:
            find_runbook(base, action.runbook)
        except FailoverError as err:
            return str(err)
    elif action.script is not None and not (base / action.script).is_file():
        return f"script {action.script!r} not found: expected {base / action.script} (paths are relative to the spec)"
    return None


def missing_action_files(plan: RecoveryPlan, base: pathlib.Path) -> list[str]:
    """One message per runbook or script of the plan that is not there (`base`: the spec's folder)."""
    return [problem for _, _, _, action in _plan_actions(plan)
            if (problem := _action_file_problem(action, base)) is not None]


def action_files(estate: Estate, base: pathlib.Path) -> list[Finding]:
    """Every runbook and script a recovery plan names and that does not exist, as errors."""
    findings: list[Finding] = []
    for p_i, plan in enumerate(estate.recovery_plans):
        for g_i, when, a_i, action in _plan_actions(plan):
            problem = _action_file_problem(action, base)
            if problem is not None:
                findings.append(Finding("error", ("recovery_plans", p_i, "groups", g_i, when, a_i, action.kind),
                                        problem))
    return findings
