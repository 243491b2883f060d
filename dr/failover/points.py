"""Recovery point choice: one point per machine (the same point on all its disks), or one multi-VM
point for a whole plan.

The choices are ASR's: `latest` (the newest point received, processed or not: lowest RPO),
`latest-processed` (the newest point already applied to the replica: fastest RTO),
`latest-app` (the newest application-consistent point), `latest-multi-vm` (the newest group point,
one bookmark id and group id, that every disk of every machine of the plan shares: one consistent
instant for an n-tier application),
or a time (`2026-11-24T23:00:00Z`: the newest point at or before it). A point belongs to a machine
only when all its disks have it (the agent writes one bookmark id across a machine's disks), so a
machine never boots with its disks at different instants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from dr.errors import EXIT_INVALID, DrError

Keyword = Literal["latest", "latest-processed", "latest-app", "latest-multi-vm"]
KEYWORDS: tuple[Keyword, ...] = ("latest", "latest-processed", "latest-app", "latest-multi-vm")


class NoRecoveryPoint(DrError):
    """No recovery point satisfies the choice: names the machine, what was asked and what exists."""

    exit_code = EXIT_INVALID


@dataclass(frozen=True, kw_only=True)
class Point:
    """One recovery point of one disk, as the master target's catalog reports it."""

    point_id: str
    time: float
    kind: Literal["crash", "app"]
    group_id: str | None = None
    processed: bool = True


@dataclass(frozen=True, kw_only=True)
class Choice:
    keyword: Keyword | None = None
    at: float | None = None

    @classmethod
    def parse(cls, text: str) -> Choice:
        value = text.strip().lower()
        if value in KEYWORDS:
            return cls(keyword=value)
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise DrError(
                f"--point expects one of {', '.join(KEYWORDS)} or a time such as 2026-11-24T23:00:00Z, "
                f"found {text!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls(at=when.timestamp())

    def __str__(self) -> str:
        if self.keyword is not None:
            return self.keyword
        assert self.at is not None
        return datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class Chosen:
    machine: str
    point_id: str
    time: float
    kind: str
    group_id: str | None


def _machine_points(disks: Mapping[str, Sequence[Point]]) -> list[Point]:
    """Points every disk of the machine has (by id), newest last; kind/processed as the weakest disk."""
    if not disks:
        return []
    by_disk = [{p.point_id: p for p in points} for points in disks.values()]
    common = set(by_disk[0]).intersection(*by_disk[1:])
    merged = []
    for point_id in common:
        copies = [d[point_id] for d in by_disk]
        merged.append(Point(
            point_id=point_id, time=max(p.time for p in copies),
            kind="app" if all(p.kind == "app" for p in copies) else "crash",
            group_id=copies[0].group_id if all(p.group_id == copies[0].group_id for p in copies) else None,
            processed=all(p.processed for p in copies),
        ))
    return sorted(merged, key=lambda p: (p.time, p.point_id))


def choose(catalog: Mapping[str, Mapping[str, Sequence[Point]]], choice: Choice) -> dict[str, Chosen]:
    """`catalog[machine][disk]` -> the chosen point of every machine. Raises NoRecoveryPoint."""
    per_machine = {machine: _machine_points(disks) for machine, disks in catalog.items()}
    for machine, disks in catalog.items():
        if not per_machine[machine]:
            found = ", ".join(f"{d}: {len(p)}" for d, p in disks.items()) or "no disks reported"
            raise NoRecoveryPoint(
                f"{machine} has no recovery point common to all its disks ({found}): wait for the "
                "next consistency point, or check replication with `dr status`"
            )
    if choice.keyword == "latest-multi-vm":
        # A multi-VM point is one bookmark id with its group id in every stream of the group (the
        # capture coordinator sends the same id to every agent, with the protection group as group
        # id); a machine that missed it (not connected then) has older group points under the same
        # group id, so the id and the group id together name the point.
        groups = [{(p.group_id, p.point_id): p for p in points if p.group_id} for points in per_machine.values()]
        common = set(groups[0]).intersection(*groups[1:]) if groups else set()
        if not common:
            raise NoRecoveryPoint(
                f"no multi-VM consistent point is shared by {', '.join(sorted(catalog))}: enable "
                "multi_vm_consistency in their protection group's policy, or choose --point latest-app"
            )
        newest = max(common, key=lambda key: (min(m[key].time for m in groups), key[1]))
        return {
            machine: Chosen(machine=machine, point_id=points[newest].point_id, time=points[newest].time,
                            kind=points[newest].kind, group_id=newest[0])
            for machine, points in zip(per_machine, groups, strict=True)
        }
    chosen: dict[str, Chosen] = {}
    for machine, points in per_machine.items():
        if choice.keyword == "latest":
            candidates = points
        elif choice.keyword == "latest-processed":
            candidates = [p for p in points if p.processed]
        elif choice.keyword == "latest-app":
            candidates = [p for p in points if p.kind == "app"]
        else:
            assert choice.at is not None
            candidates = [p for p in points if p.time <= choice.at]
        if not candidates:
            oldest = datetime.fromtimestamp(points[0].time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise NoRecoveryPoint(
                f"{machine} has no {choice} recovery point ({len(points)} points, the oldest at {oldest}): "
                "choose another --point"
            )
        best = candidates[-1]
        chosen[machine] = Chosen(machine=machine, point_id=best.point_id, time=best.time, kind=best.kind,
                                 group_id=best.group_id)
    return chosen
