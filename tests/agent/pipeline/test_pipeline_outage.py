"""Cut the process server's link to the master target under steady writes: the cache holds, alerts
fire, the replica converges byte-identical when the link returns; a full cache means bitmap fallback."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from dr_agent.errors import CacheFull
from pipeline_harness import MIB, Shadow, TcpProxy, metric

from tests.conftest import wait_for

# Steady churn during the outage: 256 KiB of incompressible data every 0.1 s (2.5 MiB/s).
CHUNK = 256 * 1024
PERIOD_S = 0.1
# Deadline for an alert (the process server checks its fill twice a second) or a drained cache (seconds).
ALERT_TIMEOUT_S = 30
DRAIN_TIMEOUT_S = 120


def _codes(p: Any) -> set[str]:
    return {a["code"] for a in p.ps.alerts.read()}


def _outage(make_pipeline: Any, tmp_path: Path, outage_s: float) -> None:
    proxy: TcpProxy | None = None

    def via_proxy(port: int) -> int:
        nonlocal proxy
        proxy = TcpProxy(port)
        return proxy.port

    expected_bytes = int(outage_s / PERIOD_S) * CHUNK
    # The cache is sized so the outage fills it past 75 % (critical) but not to the brim.
    p = make_pipeline(capacity=int(expected_bytes / 0.85), mt_port=via_proxy, segment_bytes=1 * MIB)
    assert proxy is not None
    size = 64 * MIB
    shadow = Shadow(size)
    sink = p.sink("file01.disk0", size)
    rng = random.Random(3)
    shadow.write(sink, 0, rng.randbytes(CHUNK))
    sink.flush()
    sink.wait_applied(30)

    proxy.cut()
    start = time.monotonic()
    for n in range(int(outage_s / PERIOD_S)):
        shadow.write(sink, (n * CHUNK) % (size - CHUNK), rng.randbytes(CHUNK))
        if n % 4 == 3:
            sink.flush()  # acknowledged: fsynced in the process server's cache
        time.sleep(max(0.0, start + (n + 1) * PERIOD_S - time.monotonic()))
    sink.flush()
    shadow.bookmark(sink, "after-outage", "app")
    wait_for(lambda: {"cache-warning", "cache-critical"} <= _codes(p), ALERT_TIMEOUT_S,
             "the cache-warning and cache-critical alerts")
    assert sink.fallback is None
    health = p.ps.health()
    assert health.cache_level == "critical", health
    assert health.backlog_bytes["file01.disk0"] > 0
    assert p.mt.catalog.points("file01.disk0") == []  # nothing reached the master target meanwhile
    assert sink.applied < sink.durable

    proxy.restore()
    sink.wait_applied(120)
    replica = (tmp_path / "mt/disks/file01.disk0.img").read_bytes()
    assert replica == bytes(shadow.data)
    wait_for(lambda: "cache-ok" in _codes(p), ALERT_TIMEOUT_S, "the cache-ok alert")
    assert p.ps.health().cache_level == "ok"
    proxy.close()


def test_outage_cache_holds_and_converges(make_pipeline: Any, tmp_path: Path) -> None:
    _outage(make_pipeline, tmp_path, outage_s=8)


@pytest.mark.slow
def test_outage_60s(make_pipeline: Any, tmp_path: Path) -> None:
    _outage(make_pipeline, tmp_path, outage_s=60)


def test_full_cache_falls_back_to_bitmap_tracking(make_pipeline: Any, tmp_path: Path) -> None:
    proxy: list[TcpProxy] = []

    def via_proxy(port: int) -> int:
        proxy.append(TcpProxy(port))
        return proxy[0].port

    p = make_pipeline(capacity=4 * MIB, mt_port=via_proxy, segment_bytes=1 * MIB)
    proxy[0].cut()
    fallbacks: list[Any] = []
    size = 64 * MIB
    shadow = Shadow(size)
    sink = p.sink("full01.disk0", size, on_fallback=fallbacks.append)
    rng = random.Random(5)
    refused = 0
    for i in range(40):  # 10 MiB of incompressible writes into a 4 MiB cache
        try:
            shadow.write(sink, i * CHUNK, rng.randbytes(CHUNK))
            sink.flush()
        except CacheFull:
            refused += 1  # the splitter would now switch to its bitmap mode
    assert sink.fallback is not None and fallbacks and refused >= 20
    cached = sink.durable  # the last record the process server acknowledged as durable in its cache
    assert sink.fallback.from_seq == cached + 1  # the fallback begins right after it: no record in between
    # every write the cache did not take is a dirty range: none silently dropped
    assert sum(n for _, n in sink.dirty) >= (40 * CHUNK) - cached * CHUNK
    assert "cache-full" in _codes(p)
    with pytest.raises(CacheFull):
        sink.bookmark("no-point-in-a-gap", "crash")

    proxy[0].restore()  # the master target drains the cache, then the agent resends the dirty ranges
    wait_for(lambda: (metric(p.mt.metrics.text(), "dr_master_target_applied_seq", disk="full01.disk0") or 0) >= cached,
             DRAIN_TIMEOUT_S, f"the master target to apply the cached records up to seq {cached}")
    for off, n in sink.resume():  # paced as a resync is: each step applied before the next
        sink.write(off, bytes(shadow.data[off:off + n]))
        sink.flush()
        sink.wait_applied(30)
    assert (tmp_path / "mt/disks/full01.disk0.img").read_bytes() == bytes(shadow.data)
    proxy[0].close()
