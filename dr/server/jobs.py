"""Jobs: a failover (or commit, cleanup, failback) as durable steps with a log, in the server's store.

A job is written with all its steps before the first one runs; each step moves
pending -> running -> succeeded | failed | skipped, and `waiting` for a manual step until someone
confirms it (at the terminal or through the API). Because every transition is committed before the
next step starts, a job interrupted anywhere (a failed script, a killed runner) resumes from the
first step that has not succeeded.

One runner runs a job at a time: it holds the job's lease (who, since when, until when) and renews
it while it runs; a second runner is refused with the holder's name. A runner that died stops
renewing, and once its lease expired the job may be resumed elsewhere (`dr failover show` says so).
A job also pins the spec it started with (the estate as JSON, and its digest), so a resume notices
a spec that changed under it.
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

# A job's lease lasts this long without a renewal (seconds; our choice: a runner renews every
# LEASE_RENEW_S, so three missed renewals in a row mean the runner is gone).
LEASE_TTL_S = 30.0
LEASE_RENEW_S = LEASE_TTL_S / 3
# Job kinds that leave a plan failed over in Azure, and those that end that state.
FAILOVER_KINDS = ("planned-failover", "unplanned-failover")
RELEASING_KINDS = ("commit", "failback")


class JobBusy(Conflict):
    """Another runner holds the job's lease (HTTP 409 at the API)."""


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


@dataclass(frozen=True, kw_only=True)
class Lease:
    job_id: str
    holder: str
    token: str
    since: float
    expires: float

    def describe(self, now: float) -> str:
        if self.expires < now:
            return (f"held by {self.holder} since {_stamp(self.since)}; its lease expired at {_stamp(self.expires)} "
                    f"(that runner is gone: `dr failover --resume {self.job_id}` takes the job over)")
        return f"held by {self.holder} since {_stamp(self.since)} (lease renewed until {_stamp(self.expires)})"


@dataclass(frozen=True, kw_only=True)
class SpecPin:
    """The spec a job started with: the estate as canonical JSON, and its SHA-256."""

    digest: str
    estate: str

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
               steps: Sequence[NewStep], pin: SpecPin | None = None) -> str:
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
            if pin is not None:
                tx.execute("INSERT INTO job_specs (job_id, digest, estate) VALUES (?, ?, ?)",
                           (job_id, pin.digest, pin.estate))
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

    # ------------------------------------------------------------------ who holds a job, and a plan
    def acquire(self, job_id: str, *, holder: str, ttl_s: float = LEASE_TTL_S) -> Lease:
        """Take the job's lease, or raise JobBusy naming who holds it (an expired lease is taken over)."""
        self.get(job_id)  # NotFound first
        token = secrets.token_hex(16)
        now = self.clock()
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO job_leases (job_id, holder, token, since, expires) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET holder = excluded.holder, token = excluded.token, "
                "since = excluded.since, expires = excluded.expires WHERE job_leases.expires < ?",
                (job_id, holder, token, now, now + ttl_s, now),
            )
            rows = tx.query("SELECT holder, token, since, expires FROM job_leases WHERE job_id = ?", (job_id,))
        row = rows[0]
        lease = Lease(job_id=job_id, holder=row["holder"], token=row["token"], since=row["since"],
                      expires=row["expires"])
        if lease.token != token:
            raise JobBusy(f"job {job_id} is being run by {lease.holder} since {_stamp(lease.since)}: one runner "
                          f"per job; wait for it (`dr failover show {job_id}`), or if it died, resume after its "
                          f"lease expires at {_stamp(lease.expires)}")
        return lease

    def renew(self, lease: Lease, *, ttl_s: float = LEASE_TTL_S) -> bool:
        """Extend a held lease; False when it is no longer ours (it expired and another runner took it)."""
        with self.store.transaction() as tx:
            tx.execute("UPDATE job_leases SET expires = ? WHERE job_id = ? AND token = ?",
                       (self.clock() + ttl_s, lease.job_id, lease.token))
            rows = tx.query("SELECT token FROM job_leases WHERE job_id = ?", (lease.job_id,))
        return bool(rows) and rows[0]["token"] == lease.token

    def release(self, lease: Lease) -> None:
        self.store.execute("DELETE FROM job_leases WHERE job_id = ? AND token = ?", (lease.job_id, lease.token))

    def lease(self, job_id: str) -> Lease | None:
        row = self.store.one("SELECT holder, token, since, expires FROM job_leases WHERE job_id = ?", (job_id,))
        if row is None:
            return None
        return Lease(job_id=job_id, holder=row["holder"], token=row["token"], since=row["since"],
                     expires=row["expires"])

    def pin(self, job_id: str) -> SpecPin | None:
        row = self.store.one("SELECT digest, estate FROM job_specs WHERE job_id = ?", (job_id,))
        return None if row is None else SpecPin(digest=row["digest"], estate=row["estate"])

    def repin(self, job_id: str, pin: SpecPin) -> None:
        with self.store.transaction() as tx:
            tx.upsert("job_specs", {"job_id": job_id, "digest": pin.digest, "estate": pin.estate}, keys=("job_id",))

    def children(self, job_id: str) -> list[JobRecord]:
        """The jobs started from this one (commit, change-point, cleanup, failback), oldest first."""
        rows = self.store.query("SELECT id, options FROM jobs ORDER BY created, id")
        return [self.get(r["id"]) for r in rows if json.loads(r["options"]).get("source_job") == job_id]

    def holding(self, plan: str) -> JobRecord | None:
        """The planned or unplanned failover that has the plan failed over: not yet committed or failed back."""
        rows = self.store.query(
            f"SELECT id FROM jobs WHERE plan = ? AND kind IN ({', '.join('?' for _ in FAILOVER_KINDS)}) "
            "ORDER BY created DESC, id DESC", (plan, *FAILOVER_KINDS))
        for row in rows:
            released = any(c.kind in RELEASING_KINDS and c.state == "succeeded" for c in self.children(row["id"]))
            if not released:
                return self.get(row["id"])
        return None
