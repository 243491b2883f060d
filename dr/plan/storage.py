"""Storage accounts (geo-redundant by default) for replica and retention disks.

Seed: "for every source IO, there are 2 IOs on the replicated data disk and .5 IO on the retention
disk" (`planning.replica_io_factor`, `planning.retention_io_factor`); a standard storage account
takes at most 20,000 IOPS (`planning.account_max_iops`, Azure 2015); a replica account carries at
most 8,000-10,000 source IOPS (`planning.replica_account_source_iops`, default 8,000); more than
100 accounts per subscription (`planning.max_storage_accounts`) is an error.

A replica account therefore takes min(replica_account_source_iops, account_max_iops /
replica_io_factor) source IOPS; a disk is never split across accounts, so a disk above that is an
error. Replica disks are packed first-fit decreasing by IOPS (ties: master target, machine and
disk order); the count is never below ceil(source IOPS / that capacity). Each master target's OS
and retention disks go to a retention account, shared while the retention IOs (source IOPS x
retention factor) stay within account_max_iops; the OS disk of a master target carries no source
IO and is counted at 0 IOPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dr.plan.context import Inputs, Notes, name_stem
from dr.plan.master_targets import Placement
from dr.plan.packing import FirstFit, r3
from dr.plan.result import StorageAccount


@dataclass(frozen=True)
class StoragePlan:
    accounts: list[StorageAccount]
    disk_account: dict[str, str]  # "machine/disk" -> account name ("" when the disk could not be placed)
    retention_account: dict[str, str]  # master target name -> account name
    retention_iops: dict[str, float]  # master target name -> IOs per second on its retention disk


def _account_name(stem: str, letter: str, number: int) -> str:
    return f"{stem}{letter}{number:03d}"


def plan_storage(inputs: Inputs, placements: list[Placement], notes: Notes) -> StoragePlan:
    planning = inputs.estate.planning
    machines = inputs.machines
    stem = name_stem(inputs.estate)
    redundancy = inputs.estate.azure.storage_redundancy
    replica_cap = min(float(planning.replica_account_source_iops),
                      planning.account_max_iops / planning.replica_io_factor)
    cap_why = (
        f"a replica account takes min({planning.replica_account_source_iops} source IOPS "
        f"(planning.replica_account_source_iops), {planning.account_max_iops} IOPS / "
        f"{planning.replica_io_factor:g} replica IOs per source IO) = {replica_cap:g} source IOPS"
    )

    # Replica disks, in master target order.
    disks: list[tuple[str, float, int]] = []  # (machine/disk, source iops, machine index)
    for placement in placements:
        for i in placement.machines:
            for disk in machines[i].disks:
                disks.append((f"{machines[i].name}/{disk.name}", float(disk.iops), i))
    order = sorted(range(len(disks)), key=lambda k: (-disks[k][1], k))
    bins = FirstFit()
    held: list[list[int]] = []
    disk_account: dict[str, str] = {}
    for k in order:
        label, iops, i = disks[k]
        if iops > replica_cap + 1e-9:
            d_index = next(n for n, d in enumerate(machines[i].disks) if d.name == label.split("/", 1)[1])
            notes.error(
                inputs.path(machines[i].name, "disks", d_index, "iops"),
                f"disk {label} needs {iops:g} source IOPS; {cap_why}, and a disk is never split: "
                "lower the disk's IOPS or raise planning.replica_account_source_iops",
            )
            disk_account[label] = ""
            continue
        slot = bins.first_with_room(iops)
        if slot is None:
            slot = bins.open(replica_cap)
            held.append([])
        bins.add(slot, iops)
        held[slot].append(k)
    total_iops = sum(d[1] for d in disks if disk_account.get(d[0]) != "")
    bound = math.ceil(total_iops / replica_cap - 1e-9) if total_iops else (1 if held else 0)
    summary = (
        f"{total_iops:g} source IOPS on {len(disks)} replica disk(s); {cap_why} -> at least {bound} "
        f"replica account(s); first-fit decreasing used {len(held)}"
    )
    accounts: list[StorageAccount] = []
    for number, members in enumerate(held, start=1):
        name = _account_name(stem, "r", number)
        members.sort()
        source = sum(disks[k][1] for k in members)
        target = source * planning.replica_io_factor
        for k in members:
            disk_account[disks[k][0]] = name
        accounts.append(
            StorageAccount(
                name=name,
                purpose="replica",
                redundancy=redundancy,
                source_iops=r3(source),
                target_iops=r3(target),
                max_iops=planning.account_max_iops,
                disks=[disks[k][0] for k in members],
                reasons=[
                    summary,
                    f"carries {len(members)} replica disk(s): {source:g} source IOPS x "
                    f"{planning.replica_io_factor:g} (planning.replica_io_factor) = {target:g} IOPS of "
                    f"{planning.account_max_iops}",
                ],
            )
        )

    # Retention: each master target's OS and retention disks.
    retention = [sum(inputs.iops[i] for i in p.machines) for p in placements]
    r_bins = FirstFit()
    r_held: list[list[int]] = []
    retention_account: dict[str, str] = {}
    retention_iops: dict[str, float] = {}
    r_order = sorted(range(len(placements)), key=lambda k: (-retention[k], k))
    for k in r_order:
        load = retention[k] * planning.retention_io_factor
        retention_iops[placements[k].name] = r3(load)
        if load > planning.account_max_iops + 1e-9:
            notes.error(
                "planning.account_max_iops",
                f"master target {placements[k].name} carries {retention[k]:g} source IOPS: its retention disk "
                f"needs {load:g} IOPS, above one account's {planning.account_max_iops}; lower the IOPS of its "
                "machines or the retention factor",
            )
            retention_account[placements[k].name] = ""
            continue
        slot = r_bins.first_with_room(load)
        if slot is None:
            slot = r_bins.open(float(planning.account_max_iops))
            r_held.append([])
        r_bins.add(slot, load)
        r_held[slot].append(k)
    for number, members in enumerate(r_held, start=1):
        name = _account_name(stem, "t", number)
        members.sort()
        source = sum(retention[k] for k in members)
        target = source * planning.retention_io_factor
        listed: list[str] = []
        for k in members:
            retention_account[placements[k].name] = name
            listed += [f"{placements[k].name}/os", f"{placements[k].name}/retention"]
        accounts.append(
            StorageAccount(
                name=name,
                purpose="retention",
                redundancy=redundancy,
                source_iops=r3(source),
                target_iops=r3(target),
                max_iops=planning.account_max_iops,
                disks=listed,
                reasons=[
                    f"OS and retention disks of {len(members)} master target(s), shared while IOPS allow: "
                    f"{source:g} source IOPS x {planning.retention_io_factor:g} (planning.retention_io_factor) "
                    f"= {target:g} IOPS of {planning.account_max_iops}",
                ],
            )
        )
    if len(accounts) > planning.max_storage_accounts:
        notes.error(
            "planning.max_storage_accounts",
            f"the plan needs {len(accounts)} storage accounts; a subscription takes "
            f"{planning.max_storage_accounts} (planning.max_storage_accounts): ask Azure support to raise "
            "the limit and set it, or protect fewer IOPS per subscription",
        )
    return StoragePlan(accounts, disk_account, retention_account, retention_iops)
