"""Master target servers in Azure: which MTS carries which source disks.

Seed rules (the sizes are the profile's, `servers:` in dr/data/vm_sizes.yaml: the seed's A4/D14,
or the current profile's Standard_D8s_v5/Standard_D16s_v5 with the same data-disk counts):
- Windows sources replicate to Windows master targets, Linux sources to Linux ones.
- A Standard_A4 takes 16 data disks and a Standard_D14 32; one is kept for the retention disk, so
  an A4 protects 15 source disks and a D14 31 (the capacities are read from the size catalog).
- A source is never split across two master targets; a D14 is chosen only for a source with more
  than 15 disks; a source with more disks than a D14 protects (32 or more) is an error.
- Fewest master targets: the seed's example puts machines with 40 volumes in total on 3 x A4.
- The members of a multi-VM-consistent protection group go to one master target where they fit
  (at most 15 disks in all, or 31 when one of them needs a D14); otherwise the plan warns.

Placement is first-fit decreasing (by disk count, then spec order) per OS: deterministic, never
above capacity, and within 11/9 OPT + 6/9 of the fewest possible. The lower bound reported is
  big + ceil(max(0, small_disks - free room of the big sources' D14s) / 15)
where `big` counts sources with more than 15 disks (each needs its own D14: two would need 32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dr.plan.context import Inputs, Notes
from dr.plan.packing import FirstFit
from dr.sizes import VmSize, server_size

RETENTION_DISKS = 1  # data disks of a master target kept for its retention disk (seed)
OS_FAMILIES: tuple[str, ...] = ("windows", "linux")


def capacity(size: VmSize) -> int:
    return size.max_data_disks - RETENTION_DISKS


@dataclass(frozen=True)
class Placement:
    """One master target before storage accounts are chosen (machines index Inputs.machines)."""

    name: str
    os: str
    size: VmSize
    capacity: int
    machines: tuple[int, ...]
    protected_disks: int
    reasons: tuple[str, ...]


def plan_master_targets(inputs: Inputs, notes: Notes) -> list[Placement]:
    profile = inputs.estate.support_profile
    small, large = server_size(profile, "master_target_small"), server_size(profile, "master_target_large")
    small_cap, large_cap = capacity(small), capacity(large)
    machines = inputs.machines
    count, family_of = inputs.disks, inputs.family
    position = {m.name: i for i, m in enumerate(machines)}

    placeable: set[int] = set()
    for i, machine in enumerate(machines):
        if count[i] > large_cap:
            notes.error(
                inputs.path(machine.name, "disks"),
                f"{machine.name} has {len(machine.disks)} disks; the largest master target ({large.name}, "
                f"{large.max_data_disks} data disks, one kept for retention) protects {large_cap} and a source "
                f"is never split: protect at most {large_cap} of its disks",
            )
        else:
            placeable.add(i)

    # Items to place: a multi-VM-consistent group (per OS) that fits on one MTS, else single machines.
    items: list[tuple[int, ...]] = []
    grouped: set[int] = set()
    for g_index, group in enumerate(inputs.estate.protection_groups):
        if not group.policy.multi_vm_consistency:
            continue
        candidates = {position[n] for n in group.members if n in position}
        members = sorted(i for i in candidates if i in placeable and i not in grouped)
        families = sorted({family_of[i] for i in members})
        if len(families) > 1:
            notes.warning(
                f"protection_groups.{g_index}",
                f"multi-VM-consistent group {group.name} mixes Windows and Linux machines, which go to "
                "different master targets: its members are kept together per OS only",
            )
        for family in families:
            part = [i for i in members if family_of[i] == family]
            if len(part) < 2:
                continue
            total = sum(count[i] for i in part)
            limit = large_cap if any(count[i] > small_cap for i in part) else small_cap
            if total <= limit:
                items.append(tuple(part))
                grouped.update(part)
            else:
                notes.warning(
                    f"protection_groups.{g_index}",
                    f"multi-VM-consistent group {group.name} has {total} {family} disks; one master target "
                    f"protects {limit}: its members go to several master targets (split the group, or "
                    "accept that a failover of it uses several master targets)",
                )
    items.extend((i,) for i in sorted(placeable - grouped))

    placements: list[Placement] = []
    for family in OS_FAMILIES:
        mine = [item for item in items if family_of[item[0]] == family]
        if not mine:
            continue
        size_of = {item: sum(count[i] for i in item) for item in mine}
        mine.sort(key=lambda item: (-size_of[item], item[0]))
        bins = FirstFit()
        held: list[list[int]] = []
        for item in mine:
            need = size_of[item]
            slot = bins.first_with_room(need)
            if slot is None:
                slot = bins.open(large_cap if need > small_cap else small_cap)
                held.append([])
            bins.add(slot, need)
            held[slot].extend(item)
        total = sum(size_of.values())
        big = [i for item in mine for i in item if count[i] > small_cap]
        big_disks = sum(count[i] for i in big)
        spare = large_cap * len(big) - big_disks
        bound = len(big) + math.ceil(max(0, total - big_disks - spare) / small_cap)
        summary = (
            f"{total} {family} source disk(s), {len(big)} source(s) above {small_cap} disks -> at least "
            f"{bound} master target(s); first-fit decreasing used {len(held)}"
        )
        letter = family[0]
        for number, members in enumerate(held, start=1):
            members.sort()
            cap = int(bins.capacity[number - 1])
            size = large if cap == large_cap else small
            disks = sum(count[i] for i in members)
            why = (
                f"{large.name}: {machines[max(members, key=lambda i: count[i])].name} has more "
                f"than {small_cap} disks"
                if size is large
                else f"{small.name}: every source has at most {small_cap} disks"
            )
            reasons = (
                summary,
                f"{why}; {size.max_data_disks} data disks - {RETENTION_DISKS} retention = {cap} protected",
                f"carries {disks} disk(s) of {len(members)} machine(s), {cap - disks} free",
            )
            placements.append(
                Placement(
                    name=f"{inputs.estate.estate}-mts{letter}{number:02d}",
                    os=family,
                    size=size,
                    capacity=cap,
                    machines=tuple(members),
                    protected_disks=disks,
                    reasons=reasons,
                )
            )
    return placements
