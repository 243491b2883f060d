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


def test_validate_refuses_a_file_system_listed_on_two_disks(tmp_path: Path) -> None:
    import yaml

    example = REPO / "examples/linux-estate"
    docs = {p.name: yaml.safe_load(p.read_text()) for p in example.glob("*.yaml")}
    machine = next(m for doc in docs.values() for m in doc.get("machines", [])
                   if len(m.get("disks", [])) > 1 and any(d.get("mount_points") for d in m["disks"]))
    listed = next(d for d in machine["disks"] if d.get("mount_points"))
    other = next(d for d in machine["disks"] if d is not listed)
    mount = listed["mount_points"][0]
    other["mount_points"] = [*other.get("mount_points", []), mount]
    for name, doc in docs.items():
        (tmp_path / name).write_text(yaml.safe_dump(doc))
    (tmp_path / "scripts").symlink_to(example / "scripts")
    res = CliRunner().invoke(cli, ["validate", str(tmp_path / "dr.yaml")])
    assert res.exit_code != 0
    assert f"{mount} is listed on disks {listed['name']} and {other['name']}" in res.output
