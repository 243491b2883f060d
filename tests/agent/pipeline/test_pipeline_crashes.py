"""kill -9 the process server and the master target at random moments; the replica converges byte-identical."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dr_agent.sink import ProcessServerSink
from pipeline_harness import MIB, Shadow, service_pair, workload


def _crash_loop(tmp_path: Path, pki: Any, kills: int, seed: int) -> None:
    mt, ps, ps_port = service_pair(tmp_path, pki)
    mt.start()
    ps.start()
    size = 16 * MIB
    shadow = Shadow(size)
    sink = ProcessServerSink(disk="app01.disk0", size=size, servers=[("127.0.0.1", ps_port)],
                             identity=pki.agent_for("app01"), patience_s=60)
    rng = random.Random(seed)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                workload(shadow, sink, rng, ops=40, bookmark_every=20, prefix=f"w{i}-")
                i += 1
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    killer = random.Random(seed + 1)
    try:
        for _ in range(kills):
            time.sleep(killer.uniform(0.2, 1.2))
            victim = killer.choice([mt, ps])
            victim.kill9()
            time.sleep(killer.uniform(0.0, 0.5))
            victim.start()
        stop.set()
        t.join(120)
        assert not errors, errors
        sink.flush()
        sink.wait_applied(120)
        replica = (tmp_path / "mt/disks/app01.disk0.img").read_bytes()
        assert replica == bytes(shadow.data)
        assert sink.reconnects > 1
    finally:
        stop.set()
        sink.close()
        ps.stop()
        mt.stop()


def test_crashes_converge(tmp_path: Path, pki: Any) -> None:
    _crash_loop(tmp_path, pki, kills=4, seed=7)


@pytest.mark.slow
def test_crashes_converge_many(tmp_path: Path, pki: Any) -> None:
    _crash_loop(tmp_path, pki, kills=24, seed=11)
