"""End to end without capture: a sink (the agent) -> process server -> master target -> replica."""

from __future__ import annotations

import random
from pathlib import Path

from pipeline_harness import MIB, Shadow, workload

from dr_agent.catalog import Catalog
from dr_agent.export import export


def test_replica_equals_source_and_points_export(make_pipeline, tmp_path: Path) -> None:
    p = make_pipeline()
    size = 32 * MIB
    shadow = Shadow(size)
    sink = p.sink("web01-disk0", size)
    workload(shadow, sink, random.Random(1), ops=400)
    sink.flush()
    shadow.bookmark(sink, "final", "app")
    sink.wait_applied(60)

    replica = (tmp_path / "mt/disks/web01-disk0.img").read_bytes()
    assert replica == bytes(shadow.data)

    cat = Catalog(tmp_path / "mt/catalog.sqlite")
    points = cat.points("web01-disk0")
    assert {pt.id for pt in points} == set(shadow.points)
    assert cat.resolve("web01-disk0", "latest-app").id == "final"
    mid = points[len(points) // 2]
    out = export(cat, "web01-disk0", mid.id, tmp_path / "mid.img")
    assert out.read_bytes() == shadow.points[mid.id]
    cat.close()
