"""`dr-agent agent` as a user starts it: what it says when it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_harness import MIB, Estate, need_root, wait_for

pytestmark = [pytest.mark.root]


def test_the_agent_announces_what_it_protects_not_a_port(tmp_path: Path, pki: Any) -> None:
    need_root()
    estate = Estate(tmp_path, pki)
    estate.start()
    try:
        disk = estate.disk("web01-sdb", 16 * MIB)
        disk.mount()
        estate.start_agent(estate.agent_config(
            "web01", [f'name = "web01.sdb"\nmode = "tracking"\ndevice = "{disk.dev}"\nmount_points = ["{disk.mnt}"]']))
        announced = estate.announcements[-1]
        assert announced["service"] == "agent" and "port" not in announced  # it listens on nothing
        assert announced["disks"] == {"web01.sdb": {"mode": "tracking", "device": str(disk.dev)}}
        assert announced["process_servers"] == [f"127.0.0.1:{estate.ps_port}"]
        line = wait_for(lambda: next((ln for ln in estate.agent_log("web01").splitlines() if "agent started:" in ln),
                                     None), 30, "the agent's start-up log line")
        assert f"web01.sdb (tracking, {disk.dev})" in line and f"127.0.0.1:{estate.ps_port}" in line
        assert "port None" not in estate.agent_log("web01")
    finally:
        estate.close()
