"""Retention: recovery points are page blob snapshots taken at consistency points, pruned as the window moves.

Design: every bookmark the agent inserts (crash-consistent every few seconds, application-consistent
at the policy's interval) becomes a snapshot of the replica blob after everything before it was
applied. Azure stores snapshots incrementally, so a point costs the pages that changed since the
previous one. Points older than the policy's retention window are deleted (snapshot, then catalog
row), except that the newest crash and the newest app point always survive, so a failover always
has a point to choose.
"""

from __future__ import annotations

from dataclasses import dataclass

from dr_agent.catalog import Catalog, Point
from dr_agent.target import Target


@dataclass(frozen=True)
class RetentionPolicy:
    window_s: float = 24 * 3600.0  # the spec's policy.retention (default 24 h, ASR's default)


def prune(catalog: Catalog, target: Target, disk: str, policy: RetentionPolicy, now: float) -> list[Point]:
    """Delete the points of `disk` older than the window; returns what was removed."""
    points = [p for p in catalog.points(disk) if p.disk == disk]
    keep: set[str] = set()
    for kind in ("crash", "app"):
        of_kind = [p for p in points if p.kind == kind]
        if of_kind:
            keep.add(of_kind[-1].id)
    removed = []
    for p in points:
        if p.time < now - policy.window_s and p.id not in keep:
            target.delete_snapshot(p.snapshot)
            catalog.remove_point(disk, p.id)
            removed.append(p)
    return removed
