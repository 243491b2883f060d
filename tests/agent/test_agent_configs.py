"""`dr replica configs` renders each disk in the mode that fits it, and the agent reads what was rendered."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from dr_agent.cli import agent_config

from dr.cli import cli

REPO = Path(__file__).resolve().parents[2]


def test_in_use_disks_are_rendered_in_tracking_mode(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["replica", "configs", str(REPO / "examples/linux-estate/dr.yaml"),
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    config = agent_config(tmp_path / "pg01/agent.toml")
    assert config.name == "pg01" and len(config.disks) == 3
    for disk in config.disks:
        # a disk carrying file systems is protected out of the I/O path; the agent freezes exactly those
        assert disk.mode == ("tracking" if disk.mount_points else "splitter"), disk
    assert any(d.mode == "tracking" and d.mount_points == ("/var/lib/pgsql",) for d in config.disks)
    unit = (tmp_path / "pg01/dr-agent.service").read_text()
    assert "Restart=always" not in unit
