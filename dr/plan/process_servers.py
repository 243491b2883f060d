"""Process servers (on-premises): sized by daily churn and machine count, ASR's scale-out table.

Source: ASR's "capacity planning for VMware/physical replication" scale-out table (2015):

    churn per day      machines   process server
    up to 250 GB       85         4 vCPU, 8 GB memory, 300 GB cache
    up to 1 TB         150        8 vCPU, 12 GB, 600 GB
    up to 2 TB         225        12 vCPU, 24 GB, 1 TB
    beyond             more process servers

TB are decimal here (1 TB = 1,000 GB), as storage is sold and as the table's 300/600 GB caches are.
A machine is served by exactly one process server of its site; a machine above 2 TB/day is an
error. Declared process servers take load first, up to what their declared size carries in the
table (an unsized one carries the largest row and is sized by its load); then servers are added.
Machines are packed first-fit decreasing by churn, with the machine count as a second limit.
The cache must hold the server's churn for the outage window (`site.outage_window`, else
`planning.outage_window`, default 8 h) or the plan warns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dr.model import ProcessServer as DeclaredServer
from dr.plan.context import Inputs, Notes
from dr.plan.packing import FirstFit, r3
from dr.plan.result import ProcessServer


@dataclass(frozen=True)
class Tier:
    vcpus: int
    memory_gb: float
    cache_gb: float
    max_churn_gb_per_day: float
    max_machines: int

    def carries(self, churn: float, machines: int) -> bool:
        return churn <= self.max_churn_gb_per_day + 1e-9 and machines <= self.max_machines

    def label(self) -> str:
        return f"{self.vcpus} vCPU, {self.memory_gb:g} GB, {self.cache_gb:g} GB cache"

    def limits(self) -> str:
        return f"up to {self.max_churn_gb_per_day:g} GB/day and {self.max_machines} machines"


# ASR scale-out table (see the module docstring), smallest first.
TIERS: tuple[Tier, ...] = (
    Tier(vcpus=4, memory_gb=8, cache_gb=300, max_churn_gb_per_day=250, max_machines=85),
    Tier(vcpus=8, memory_gb=12, cache_gb=600, max_churn_gb_per_day=1000, max_machines=150),
    Tier(vcpus=12, memory_gb=24, cache_gb=1000, max_churn_gb_per_day=2000, max_machines=225),
)
LARGEST = TIERS[-1]


def smallest_tier(churn: float, machines: int) -> Tier:
    for tier in TIERS:
        if tier.carries(churn, machines):
            return tier
    return LARGEST


def tier_met(vcpus: float | None, memory_gb: float | None, cache_gb: float | None) -> Tier | None:
    """The largest row of the table a size meets (None fields do not limit)."""
    best = None
    for tier in TIERS:
        if (
            (vcpus is None or vcpus >= tier.vcpus)
            and (memory_gb is None or memory_gb >= tier.memory_gb)
            and (cache_gb is None or cache_gb >= tier.cache_gb)
        ):
            best = tier
    return best


def declared_tier(server: DeclaredServer) -> Tier | None:
    """The largest row of the table the declared size meets (unset fields do not limit)."""
    return tier_met(server.vcpus, server.memory_gb, server.cache_gb)


def _declared_label(server: DeclaredServer) -> str:
    parts = [
        f"{server.vcpus} vCPU" if server.vcpus is not None else None,
        f"{server.memory_gb:g} GB" if server.memory_gb is not None else None,
        f"{server.cache_gb:g} GB cache" if server.cache_gb is not None else None,
    ]
    shown = [p for p in parts if p]
    return ", ".join(shown) if shown else "no size (the planner sizes it)"


def plan_process_servers(inputs: Inputs, notes: Notes) -> list[ProcessServer]:
    estate = inputs.estate
    sites: list[str] = [s.name for s in estate.sites]
    for machine in inputs.machines:
        if machine.site not in sites:
            sites.append(machine.site)
    servers: list[ProcessServer] = []
    for site_name in sites:
        servers.extend(_plan_site(inputs, notes, site_name))
    return servers


def _plan_site(inputs: Inputs, notes: Notes, site_name: str) -> list[ProcessServer]:
    estate = inputs.estate
    site = next((s for s in estate.sites if s.name == site_name), None)
    declared = list(site.process_servers) if site else []
    window = (site.outage_window if site and site.outage_window else estate.planning.outage_window)
    window_hours = window.total_seconds() / 3600
    window_source = "sites.outage_window" if site and site.outage_window else "planning.outage_window"
    machines = [i for i, m in enumerate(inputs.machines) if m.site == site_name]
    if not machines and not declared:
        return []

    placeable: list[int] = []  # indices into inputs.machines
    for i in machines:
        machine, churn = inputs.machines[i], inputs.churn[i]
        if churn > LARGEST.max_churn_gb_per_day + 1e-9:
            notes.error(
                inputs.path(machine.name, "disks"),
                f"{machine.name} churns {churn:g} GB/day; one process server takes at most "
                f"{LARGEST.max_churn_gb_per_day:g} GB/day (ASR scale-out table) and a machine is never "
                "split: lower the churn (exclude temp/page-file disks) or protect it another way",
            )
        else:
            placeable.append(i)
    churn_of = inputs.churn

    bins = FirstFit()
    limits: list[Tier | None] = []
    names: list[str] = []
    members: list[list[int]] = []
    for server in declared:
        tier = declared_tier(server)
        limits.append(tier)
        names.append(server.name)
        members.append([])
        index = bins.open(tier.max_churn_gb_per_day if tier else 0.0)
        if tier is None:
            bins.close(index)
    order = sorted(range(len(placeable)), key=lambda k: (-churn_of[placeable[k]], k))
    used_names = set(names)
    added = 0
    for i in order:
        churn = churn_of[placeable[i]]
        slot = bins.first_with_room(churn)
        if slot is None:
            while True:
                added += 1
                candidate = f"{site_name}-ps{added:02d}"
                if candidate not in used_names:
                    break
            used_names.add(candidate)
            slot = bins.open(LARGEST.max_churn_gb_per_day)
            limits.append(LARGEST)
            names.append(candidate)
            members.append([])
        bins.add(slot, churn)
        members[slot].append(i)
        limit = limits[slot]
        if limit is not None and len(members[slot]) >= limit.max_machines:
            bins.close(slot)

    total_churn = sum(churn_of[i] for i in placeable)
    bound = max(
        math.ceil(total_churn / LARGEST.max_churn_gb_per_day - 1e-9),
        math.ceil(len(placeable) / LARGEST.max_machines),
    )
    site_note = (
        f"site {site_name}: {len(placeable)} machine(s), {total_churn:g} GB/day -> at least {bound} process "
        f"server(s) at {LARGEST.limits()} each (ASR scale-out table); {len(names)} planned"
    )
    result = []
    for slot, name in enumerate(names):
        held = sorted(members[slot])
        churn = sum(churn_of[placeable[k]] for k in held)
        needed = smallest_tier(churn, len(held))
        reasons = [site_note]
        is_declared = slot < len(declared)
        if is_declared:
            server = declared[slot]
            limit = limits[slot]
            if limit is None:
                notes.warning(
                    inputs.site_path(site_name, "process_servers", slot),
                    f"process server {name} is declared with {_declared_label(server)}, below the smallest "
                    f"row of ASR's scale-out table ({TIERS[0].label()}); it is given no machines: "
                    "raise its size or remove it",
                )
                reasons.append(f"declared {_declared_label(server)}: below {TIERS[0].label()}, carries nothing")
            else:
                reasons.append(
                    f"declared {_declared_label(server)}: carries {limit.limits()} (ASR scale-out table)"
                )
            vcpus = server.vcpus if server.vcpus is not None else needed.vcpus
            memory = server.memory_gb if server.memory_gb is not None else needed.memory_gb
            cache = server.cache_gb if server.cache_gb is not None else needed.cache_gb
            if None in (server.vcpus, server.memory_gb, server.cache_gb):
                reasons.append(f"unset size fields filled from the row for its load: {needed.label()}")
            final = tier_met(vcpus, memory, cache) if limit else None
            max_churn = final.max_churn_gb_per_day if final else 0.0
            max_machines = final.max_machines if final else 0
            if not held and limit is not None:
                reasons.append("the site's load fits on the servers before it: it carries no machines")
        else:
            vcpus, memory, cache = needed.vcpus, needed.memory_gb, needed.cache_gb
            max_churn, max_machines = needed.max_churn_gb_per_day, needed.max_machines
            reasons.append(
                f"added: {churn:g} GB/day and {len(held)} machine(s) fit {needed.limits()} -> {needed.label()}"
            )
        reasons.append(f"carries {churn:g} GB/day of {len(held)} machine(s)")
        cache_needed = churn * window_hours / 24
        reasons.append(
            f"cache for a {window_hours:g} h outage ({window_source}): {churn:g} GB/day x {window_hours:g}/24 "
            f"= {cache_needed:.1f} GB; it has {cache:g} GB"
        )
        if cache_needed > cache + 1e-9:
            notes.warning(
                inputs.site_path(site_name, "process_servers", slot) if is_declared
                else inputs.site_path(site_name),
                f"process server {name} caches {cache:g} GB but a {window_hours:g} h outage at "
                f"{churn:g} GB/day needs {cache_needed:.1f} GB: give it a larger cache_gb, or shorten "
                f"{window_source}",
            )
        result.append(
            ProcessServer(
                name=name,
                site=site_name,
                declared=is_declared,
                vcpus=vcpus,
                memory_gb=r3(memory),
                cache_gb=r3(cache),
                churn_gb_per_day=r3(churn),
                machines=[inputs.machines[placeable[k]].name for k in held],
                max_churn_gb_per_day=r3(max_churn),
                max_machines=max_machines,
                cache_needed_gb=r3(cache_needed),
                outage_window_hours=r3(window_hours),
                reasons=reasons,
            )
        )
    return result
