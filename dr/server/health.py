"""Health as Azure Site Recovery reports it: Healthy, Warning or Critical, each with its reasons.

Pure functions of observed facts (RPO, heartbeats, cache fill, power state) and the spec's policy;
the server, the dashboard, the alerts and `dr status` all read health through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HealthState = Literal["Healthy", "Warning", "Critical"]
_ORDER: dict[HealthState, int] = {"Healthy": 0, "Warning": 1, "Critical": 2}

# A process server's cache: warning below 30 % free, critical below 25 % (ASR's thresholds, as
# quoted in issue 6).
CACHE_WARNING_FREE = 0.30
CACHE_CRITICAL_FREE = 0.25
# RPO above the policy's threshold is a warning (the threshold alerts, it never limits, as in ASR);
# above this multiple of it the machine is critical (our choice: twice the budget is a real outage).
RPO_CRITICAL_FACTOR = 2.0
# A component that has not sent a heartbeat for this long is critical (seconds; ASR raises its
# process server heartbeat alert after 15 minutes). `dr config-server --heartbeat-timeout` changes it.
DEFAULT_HEARTBEAT_TIMEOUT_S = 15 * 60


@dataclass(frozen=True, kw_only=True)
class Health:
    state: HealthState
    reasons: tuple[str, ...] = field(default=())

    @staticmethod
    def worst(*parts: Health) -> Health:
        state: HealthState = "Healthy"
        reasons: list[str] = []
        for part in parts:
            if _ORDER[part.state] > _ORDER[state]:
                state = part.state
            reasons.extend(part.reasons)
        return Health(state=state, reasons=tuple(reasons))


HEALTHY = Health(state="Healthy")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def heartbeat(last: float | None, *, now: float, timeout_s: float, what: str) -> Health:
    if last is None:
        return Health(state="Critical", reasons=(f"{what} has never sent a heartbeat",))
    age = now - last
    if age > timeout_s:
        return Health(
            state="Critical",
            reasons=(f"no heartbeat from {what} for {_age(age)} (limit {_age(timeout_s)})",),
        )
    return HEALTHY


def rpo(rpo_seconds: float | None, *, threshold_s: float, disk: str) -> Health:
    if rpo_seconds is None:
        return Health(state="Warning", reasons=(f"disk {disk}: no RPO reported yet",))
    if rpo_seconds > threshold_s * RPO_CRITICAL_FACTOR:
        return Health(
            state="Critical",
            reasons=(f"disk {disk}: RPO {_age(rpo_seconds)} is over twice the threshold {_age(threshold_s)}",),
        )
    if rpo_seconds > threshold_s:
        return Health(
            state="Warning",
            reasons=(f"disk {disk}: RPO {_age(rpo_seconds)} exceeds the threshold {_age(threshold_s)}",),
        )
    return HEALTHY


def power(power_state: str | None, *, machine: str) -> Health:
    if power_state == "off":
        return Health(state="Warning", reasons=(f"{machine} is powered off: nothing new replicates",))
    return HEALTHY


def cache(free_fraction: float | None, *, server: str) -> Health:
    if free_fraction is None:
        return HEALTHY
    free = f"{free_fraction * 100:.0f} %"
    if free_fraction < CACHE_CRITICAL_FREE:
        return Health(
            state="Critical",
            reasons=(f"process server {server}: cache {free} free (critical below {CACHE_CRITICAL_FREE:.0%})",),
        )
    if free_fraction < CACHE_WARNING_FREE:
        return Health(
            state="Warning",
            reasons=(f"process server {server}: cache {free} free (warning below {CACHE_WARNING_FREE:.0%})",),
        )
    return HEALTHY


def disk_state(state: str | None, *, disk: str, problem: str = "", done: int = 0, total: int = 0) -> Health:
    """What the agent says of a disk: a resync or bitmap tracking is a warning (nothing new is
    recoverable until it ends); an initial sync is how protection starts, not a fault."""
    if state in ("resync", "bitmap"):
        why = f": {problem}" if problem else ""
        progress = f" ({done * 100 // total} %)" if state == "resync" and total else ""
        return Health(state="Warning", reasons=(f"disk {disk}: {state}{progress}{why}",))
    return HEALTHY


def pending_resync(first_lost: int | None, *, disk: str, server: str) -> Health:
    """A process server lost records of a disk (dropped as corrupt, or cut off) and waits for the agent to
    resend them or resync the disk: no recovery point after them is consistent until then."""
    if first_lost is None:
        return HEALTHY
    return Health(state="Warning", reasons=(
        f"disk {disk}: resync pending: process server {server} lost its changes from record {first_lost} on; "
        "no newer recovery point is consistent until the agent resends them or resyncs the disk",))


def aged_rpo(rpo_s: float | None, *, reported: float | None, newest_point: float | None, now: float) -> float | None:
    """The RPO now: the last reported RPO plus the time since that report (it grows until the next
    report says otherwise), and at least the age of the newest recovery point (failing over now loses
    everything after it). None while neither is known. Source clocks ahead of ours count as 0."""
    values = []
    if rpo_s is not None:
        values.append(rpo_s + max(0.0, now - reported) if reported is not None else rpo_s)
    if newest_point is not None:
        values.append(max(0.0, now - newest_point))
    return max(values) if values else None
