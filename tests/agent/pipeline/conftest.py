"""Fixtures of the pipeline tests (the harness itself is in pipeline_harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dr_agent.master_target import MasterTarget, MasterTargetConfig
from dr_agent.process_server import ProcessServer, ProcessServerConfig
from pipeline_harness import MIB, Pipeline


@pytest.fixture
def make_pipeline(tmp_path: Path, pki: Any) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(*, storage: str = "file", connection_string: str | None = None, capacity: int = 1 << 30,
             mt_port: Callable[[int], int] | None = None, throttle_mbps: float | None = None,
             container: str = "replicas", segment_bytes: int = 8 * MIB) -> Pipeline:
        mt = MasterTarget(MasterTargetConfig(identity=pki.master_target, state_dir=tmp_path / "mt",
                                             storage=storage, connection_string=connection_string,
                                             container=container))
        port = mt_port(mt.port) if mt_port else mt.port
        ps = ProcessServer(ProcessServerConfig(identity=pki.process_server, cache_dir=tmp_path / "ps",
                                               master_target=("127.0.0.1", port), capacity_bytes=capacity,
                                               throttle_mbps=throttle_mbps, segment_bytes=segment_bytes))
        p = Pipeline(tmp_path, mt, ps, pki)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


