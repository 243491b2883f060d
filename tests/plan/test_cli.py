"""`dr plan` and `dr diff` through the real command line (click's runner, in process) and real git."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from dr.cli import cli

ROOT = Path(__file__).resolve().parents[2]
SHAREPOINT = ROOT / "examples" / "sharepoint" / "dr.yaml"
SEARCH01 = """  - name: search01
    site: hq
    kind: vmware
    os: Windows Server 2012 R2
    vcpus: 4
    memory_gb: 16
    nics: 1
    disks:
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def with_machine(text: str, disks: int, iops: int = 200) -> str:
    """The SharePoint spec with one more machine in its protection group (textual, like a PR)."""
    rows = "".join(f"      - {{name: d{i}, size_gb: 100, iops: {iops}, churn_gb_per_day: 5}}\n" for i in range(disks))
    text = text.replace("\nprotection_groups:", SEARCH01 + rows + "\nprotection_groups:", 1)
    members = "members: [dc01, sql01, app01, web01, web02"
    return text.replace(members + "]", members + ", search01]")


def with_quota(text: str, vcpus: int) -> str:
    return re.sub(r"vcpus: 20 ", f"vcpus: {vcpus} ", text, count=1)


def test_plan_text_json_markdown_html() -> None:
    code, out, _ = run("plan", str(SHAREPOINT))
    assert code == 0 and "contoso-sharepoint-mtsw01" in out and "because:" in out
    code, out, _ = run("plan", str(SHAREPOINT), "--format", "json")
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {"config_servers", "process_servers", "master_targets", "storage_accounts",
                         "failover_vms", "quota", "bandwidth", "errors", "warnings"}
    # The SharePoint example (azure-2026): 7 disks, 2,740 source IOPS -> 1 CS, 1 D8s_v5 (16 data disks,
    # like the seed's A4), 1 replica + 1 retention account; quota: D4s_v5 4 + D8s_v5 8 + failover
    # D2s_v5 2 + D8s_v5 8 + D4s_v5 4 + D2s_v5 2 + D2s_v5 2 = 30 vCPU against 20 -> shortfall 10.
    assert [m["size"] for m in data["master_targets"]] == ["Standard_D8s_v5"]
    assert [c["size"] for c in data["config_servers"]] == ["Standard_D4s_v5"]
    assert [a["purpose"] for a in data["storage_accounts"]] == ["replica", "retention"]
    assert (data["quota"]["total_vcpus"], data["quota"]["shortfall_vcpus"]) == (30, 10)
    code, out, _ = run("plan", str(SHAREPOINT), "--format", "markdown")
    assert code == 0 and out.startswith("## Plan for `contoso-sharepoint`") and "| contoso-sharepoint-cs01 |" in out
    code, out, _ = run("plan", str(SHAREPOINT), "--format", "html")
    assert code == 0 and out.startswith("<!doctype html>") and "<td>contoso-sharepoint-mtsw01</td>" in out


def test_plan_exit_codes(tmp_path: Path) -> None:
    code, _, err = run("plan", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.startswith("dr: error:")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(SHAREPOINT.read_text().replace("version: \"7.0\"", "version: \"4.0\""))
    code, out, err = run("plan", str(invalid))
    assert code == 1 and out == "" and "vcenter" in err and "dr: error:" in err
    # Valid for the support matrix (32 disks allowed) but not plannable: no MTS protects 32 disks.
    wide = tmp_path / "wide.yaml"
    wide.write_text(with_machine(SHAREPOINT.read_text(), 32, iops=10))
    code, out, _ = run("plan", str(wide), "--format", "json")
    assert code == 1
    assert [e["path"] for e in json.loads(out)["errors"]] == ["machines.5.disks"]


def test_diff_sharepoint_one_machine_added(tmp_path: Path) -> None:
    # search01: 10 disks x 200 IOPS. Disks 7 + 10 = 17 > 15: the multi-VM group no longer fits one A4
    # (a warning); FFD: search01 10 -> mtsw01, sql01 3 -> mtsw01 (13), dc01/app01/web01 1 each -> mtsw01
    # 14, 15, then web02 -> a new A4 mtsw02. IOPS 2,740 + 2,000 = 4,740 <= 8,000: one replica account.
    # The retention disks of mtsw02 join the shared retention account: (4,740) x 0.5 = 2,370 <= 20,000.
    new = tmp_path / "new.yaml"
    new.write_text(with_quota(with_machine(SHAREPOINT.read_text(), 10), 200))
    code, out, _ = run("diff", str(SHAREPOINT), str(new), "--format", "json", "--no-resources")
    data = json.loads(out)
    assert code == 0, out
    assert [(c["name"], c["kind"]) for c in data["machines"]["changes"]] == [("search01", "added")]
    added_disks = [c["name"] for c in data["disks"]["changes"] if c["kind"] == "added"]
    assert added_disks == [f"search01/d{i}" for i in range(10)]
    assert (data["iops_before"], data["iops_after"]) == (2740.0, 4740.0)
    assert [(c["name"], c["kind"]) for c in data["master_targets"]["changes"]] == [
        ("contoso-sharepoint-mtsw02", "added"), ("contoso-sharepoint-mtsw01", "changed")]
    accounts = {c["name"][-4:]: (c["kind"], c["added"], c["fields"]) for c in data["storage_accounts"]["changes"]}
    assert accounts["r001"] == ("changed", [f"search01/d{i}" for i in range(10)],
                                {"source_iops": [2740.0, 4740.0], "target_iops": [5480.0, 9480.0]})
    assert accounts["t001"] == ("changed", ["contoso-sharepoint-mtsw02/os", "contoso-sharepoint-mtsw02/retention"],
                                {"source_iops": [2740.0, 4740.0], "target_iops": [1370.0, 2370.0]})
    assert len(accounts) == 2
    # search01 needs 4 vCPU, 16 GB, 9 data disks: every 4-vCPU size takes 8 data disks; of the 8-vCPU
    # sizes A4 has 14 GB, D4 (28 GB, 16 disks) fits -> +8 vCPU; the new A4 master target +8.
    assert data["quota"]["total_before"] == 30 and data["quota"]["total_after"] == 30 + 8 + 8
    assert data["quota_exceeded"] is False
    # 17 disks no longer fit one A4: the multi-VM group is split, a new warning the diff shows.
    assert [w["path"] for w in data["new_warnings"]] == ["protection_groups.0"]
    code, md, _ = run("diff", str(SHAREPOINT), str(new), "--format", "markdown")
    assert code == 0 and "+ search01" in md and "+ contoso-sharepoint-mtsw02" in md
    assert "| source IOPS | 2740 | 4740 |" in md and "**New warnings:**" in md
    # With pulumi installed, dr.preview's resource delta: the new master target's VM is declared.
    pytest.importorskip("pulumi_azure_native", reason="the resource delta needs the 'azure' extra")
    assert "**Azure resources** (Pulumi)" in md and "+ VirtualMachine contoso-sharepoint-mtsw02-vm" in md


def test_diff_quota_gate_exits_3(tmp_path: Path) -> None:
    # The example declares 20 vCPU and its plan needs 30: the gate fails; with 64 declared it passes.
    code, out, _ = run("diff", str(SHAREPOINT), str(SHAREPOINT), "--no-resources")
    assert code == 3 and "QUOTA" in out
    raised = tmp_path / "raised.yaml"
    raised.write_text(with_quota(SHAREPOINT.read_text(), 64))
    code, out, _ = run("diff", str(SHAREPOINT), str(raised), "--no-resources")
    assert code == 0 and "no change in machines" in out


def test_diff_usage_errors() -> None:
    code, _, err = run("diff", str(SHAREPOINT))
    assert code == 2 and "two files" in err
    code, _, err = run("diff", str(SHAREPOINT), str(SHAREPOINT), "--base", "HEAD")
    assert code == 2


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_diff_against_git_base(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "dr").mkdir(parents=True)
    spec = repo / "dr" / "dr.yaml"
    spec.write_text(with_quota(SHAREPOINT.read_text(), 64))

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                       check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "dr/dr.yaml")
    git("commit", "-q", "-m", "spec")
    spec.write_text(with_machine(spec.read_text(), 2))  # the working tree: one machine more
    code, out, _ = run("diff", str(spec), "--base", "main", "--format", "json", "--no-resources")
    data = json.loads(out)
    assert code == 0, out
    assert data["base"] == f"main:{spec}"
    assert [(c["name"], c["kind"]) for c in data["machines"]["changes"]] == [("search01", "added")]
    # A ref that does not exist: unreadable input, exit 2, one line.
    code, _, err = run("diff", str(spec), "--base", "no-such-ref", "--no-resources")
    assert code == 2 and "no-such-ref" in err and "\n" not in err.strip()
    # A file that did not exist at the ref: everything is added.
    other = repo / "new.yaml"
    other.write_text(spec.read_text())
    code, out, _ = run("diff", str(other), "--base", "main", "--format", "json", "--no-resources")
    assert code == 0 and json.loads(out)["machines_before"] == 0


def test_workflow_runs_dr_diff_against_the_base_branch() -> None:
    workflow = YAML(typ="safe").load((ROOT / "blueprints" / "github" / "dr-diff.yml").read_text())
    steps = workflow["jobs"]["diff"]["steps"]
    run_lines = "\n".join(step.get("run", "") for step in steps)
    assert 'dr diff "$DR_SPEC" --base "origin/${{ github.base_ref }}" --format markdown' in run_lines
    assert workflow[True if True in workflow else "on"]["pull_request"]
    assert steps[0]["with"]["fetch-depth"] == 0
    assert any(step.get("uses", "").startswith("actions/github-script") for step in steps)


def test_plan_json_is_byte_identical_across_processes() -> None:
    # Two interpreters with different hash seeds (set and dict order of strings differ between them).
    outputs = []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-m", "dr", "plan", str(SHAREPOINT), "--format", "json"],
            cwd=ROOT, capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}, check=True,
        )
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] and b'"master_targets"' in outputs[0]


def test_text_colour_only_when_asked() -> None:
    from dr.plan import make_plan
    from dr.plan.report import render_text
    from dr.validate import load_valid

    plan = make_plan(load_valid(SHAREPOINT)[0])
    assert "\x1b[" not in render_text(plan)  # what the CLI prints when stdout is not a terminal
    coloured = render_text(plan, colour=True)
    assert "\x1b[1m" in coloured and "\x1b[33m" in coloured  # bold headings, yellow warnings (quota)
