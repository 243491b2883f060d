"""`dr failover` as a user runs it: a real process, real exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dr.server.jobs import Jobs, NewStep
from dr.server.store import Store

REPO = Path(__file__).resolve().parents[2]
SHAREPOINT = REPO / "examples" / "sharepoint" / "dr.yaml"


def dr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dr", *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=120)


def test_dry_run_prints_the_exact_steps() -> None:
    result = dr("failover", "sharepoint", "--type", "planned", "--point", "latest", "--dry-run",
                "--spec", str(SHAREPOINT))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "planned failover of plan sharepoint at point latest (dry run: nothing changes):"
    assert lines[1] == "  1. shut down source machine dc01 by the operator (manual: confirm when done)"
    assert lines[6] == "  6. wait until dc01's final recovery point is applied (zero data loss)"
    assert lines[-1] == (" 19. switch Traffic Manager profile contoso-sharepoint from sharepoint.contoso.com "
                         "to the Azure endpoint")
    as_json = json.loads(dr("failover", "sharepoint", "--type", "test", "--dry-run", "--format", "json",
                            "--spec", str(SHAREPOINT)).stdout)
    assert [s["kind"] for s in as_json] == ["choose_point"] + ["failover_machine"] * 5 + ["manual", "runbook"]


def test_usage_errors_are_one_line() -> None:
    missing = dr("failover", "sharepoint", "--spec", str(SHAREPOINT))
    assert missing.returncode == 2
    assert missing.stderr == ("dr: error: give the plan and its type: dr failover PLAN --type test|planned|unplanned "
                              "(or --resume JOB)\n")
    bad_point = dr("failover", "sharepoint", "--type", "test", "--point", "yesterday", "--dry-run",
                   "--spec", str(SHAREPOINT))
    assert bad_point.returncode == 2 and "--point expects one of latest" in bad_point.stderr
    unknown = dr("failover", "nope", "--type", "test", "--dry-run", "--spec", str(SHAREPOINT))
    assert unknown.returncode == 1 and "no recovery plan 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr + bad_point.stderr + missing.stderr


def test_failback_of_a_physical_machine_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "dr.yaml"
    spec.write_text(SHAREPOINT.read_text().replace(
        "  - name: sql01\n    site: hq\n    kind: vmware",
        "  - name: sql01\n    site: hq\n    kind: physical\n    address: 10.0.0.31"))
    state = tmp_path / "state.db"
    jobs = Jobs(store=Store.open(state))
    job = jobs.create(kind="planned-failover", plan="sharepoint", spec=str(spec),
                      options={"type": "planned", "point": "latest"},
                      steps=[NewStep(kind="choose_point", title="choose")])
    jobs.set_job(job, "succeeded")
    result = dr("failover", "failback", job, "--state", str(state))
    assert result.returncode == 1
    assert result.stderr.startswith("dr: error: failback of physical machine(s) sql01 is not supported")
    assert "VMware VM" in result.stderr and len(result.stderr.splitlines()) == 1
    # Nothing was started.
    assert [j["kind"] for j in jobs.recent()] == ["planned-failover"]


def test_confirm_and_show_a_job(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    jobs = Jobs(store=Store.open(state))
    job = jobs.create(kind="test-failover", plan="sharepoint", spec=str(SHAREPOINT), options={"type": "test"},
                      steps=[NewStep(kind="manual", title="check the home page")])
    jobs.set_step(job, 1, "waiting")
    confirmed = dr("failover", "confirm", job, "1", "--by", "alice", "--state", str(state))
    assert confirmed.returncode == 0, confirmed.stderr
    assert jobs.confirmed_by(job, 1) == "alice"
    shown = json.loads(dr("failover", "show", job, "--log", "--format", "json", "--state", str(state)).stdout)
    assert shown["steps"][0]["confirmed_by"] == "alice"
    assert shown["log"][-1]["line"] == "step 1 confirmed by alice"
    again = dr("failover", "confirm", job, "9", "--state", str(state))
    assert again.returncode == 2 and f"job {job} has no step 9" in again.stderr
