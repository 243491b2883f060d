"""Failover VM sizes and the vCPU quota they, and the always-on servers, need.

Each protected machine fails over to the smallest size of the support profile's catalog (`dr.sizes`)
with at least its vCPUs, memory, data disks (its disks minus the OS disk) and NICs, that boots the
machine's disk (a UEFI machine needs a Generation 2 size), unless the spec sets `azure_size`. Every
size the plan chooses, servers included, that Microsoft has retired or announced for retirement is a
warning naming the date and the source (`size_warnings`). vCPUs are summed per quota family, plus
the configuration servers and master targets, which run all the time; the total is compared with the
declared regional quota (`azure.quota.vcpus`), and the shortfall is what to request from Azure
support.
"""

from __future__ import annotations

from dr.plan.context import Inputs, Notes
from dr.plan.master_targets import Placement
from dr.plan.packing import r3
from dr.plan.result import ConfigServer, FailoverVm, Quota
from dr.sizes import CURRENT_PROFILE, VmSize, by_name, generation_of, smallest_fitting


def plan_failover_vms(inputs: Inputs, notes: Notes) -> list[FailoverVm]:
    profile = inputs.estate.support_profile
    vms: list[FailoverVm] = []
    for machine in inputs.machines:
        data_disks = len(machine.disks) - 1
        generation = generation_of(machine.firmware)
        need = (
            f"{machine.vcpus} vCPU, {machine.memory_gb:g} GB, {data_disks} data disk(s), {machine.nics} NIC(s), "
            f"Generation {generation} ({machine.firmware.upper()})"
        )
        if machine.azure_size:
            size = by_name(machine.azure_size)
            if size is None:
                notes.error(
                    inputs.path(machine.name, "azure_size"),
                    f"azure_size {machine.azure_size!r} is not in the bundled size catalog: use a size "
                    "such as Standard_D4s_v5 (see dr/data/vm_sizes.yaml)",
                )
                continue
            if not size.boots(generation):
                notes.error(
                    inputs.path(machine.name, "azure_size"),
                    f"{machine.name} boots with UEFI (a Generation 2 disk); its azure_size {size.name} runs "
                    f"Generation {', '.join(map(str, size.generations))} only: choose a size that supports "
                    "Generation 2, such as Standard_D4s_v5",
                )
                continue
            reasons = [f"azure_size set in the spec: {size.name}"]
            if not size.fits(machine.vcpus, machine.memory_gb, data_disks, machine.nics):
                notes.warning(
                    inputs.path(machine.name, "azure_size"),
                    f"{machine.name} needs {need}; its azure_size {size.name} has {size.vcpus} vCPU, "
                    f"{size.memory_gb:g} GB, {size.max_data_disks} data disks, {size.max_nics} NICs",
                )
            overridden = True
        else:
            found = smallest_fitting(
                profile, machine.vcpus, machine.memory_gb, data_disks, machine.nics, generation=generation
            )
            if found is None:
                notes.error(
                    inputs.path(machine.name),
                    f"{machine.name} needs {need}; no size of profile {profile} fits: set azure_size, or "
                    f"reduce the machine (or choose support_profile {CURRENT_PROFILE} for larger, current sizes)",
                )
                continue
            size = found
            reasons = [f"needs {need}: smallest fitting size of profile {profile} is {size.name}"]
            overridden = False
        reasons.append(
            f"{size.name}: {size.vcpus} vCPU, {size.memory_gb:g} GB, {size.max_data_disks} data disks, "
            f"{size.max_nics} NICs, Generation {'/'.join(map(str, size.generations))}, quota family {size.family}"
        )
        vms.append(
            FailoverVm.model_validate(
                {"machine": machine.name, "size": size.name, "vcpus": size.vcpus, "memory_gb": r3(size.memory_gb),
                 "family": size.family, "overridden": overridden, "reasons": reasons}
            )
        )
    return vms


def plan_quota(
    inputs: Inputs,
    config_servers: list[ConfigServer],
    master_targets: list[Placement],
    failover_vms: list[FailoverVm],
    notes: Notes,
) -> Quota:
    by_family: dict[str, int] = {}
    always_on = 0
    for cs in config_servers:
        by_family[cs.family] = by_family.get(cs.family, 0) + cs.vcpus
        always_on += cs.vcpus
    for mts in master_targets:
        by_family[mts.size.family] = by_family.get(mts.size.family, 0) + mts.size.vcpus
        always_on += mts.size.vcpus
    failover = 0
    for vm in failover_vms:
        by_family[vm.family] = by_family.get(vm.family, 0) + vm.vcpus
        failover += vm.vcpus
    total = always_on + failover
    declared = inputs.estate.azure.quota.vcpus
    shortfall = max(0, total - declared)
    families = ", ".join(f"{family} {count}" for family, count in sorted(by_family.items()))
    reasons = [
        f"always on: {len(config_servers)} configuration server(s) and {len(master_targets)} master target(s) "
        f"= {always_on} vCPU; failover VMs: {len(failover_vms)} machine(s) = {failover} vCPU",
        f"by family: {families or 'none'}; total {total} vCPU against {declared} declared (azure.quota.vcpus)",
    ]
    if shortfall:
        reasons.append(f"shortfall: request {shortfall} more vCPU from Azure support")
        notes.warning(
            "azure.quota.vcpus",
            f"the plan needs {total} vCPUs ({families}); the subscription declares {declared}: request "
            f"{shortfall} more from Azure support, then raise azure.quota.vcpus",
        )
    return Quota(
        vcpus_by_family=dict(sorted(by_family.items())),
        total_vcpus=total,
        declared_vcpus=declared,
        shortfall_vcpus=shortfall,
        always_on_vcpus=always_on,
        failover_vcpus=failover,
        reasons=reasons,
    )


def size_warnings(
    inputs: Inputs,
    config_servers: list[ConfigServer],
    master_targets: list[Placement],
    failover_vms: list[FailoverVm],
    notes: Notes,
) -> None:
    """One warning per chosen size that Microsoft retired (not deployable: `dr preview` and the stack
    refuse it) or announced for retirement, naming what uses it, the date and the source."""
    users: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for cs in config_servers:
        users.setdefault(cs.size, []).append(f"configuration server {cs.name}")
    for mts in master_targets:
        users.setdefault(mts.size.name, []).append(f"master target {mts.name}")
    for vm in failover_vms:
        users.setdefault(vm.size, []).append(f"failover VM of {vm.machine}")
        if vm.overridden:
            paths.setdefault(vm.size, inputs.path(vm.machine, "azure_size"))
    for name, used_by in users.items():
        size: VmSize | None = by_name(name)
        if size is None or size.status() == "current":
            continue
        shown = ", ".join(used_by[:3]) + (f" and {len(used_by) - 3} more" if len(used_by) > 3 else "")
        if size.status() == "retired":
            consequence = "it cannot be deployed"
        else:
            consequence = "new subscriptions cannot get quota for it and running VMs stop on that date"
        fix = (
            f"set a current azure_size (a size of {CURRENT_PROFILE})" if name in paths
            else f"choose support_profile: {CURRENT_PROFILE}, whose sizes are all deployable today"
        )
        notes.warning(
            paths.get(name, "support_profile"),
            f"{size.retirement()}: {consequence}; used by {shown}; {fix}",
        )
