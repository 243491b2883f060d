"""The recovery-plan runner: executes a job's stored steps in order, durable after every step.

Groups run in order; the machines of one group run in parallel; a failed step stops the job, says
which step and why, raises a `failover_failed` alert, and leaves every finished step recorded, so
`dr failover --resume JOB` continues at the failed step (a retried step must be idempotent: exports
overwrite, uploads replace, scripts should tolerate a second run). A manual step waits until it is
confirmed at the terminal or through the API (`POST /api/v1/jobs/JOB/steps/N/confirm`).

Operator mistakes it refuses: a second runner on a job (the job's lease, `dr.server.jobs`); a
planned or unplanned failover of a plan that is failed over already (until that job is committed or
failed back); a resume with a spec that changed since the job started (unless accepted: the job
pins the estate it started with); a runbook or script the plan names that does not exist; a
failback of a plan that says `failback: false`. A commit keeps the point the disks hold, which a
change of point may have moved.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dr.azure.naming import recovered_disk_blob
from dr.errors import EXIT_INVALID, DrError
from dr.failover import actions
from dr.failover.points import Choice, Point, choose
from dr.failover.provider import Environment, FailoverError, provisioning_report, recovery_group, recovery_network
from dr.failover.steps import (
    ActionDetail,
    ChoosePointDetail,
    CommitDetail,
    DeleteGroupDetail,
    DrainDetail,
    FailoverMachineDetail,
    FailoverType,
    PlanNotRunnable,
    PointRef,
    ShutdownDetail,
    StepKind,
    TrafficManagerDetail,
    change_point_steps,
    cleanup_steps,
    commit_steps,
    detail,
    failback_steps,
    failover_steps,
    find_plan,
    plan_machines,
    step_kind,
)
from dr.model import Estate, Machine, RecoveryPlan
from dr.server import alerts
from dr.server.jobs import LEASE_RENEW_S, LEASE_TTL_S, JobRecord, Jobs, NewStep, SpecPin, StepRecord
from dr.server.service import ConfigServer, Conflict

# How often a waiting manual step re-reads the store for a confirmation (seconds).
CONFIRM_POLL_S = 0.5


def _none(_: str) -> None:
    return None


class SpecChanged(DrError):
    """The spec is not the one a job started with (resume with --accept-spec-change to use it anyway)."""

    exit_code = EXIT_INVALID


class LeaseLost(DrError):
    """This runner's lease on a job expired and another runner took the job over."""


def spec_pin(estate: Estate) -> SpecPin:
    """The estate as canonical JSON and its SHA-256: what a job pins (layout and comments do not count)."""
    text = json.dumps(estate.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True,
                      separators=(",", ":"))
    return SpecPin(digest=hashlib.sha256(text.encode()).hexdigest(), estate=text)


def spec_differences(pinned: SpecPin, now: SpecPin) -> list[str]:
    """The top-level sections (and named items) that differ between two pins, for messages."""
    old, new = json.loads(pinned.estate), json.loads(now.estate)
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        before, after = old.get(key), new.get(key)
        if isinstance(before, list) and isinstance(after, list):
            names_old = {i.get("name") for i in before if isinstance(i, dict)}
            names_new = {i.get("name") for i in after if isinstance(i, dict)}
            gone, added = sorted(str(n) for n in names_old - names_new), sorted(str(n) for n in names_new - names_old)
            if gone or added:
                out.append(f"{key}: " + ", ".join([*(f"-{n}" for n in gone), *(f"+{n}" for n in added)]))
                continue
        out.append(key)
    return out


def runner_name() -> str:
    """Who holds a lease: host and process id (what an operator needs to find that runner)."""
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Runner:
    server: ConfigServer
    env: Environment
    spec_path: Path
    dispatcher: alerts.Dispatcher | None = None
    echo: Callable[[str], None] = field(default=_none)
    prompt: Callable[[str], bool] | None = None
    poll_s: float = CONFIRM_POLL_S

    @property
    def estate(self) -> Estate:
        return self.server.estate

    @property
    def notifications(self) -> alerts.Dispatcher:
        """The given dispatcher, or the spec's notifications (alerts are recorded even with no notifier)."""
        return self.dispatcher or alerts.Dispatcher.from_spec(self.estate.notifications)

    @property
    def jobs(self) -> Jobs:
        return Jobs(store=self.server.store, clock=self.server.clock)

    # ------------------------------------------------------------------ creating jobs
    def _create(self, *, kind: str, plan: RecoveryPlan, options: dict[str, Any], steps: list[NewStep]) -> str:
        job_id = self.jobs.create(kind=kind, plan=plan.name, spec=str(self.spec_path.resolve()),
                                  options=options, steps=steps, pin=spec_pin(self.estate))
        self.echo(f"job {job_id}: {kind} of plan {plan.name}, {len(steps)} steps")
        return job_id

    def check_actions(self, plan: RecoveryPlan) -> None:
        """Refuse a plan whose runbooks or scripts do not exist (it would stop at that step)."""
        from dr.rules import missing_action_files

        missing = missing_action_files(plan, self.spec_path.resolve().parent)
        if missing:
            raise PlanNotRunnable(f"plan {plan.name}: {'; '.join(missing)}")

    def start_failover(self, plan_name: str, failover_type: FailoverType, choice: Choice) -> str:
        plan = find_plan(self.estate, plan_name)
        self.check_actions(plan)
        if failover_type != "test":
            holder = self.jobs.holding(plan.name)
            if holder is not None:
                raise PlanNotRunnable(
                    f"plan {plan.name} is failed over already by job {holder.id} ({holder.kind}, {holder.state}): "
                    f"a second failover would overwrite its recovery disks; commit it (`dr failover commit "
                    f"{holder.id}`) or fail it back first" + (
                        f", or finish it (`dr failover --resume {holder.id}`)" if holder.state != "succeeded" else "")
                )
        steps = failover_steps(self.estate, plan, failover_type, choice,
                               automatic_shutdown=self.env.source is not None)
        return self._create(kind=f"{failover_type}-failover", plan=plan,
                            options={"type": failover_type, "point": str(choice), "direction": "primary-to-azure"},
                            steps=steps)

    def _source_job(self, job_id: str, *, allowed: tuple[str, ...], verb: str) -> tuple[JobRecord, RecoveryPlan]:
        job = self.jobs.get(job_id)
        if job.kind not in allowed:
            raise PlanNotRunnable(
                f"{verb} applies to a {' or '.join(allowed)} job; job {job_id} is a {job.kind}: give another job"
            )
        if job.state != "succeeded":
            raise PlanNotRunnable(
                f"job {job_id} is {job.state}: {verb} needs a finished job (`dr failover --resume {job_id}` first)"
            )
        return job, find_plan(self.estate, job.plan)

    def start_cleanup(self, job_id: str) -> str:
        _, plan = self._source_job(job_id, allowed=("test-failover",), verb="cleanup")
        return self._create(kind="cleanup", plan=plan, options={"source_job": job_id, "type": "test"},
                            steps=cleanup_steps(self.estate, plan))

    def held_points(self, job: JobRecord) -> dict[str, PointRef]:
        """The point each machine's recovery disks hold now: the newest materialization of the failover
        or of a later change of point. Refused while a change of point is unfinished (mixed points)."""
        changes = [c for c in self.jobs.children(job.id) if c.kind == "change-point"]
        for change in changes:
            if change.state != "succeeded":
                raise PlanNotRunnable(
                    f"change-point job {change.id} of job {job.id} is {change.state}: the disks may hold mixed "
                    f"points; finish it (`dr failover --resume {change.id}`) before a commit"
                )
        held: dict[str, tuple[float, PointRef]] = {}
        for record in (job, *changes):
            for step in record.steps:
                if step.kind != StepKind.FAILOVER_MACHINE or step.state != "succeeded":
                    continue
                point = detail(step, FailoverMachineDetail).point
                if point is not None:
                    assert step.machine is not None
                    finished = step.finished or 0.0
                    if step.machine not in held or finished >= held[step.machine][0]:
                        held[step.machine] = (finished, point)
        return {machine: point for machine, (_, point) in held.items()}

    def start_commit(self, job_id: str) -> str:
        job, plan = self._source_job(job_id, allowed=("planned-failover", "unplanned-failover"), verb="commit")
        steps = commit_steps(plan, self.held_points(job))
        return self._create(kind="commit", plan=plan, options={"source_job": job_id, "type": job.options["type"]},
                            steps=steps)

    def start_change_point(self, job_id: str, choice: Choice) -> str:
        job, plan = self._source_job(job_id, allowed=("test-failover", "planned-failover", "unplanned-failover"),
                                     verb="change-point")
        committed = [j for j in self.jobs.recent(1000)
                     if j["kind"] == "commit" and j["state"] == "succeeded"
                     and self.jobs.get(j["id"]).options.get("source_job") == job_id]
        if committed:
            raise PlanNotRunnable(f"job {job_id} was committed by job {committed[0]['id']}: its point is final")
        return self._create(kind="change-point", plan=plan,
                            options={"source_job": job_id, "type": job.options["type"], "point": str(choice),
                                     "direction": "primary-to-azure"},
                            steps=change_point_steps(self.estate, plan, job.options["type"], choice))

    def start_failback(self, job_id: str) -> str:
        # The plan is checked first: a physical machine, or `failback: false`, is refused whatever the job's state.
        plan = find_plan(self.estate, self.jobs.get(job_id).plan)
        steps = failback_steps(self.estate, plan)
        self.check_actions(plan)
        _, plan = self._source_job(job_id, allowed=("planned-failover", "unplanned-failover"), verb="failback")
        return self._create(kind="failback", plan=plan,
                            options={"source_job": job_id, "type": "planned", "direction": "azure-to-primary"},
                            steps=steps)

    # ------------------------------------------------------------------ running
    def run(self, job_id: str, *, accept_spec_change: bool = False) -> JobRecord:
        """Run (or resume) a job to its end, holding its lease. Raises JobBusy when another runner holds
        it, SpecChanged when the spec differs from the job's pin (unless `accept_spec_change`),
        FailoverError when a step fails; any other error (the store unreachable, an interrupt) leaves
        the job failed with the reason, resumable."""
        jobs = self.jobs
        lease = jobs.acquire(job_id, holder=runner_name())
        lost = threading.Event()
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(LEASE_RENEW_S):
                try:
                    if not jobs.renew(lease, ttl_s=LEASE_TTL_S):
                        lost.set()
                        return
                except Exception:  # the store is away for a moment: the next renewal retries
                    continue

        renewer = threading.Thread(target=renew, name="dr-lease", daemon=True)
        try:
            self._check_spec(jobs.get(job_id), accept=accept_spec_change)
            renewer.start()
            return self._run_guarded(job_id, lost)
        finally:
            stop.set()
            if renewer.is_alive():
                renewer.join(timeout=LEASE_RENEW_S)
            if not lost.is_set():
                try:
                    jobs.release(lease)
                except Exception:  # it expires by itself
                    pass

    def _check_spec(self, job: JobRecord, *, accept: bool) -> None:
        pinned = self.jobs.pin(job.id)
        now = spec_pin(self.estate)
        if pinned is None or pinned.digest == now.digest:
            return
        what = ", ".join(spec_differences(pinned, now)) or "its content"
        if not accept:
            raise SpecChanged(
                f"the spec changed since job {job.id} started ({what}): put it back as it was (the job keeps a "
                f"copy: `dr failover show {job.id} --pinned-spec`), or resume with --accept-spec-change to run "
                "the remaining steps with the spec as it is now"
            )
        find_plan(self.estate, job.plan)
        names = {m.name for m in self.estate.machines}
        gone = sorted({s.machine for s in job.steps if s.machine and s.state != "succeeded"} - names)
        if gone:
            raise SpecChanged(
                f"the spec changed since job {job.id} started ({what}) and no longer has machine(s) "
                f"{', '.join(gone)} that its remaining steps act on: resume with the spec the job started with "
                f"(`dr failover show {job.id} --pinned-spec`)"
            )
        self.jobs.repin(job.id, now)
        self.jobs.log(job.id, f"the spec changed since the job started ({what}): accepted by the operator")

    def _run_guarded(self, job_id: str, lost: threading.Event) -> JobRecord:
        try:
            return self._run(job_id, lost)
        except (FailoverError, PlanNotRunnable, LeaseLost):
            raise
        except BaseException as err:
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
            try:
                self.jobs.set_job(job_id, "failed", error=f"the runner stopped: {reason}")
                self.jobs.log(job_id, f"the runner stopped: {reason}")
            except Exception:  # the original error matters more than this one
                pass
            raise

    def _run(self, job_id: str, lost: threading.Event) -> JobRecord:
        job = self.jobs.get(job_id)
        if job.state == "succeeded":
            self.echo(f"job {job_id} has already succeeded: nothing to do")
            return job
        plan = find_plan(self.estate, job.plan)
        todo = [s for s in job.steps if s.state not in ("succeeded", "skipped")]
        if len(todo) != len(job.steps):
            self.echo(f"job {job_id}: resuming at step {todo[0].idx} of {len(job.steps)}")
            self.jobs.log(job_id, f"resumed at step {todo[0].idx}")
        else:
            self._notify("failover_started", job_id, "info", f"{job.kind} of plan {plan.name} started (job {job_id})")
        self.jobs.set_job(job_id, "running")
        index = 0
        while index < len(todo):
            if lost.is_set():
                raise LeaseLost(f"this runner's lease on job {job_id} expired and another runner took the job "
                                f"over before step {todo[index].idx}: `dr failover show {job_id}` says who")
            batch = [todo[index]]
            if batch[0].kind in (StepKind.FAILOVER_MACHINE, StepKind.FAILBACK_MACHINE):
                while (index + len(batch) < len(todo) and todo[index + len(batch)].kind == batch[0].kind
                       and todo[index + len(batch)].group == batch[0].group):
                    batch.append(todo[index + len(batch)])
            failures = self._run_batch(job_id, plan, batch)
            if failures:
                step, error = failures[0]
                where = f"step {step.idx}" + (f" (group {step.group})" if step.group else "")
                message = f"{where}: {step.title}: {error}"
                self.jobs.set_job(job_id, "failed", error=message)
                self.jobs.log(job_id, f"stopped: {message}")
                self.server.event("critical", "failover_failed", job_id, message)
                alerts.open_alert(self.server, self.notifications, alerts.Condition(
                    kind="failover_failed", subject=job_id, severity="critical",
                    message=f"{job.kind} of plan {plan.name} stopped at {message}"))
                raise FailoverError(
                    f"job {job_id} stopped at {message}; fix the cause, then `dr failover --resume {job_id}`"
                )
            index += len(batch)
        self.jobs.set_job(job_id, "succeeded")
        self.jobs.log(job_id, "succeeded")
        alerts.clear_alert(self.server, self.notifications, "failover_failed", job_id)
        self._notify("failover_succeeded", job_id, "info", f"{job.kind} of plan {plan.name} succeeded (job {job_id})")
        self.echo(f"job {job_id} succeeded")
        return self.jobs.get(job_id)

    def _notify(self, kind: str, job_id: str, severity: str, message: str) -> None:
        self.server.event(severity, kind, job_id, message)
        self.notifications.dispatch(self.server, alerts.Alert(
            kind=kind, subject=job_id, severity=severity, message=message,  # type: ignore[arg-type]
            estate=self.estate.estate, time=self.server.clock()), "raised")

    def _run_batch(self, job_id: str, plan: RecoveryPlan,
                   batch: list[StepRecord]) -> list[tuple[StepRecord, str]]:
        if len(batch) == 1:
            error = self._run_step(job_id, plan, batch[0])
            return [] if error is None else [(batch[0], error)]
        with ThreadPoolExecutor(max_workers=len(batch), thread_name_prefix="dr-failover") as pool:
            results = list(pool.map(lambda s: self._run_step(job_id, plan, s), batch))
        return [(s, e) for s, e in zip(batch, results, strict=True) if e is not None]

    def _run_step(self, job_id: str, plan: RecoveryPlan, step: StepRecord) -> str | None:
        self.jobs.set_step(job_id, step.idx, "running")
        self.jobs.log(job_id, f"step {step.idx} started: {step.title}")
        self.echo(f"[{step.idx}] {step.title}")
        try:
            output = self._execute(job_id, plan, step)
        except FailoverError as err:
            self.jobs.set_step(job_id, step.idx, "failed", output=str(err))
            self.jobs.log(job_id, f"step {step.idx} failed: {err}")
            self.echo(f"[{step.idx}] failed: {err}")
            return str(err)
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            self.jobs.set_step(job_id, step.idx, "failed", output=text)
            self.jobs.log(job_id, f"step {step.idx} failed: {text}")
            self.echo(f"[{step.idx}] failed: {text}")
            return text
        self.jobs.set_step(job_id, step.idx, "succeeded", output=output)
        self.jobs.log(job_id, f"step {step.idx} succeeded" + (f": {output.splitlines()[0]}" if output else ""))
        return None

    # ------------------------------------------------------------------ the steps
    def _execute(self, job_id: str, plan: RecoveryPlan, step: StepRecord) -> str:
        """Run one step by its kind's handler (`HANDLERS`: one per kind, a test checks none is missing)."""
        handler = HANDLERS[step_kind(step)]
        return handler(self, self.jobs.get(job_id), plan, step)

    def _shutdown(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        assert step.machine is not None
        how = detail(step, ShutdownDetail)
        machine = self.estate.machine(step.machine)
        if not how.automatic or self.env.source is None:
            return self._wait_for_confirmation(job.id, step, f"shut down {machine.name} and confirm")
        try:
            return self.env.source.shutdown(machine)
        except Exception as err:
            if how.best_effort:
                return f"shutdown of {machine.name} failed ({err}); continuing: unplanned failover"
            raise

    def _drain(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        assert step.machine is not None
        shutdown = next((s for s in job.steps if s.kind == StepKind.SHUTDOWN and s.machine == step.machine), None)
        since = shutdown.started if shutdown is not None and shutdown.started is not None else step.started or 0.0
        point = self.env.catalog.drain(self.estate.machine(step.machine), since=since, clock=self.server.clock)
        drained = replace(detail(step, DrainDetail), point=PointRef.of(step.machine, point))
        self.jobs.update_detail(job.id, step.idx, drained.to_json())
        return f"{step.machine}: final point {point.point_id} ({point.kind}) applied"

    def _catalog(self, plan: RecoveryPlan) -> dict[str, dict[str, list[Point]]]:
        return {
            name: {d.name: self.env.catalog.points(name, d.name) for d in self.estate.machine(name).disks}
            for name in plan_machines(plan)
        }

    def _choose_point(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        drains = (detail(s, DrainDetail).point for s in job.steps if s.kind == StepKind.DRAIN)
        drained = {p.machine: p for p in drains if p is not None}
        this = detail(step, ChoosePointDetail)
        if drained:
            chosen = drained
        else:
            picked = choose(self._catalog(plan), Choice.parse(this.choice))
            chosen = {m: PointRef(machine=m, point_id=c.point_id, time=c.time, kind=c.kind, group_id=c.group_id)
                      for m, c in picked.items()}
        self.jobs.update_detail(job.id, step.idx, replace(this, chosen=chosen).to_json())
        return "\n".join(f"{m}: point {c.point_id} ({c.kind}"
                         + (f", multi-VM {c.group_id}" if c.group_id else "") + f", t={c.time:.3f})"
                         for m, c in chosen.items())

    def _chosen(self, job: JobRecord) -> dict[str, PointRef]:
        for s in reversed(job.steps):
            if s.kind == StepKind.CHOOSE_POINT:
                chosen = detail(s, ChoosePointDetail).chosen
                if chosen is not None:
                    return dict(chosen)
        raise FailoverError(f"job {job.id} has no chosen recovery point yet")

    def _failover_machine(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        assert step.machine is not None
        machine = self.estate.machine(step.machine)
        point = self._chosen(job)[machine.name]
        this = detail(step, FailoverMachineDetail)
        failover_type = job.options["type"]
        rg = recovery_group(self.estate, plan, failover_type)
        urls = []
        folder = self.env.workdir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        for disk in machine.disks:
            image = folder / f"{machine.name}-{disk.name}.vhd"  # a fixed VHD: what a managed disk imports
            try:
                self.env.exporter.export(machine.name, disk.name, point.point_id, image)
                urls.append(self.env.disks.put_disk(rg, recovered_disk_blob(machine.name, disk.name), image))
            finally:
                image.unlink(missing_ok=True)
        report = provisioning_report(self.estate, plan, machine, failover_type, urls)
        self.jobs.update_detail(job.id, step.idx,
                                replace(this, point=point, disks=tuple(urls), report=report).to_json())
        return (f"{machine.name}: {len(urls)} disk(s) at point {point.point_id} in {rg}; "
                f"would provision {report['size']} VM on {report['network']}/{report['subnet']}")

    def context(self, job: JobRecord, plan: RecoveryPlan, group: str) -> dict[str, Any]:
        """The plan context a script or runbook gets (JSON)."""
        failover_type = job.options.get("type", "planned")
        source = self.jobs.get(job.options["source_job"]) if "source_job" in job.options else job
        machines: dict[str, Any] = {}
        materialized = {s.machine: d for s in source.steps if s.kind == StepKind.FAILOVER_MACHINE
                        and (d := detail(s, FailoverMachineDetail)).report is not None and d.point is not None}
        for name in plan_machines(plan):
            spec = self.estate.machine(name)
            done = materialized.get(name)
            report = None if done is None else done.report
            machines[name] = {
                "kind": spec.kind, "source": spec.address or name,
                "recovery": None if done is None or report is None or done.point is None else {
                    "vm": report["vm"], "resource_group": report["resource_group"],
                    "network": report["network"], "size": report["size"],
                    "disks": list(done.disks), "point": done.point.to_json(),
                },
            }
        return {
            "estate": self.estate.estate, "plan": plan.name, "job": job.id, "failover_type": failover_type,
            "direction": job.options.get("direction", "primary-to-azure"), "group": group,
            "group_machines": next((list(g.machines) for g in plan.groups if g.name == group), []),
            "resource_group": recovery_group(self.estate, plan, failover_type),
            "network": recovery_network(self.estate, failover_type), "machines": machines,
            "traffic_manager": None if plan.traffic_manager is None
            else plan.traffic_manager.model_dump(mode="json", exclude_none=True),
        }

    def _script(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        action = detail(step, ActionDetail).action
        assert action.script is not None  # `detail` checks the action is the step's kind
        path = (self.spec_path.resolve().parent / action.script).resolve()
        return actions.run_script(path, context=self.context(job, plan, step.group or ""),
                                  timeout_s=action.timeout.total_seconds(), workdir=self.env.workdir / job.id,
                                  stdin_context=False).output

    def _runbook(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        action = detail(step, ActionDetail).action
        assert action.runbook is not None
        path = actions.find_runbook(self.spec_path.resolve().parent, action.runbook)
        return actions.run_script(path, context=self.context(job, plan, step.group or ""),
                                  timeout_s=action.timeout.total_seconds(), workdir=self.env.workdir / job.id,
                                  stdin_context=True).output

    def _manual(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        action = detail(step, ActionDetail).action
        return self._wait_for_confirmation(job.id, step, action.manual or step.title)

    def _traffic_manager(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        tm = detail(step, TrafficManagerDetail)
        return (f"Traffic Manager profile {tm.profile}: endpoint {tm.from_endpoint} disabled, "
                f"{tm.to_endpoint} enabled (declared by the Pulumi stack; not applied here: no Pulumi CLI)")

    def _delete_group(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        rg = detail(step, DeleteGroupDetail).resource_group
        removed = self.env.disks.delete_group(rg)
        return f"resource group {rg}: {removed} disk(s) removed"

    def _commit(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        assert step.machine is not None
        # The point the disks hold (recorded when the commit was started); a job written before that was
        # recorded commits the failover's own choice.
        chosen = (detail(step, CommitDetail).point
                  or self._chosen(self.jobs.get(job.options["source_job"]))[step.machine])
        machine = self.estate.machine(step.machine)
        done = self.env.catalog.commit(machine, chosen.point_id)
        if self.env.replication is not None:
            done += "; " + self.env.replication.commit(machine, chosen.point_id)
        return done

    def _reverse(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> tuple[Machine, str]:
        """The machine and the recovery group of a reprotect or failback step (they need the data path)."""
        assert step.machine is not None
        if self.env.replication is None:
            raise FailoverError(
                f"{step.machine}: reverse replication needs the replication data path (dr_agent's master "
                "target on premises), which this runner is not connected to"
            )
        source = self.jobs.get(job.options["source_job"])
        return self.estate.machine(step.machine), recovery_group(self.estate, plan, source.options["type"])

    def _reprotect(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        machine, group = self._reverse(job, plan, step)
        assert self.env.replication is not None
        return self.env.replication.reprotect(machine, job=job.id, group=group)

    def _failback_machine(self, job: JobRecord, plan: RecoveryPlan, step: StepRecord) -> str:
        machine, group = self._reverse(job, plan, step)
        assert self.env.replication is not None
        return self.env.replication.failback(machine, job=job.id, group=group)

    def _wait_for_confirmation(self, job_id: str, step: StepRecord, text: str) -> str:
        jobs = self.jobs
        jobs.set_step(job_id, step.idx, "waiting")
        jobs.set_job(job_id, "waiting")
        jobs.log(job_id, f"step {step.idx} waits for confirmation: {text}")
        self.echo(f"[{step.idx}] waiting: {text}\n      confirm here, with `dr failover confirm {job_id} {step.idx}`, "
                  f"or POST /api/v1/jobs/{job_id}/steps/{step.idx}/confirm")
        stop = threading.Event()
        if self.prompt is not None:
            prompt = self.prompt

            def ask() -> None:
                if prompt(text) and not stop.is_set():
                    try:
                        jobs.confirm(job_id, step.idx, by="terminal")
                    except Conflict:
                        pass

            threading.Thread(target=ask, name="dr-confirm", daemon=True).start()
        try:
            while (by := jobs.confirmed_by(job_id, step.idx)) is None:
                time.sleep(self.poll_s)
        finally:
            stop.set()
        jobs.set_job(job_id, "running")
        return f"confirmed by {by}"



# One handler per step kind (tests/failover/test_steps.py fails when a kind has none).
Handler = Callable[[Runner, JobRecord, RecoveryPlan, StepRecord], str]
HANDLERS: Mapping[StepKind, Handler] = MappingProxyType({
    StepKind.SHUTDOWN: Runner._shutdown,
    StepKind.DRAIN: Runner._drain,
    StepKind.CHOOSE_POINT: Runner._choose_point,
    StepKind.FAILOVER_MACHINE: Runner._failover_machine,
    StepKind.SCRIPT: Runner._script,
    StepKind.RUNBOOK: Runner._runbook,
    StepKind.MANUAL: Runner._manual,
    StepKind.TRAFFIC_MANAGER: Runner._traffic_manager,
    StepKind.DELETE_GROUP: Runner._delete_group,
    StepKind.COMMIT: Runner._commit,
    StepKind.REPROTECT: Runner._reprotect,
    StepKind.FAILBACK_MACHINE: Runner._failback_machine,
})
