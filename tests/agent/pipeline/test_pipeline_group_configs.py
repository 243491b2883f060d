"""`dr replica configs` makes the first process server of a multi-VM group's site its coordinator:
the process server's config lists the group, every member's agent.toml dials it, and the process
server reads what was rendered."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from dr_agent.cli import process_server_config
from dr_agent.contract import PS_PORT
from dr_agent.errors import ConfigError
from dr_agent.ps_coordinator import GroupConfig
from pipeline_harness import REPO

from dr.cli import cli
from dr.validate import load_valid


@pytest.mark.parametrize(("example", "ps"), [("sharepoint", "ps01"), ("linux-estate", "ps-dublin")])
def test_each_multi_vm_group_has_one_coordinator_its_members_dial(tmp_path: Path, example: str, ps: str) -> None:
    spec = REPO / f"examples/{example}/dr.yaml"
    res = CliRunner().invoke(cli, ["replica", "configs", str(spec), "--out", str(tmp_path),
                                   "--address", f"{ps}=10.9.0.1"])
    assert res.exit_code == 0, res.output
    estate, _ = load_valid(spec)
    multi_vm = [g for g in estate.protection_groups if g.policy.multi_vm_consistency]
    assert multi_vm, "the example has a multi-VM group"
    coordinating: dict[str, tuple[str, GroupConfig]] = {}
    for path in sorted(tmp_path.glob("*/process-server.toml")):
        config = process_server_config(path)  # the service accepts what was rendered
        for g in config.groups:
            assert g.name not in coordinating, f"group {g.name} has two coordinators"
            coordinating[g.name] = (f"{config.listen_host}:{config.listen_port}", g)
    assert sorted(coordinating) == sorted(g.name for g in multi_vm)
    for group in multi_vm:
        address, g = coordinating[group.name]
        assert address == f"10.9.0.1:{PS_PORT}"  # the address given, as the lab gives its own
        assert g.members == tuple(group.members)
        assert g.crash_consistent_every_s == group.policy.crash_consistent_every.total_seconds()
        app = group.policy.app_consistent_every
        assert g.app_consistent_every_s == (app.total_seconds() if app else None)
        for member in group.members:
            agent = tomllib.loads((tmp_path / member / "agent.toml").read_text())["agent"]
            assert agent["coordinator"] == address and agent["multi_vm_group"] == group.name
    for group in estate.protection_groups:
        if group.policy.multi_vm_consistency:
            continue
        for member in group.members:
            assert "coordinator" not in tomllib.loads((tmp_path / member / "agent.toml").read_text())["agent"]


def test_a_wrong_group_table_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    base = ('[process_server]\nidentity = "/x"\ncache_dir = "/y"\nmaster_target = "mt:9444"\n'
            '[[process_server.groups]]\nname = "g"\n')
    (tmp_path / "a.toml").write_text(base + "crash_consistent_every_s = 60\n")
    with pytest.raises(ConfigError, match=r"needs members = \["):
        process_server_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text(base + 'members = ["a"]\ncrash_consistent_every_s = "often"\n')
    with pytest.raises(ConfigError, match="seconds"):
        process_server_config(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text(base + 'members = ["a"]\n[[process_server.groups]]\nname = "g"\nmembers = ["b"]\n')
    with pytest.raises(ConfigError, match="listed twice"):
        process_server_config(tmp_path / "c.toml")
