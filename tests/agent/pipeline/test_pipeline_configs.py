"""Service configurations are rendered from the spec and the plan, and the services accept them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from dr_agent.cli import master_target_config, process_server_config
from dr_agent.contract import stream_name
from dr_agent.errors import ConfigError
from pipeline_harness import REPO

from dr.cli import cli


def test_configs_are_derived_from_the_spec_and_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = CliRunner().invoke(cli, ["replica", "configs", str(REPO / "examples/linux-estate/dr.yaml"),
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    ps = tomllib.loads((tmp_path / "ps-dublin/process-server.toml").read_text())["process_server"]
    assert ps["listen"] == "192.168.10.5:9443" and ps["capacity_gb"] > 0
    assert ps["master_target"].endswith(":9444")
    agent = tomllib.loads((tmp_path / "pg01/agent.toml").read_text())["agent"]
    assert agent["process_servers"] == ["192.168.10.5:9443"]
    assert [d["name"] for d in agent["disks"]] == [stream_name("pg01", d) for d in ("root", "pgdata", "pgwal")]
    assert agent["disks"][1]["mount_points"] == ["/var/lib/pgsql"]
    mt_dir = next(p for p in tmp_path.iterdir() if (p / "master-target.toml").exists())
    mt = tomllib.loads((mt_dir / "master-target.toml").read_text())["master_target"]
    envs = mt["disk_connection_string_env"]
    assert stream_name("pg02", "pgwal") in envs and len(set(envs.values())) == 2  # two replica accounts in the plan
    unit = (tmp_path / "pg01/dr-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/dr-agent agent --config /etc/dr-agent/agent.toml" in unit

    # the services read what was rendered
    psc = process_server_config(tmp_path / "ps-dublin/process-server.toml")
    assert psc.listen_port == 9443 and psc.capacity_bytes == int(ps["capacity_gb"] * 1024**3)
    with pytest.raises(ConfigError, match="is not set"):
        master_target_config(mt_dir / "master-target.toml")
    for env in set(envs.values()):
        monkeypatch.setenv(env, f"UseDevelopmentStorage=true;{env}")
    mtc = master_target_config(mt_dir / "master-target.toml")
    assert dict(mtc.disk_connection_strings)[stream_name("pg02", "pgwal")].endswith(envs[stream_name("pg02", "pgwal")])
    assert mtc.retention_s == mt["retention_hours"] * 3600
