"""End to end without capture: a sink (the agent) -> process server -> master target -> replica."""

from __future__ import annotations

import random
from pathlib import Path

from dr_agent.catalog import Catalog
from dr_agent.export import export
from pipeline_harness import MIB, Shadow, workload


def test_replica_equals_source_and_points_export(make_pipeline, tmp_path: Path) -> None:
    p = make_pipeline()
    size = 32 * MIB
    shadow = Shadow(size)
    sink = p.sink("web01.disk0", size)
    workload(shadow, sink, random.Random(1), ops=400)
    sink.flush()
    shadow.bookmark(sink, "final", "app")
    sink.wait_applied(60)

    replica = (tmp_path / "mt/disks/web01.disk0.img").read_bytes()
    assert replica == bytes(shadow.data)

    cat = Catalog(tmp_path / "mt/catalog.sqlite")
    points = cat.points("web01.disk0")
    assert {pt.id for pt in points} == set(shadow.points)
    assert cat.resolve("web01.disk0", "latest-app").id == "final"
    mid = points[len(points) // 2]
    out = export(cat, "web01.disk0", mid.id, tmp_path / "mid.img")
    assert out.read_bytes() == shadow.points[mid.id]
    cat.close()


def test_page_blob_replica_is_a_fixed_vhd_and_exports(make_pipeline, azurite: str, tmp_path: Path) -> None:
    from azure.storage.blob import BlobClient
    from dr_agent.vhd import FOOTER_SIZE, parse_footer

    p = make_pipeline(storage="azure", connection_string=azurite, container="e2e")
    size = 16 * MIB
    shadow = Shadow(size)
    sink = p.sink("db01.disk1", size)
    workload(shadow, sink, random.Random(2), ops=200, bookmark_every=40)
    shadow.bookmark(sink, "last-app", "app")
    sink.wait_applied(60)

    blob = BlobClient.from_connection_string(azurite, "e2e", "db01.disk1.vhd")
    whole = blob.download_blob().readall()
    assert len(whole) == size + FOOTER_SIZE
    assert parse_footer(whole[size:]) == size
    assert whole[:size] == bytes(shadow.data)

    cat = Catalog(tmp_path / "mt/catalog.sqlite")
    first = cat.points("db01.disk1")[0]
    img = export(cat, "db01.disk1", first.id, tmp_path / "first.img", connection_string=azurite)
    assert img.read_bytes() == shadow.points[first.id]
    vhd_file = export(cat, "db01.disk1", "latest-app", tmp_path / "app.vhd", connection_string=azurite)
    data = vhd_file.read_bytes()
    assert data[:size] == shadow.points["last-app"] and parse_footer(data[size:]) == size
    cat.close()
