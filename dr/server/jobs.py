"""Jobs: a failover (or commit, cleanup, failback) as durable steps with a log, in the server's store.

A job is written with all its steps before the first one runs; each step moves
pending -> running -> succeeded | failed | skipped, and `waiting` for a manual step until someone
confirms it (at the terminal or through the API). Because every transition is committed before the
next step starts, a job interrupted anywhere (a failed script, a killed runner) resumes from the
first step that has not succeeded.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dr.server.service import Conflict, NotFound
from dr.server.store import Store, dumps

JobState = Literal["pending", "running", "waiting", "failed", "succeeded"]
StepState = Literal["pending", "running", "waiting", "failed", "succeeded", "skipped"]


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    idx: int
    kind: str
    title: str
    group: str | None
    machine: str | None
    detail: dict[str, Any]
    state: StepState
    started: float | None
    finished: float | None
    output: str
    confirmed_by: str | None


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    id: str
    kind: str
    plan: str
    spec: str
    options: dict[str, Any]
    state: JobState
    created: float
    updated: float
    error: str | None
    steps: tuple[StepRecord, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "plan": self.plan, "spec": self.spec, "options": self.options,
            "state": self.state, "created": self.created, "updated": self.updated, "error": self.error,
            "steps": [
                {"idx": s.idx, "kind": s.kind, "title": s.title, "group": s.group, "machine": s.machine,
                 "detail": s.detail, "state": s.state, "started": s.started, "finished": s.finished,
                 "output": s.output, "confirmed_by": s.confirmed_by}
                for s in self.steps
            ],
        }


@dataclass(frozen=True, kw_only=True)
class NewStep:
    kind: str
    title: str
    group: str | None = None
    machine: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Jobs:
    store: Store
    clock: Callable[[], float] = field(default=time.time)

    def create(self, *, kind: str, plan: str, spec: str, options: dict[str, Any],
               steps: Sequence[NewStep]) -> str:
        job_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.clock())) + "-" + secrets.token_hex(3)
        now = self.clock()
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO jobs (id, kind, plan, spec, options, state, created, updated) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (job_id, kind, plan, spec, dumps(options), now, now),
            )
            for idx, step in enumerate(steps, start=1):
                tx.execute(
                    "INSERT INTO job_steps (job_id, idx, kind, title, group_name, machine, detail, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                    (job_id, idx, step.kind, step.title, step.group, step.machine, dumps(step.detail)),
                )
        self.log(job_id, f"job created: {kind} of plan {plan}, {len(steps)} steps")
        return job_id

    def get(self, job_id: str) -> JobRecord:
        rows = self.store.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"no job {job_id!r} in {self.store.display_url}: `dr status` lists the jobs")
        job = rows[0]
        steps = self.store.query("SELECT * FROM job_steps WHERE job_id = ? ORDER BY idx", (job_id,))
        return JobRecord(
            id=job["id"], kind=job["kind"], plan=job["plan"], spec=job["spec"], options=json.loads(job["options"]),
            state=job["state"], created=job["created"], updated=job["updated"], error=job["error"],
            steps=tuple(
                StepRecord(idx=s["idx"], kind=s["kind"], title=s["title"], group=s["group_name"],
                           machine=s["machine"], detail=json.loads(s["detail"]), state=s["state"],
                           started=s["started"], finished=s["finished"], output=s["output"],
                           confirmed_by=s["confirmed_by"])
                for s in steps
            ),
        )

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT id, kind, plan, state, created, updated, error FROM jobs ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        return [dict(r.values) for r in rows]

    def set_job(self, job_id: str, state: JobState, error: str | None = None) -> None:
        self.store.execute("UPDATE jobs SET state = ?, error = ?, updated = ? WHERE id = ?",
                           (state, error, self.clock(), job_id))

    def set_step(self, job_id: str, idx: int, state: StepState, output: str | None = None) -> None:
        now = self.clock()
        sets = ["state = ?"]
        params: list[Any] = [state]
        if state == "running":
            sets.append("started = ?")
            params.append(now)
        if state in ("succeeded", "failed", "skipped"):
            sets.append("finished = ?")
            params.append(now)
        if output is not None:
            sets.append("output = ?")
            params.append(output)
        self.store.execute(f"UPDATE job_steps SET {', '.join(sets)} WHERE job_id = ? AND idx = ?",
                           (*params, job_id, idx))
        self.store.execute("UPDATE jobs SET updated = ? WHERE id = ?", (now, job_id))

    def update_detail(self, job_id: str, idx: int, detail: dict[str, Any]) -> None:
        self.store.execute("UPDATE job_steps SET detail = ? WHERE job_id = ? AND idx = ?",
                           (dumps(detail), job_id, idx))

    def confirm(self, job_id: str, idx: int, by: str) -> None:
        """Confirm a waiting step (a manual action, a manual shutdown); a pending manual step may be confirmed ahead."""
        job = self.get(job_id)
        step = next((s for s in job.steps if s.idx == idx), None)
        if step is None:
            raise NotFound(f"job {job_id} has no step {idx}")
        if step.kind != "manual" and step.state != "waiting":
            raise Conflict(f"step {idx} of job {job_id} is a {step.kind} step that does not wait for a confirmation")
        if step.state not in ("waiting", "pending"):
            raise Conflict(f"step {idx} of job {job_id} is {step.state}: only a waiting manual step is confirmed")
        self.store.execute("UPDATE job_steps SET confirmed_by = ? WHERE job_id = ? AND idx = ?", (by, job_id, idx))
        self.log(job_id, f"step {idx} confirmed by {by}")

    def confirmed_by(self, job_id: str, idx: int) -> str | None:
        row = self.store.one("SELECT confirmed_by FROM job_steps WHERE job_id = ? AND idx = ?", (job_id, idx))
        return None if row is None else row["confirmed_by"]

    def log(self, job_id: str, line: str) -> None:
        self.store.execute("INSERT INTO job_log (job_id, time, line) VALUES (?, ?, ?)", (job_id, self.clock(), line))

    def log_lines(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT time, line FROM job_log WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(r.values) for r in rows]
