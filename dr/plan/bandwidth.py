"""Bandwidth: the Mbps each site needs to keep its protection groups inside their RPO threshold,
and how long the initial replication of used data takes at the declared bandwidth.

Model (per protection group, per site):
- The churn figures are daily volumes at the planner's percentile (`planning.percentile`: the
  profiler turns the p95 write rate into GB/day), so the rate to sustain is
      rate_mbps = churn_gb_per_day x 8,000 Mbit/GB / 86,400 s / compression_ratio
  (1 GB = 10^9 bytes = 8,000 megabits). Below that rate the backlog grows without bound and no RPO
  holds.
- The RPO is the age of the newest recovery point in Azure: a crash-consistent point is cut every
  `crash_consistent_every` (c) and must then reach Azure, so RPO ~ c + (rate x c) / bandwidth.
  Keeping it under the threshold T needs bandwidth >= rate x c / (T - c). The group needs
      mbps = rate_mbps x max(1, c / (T - c))
  which is the plain rate whenever T >= 2c (ASR's defaults: c = 5 min, T = 15 min); a threshold
  at or below c can never be met and is an error.
- The site needs the sum over its groups (they share the link); the RPO is at risk when the
  declared `bandwidth_mbps` is below it.
- Initial replication sends the used data (`used_gb`, else the provisioned `size_gb`) once:
      hours = used_gb x 8,000 / compression_ratio / bandwidth_mbps / 3,600.

Compression (`planning.compression_ratio`, default 2.0): the process server compresses before
sending. Measured on this VM (2 cores) with zstd level 3 in 64 KiB blocks, as a changed-block
stream is cut: shared libraries 3.19:1, Python sources and bytecode 2.95:1, /usr/share (which
holds already-compressed .gz documentation) 2.19:1. 2.0 sits below every measurement, because
production churn also carries compressed media, backups and encrypted data that do not shrink.
"""

from __future__ import annotations

from dr.duration import format_duration
from dr.plan.context import Inputs, Notes
from dr.plan.packing import r3
from dr.plan.result import Bandwidth, GroupBandwidth

MBIT_PER_GB = 8_000  # 1 GB = 10^9 bytes = 8,000 megabits
SECONDS_PER_DAY = 86_400


def plan_bandwidth(inputs: Inputs, notes: Notes) -> list[Bandwidth]:
    estate = inputs.estate
    compression = estate.planning.compression_ratio
    group_of: dict[str, int] = {}
    for g_index, group in enumerate(estate.protection_groups):
        for member in group.members:
            group_of.setdefault(member, g_index)
    sites: list[str] = [s.name for s in estate.sites]
    for machine in inputs.machines:
        if machine.site not in sites:
            sites.append(machine.site)

    for g_index, group in enumerate(estate.protection_groups):
        if group.policy.rpo_threshold <= group.policy.crash_consistent_every:
            notes.error(
                f"protection_groups.{g_index}.policy.rpo_threshold",
                f"group {group.name}: an RPO threshold of {format_duration(group.policy.rpo_threshold)} cannot "
                f"be met with crash-consistent points every {format_duration(group.policy.crash_consistent_every)}: "
                "make the threshold longer than the interval (ASR's defaults: 15m and 5m)",
            )

    by_site: dict[str, list[int]] = {}
    for i, machine in enumerate(inputs.machines):
        by_site.setdefault(machine.site, []).append(i)
    result: list[Bandwidth] = []
    for site_name in sites:
        machines = by_site.get(site_name, [])
        if not machines:
            continue
        site = next((s for s in estate.sites if s.name == site_name), None)
        declared = site.bandwidth_mbps if site else None
        churn_by_group: dict[int, float] = {}
        used = 0.0
        churn_total = 0.0
        for i in machines:
            churn = inputs.churn[i]
            churn_total += churn
            g_index = group_of[inputs.machines[i].name]
            churn_by_group[g_index] = churn_by_group.get(g_index, 0.0) + churn
            used += inputs.used[i]
        groups: list[tuple[int, float, float, float]] = []  # (group, threshold min, churn, mbps)
        for g_index in sorted(churn_by_group):
            policy = estate.protection_groups[g_index].policy
            threshold = policy.rpo_threshold.total_seconds()
            interval = policy.crash_consistent_every.total_seconds()
            rate = churn_by_group[g_index] * MBIT_PER_GB / SECONDS_PER_DAY / compression
            factor = max(1.0, interval / (threshold - interval)) if threshold > interval else 1.0
            groups.append((g_index, threshold / 60, churn_by_group[g_index], rate * factor))
        need = sum(g[3] for g in groups)
        at_risk = declared is not None and declared + 1e-9 < need
        hours = None if not declared else used * MBIT_PER_GB / compression / declared / 3600
        reasons = [
            f"{churn_total:g} GB/day x {MBIT_PER_GB} Mbit/GB / {SECONDS_PER_DAY} s / {compression:g} "
            f"(planning.compression_ratio) = {churn_total * MBIT_PER_GB / SECONDS_PER_DAY / compression:.3f} "
            f"Mbps sustained; with each group's RPO threshold: {need:.3f} Mbps",
        ]
        for g_index, minutes, churn, mbps in groups:
            group = estate.protection_groups[g_index]
            reasons.append(
                f"group {group.name}: {churn:g} GB/day, RPO {minutes:g} min with points every "
                f"{group.policy.crash_consistent_every.total_seconds() / 60:g} min -> {mbps:.3f} Mbps"
            )
        if declared is None:
            notes.warning(
                inputs.site_path(site_name),
                f"site {site_name} declares no bandwidth_mbps: the RPO ({need:.3f} Mbps needed) and the initial "
                f"replication of {used:g} GB cannot be checked; set sites[].bandwidth_mbps",
            )
            reasons.append("no declared bandwidth: RPO and initial replication not checked")
        else:
            reasons.append(
                f"initial replication: {used:g} GB used x {MBIT_PER_GB} / {compression:g} / {declared:g} Mbps "
                f"/ 3600 = {hours:.2f} h"
            )
            if at_risk:
                notes.warning(
                    inputs.site_path(site_name, "bandwidth_mbps"),
                    f"RPO at risk at site {site_name}: its protection groups need {need:.3f} Mbps, "
                    f"{declared:g} Mbps is declared: raise bandwidth_mbps or protect less churn",
                )
        result.append(
            Bandwidth(
                site=site_name,
                mbps_for_rpo=r3(need),
                declared_mbps=None if declared is None else r3(declared),
                churn_gb_per_day=r3(churn_total),
                used_gb=r3(used),
                initial_replication_hours=None if hours is None else r3(hours),
                rpo_at_risk=at_risk,
                groups=[
                    GroupBandwidth(
                        group=estate.protection_groups[g].name,
                        rpo_threshold_minutes=r3(minutes),
                        churn_gb_per_day=r3(churn),
                        mbps=r3(mbps),
                        rpo_at_risk=at_risk,
                    )
                    for g, minutes, churn, mbps in groups
                ],
                reasons=reasons,
            )
        )
    return result
