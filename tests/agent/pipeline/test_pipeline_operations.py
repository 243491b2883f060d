"""Operations: an agent moves to another healthy process server, the throttle holds its rate,
retention prunes old points, metrics are served, and the `dr` commands read the catalog."""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from dr_agent.catalog import Catalog, Point
from dr_agent.process_server import ProcessServer, ProcessServerConfig, Throttle
from dr_agent.retention import RetentionPolicy, prune
from dr_agent.sink import ProcessServerSink
from dr_agent.target import FileTarget
from pipeline_harness import MIB, Shadow, service_pair, welcome_durable, workload

from dr.cli import cli


def test_agent_moves_to_another_process_server(make_pipeline: Any, pki: Any, tmp_path: Path) -> None:
    p = make_pipeline()
    ps2 = ProcessServer(ProcessServerConfig(identity=pki.process_server, cache_dir=tmp_path / "ps2", name="ps02",
                                            master_target=("127.0.0.1", p.mt.port)))
    try:
        size = 16 * MIB
        shadow = Shadow(size)
        sink = ProcessServerSink(disk="mv01.disk0", size=size, identity=pki.agent_for("mv01"),
                                 servers=[("127.0.0.1", p.ps.port), ("127.0.0.1", ps2.port)])
        rng = random.Random(4)
        workload(shadow, sink, rng, ops=150, prefix="a")
        sink.flush()
        p.ps.close()  # the first process server dies with records possibly not yet forwarded
        workload(shadow, sink, rng, ops=150, prefix="b")
        sink.flush()
        sink.wait_applied(60)
        assert (tmp_path / "mt/disks/mv01.disk0.img").read_bytes() == bytes(shadow.data)
        assert ps2.health().agents.keys() == {"mv01.disk0"}
        sink.close()
        # The second process server holds the whole stream: a restarted agent continues after its last record.
        assert welcome_durable(ps2.port, pki.agent_for("mv01"), "mv01.disk0", size) == sink.seq
    finally:
        ps2.close()


def test_throttle_holds_the_rate() -> None:
    t = Throttle(80)  # 80 Mbps = 10 MB/s
    start = time.monotonic()
    for _ in range(20):
        t.take(250_000)  # 5 MB in all
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed <= 0.8, elapsed
    unthrottled = Throttle(None)
    start = time.monotonic()
    unthrottled.take(10**9)
    assert time.monotonic() - start < 0.05


def test_retention_prunes_old_points_but_keeps_the_newest(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.sqlite")
    target = FileTarget(tmp_path / "d.img", MIB)
    cat.add_disk("d", target.location(), MIB)
    now = time.time()
    for i, (age, kind) in enumerate([(7200, "app"), (5000, "crash"), (4000, "crash"), (60, "crash")]):
        snap = target.snapshot(f"p{i}", i + 1)
        cat.add_point(Point("d", f"p{i}", i + 1, now - age, kind, None, snap))
    removed = prune(cat, target, "d", RetentionPolicy(window_s=3600), now)
    assert [r.id for r in removed] == ["p1", "p2"]
    assert [p.id for p in cat.points("d")] == ["p0", "p3"]  # p0 survives: the only app point
    assert not Path(removed[0].snapshot).exists() and Path(cat.points("d")[0].snapshot).exists()
    target.close()
    cat.close()


def test_metrics_are_served(make_pipeline: Any, pki: Any, tmp_path: Path) -> None:
    p = make_pipeline()
    sink = p.sink("m01.disk0", 4 * MIB)
    sink.write(0, bytes(1 << 20))
    sink.flush()
    sink.wait_applied(30)
    port = p.ps.metrics.serve("127.0.0.1", 0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'dr_process_server_raw_bytes_total{disk="m01.disk0"} 1.048576e+06' in body
    ratio = [line for line in body.splitlines() if line.startswith("dr_process_server_compression_ratio{")]
    assert ratio and float(ratio[0].split()[-1]) > 100  # a MiB of zeros
    assert "dr_process_server_cache_fill_ratio" in body and "dr_process_server_rpo_seconds" in body
    assert 'dr_master_target_applied_seq{disk="m01.disk0"}' in p.mt.metrics.text()


def test_dr_commands_list_points_and_export(make_pipeline: Any, tmp_path: Path) -> None:
    p = make_pipeline()
    size = 4 * MIB
    shadow = Shadow(size)
    sink = p.sink("cli01.disk0", size)
    shadow.write(sink, 0, os.urandom(65536))
    shadow.bookmark(sink, "c1", "crash", group="pg-web")
    shadow.write(sink, 65536, os.urandom(65536))
    shadow.bookmark(sink, "a1", "app", group="pg-web")
    shadow.write(sink, 0, b"later" * 100)
    sink.wait_applied(30)
    catalog = str(tmp_path / "mt/catalog.sqlite")
    runner = CliRunner()

    res = runner.invoke(cli, ["recovery-points", "cli01.disk0", "--catalog", catalog, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [(r["id"], r["kind"], r["group"]) for r in rows] == [("c1", "crash", "pg-web"), ("a1", "app", "pg-web")]
    res = runner.invoke(cli, ["recovery-points", "pg-web", "--catalog", catalog])
    assert res.exit_code == 0 and "2 recovery point(s)" in res.output

    res = runner.invoke(cli, ["replica", "export", "cli01.disk0", "--point", "latest-app",
                              "--to", str(tmp_path / "out.vhd"), "--catalog", catalog])
    assert res.exit_code == 0, res.output
    data = (tmp_path / "out.vhd").read_bytes()
    assert data[:size] == shadow.points["a1"] and data[size:size + 8] == b"conectix"

    res = runner.invoke(cli, ["replica", "export", "cli01.disk0", "--point", "1999-01-01T00:00:00Z",
                              "--to", str(tmp_path / "x.img"), "--catalog", catalog])
    assert res.exit_code == 2 and "no recovery point matching" in res.output
    res = runner.invoke(cli, ["recovery-points", "nope", "--catalog", catalog])
    assert res.exit_code == 2 and "no disk or multi-VM group named 'nope'" in res.output
    res = runner.invoke(cli, ["replica", "export", "cli01.disk0", "--to", str(tmp_path / "x.qcow2"),
                              "--catalog", catalog])
    assert res.exit_code == 2 and ".img" in res.output


def test_services_log_json_lines(pki: Any, tmp_path: Path) -> None:
    """Not on a terminal the services log one JSON object per line (journald, log shippers)."""
    mt, ps, ps_port = service_pair(tmp_path, pki)
    mt.start()
    ps.start()
    sink = ProcessServerSink(disk="log01.disk0", size=MIB, servers=[("127.0.0.1", ps_port)],
                             identity=pki.agent_for("log01"))
    sink.write(0, b"x" * 4096)
    sink.flush()
    sink.wait_applied(30)
    sink.close()
    ps.stop()
    mt.stop()
    for log, name in ((tmp_path / "ps.log", "process-server"), (tmp_path / "mt.log", "master-target")):
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        assert entries and all({"time", "level", "logger", "thread", "message"} <= set(e) for e in entries)
        messages = [e["message"] for e in entries]
        assert messages[0].startswith(f"{name} listening on port") and f"{name} stopping" in messages
