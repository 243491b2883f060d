"""Profiling: per-disk write IOPS and churn from vSphere's PerformanceManager, as percentiles.

Every `interval` for `duration`, one QueryPerf call asks the latest real-time sample (vCenter refreshes
real-time statistics every 20 s: QueryPerfProviderSummary.refreshRate) of two counters for every disk
of every profiled VM at once:

    virtualDisk.write.average                (kiloBytesPerSecond, per disk instance "scsi0:1") -> churn
    virtualDisk.numberWriteAveraged.average  (number per second, per disk instance)             -> IOPS

The figure written is the requested percentile (p95 by default, linear interpolation between closest
ranks, as numpy's default and Excel's PERCENTILE.INC) of the samples. Churn per day is the write rate
percentile held for a day: KiB/s x 86400 s / 1024^2 = GiB/day (vSphere's "kilo" is 1024 bytes).

A series shorter than its sample list is padded with zeros: vcsim's XML encoding omits zero values;
vSphere reports a missing sample as -1, which is dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dr.discover.errors import SourceError
from dr.discover.vcenter import Source, connect, disconnect, guarded, retrieve

WRITE_RATE = "virtualDisk.write.average"               # KiB/s
WRITE_IOPS = "virtualDisk.numberWriteAveraged.average"  # writes/s
REALTIME_INTERVAL_S = 20  # vSphere's real-time statistics interval, seconds (vSphere docs)
SECONDS_PER_DAY = 86400
KIB_PER_GIB = 1024**2


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct` percentile (0-100) by linear interpolation between closest ranks; 0 for no values."""
    if not values:
        return 0.0
    if not 0 <= pct <= 100:
        raise ValueError(f"a percentile is between 0 and 100, found {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Target:
    """One VM to profile: its key in the inventory (instance UUID or name) and its disk instances."""

    key: str
    name: str
    ref: Any
    devices: tuple[str, ...]


@dataclass
class Samples:
    """Samples collected so far, per VM key and disk instance. Mutable while sampling, then read."""

    write_kbps: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    write_iops: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rounds: int = 0

    def add(self, table: dict[str, dict[str, list[float]]], key: str, device: str, values: Sequence[float]) -> None:
        table.setdefault(key, {}).setdefault(device, []).extend(values)


@dataclass(frozen=True)
class DiskFigure:
    machine: str
    device: str
    iops: float
    churn_gb_per_day: float
    samples: int


def counter_keys(perf_manager: Any) -> dict[str, int]:
    """Counter name (group.name.rollup) -> key, for the two counters profiling reads."""
    wanted = {WRITE_RATE, WRITE_IOPS}
    keys: dict[str, int] = {}
    for counter in perf_manager.perfCounter:
        name = f"{counter.groupInfo.key}.{counter.nameInfo.key}.{counter.rollupType}"
        if name in wanted:
            keys[name] = int(counter.key)
    return keys


def _values(series: Any, sample_count: int) -> list[float]:
    values = [float(v) for v in (series.value or []) if v >= 0]
    missing = sample_count - len(series.value or [])
    return values + [0.0] * max(missing, 0)


def sample_once(perf_manager: Any, vim: Any, targets: Sequence[Target], keys: Mapping[str, int],
                samples: Samples, interval_id: int) -> None:
    """One QueryPerf for every target: the latest real-time sample of each disk's two counters."""
    specs = []
    for target in targets:
        metric_ids = [vim.PerformanceManager.MetricId(counterId=keys[name], instance=device)
                      for device in target.devices for name in (WRITE_RATE, WRITE_IOPS) if name in keys]
        specs.append(vim.PerformanceManager.QuerySpec(
            entity=target.ref, metricId=metric_ids, intervalId=interval_id, maxSample=1))
    by_ref = {str(t.ref._moId): t for t in targets}
    rate_key, iops_key = keys.get(WRITE_RATE), keys.get(WRITE_IOPS)
    for result in perf_manager.QueryPerf(querySpec=specs) or []:
        found = by_ref.get(str(result.entity._moId))
        if found is None:
            continue
        target = found
        count = len(result.sampleInfo or [])
        for series in result.value or []:
            device = series.id.instance
            if device not in target.devices:
                continue
            if series.id.counterId == rate_key:
                samples.add(samples.write_kbps, target.key, device, _values(series, count))
            elif series.id.counterId == iops_key:
                samples.add(samples.write_iops, target.key, device, _values(series, count))
    samples.rounds += 1


def targets_for(si: Any, vim: Any, devices: Mapping[str, Sequence[str]]) -> list[Target]:
    """The powered-on VMs whose key (instance UUID, else name) the inventory lists, one retrieval."""
    found: list[Target] = []
    props_wanted = ("name", "config.instanceUuid", "runtime.powerState")
    for obj, props in retrieve(si, {vim.VirtualMachine: props_wanted}):
        for key in (props.get("config.instanceUuid"), props.get("name")):
            if key and key in devices and devices[key]:
                if props.get("runtime.powerState") == "poweredOn":
                    found.append(Target(key=str(key), name=str(props.get("name")), ref=obj,
                                        devices=tuple(devices[key])))
                break
    found.sort(key=lambda t: t.name)
    return found


def figures(samples: Samples, targets: Sequence[Target], pct: float) -> list[DiskFigure]:
    out = []
    for target in targets:
        for device in target.devices:
            rates = samples.write_kbps.get(target.key, {}).get(device, [])
            iops = samples.write_iops.get(target.key, {}).get(device, [])
            if not rates and not iops:
                continue
            churn = percentile(rates, pct) * SECONDS_PER_DAY / KIB_PER_GIB
            out.append(DiskFigure(machine=target.name, device=device, iops=round(percentile(iops, pct), 1),
                                  churn_gb_per_day=round(churn, 2), samples=max(len(rates), len(iops))))
    return out


def profile(
    source: Source,
    devices: Mapping[str, Sequence[str]],
    *,
    duration_s: float,
    interval_s: float,
    pct: float = 95.0,
    on_round: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[DiskFigure], dict[str, dict[str, tuple[float, float]]], list[str]]:
    """Sample the VMs of an inventory; returns per-disk figures, the same keyed for `apply_figures`,
    and the names of listed VMs that could not be sampled (powered off or gone)."""
    from pyVmomi import vim

    rounds = max(1, int(duration_s // interval_s))
    si = connect(source)
    try:
        def work() -> tuple[list[Target], Samples]:
            content = si.RetrieveContent()
            perf = content.perfManager
            keys = counter_keys(perf)
            if WRITE_RATE not in keys:
                raise SourceError(f"{source.where}: the performance manager has no {WRITE_RATE} counter; "
                                  "raise the statistics level of vCenter's 20 s interval to 2 or more")
            targets = targets_for(si, vim, devices)
            if not targets:
                return targets, Samples()
            summary = perf.QueryPerfProviderSummary(entity=targets[0].ref)
            interval_id = int(summary.refreshRate) if summary and summary.refreshRate > 0 else REALTIME_INTERVAL_S
            samples = Samples()
            start = time.monotonic()
            for index in range(rounds):
                sample_once(perf, vim, targets, keys, samples, interval_id)
                if on_round is not None:
                    on_round(index + 1, rounds)
                if index + 1 < rounds:
                    next_at = start + (index + 1) * interval_s
                    sleep(max(0.0, next_at - time.monotonic()))
            return targets, samples

        targets, samples = guarded(source, work)
    finally:
        disconnect(si)
    result = figures(samples, targets, pct)
    keyed: dict[str, dict[str, tuple[float, float]]] = {}
    key_of = {t.name: t.key for t in targets}
    for fig in result:
        keyed.setdefault(key_of[fig.machine], {})[fig.device] = (fig.iops, fig.churn_gb_per_day)
    sampled = {t.key for t in targets}
    unsampled = sorted(k for k, d in devices.items() if d and k not in sampled)
    return result, keyed, unsampled
