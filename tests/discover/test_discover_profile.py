"""`dr profile vcenter`: per-disk write IOPS and churn from the simulator's PerformanceManager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from dr.cli import cli
from dr.discover.profile import KIB_PER_GIB, SECONDS_PER_DAY, percentile
from tests.discover.support import REPLICABLE, SPEC, USER, vsphere_args
from tests.vcsim.simulator import Vcsim


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(20, 0, -1)]
    assert percentile(values, 95) == pytest.approx(19.05)  # numpy.percentile(range(1, 21), 95)
    assert percentile(values, 50) == pytest.approx(10.5)
    assert percentile(values, 100) == 20 and percentile(values, 0) == 1
    assert percentile([], 95) == 0
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile(values, 101)


def test_profiling_writes_iops_and_churn_per_disk(vcsim: Vcsim, password_env: str, estate: dict[str, str],
                                                  tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    runner = CliRunner()
    found = runner.invoke(cli, ["discover", "vcenter", *vsphere_args(vcsim, inventory, "--site", "hq")])
    assert found.exit_code == 0, found.stderr
    inventory.write_text(inventory.read_text().replace("machines:\n", "machines:\n  # profiled below\n", 1))
    result = runner.invoke(cli, ["profile", "vcenter", *vsphere_args(vcsim, inventory, "--duration", "3s",
                                                                      "--interval", "1s", "--format", "json")])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rounds"] == 3 and report["percentile"] == 95
    assert report["not_sampled"] == ["DC0_H0_VM2"]  # powered off
    disks = report["disks"]
    machines: dict[str, Any] = {m["name"]: m for m in YAML(typ="safe").load(inventory.read_text())["machines"]}
    # One figure per disk instance of every powered-on VM: 11 VMs, one of them with 33 disks, one with 2.
    assert len(disks) == 10 * 1 + 33 + 2 - 1
    assert len({d["device"] for d in disks if d["machine"] == "DC0_H0_VM0"}) == 33
    for figure in disks:
        assert figure["samples"] == 3
        assert figure["iops"] > 0 and figure["churn_gb_per_day"] > 0
        # The simulator's write IOPS are its write rate at 8 KiB per write, each sample with its own noise.
        rate_kib_s = figure["churn_gb_per_day"] * KIB_PER_GIB / SECONDS_PER_DAY
        assert 0.3 < figure["iops"] * 8 / rate_kib_s < 3.0
        written = next(d for d in machines[figure["machine"]]["disks"] if d["device"] == figure["device"])
        assert (written["iops"], written["churn_gb_per_day"]) == (figure["iops"], figure["churn_gb_per_day"])
    assert all("iops" not in d for d in machines["DC0_H0_VM2"]["disks"])
    assert "  # profiled below\n" in inventory.read_text()
    # The planner reads the profiled figures of the protected machines.
    spec = tmp_path / "dr.yaml"
    spec.write_text(SPEC.format(user=USER, members=", ".join(REPLICABLE)))
    plan = runner.invoke(cli, ["plan", str(spec), "--format", "json"])
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    protected = [d for name in REPLICABLE for d in machines[name]["disks"]]
    assert json.loads(plan.stdout)["source_iops"] == pytest.approx(sum(d["iops"] for d in protected), abs=0.5)


def test_percentile_option_dry_run_and_text_report(vcsim: Vcsim, password_env: str, estate: dict[str, str],
                                            tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    runner = CliRunner()
    assert runner.invoke(cli, ["discover", "vcenter", *vsphere_args(vcsim, inventory, "--site", "hq")]).exit_code == 0
    figures = {}
    for pct in ("50", "100"):
        result = runner.invoke(cli, ["profile", "vcenter", *vsphere_args(
            vcsim, inventory, "--duration", "2s", "--interval", "1s", "--percentile", pct, "--dry-run",
            "--format", "json")])
        assert result.exit_code == 0, result.stderr
        figures[pct] = {(d["machine"], d["device"]): d for d in json.loads(result.stdout)["disks"]}
    assert figures["50"].keys() == figures["100"].keys()
    assert "iops:" not in inventory.read_text()  # --dry-run wrote nothing
    text = runner.invoke(cli, ["profile", "vcenter", *vsphere_args(vcsim, inventory, "--duration", "1s",
                                                                    "--interval", "1s")])
    assert text.exit_code == 0
    assert "profile of 127.0.0.1: p95 of 1 sample(s) per disk" in text.stdout
    assert "not sampled (powered off or gone): DC0_H0_VM2" in text.stdout
