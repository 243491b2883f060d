"""Configuration servers: one per 750 protected source volumes (a Standard_A3 in the seed's profile).

Seed: "a Standard A3 configuration server protects about 750 volumes (about 250 machines at 3
volumes each)". The size is the profile's (`servers:` in dr/data/vm_sizes.yaml): the current profile
carries the rule over to Standard_D4s_v5 (4 vCPU like the A3; the A3 was retired in 2024). A volume
is a disk of a protected machine; a machine registers with one configuration server, so its volumes
are never split. Machines are packed first-fit decreasing by volume count; the count is never below
the lower bound ceil(volumes / 750).
"""

from __future__ import annotations

import math

from dr.plan.context import Inputs
from dr.plan.packing import FirstFit
from dr.plan.result import ConfigServer
from dr.sizes import server_size

CS_VOLUMES = 750  # protected volumes per configuration server (seed)


def plan_config_servers(inputs: Inputs) -> list[ConfigServer]:
    machines = inputs.machines
    if not machines:
        return []
    size = server_size(inputs.estate.support_profile, "config_server")
    count_of = inputs.disks
    order = sorted(range(len(machines)), key=lambda i: (-count_of[i], i))
    bins = FirstFit()
    members: list[list[int]] = []
    for i in order:
        count = count_of[i]
        slot = bins.first_with_room(count)
        if slot is None:
            slot = bins.open(max(CS_VOLUMES, count))
            members.append([])
        bins.add(slot, count)
        members[slot].append(i)
    total = sum(count_of)
    bound = math.ceil(total / CS_VOLUMES)
    servers = []
    for number, held in enumerate(members, start=1):
        held.sort()
        volumes = sum(count_of[i] for i in held)
        reasons = [
            f"{total} protected volume(s) / {CS_VOLUMES} per configuration server (seed), {size.name} in "
            f"{inputs.estate.support_profile} -> at least {bound} "
            f"configuration server(s); first-fit decreasing by machine used {len(members)}",
            f"carries {volumes} volume(s) of {len(held)} machine(s), {CS_VOLUMES - volumes} volume(s) free",
        ]
        servers.append(
            ConfigServer(
                name=f"{inputs.estate.estate}-cs{number:02d}",
                size=size.name,
                vcpus=size.vcpus,
                family=size.family,
                volumes=volumes,
                capacity=CS_VOLUMES,
                machines=[machines[i].name for i in held],
                reasons=reasons,
            )
        )
    return servers
