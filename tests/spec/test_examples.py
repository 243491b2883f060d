"""The bundled examples load and validate exactly as written; the Python DSL builds the same estate."""

from __future__ import annotations

import json
from pathlib import Path

from dr.validate import load_valid, validate_path
from tests.conftest import ROOT, run_dr

EXAMPLES = ["examples/sharepoint/dr.yaml", "examples/linux-estate/dr.yaml"]


def test_sharepoint_validates_with_exit_0() -> None:
    result = run_dr("validate", "examples/sharepoint/dr.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid (0 error(s), 0 warning(s))" in result.stdout


def test_linux_estate_validates_clean_with_its_include() -> None:
    estate, warnings = load_valid(ROOT / "examples/linux-estate/dr.yaml")
    assert warnings == []
    assert [m.name for m in estate.machines] == ["lb01", "app01", "app02", "pg01", "pg02"]
    assert [g.name for g in estate.protection_groups] == ["web-tier", "database"]
    assert estate.machine("pg01").kind == "physical"


def test_sharepoint_values_as_written() -> None:
    estate, _ = load_valid(ROOT / "examples/sharepoint/dr.yaml")
    assert estate.azure.connectivity == "vpn"
    assert estate.sites[0].vcenter is not None and estate.sites[0].vcenter.version == "7.0"
    assert estate.machine("sql01").disks[1].iops == 1500
    policy = estate.protection_groups[0].policy
    assert policy.rpo_threshold.total_seconds() == 900 and policy.retention.total_seconds() == 86400
    after = estate.recovery_plans[0].groups[3].after
    assert [a.kind for a in after] == ["manual", "runbook"]
    assert estate.recovery_plans[0].traffic_manager is not None


def test_python_dsl_builds_the_same_estate(tmp_path: Path) -> None:
    yaml_estate, _ = load_valid(ROOT / "examples/sharepoint/dr.yaml")
    py_estate, _ = load_valid(ROOT / "examples/sharepoint/estate.py")
    assert py_estate == yaml_estate


def test_validate_json_output_is_parseable() -> None:
    result = run_dr("validate", *EXAMPLES, "--format", "json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert [f["valid"] for f in data["files"]] == [True, True]


def test_show_summarises_the_estate() -> None:
    result = run_dr("show", "examples/sharepoint/dr.yaml", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["machines"]] == ["dc01", "sql01", "app01", "web01", "web02"]
    assert data["machines"][1]["iops"] == 2400
    assert [g["name"] for g in data["recovery_plans"][0]["groups"]] == ["directory", "database", "application", "web"]
    markdown = run_dr("show", "examples/sharepoint/dr.yaml", "--format", "markdown").stdout
    assert "| sql01 | hq | vmware |" in markdown


def test_validate_reports_every_file() -> None:
    report = validate_path(ROOT / "examples/sharepoint/dr.yaml")
    assert report.ok and report.findings == []
