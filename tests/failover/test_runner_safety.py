"""Operator mistakes the runner refuses, on a real store, a real Azurite and the real `dr` CLI: two
runners on one job, a second failover of a failed-over plan, a commit after a change of point, a
resume with a changed spec, a runbook that does not exist, a failback the plan does not allow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dr.failover.points import Choice
from dr.failover.provider import container_name
from dr.failover.runner import Runner, SpecChanged, spec_pin
from dr.failover.steps import PlanNotRunnable
from dr.model import Action, Estate, PlanGroup, RecoveryPlan
from dr.server.jobs import JobBusy, Jobs, NewStep
from dr.server.schemas import RecoveryPoint
from dr.server.service import ConfigServer
from dr.server.store import Store
from dr.validate import load_valid
from tests.conftest import wait_for
from tests.failover.conftest import (
    RecordingExporter,
    blob_bytes,
    environment,
    image_bytes,
    make_server,
    report_points,
)

REPO = Path(__file__).resolve().parents[2]
SHAREPOINT = REPO / "examples" / "sharepoint" / "dr.yaml"
# A CLI runner started in the background takes its lease within this long (seconds; the interpreter
# and the spec load take about a second here).
START_TIMEOUT_S = 60


def dr(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "dr", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def dr_background(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "dr", *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _manual_job(jobs: Jobs, estate: Estate, spec: Path, steps: int = 1) -> str:
    """A job of manual steps only: what a runner holds while it waits for an operator."""
    return jobs.create(kind="test-failover", plan="sharepoint", spec=str(spec), options={"type": "test"},
                       steps=[NewStep(kind="manual", title=f"check {n}", group="web",
                                      detail={"action": {"manual": f"check {n}"}}) for n in range(1, steps + 1)],
                       pin=spec_pin(estate))


def _wait_for_lease(jobs: Jobs, job: str, process: subprocess.Popen[str]) -> None:
    def leased() -> bool:
        assert process.poll() is None, process.communicate()
        return jobs.lease(job) is not None

    wait_for(leased, START_TIMEOUT_S, "the runner to take the job's lease")


def _cli_runner_args(job: str, state: Path, *extra: str) -> list[str]:
    return ["failover", "--resume", job, "--state", str(state), "--storage", "UseDevelopmentStorage=true", *extra]


def test_a_second_runner_on_a_job_is_refused_and_a_dead_runners_lease_expires(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    jobs = Jobs(store=Store.open(state))
    estate, _ = load_valid(SHAREPOINT)
    job = _manual_job(jobs, estate, SHAREPOINT)

    first = dr_background(*_cli_runner_args(job, state))
    try:
        _wait_for_lease(jobs, job, first)
        second = dr(*_cli_runner_args(job, state))
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert f"job {job} is being run by " in second.stderr and f"pid {first.pid} since " in second.stderr
        assert len(second.stderr.splitlines()) == 1
        shown = dr("failover", "show", job, "--state", str(state))
        assert "runner: held by " in shown.stdout and f"pid {first.pid}" in shown.stdout

        # The runner dies without a word: its lease stays until it expires.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert "lease renewed until" in dr("failover", "show", job, "--state", str(state)).stdout
        assert "is being run by" in dr(*_cli_runner_args(job, state)).stderr
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.communicate()

    # Time passes (the store is moved, not the clock): the lease expires, and `show` says so.
    Store.open(state).execute("UPDATE job_leases SET expires = expires - 3600 WHERE job_id = ?", (job,))
    shown = dr("failover", "show", job, "--state", str(state))
    assert "its lease expired at" in shown.stdout and f"`dr failover --resume {job}` takes the job over" in shown.stdout
    as_json = json.loads(dr("failover", "show", job, "--state", str(state), "--format", "json").stdout)
    assert as_json["runner"]["expired"] is True and as_json["runner"]["holder"].endswith(f"pid {first.pid}")

    # Another runner takes the job over and finishes it; the lease is released at the end.
    jobs.confirm(job, 1, by="alice")
    resumed = dr(*_cli_runner_args(job, state))
    assert resumed.returncode == 0, resumed.stderr
    assert jobs.get(job).state == "succeeded" and jobs.lease(job) is None


def test_two_concurrent_resumes_in_one_process_one_is_refused(
    state: Store, sharepoint: Estate, azurite: str, tmp_path: Path
) -> None:
    server = make_server(state, sharepoint)
    runner = Runner(server=server, env=environment(server, azurite, RecordingExporter(), tmp_path / "work"),
                    spec_path=SHAREPOINT, poll_s=0.02)
    jobs = Jobs(store=state)
    job = _manual_job(jobs, sharepoint, SHAREPOINT, steps=2)
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("job", runner.run(job)), daemon=True)
    thread.start()
    # The runner marks the step waiting, then the job: wait for both.
    wait_for(lambda: (j := jobs.get(job)).steps[0].state == "waiting" and j.state == "waiting", START_TIMEOUT_S,
             "the first manual step and its job to wait")
    with pytest.raises(JobBusy, match=rf"job {job} is being run by .* pid {os.getpid()} since"):
        runner.run(job)
    assert jobs.get(job).state == "waiting", "the refused runner changed the job"
    jobs.confirm(job, 1, by="ops")
    jobs.confirm(job, 2, by="ops")
    wait_for(lambda: not thread.is_alive(), START_TIMEOUT_S, "the runner to finish the job")
    assert jobs.get(job).state == "succeeded", outcome
    assert [line["line"] for line in jobs.log_lines(job)].count("succeeded") == 1


def _confirming_run(runner: Runner, jobs: Jobs, job: str) -> None:
    """Run a job, confirming each step that waits (the operator shuts the source machines down)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run(job)
        except BaseException as err:  # reported below
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while thread.is_alive():
        assert time.monotonic() < deadline
        for step in jobs.get(job).steps:
            if step.state == "waiting" and step.confirmed_by is None:
                jobs.confirm(job, step.idx, by="operator")
        time.sleep(0.02)
    assert not errors, errors
    assert jobs.get(job).state == "succeeded", jobs.get(job).error


def test_refailover_is_refused_commit_keeps_the_changed_point_and_failback_follows_the_plan(
    state: Store, sharepoint: Estate, azurite: str, tmp_path: Path
) -> None:
    plan = RecoveryPlan(name="db", groups=[PlanGroup(name="database", machines=["sql01"])])
    server = make_server(state, sharepoint.model_copy(update={"recovery_plans": [plan]}))
    now = server.clock()
    report_points(server, {"sql01": [RecoveryPoint(point_id="app-1", time=now - 600, kind="app"),
                                     RecoveryPoint(point_id="crash-2", time=now - 60, kind="crash")]})
    runner = Runner(server=server, env=environment(server, azurite, RecordingExporter(), tmp_path / "work"),
                    spec_path=SHAREPOINT, poll_s=0.02)
    jobs = Jobs(store=state)
    rg = container_name("contoso-dr-db-failover")

    failover = runner.start_failover("db", "unplanned", Choice.parse("latest"))
    # Failed over, even before it ran: a second failover of the plan is refused, naming the job.
    for kind in ("unplanned", "planned"):
        with pytest.raises(PlanNotRunnable, match=rf"plan db is failed over already by job {failover} "
                                                  r"\(unplanned-failover, pending\).*--resume"):
            runner.start_failover("db", kind, Choice.parse("latest"))  # type: ignore[arg-type]
    _confirming_run(runner, jobs, failover)
    assert blob_bytes(azurite, rg, "sql01/data.vhd") == image_bytes("sql01", "data", "crash-2")
    with pytest.raises(PlanNotRunnable, match=rf"failed over already by job {failover} .*dr failover commit"):
        runner.start_failover("db", "unplanned", Choice.parse("latest-app"))
    assert [j["kind"] for j in jobs.recent()].count("unplanned-failover") == 1

    # The operator moves the disks to the app-consistent point, then commits: that point is kept.
    change = runner.start_change_point(failover, Choice.parse("latest-app"))
    assert runner.run(change).state == "succeeded"
    assert blob_bytes(azurite, rg, "sql01/data.vhd") == image_bytes("sql01", "data", "app-1")
    assert runner.held_points(jobs.get(failover))["sql01"].point_id == "app-1"

    with pytest.raises(PlanNotRunnable, match=r"plan db says failback: false.*set `failback: true`"):
        runner.start_failback(failover)

    commit = runner.run(runner.start_commit(failover))
    assert commit.state == "succeeded" and "committed at point app-1" in commit.steps[0].output
    assert {p["point_id"] for p in server.recovery_points("sql01")} == {"app-1"}
    assert jobs.holding("db") is None, "a committed failover still holds the plan"


def test_resume_refuses_a_changed_spec_unless_accepted(state: Store, sharepoint: Estate, azurite: str,
                                                       tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "gate.sh").write_text(f"#!/bin/sh\n[ -e {tmp_path}/ready ] || {{ echo not ready; exit 3; }}\n")
    plan = RecoveryPlan(name="web", groups=[
        PlanGroup(name="web", machines=["web01", "web02"], before=[Action(script="gate.sh")])])
    estate = sharepoint.model_copy(update={"recovery_plans": [plan]})
    server = make_server(state, estate)
    now = server.clock()
    report_points(server, {m: [RecoveryPoint(point_id="p1", time=now - 60, kind="crash")] for m in ("web01", "web02")})
    exporter = RecordingExporter()
    runner = Runner(server=server, env=environment(server, azurite, exporter, tmp_path / "work"),
                    spec_path=spec / "dr.yaml", poll_s=0.02)
    job = runner.start_failover("web", "test", Choice.parse("latest"))
    with pytest.raises(Exception, match=r"gate\.sh exited with status 3"):
        runner.run(job)
    (tmp_path / "ready").touch()

    # web02 renamed in the spec since the job started: refused, naming what changed.
    renamed = estate.model_copy(update={
        "machines": [m.model_copy(update={"name": "web03"}) if m.name == "web02" else m for m in estate.machines],
        "recovery_plans": [RecoveryPlan(name="web", groups=[PlanGroup(name="web", machines=["web01", "web03"],
                                                                      before=[Action(script="gate.sh")])])]})
    moved = Runner(server=ConfigServer(store=state, estate=renamed), env=runner.env, spec_path=spec / "dr.yaml")
    with pytest.raises(SpecChanged, match=r"the spec changed since job .* \(machines: -web02, \+web03, "
                                          r"recovery_plans\).*--accept-spec-change"):
        moved.run(job)
    with pytest.raises(SpecChanged, match=r"no longer has machine\(s\) web02"):
        moved.run(job, accept_spec_change=True)
    assert Jobs(store=state).get(job).state == "failed" and Jobs(store=state).lease(job) is None

    # A change the remaining steps can live with is accepted when asked, and recorded.
    quieter = estate.model_copy(update={"notifications": estate.notifications.model_copy(
        update={"email": ["oncall@contoso.com"]})})
    accepted = Runner(server=ConfigServer(store=state, estate=quieter), env=runner.env, spec_path=spec / "dr.yaml")
    with pytest.raises(SpecChanged, match=r"\(notifications\)"):
        accepted.run(job)
    assert accepted.run(job, accept_spec_change=True).state == "succeeded"
    lines = [entry["line"] for entry in Jobs(store=state).log_lines(job)]
    assert "the spec changed since the job started (notifications): accepted by the operator" in lines
    assert Jobs(store=state).pin(job) == spec_pin(quieter)


def test_resume_through_the_cli_pins_the_spec(tmp_path: Path) -> None:
    spec = tmp_path / "dr.yaml"
    shutil.copytree(SHAREPOINT.parent / "runbooks", tmp_path / "runbooks")
    spec.write_text(SHAREPOINT.read_text())
    state = tmp_path / "state.db"
    jobs = Jobs(store=Store.open(state))
    estate, _ = load_valid(spec)
    job = _manual_job(jobs, estate, spec)
    jobs.confirm(job, 1, by="alice")

    pinned = dr("failover", "show", job, "--pinned-spec", "--state", str(state))
    (tmp_path / "pinned.yaml").write_text(pinned.stdout)
    assert load_valid(tmp_path / "pinned.yaml")[0] == estate

    spec.write_text(SHAREPOINT.read_text().replace("rpo_threshold: 15m", "rpo_threshold: 30m"))
    refused = dr(*_cli_runner_args(job, state))
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "the spec changed since job" in refused.stderr and "(protection_groups)" in refused.stderr
    assert "--accept-spec-change" in refused.stderr and jobs.get(job).state == "pending"
    accepted = dr(*_cli_runner_args(job, state, "--accept-spec-change"))
    assert accepted.returncode == 0, accepted.stderr
    assert jobs.get(job).state == "succeeded"
    usage = dr("failover", "sharepoint", "--type", "test", "--accept-spec-change", "--spec", str(spec))
    assert usage.returncode == 2 and "--accept-spec-change goes with --resume" in usage.stderr


def test_a_missing_runbook_is_caught_by_validate_dry_run_and_run(tmp_path: Path) -> None:
    spec = tmp_path / "dr.yaml"
    spec.write_text(SHAREPOINT.read_text())
    validated = dr("validate", str(spec))
    assert validated.returncode == 1
    assert "runbook 'open-traffic-manager-endpoint' not found" in validated.stdout
    assert f"{spec}:" in validated.stdout and "runbooks/open-traffic-manager-endpoint" in validated.stdout
    dry = dr("failover", "sharepoint", "--type", "test", "--dry-run", "--spec", str(spec))
    assert dry.returncode == 1 and len(dry.stderr.splitlines()) == 1 and "Traceback" not in dry.stderr
    assert dry.stderr.startswith("dr: error: plan sharepoint: runbook 'open-traffic-manager-endpoint' not found")
    run = dr("failover", "sharepoint", "--type", "test", "--spec", str(spec), "--state", str(tmp_path / "s.db"),
             "--storage", "UseDevelopmentStorage=true")
    assert run.returncode == 1 and "runbook 'open-traffic-manager-endpoint' not found" in run.stderr
    assert Jobs(store=Store.open(tmp_path / "s.db")).recent() == [], "a job was started for a plan that cannot finish"

    # A script that is not there either; and the shipped example is complete.
    spec.write_text(SHAREPOINT.read_text().replace("- runbook: open-traffic-manager-endpoint",
                                                   "- script: scripts/open.sh"))
    assert "script 'scripts/open.sh' not found" in dr("validate", str(spec)).stdout
    assert dr("validate", str(SHAREPOINT)).returncode == 0
    assert dr("failover", "sharepoint", "--type", "test", "--dry-run", "--spec", str(SHAREPOINT)).returncode == 0


def test_the_sharepoint_runbook_records_the_traffic_manager_change(
    state: Store, sharepoint: Estate, azurite: str, tmp_path: Path
) -> None:
    """The example as shipped: a test failover runs its runbook, which leaves production alone; in a
    planned failover it works out the switch to Azure."""
    server = make_server(state, sharepoint)
    now = server.clock()
    report_points(server, {m.name: [RecoveryPoint(point_id="mv", time=now - 60, kind="app", group_id="g")]
                           for m in sharepoint.machines})
    runner = Runner(server=server, env=environment(server, azurite, RecordingExporter(), tmp_path / "work"),
                    spec_path=SHAREPOINT, poll_s=0.02)
    jobs = Jobs(store=state)
    job = runner.start_failover("sharepoint", "test", Choice.parse("latest-multi-vm"))
    manual = next(s.idx for s in jobs.get(job).steps if s.kind == "manual")
    jobs.confirm(job, manual, by="ops")
    done = runner.run(job)
    assert done.state == "succeeded", done.error
    output = done.steps[-1].output
    assert output.startswith("test failover: Traffic Manager profile contoso-sharepoint is left as it is")
    assert "web01 (web01), web02 (web02) in contoso-dr-sharepoint-failover-test" in output
    record = json.loads((tmp_path / "work" / job / "traffic-manager.json").read_text())
    assert record["commands"] == [] and record["failover_type"] == "test" and record["applied"] is False
    runner.run(runner.start_cleanup(job))

    # The same runbook in a planned failover: the Azure endpoint takes over.
    context = {**runner.context(done, sharepoint.recovery_plans[0], "web"), "failover_type": "planned",
               "resource_group": "contoso-dr-sharepoint-failover", "job": "planned-job"}
    answer = subprocess.run([sys.executable, str(SHAREPOINT.parent / "runbooks" / "open-traffic-manager-endpoint.py")],
                            input=json.dumps(context), capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DR_CONTEXT": str(tmp_path / "context.json")})
    assert answer.returncode == 0, answer.stderr
    record = json.loads((tmp_path / "traffic-manager.json").read_text())
    assert [c[:4] for c in record["commands"]] == [["az", "network", "nic", "ip-config"],
                                                   ["az", "network", "traffic-manager", "endpoint"]]
    assert record["commands"][-1][-2:] == ["--endpoint-status", "Disabled"]
    assert "--public-ip-address" in record["commands"][0] and "contoso-sharepoint-azure" in record["commands"][0]


def test_a_job_of_another_version_stops_at_the_step_it_cannot_read(tmp_path: Path) -> None:
    """A step kind this version does not know (a newer dr wrote the job): one line, the job resumable."""
    state = tmp_path / "state.db"
    jobs = Jobs(store=Store.open(state))
    estate, _ = load_valid(SHAREPOINT)
    job = jobs.create(kind="test-failover", plan="sharepoint", spec=str(SHAREPOINT), options={"type": "test"},
                      steps=[NewStep(kind="manual", title="check 1", detail={"action": {"manual": "check 1"}}),
                             NewStep(kind="defragment", title="defragment the recovery disks", detail={"passes": 2})],
                      pin=spec_pin(estate))
    jobs.confirm(job, 1, by="ops")  # confirmed ahead: the run goes straight to the unknown step
    result = dr(*_cli_runner_args(job, state))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "step 2" in result.stderr and "a 'defragment' step, which this version of dr does not know" in result.stderr
    stored = jobs.get(job)
    assert stored.state == "failed" and [s.state for s in stored.steps] == ["succeeded", "failed"]
