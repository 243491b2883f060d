"""The runner end to end on a real store and a real Azurite: groups in order, a failing script stops
the job and resume finishes it, a manual step waits for an API confirmation, a test failover's disks
land at one multi-VM point and cleanup removes them, a planned failover drains to the final point."""

from __future__ import annotations

import json
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dr.failover.points import Choice
from dr.failover.provider import FailoverError, container_name
from dr.failover.runner import Runner
from dr.model import Action, Estate, PlanGroup, RecoveryPlan
from dr.server.app import create_app
from dr.server.jobs import Jobs
from dr.server.schemas import RecoveryPoint, RegisterRequest
from dr.server.service import ConfigServer
from dr.server.store import Store
from tests.conftest import wait_for
from tests.failover.conftest import (
    PASSPHRASE,
    RecordingExporter,
    blob_bytes,
    environment,
    image_bytes,
    make_server,
    report_points,
)

REPO = Path(__file__).resolve().parents[2]
# A manual step must still be waiting after this long without a confirmation (seconds): 20 of the
# runner's confirmation polls (poll_s=0.05 below).
STILL_WAITING_S = 1.0
# Deadline for a runner to reach a state (seconds): generous, for a loaded machine; a wait ends as
# soon as the state is reached.
STEP_TIMEOUT_S = 120.0


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _points(server: ConfigServer, now: float) -> None:
    """Two points on every machine: an app-consistent multi-VM point g1 and a later crash point g2,
    then one more crash point on dc01 only (g3: not shared, so never a multi-VM choice)."""
    names = [m.name for m in server.estate.machines]
    points = {
        name: [RecoveryPoint(point_id="mv-1", time=now - 600, kind="app", group_id="g1"),
               RecoveryPoint(point_id="mv-2", time=now - 300, kind="crash", group_id="g2")]
        for name in names
    }
    points["dc01"].append(RecoveryPoint(point_id="dc01-3", time=now - 10, kind="crash", group_id="g3"))
    report_points(server, points)


def _spec_dir(tmp_path: Path) -> Path:
    spec = tmp_path / "spec"
    spec.mkdir()
    shutil.copy(REPO / "examples" / "sharepoint" / "dr.yaml", spec / "dr.yaml")
    return spec


def _runner(server: ConfigServer, azurite: str, exporter: RecordingExporter, spec: Path) -> Runner:
    return Runner(server=server, env=environment(server, azurite, exporter, spec.parent / "work"),
                  spec_path=spec / "dr.yaml", poll_s=0.05)


def test_a_failing_script_in_a_middle_group_stops_the_job_and_resume_finishes_it(
    state: Store, sharepoint: Estate, azurite: str, tmp_path: Path
) -> None:
    spec = _spec_dir(tmp_path)
    log = tmp_path / "order.log"
    _executable(spec / "scripts" / "record.sh", f'#!/bin/sh\necho "$DR_GROUP $DR_FAILOVER_TYPE" >> {log}\n')
    _executable(spec / "scripts" / "gate.sh",
                f'#!/bin/sh\n[ -e {tmp_path}/database-ready ] && exit 0\necho "database not ready" >&2\nexit 3\n')
    _executable(spec / "runbooks" / "announce.py",
                "import json, sys, pathlib\nctx = json.load(sys.stdin)\n"
                f"pathlib.Path({str(tmp_path / 'context.json')!r}).write_text(json.dumps(ctx))\n"
                "print('announced', ctx['group'])\n")
    plan = RecoveryPlan(name="tiers", groups=[
        PlanGroup(name="directory", machines=["dc01"], after=[Action(script="scripts/record.sh")]),
        PlanGroup(name="database", machines=["sql01"], after=[Action(script="scripts/record.sh")]),
        PlanGroup(name="application", machines=["app01"], before=[Action(script="scripts/gate.sh")]),
        PlanGroup(name="web", machines=["web01", "web02"], after=[Action(runbook="announce")]),
    ])
    estate = sharepoint.model_copy(update={"recovery_plans": [plan]})
    server = make_server(state, estate)
    _points(server, server.clock())
    exporter = RecordingExporter()
    runner = _runner(server, azurite, exporter, spec)

    job_id = runner.start_failover("tiers", "test", Choice.parse("latest-multi-vm"))
    with pytest.raises(FailoverError) as failed:
        runner.run(job_id)
    message = str(failed.value)
    assert "(group application)" in message and "gate.sh exited with status 3: database not ready" in message
    assert f"dr failover --resume {job_id}" in message
    jobs = Jobs(store=state)
    job = jobs.get(job_id)
    assert job.state == "failed" and "gate.sh" in (job.error or "")
    assert [s.state for s in job.steps] == ["succeeded"] * 5 + ["failed"] + ["pending"] * 4
    assert log.read_text().split("\n")[:2] == ["directory test", "database test"]
    assert {m for m, _, _ in exporter.exports} == {"dc01", "sql01"}
    assert [a["subject"] for a in server.overview().alerts if a["condition"] == "failover_failed"] == [job_id]

    # Fix the cause, resume: the job continues at the failed step, and nothing before it runs again.
    (tmp_path / "database-ready").touch()
    done = runner.run(job_id)
    assert done.state == "succeeded"
    assert [s.state for s in done.steps] == ["succeeded"] * 10
    assert sorted(exporter.exports) == sorted(
        [("dc01", "c", "mv-2"), ("app01", "c", "mv-2"), ("web01", "c", "mv-2"), ("web02", "c", "mv-2")]
        + [("sql01", d, "mv-2") for d in ("c", "data", "log")])
    assert log.read_text().split() == ["directory", "test", "database", "test"]
    lines = [entry["line"] for entry in jobs.log_lines(job_id)]
    assert "resumed at step 6" in lines and lines[-1] == "succeeded"
    assert server.overview().alerts == ()

    # Every disk is in Azurite at the multi-VM point g2, in the test failover's resource group.
    group = container_name("contoso-dr-tiers-failover-test")
    for machine in estate.machines:
        for disk in machine.disks:
            assert blob_bytes(azurite, group, f"{machine.name}/{disk.name}.vhd") == image_bytes(
                machine.name, disk.name, "mv-2")

    # The runbook got the plan context with the machine map.
    context = json.loads((tmp_path / "context.json").read_text())
    assert (context["plan"], context["failover_type"], context["direction"], context["group"]) == (
        "tiers", "test", "primary-to-azure", "web")
    assert context["network"] == "contoso-dr-vnet-test"
    sql01 = context["machines"]["sql01"]["recovery"]
    assert sql01["point"]["group_id"] == "g2" and len(sql01["disks"]) == 3
    assert sql01["disks"][0].endswith(f"/{group}/sql01/c.vhd")
    assert "announced web" in done.steps[-1].output


def test_a_script_past_its_timeout_is_killed(state: Store, sharepoint: Estate, azurite: str,
                                             tmp_path: Path) -> None:
    spec = _spec_dir(tmp_path)
    _executable(spec / "slow.sh", "#!/bin/sh\nsleep 30\n")
    plan = RecoveryPlan(name="slow", groups=[
        PlanGroup(name="only", machines=["dc01"], before=[Action.model_validate({"script": "slow.sh",
                                                                                  "timeout": "1s"})])])
    server = make_server(state, sharepoint.model_copy(update={"recovery_plans": [plan]}))
    _points(server, server.clock())
    runner = _runner(server, azurite, RecordingExporter(), spec)
    started = time.monotonic()
    with pytest.raises(FailoverError, match=r"slow.sh did not finish within its timeout of 1 s"):
        runner.run(runner.start_failover("slow", "test", Choice.parse("latest")))
    assert time.monotonic() - started < 20


def test_sharepoint_test_failover_waits_for_a_manual_confirmation_and_cleans_up(
    state: Store, sharepoint: Estate, azurite: str, tmp_path: Path
) -> None:
    spec = _spec_dir(tmp_path)
    _executable(spec / "runbooks" / "open-traffic-manager-endpoint.sh",
                f'#!/bin/sh\ncat > {tmp_path}/tm-context.json\necho "endpoint opened"\n')
    server = make_server(state, sharepoint)
    _points(server, server.clock())
    before = server.recovery_points("sql01")
    exporter = RecordingExporter()
    runner = _runner(server, azurite, exporter, spec)
    client = TestClient(create_app(server))
    operator = server.register(RegisterRequest(passphrase=PASSPHRASE, name="ops", role="operator")).token
    auth = {"Authorization": f"Bearer {operator}"}

    job_id = runner.start_failover("sharepoint", "test", Choice.parse("latest-multi-vm"))
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("job", runner.run(job_id)), daemon=True)
    thread.start()

    def waiting_step() -> int | None:
        """The waiting step, once the job says it waits too (the runner marks the step, then the job:
        two writes, so a reader between them sees a waiting step in a running job)."""
        job = client.get(f"/api/v1/jobs/{job_id}", headers=auth).json()
        assert thread.is_alive() or "job" in outcome, "the runner stopped before the manual step"
        step = next((s["idx"] for s in job["steps"] if s["state"] == "waiting"), None)
        return step if job["state"] == "waiting" else None

    idx = wait_for(waiting_step, STEP_TIMEOUT_S, "the manual step and its job to wait for a confirmation")
    # Nothing to wait on for "it does not go on by itself": watch it for a while (many confirmation polls).
    watch_until = time.monotonic() + STILL_WAITING_S
    while time.monotonic() < watch_until:
        assert thread.is_alive() and waiting_step() == idx, "the manual step went on without a confirmation"
        time.sleep(0.05)  # paces the watch
    assert not (tmp_path / "tm-context.json").exists(), "the runbook after the manual step ran early"

    assert client.post(f"/api/v1/jobs/{job_id}/steps/{idx}/confirm", headers=auth).status_code == 204
    wait_for(lambda: not thread.is_alive(), STEP_TIMEOUT_S, "the job to finish after the confirmation")
    job = Jobs(store=state).get(job_id)
    assert job.state == "succeeded", job.error
    manual = next(s for s in job.steps if s.kind == "manual")
    assert manual.confirmed_by == "ops" and manual.output == "confirmed by ops"

    # Groups ran in order; every disk came from the same multi-VM point (g2: the newest all share).
    order = [s.machine for s in job.steps if s.kind == "failover_machine"]
    assert order == ["dc01", "sql01", "app01", "web01", "web02"]
    assert {point.split("-")[1] for _, _, point in exporter.exports} == {"2"}
    assert len(exporter.exports) == 7
    tm = json.loads((tmp_path / "tm-context.json").read_text())
    assert tm["group"] == "web" and set(tm["machines"]) == {"dc01", "sql01", "app01", "web01", "web02"}
    # A test failover leaves replication alone: the catalog is untouched.
    assert server.recovery_points("sql01") == before

    group = "contoso-dr-sharepoint-failover-test"
    assert len(runner.env.disks.list_disks(group)) == 7
    cleanup = runner.start_cleanup(job_id)
    assert runner.run(cleanup).steps[0].output == f"resource group {group}: 7 disk(s) removed"
    assert runner.env.disks.list_disks(group) == []
    events = [e["kind"] for e in server.events(limit=500)]
    assert "failover_started" in events and "failover_succeeded" in events


def test_planned_failover_drains_to_the_final_point_and_commits(
    state: Store, sharepoint: Estate, azurite: str, tmp_path: Path
) -> None:
    spec = _spec_dir(tmp_path)
    plan = RecoveryPlan(name="db", groups=[PlanGroup(name="database", machines=["sql01"])])
    server = make_server(state, sharepoint.model_copy(update={"recovery_plans": [plan]}))
    now = server.clock()
    _points(server, now)
    exporter = RecordingExporter()
    runner = _runner(server, azurite, exporter, spec)
    jobs = Jobs(store=state)
    job_id = runner.start_failover("db", "planned", Choice.parse("latest"))
    thread = threading.Thread(target=lambda: runner.run(job_id), daemon=True)
    thread.start()

    # No shutdown automation configured: the operator confirms the shutdown (here, in the store).
    wait_for(lambda: jobs.get(job_id).steps[0].state == "waiting", STEP_TIMEOUT_S, "the shutdown step to wait")
    jobs.confirm(job_id, 1, by="operator")
    wait_for(lambda: jobs.get(job_id).steps[1].state == "running", STEP_TIMEOUT_S, "the drain to start")
    # The drain has nothing to finish on yet: watch that it does not (it polls the catalog meanwhile).
    watch_until = time.monotonic() + STILL_WAITING_S
    while time.monotonic() < watch_until:
        assert jobs.get(job_id).steps[1].state == "running", "the drain finished before the final point existed"
        time.sleep(0.05)  # paces the watch
    # The master target applies the agent's shutdown bookmark and reports it.
    final = RecoveryPoint(point_id="sql01-final", time=server.clock(), kind="app")
    report_points(server, {"sql01": [RecoveryPoint(point_id="sql01-1", time=now - 600, kind="app", group_id="g1"),
                                     final]})
    wait_for(lambda: not thread.is_alive(), STEP_TIMEOUT_S, "the planned failover to finish")
    job = jobs.get(job_id)
    assert job.state == "succeeded", job.error
    assert {p for _, _, p in exporter.exports} == {"sql01-final"}
    group = container_name("contoso-dr-db-failover")
    assert blob_bytes(azurite, group, "sql01/data.vhd") == image_bytes("sql01", "data", "sql01-final")

    committed = runner.run(runner.start_commit(job_id))
    assert committed.state == "succeeded"
    assert {p["point_id"] for p in server.recovery_points("sql01")} == {"sql01-final"}
    with pytest.raises(Exception, match=r"was committed"):
        runner.start_change_point(job_id, Choice.parse("latest"))
