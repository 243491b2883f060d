"""The multi-VM coordinator, hosted by the process server: one bookmark id across a group's machines.

The agents of a multi-VM protection group dial their group's coordinator (the first process server
of the group's site; agent.toml `coordinator = "HOST:9443"`) on PS_PORT, over the same mutual-TLS
transport and frames as the disk streams, and send JOIN; nothing listens on a source machine. The
coordinator answers GROUP (who of the group is connected) and tells every member again whenever one
comes or goes: while the group is complete the coordinator takes the group's points and the members
take none of their own, except a crash-consistent point of a member's own when no group point has
landed on its disks within its crash interval (a member that cannot take points must not leave every
machine's RPO unbounded).

On the group's schedule (`crash_consistent_every_s`, `app_consistent_every_s`), when every member is
connected, a point runs in two phases:

1. PAUSE (kind "crash" or "app") to every member: each holds its disks' apply path after the change
   in flight, flushed (an "app" point runs its pre-scripts and freezes first) and answers PAUSED.
2. Once every member paused: MARK with one id (every disk of every member gets that bookmark,
   tagged with the group), then RESUME. When any member does not pause in time, fails, or is gone,
   every member gets ABORT and resumes, and no bookmark is inserted anywhere: MARK is sent only once
   all are paused.

A member resumes by itself when held longer than the PAUSE's hold timeout or when the connection
drops, so a lost coordinator never stalls a workload. A missing member means no group point: logged
and raised as an alert once (until the group is complete again), and visible in the process
server's health.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from queue import Empty, Queue
from typing import Any

from dr_agent.alerts import AlertLog
from dr_agent.contract import Failed, GroupState, Join, Mark, Pause, PointStep, new_bookmark_id
from dr_agent.errors import AgentError, ConfigError, CoordinationAborted, ProtocolError
from dr_agent.records import FrameType
from dr_agent.transport import PING_INTERVAL_S, Connection, message

log = logging.getLogger(__name__)

# Seconds the coordinator waits for every member to pause. Crash points: the change in flight and
# a flush of each disk to this process server (our choice, generous for a loaded WAN link). App
# points run the members' pre-scripts first (in parallel): ASR's default script timeout is 5 min,
# we allow 2 min for the whole group to be quiesced before aborting, since the members that paused
# early hold their writes meanwhile.
PAUSE_TIMEOUT_S = {"crash": 10.0, "app": 120.0}
# Seconds a member may stay held beyond the pause phase before it resumes by itself (MARK flushes
# a bookmark per disk to this process server; RESUME follows at once).
HOLD_MARGIN_S = 30.0
# Seconds the coordinator waits for MARKED and for RESUMED answers.
STEP_TIMEOUT_S = 30.0
# Seconds after a point that could not be taken (a member missing, not pausing, failing) before
# the next try, when the schedule's interval is longer (our choice: a member back from a restart
# gets the group a point within half a minute, not a whole interval later).
RETRY_S = 30.0


@dataclass(frozen=True)
class GroupConfig:
    """A multi-VM group this process server coordinates (`[[process_server.groups]]`)."""

    name: str
    members: tuple[str, ...]
    crash_consistent_every_s: float = 300.0
    app_consistent_every_s: float | None = None
    pause_timeout_s: float | None = None   # None: PAUSE_TIMEOUT_S of the point's kind
    hold_timeout_s: float | None = None    # None: the pause timeout + HOLD_MARGIN_S


def group_configs(tables: Any, where: str) -> tuple[GroupConfig, ...]:
    """The `[[process_server.groups]]` tables of a process-server.toml; ConfigError when one is wrong."""
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: groups must be an array of tables ([[process_server.groups]])")
    out: list[GroupConfig] = []
    for i, t in enumerate(tables):
        at = f"{where}: [[process_server.groups]] #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"{at}: expected a table")
        name, members = t.get("name"), t.get("members")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at}: needs name = \"GROUP\"")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
            raise ConfigError(f"{at} ({name}): needs members = [\"machine\", ...], the agents' names")
        try:
            crash = float(t.get("crash_consistent_every_s", 300))
            app = float(t["app_consistent_every_s"]) if t.get("app_consistent_every_s") else None
            pause = float(t["pause_timeout_s"]) if t.get("pause_timeout_s") else None
            hold = float(t["hold_timeout_s"]) if t.get("hold_timeout_s") else None
        except (TypeError, ValueError):
            raise ConfigError(f"{at} ({name}): the *_s keys are seconds (numbers)") from None
        if any(v is not None and v <= 0 for v in (crash, app, pause, hold)):
            raise ConfigError(f"{at} ({name}): the *_s keys must be positive")
        out.append(GroupConfig(name, tuple(members), crash, app, pause, hold))
    if len({g.name for g in out}) != len(out):
        raise ConfigError(f"{where}: a group is listed twice in [[process_server.groups]]")
    return tuple(out)


@dataclass(frozen=True)
class GroupPoint:
    """A multi-VM point every member put on every one of its disks."""

    bookmark_id: str
    group: str
    kind: str
    members: tuple[str, ...]
    paused_for: float  # seconds between the first PAUSE and the last RESUMED


@dataclass(eq=False)
class _Member:
    conn: Connection
    agent: str
    group: str
    inbox: Queue[tuple[FrameType, bytearray] | None] = field(default_factory=Queue)


class Coordinator:
    """The groups of one process server, their members' connections, and their schedules."""

    def __init__(self, groups: Sequence[GroupConfig], alerts: AlertLog) -> None:
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ConfigError(f"groups {names}: a group is listed twice")
        self.groups = {g.name: g for g in groups}
        self.alerts = alerts
        self._lock = threading.Lock()
        self._announcing = threading.Lock()  # GROUP frames go out in the order the states were taken
        self._members: dict[tuple[str, str], _Member] = {}
        self._point_locks = {g: threading.Lock() for g in self.groups}  # one point of a group at a time
        self._problems: dict[str, str] = {}
        self._last: dict[str, str] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._schedule, args=(g,), name=f"coord-{g.name}", daemon=True)
                         for g in groups]
        # keepalives in their own thread: a point may wait minutes for an app point's pre-scripts
        self._threads.append(threading.Thread(target=self._keepalive, name="coord-ping", daemon=True))
        for t in self._threads:
            t.start()

    # -- members --------------------------------------------------------------------------------
    def serve(self, conn: Connection, join: Join) -> None:
        """One member's connection, from its JOIN until it is gone (the listener's thread)."""
        group = self.groups.get(join.group)
        if group is None:
            conn.refuse(f"group {join.group!r} is not coordinated by this process server (it coordinates "
                        f"{', '.join(sorted(self.groups)) or 'no group'}); check `coordinator` in agent.toml")
            return
        if join.agent not in group.members:
            conn.refuse(f"{join.agent!r} is not a member of group {join.group!r} ({', '.join(group.members)}); "
                        "check the agent's name, or render the configs again after changing the spec")
            return
        member = _Member(conn, join.agent, join.group)
        key = (join.group, join.agent)
        with self._lock:
            old = self._members.get(key)
            self._members[key] = member
        if old is not None:
            old.conn.close()  # the agent reconnected: its old connection's reader ends
        log.info("coordinator: %s joined group %s", join.agent, join.group)
        self._announce(group)
        try:
            while not self._stop.is_set():
                ftype, payload = conn.recv()
                if ftype != FrameType.PING:
                    member.inbox.put((ftype, payload))
        finally:
            member.inbox.put(None)
            with self._lock:
                if self._members.get(key) is member:
                    del self._members[key]
            log.info("coordinator: %s left group %s", join.agent, join.group)
            self._announce(group)

    def state(self, group: str) -> GroupState:
        g = self.groups[group]
        with self._lock:
            return GroupState(group, {m: (group, m) in self._members for m in g.members})

    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._problems)

    def last_points(self) -> dict[str, str]:
        with self._lock:
            return dict(self._last)

    def _announce(self, group: GroupConfig) -> None:
        """Tell every connected member of `group` who is connected now."""
        with self._announcing:
            state = self.state(group.name)
            with self._lock:
                conns = [m.conn for (g, _), m in self._members.items() if g == group.name]
            for conn in conns:
                try:
                    conn.send_msg(FrameType.GROUP, state)
                except AgentError:
                    pass  # that member is going; its reader announces it
        if state.complete:
            self._solved(group.name, f"group {group.name}: every member connected again")

    # -- schedule -------------------------------------------------------------------------------
    def _schedule(self, group: GroupConfig) -> None:
        now = time.monotonic()
        next_crash = now + group.crash_consistent_every_s
        next_app = now + group.app_consistent_every_s if group.app_consistent_every_s else float("inf")
        while not self._stop.wait(max(0.0, min(next_crash, next_app) - time.monotonic())):
            now = time.monotonic()
            if now < min(next_crash, next_app):
                continue  # woke a little early
            kind = "app" if now >= next_app else "crash"
            taken = self.take(group.name, kind) is not None
            now = time.monotonic()
            if kind == "app":
                # the next app point on schedule; one that failed (a pre-script, a freeze) becomes a
                # crash point now, so the group's RPO does not wait for the application
                next_app = now + (group.app_consistent_every_s or 0.0)
                next_crash = now + group.crash_consistent_every_s if taken else now
            else:  # a crash point that could not be taken is tried again soon
                next_crash = now + (group.crash_consistent_every_s if taken
                                    else min(RETRY_S, group.crash_consistent_every_s))

    def _keepalive(self) -> None:
        """PING every member now and then: a member's connection never idles out between points."""
        while not self._stop.wait(PING_INTERVAL_S):
            with self._lock:
                conns = [m.conn for m in self._members.values()]
            for conn in conns:
                try:
                    conn.send_json(FrameType.PING, {})
                except AgentError:
                    pass

    def take(self, group: str, kind: str = "crash") -> GroupPoint | None:
        """A scheduled point: taken when every member is connected, else the reason is recorded
        (logged and alerted once). Returns the point, or None."""
        state = self.state(group)
        if not state.complete:
            self._problem(group, f"group {group}: {', '.join(state.missing)} not connected to the coordinator; "
                                 "no multi-VM point until every member is")
            return None
        point_id = new_bookmark_id()
        try:
            point = self.checkpoint(group, kind=kind, bookmark_id=point_id)
        except CoordinationAborted as err:
            log.warning("%s", err)
            # alerted once per reason (a member still in its initial sync fails every point alike)
            self._problem(group, str(err).replace(f" {point_id}", ""))
            return None
        log.info("group %s: %s point %s on %d members (held %.3f s)", group, kind, point.bookmark_id,
                 len(point.members), point.paused_for)
        self._solved(group, f"group {group}: multi-VM point {point.bookmark_id} taken")
        return point

    def _problem(self, group: str, text: str) -> None:
        with self._lock:
            known = self._problems.get(group) == text
            self._problems[group] = text
        if not known:
            self.alerts.raise_("warning", "group-point", text, group=group)

    def _solved(self, group: str, text: str) -> None:
        with self._lock:
            had = self._problems.pop(group, None)
        if had is not None:
            self.alerts.raise_("info", "group-point", text, group=group)

    # -- one point ------------------------------------------------------------------------------
    def checkpoint(self, group: str, *, kind: str = "crash", bookmark_id: str | None = None) -> GroupPoint:
        """Put one bookmark id on every disk of every member of `group` (two phases).

        Raises CoordinationAborted (every member resumed, no bookmark anywhere) when a member is not
        connected, does not pause in time, fails or goes away."""
        config = self.groups[group]
        with self._point_locks[group]:
            with self._lock:
                members = [self._members.get((group, a)) for a in config.members]
            missing = [a for a, m in zip(config.members, members, strict=True) if m is None]
            if missing:
                raise CoordinationAborted(f"group {group}: {', '.join(missing)} not connected; no point")
            conns = [m for m in members if m is not None]
            point = bookmark_id or new_bookmark_id()
            pause_timeout = config.pause_timeout_s or PAUSE_TIMEOUT_S[kind]
            started = time.monotonic()
            for m in conns:
                _drain(m.inbox)
            hold = config.hold_timeout_s or pause_timeout + HOLD_MARGIN_S
            self._send(conns, FrameType.PAUSE, Pause(point, kind, hold))
            problem = self._collect(conns, point, FrameType.PAUSED, started + pause_timeout)
            if problem:
                # no wait for RESUMED: a member stuck in its pause answers late (ignored: another point id)
                self._send(conns, FrameType.ABORT, PointStep(point))
                raise CoordinationAborted(f"group {group}: {kind} point {point} aborted: {problem}; every member "
                                          "resumed and no bookmark was inserted")
            self._send(conns, FrameType.MARK, Mark(point, point, group))  # the bookmark id is the point's id
            problem = self._collect(conns, point, FrameType.MARKED, time.monotonic() + STEP_TIMEOUT_S)
            self._send(conns, FrameType.RESUME, PointStep(point))
            self._collect(conns, point, FrameType.RESUMED, time.monotonic() + STEP_TIMEOUT_S)
            if problem:
                raise CoordinationAborted(f"group {group}: {kind} point {point} is incomplete: {problem}; it is "
                                          "not on every disk of the group and no failover uses it")
            with self._lock:
                self._last[group] = point
            return GroupPoint(point, group, kind, tuple(m.agent for m in conns), time.monotonic() - started)

    @staticmethod
    def _send(conns: list[_Member], ftype: FrameType, msg: Pause | Mark | PointStep) -> None:
        for m in conns:
            try:
                m.conn.send_msg(ftype, msg)
            except AgentError:
                pass  # gone: its reader puts None in its inbox, and _collect says so

    @staticmethod
    def _collect(conns: list[_Member], point: str, want: FrameType, deadline: float) -> str:
        """Wait for `want` from every member; '' or what went wrong."""
        for m in conns:
            while True:
                try:
                    got = m.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except Empty:
                    return f"{m.agent} did not answer {want.name} in time"
                if got is None:
                    m.inbox.put(None)  # stays gone for the later phases
                    return f"{m.agent} disconnected"
                ftype, payload = got
                try:
                    if ftype == FrameType.FAILED:
                        failed = message(Failed, ftype, payload)
                        if failed.point == point:
                            return f"{m.agent} failed: {failed.reason}"
                        continue
                    if message(PointStep, ftype, payload).point != point:
                        continue  # a late answer to an earlier, aborted point
                except ProtocolError as err:
                    return f"{m.agent} answered {ftype.name} badly: {err}"
                if ftype == want:
                    break
        return ""

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            conns = [m.conn for m in self._members.values()]
        for conn in conns:
            conn.close()
        for t in self._threads:
            t.join(timeout=5)


def _drain(inbox: Queue[tuple[FrameType, bytearray] | None]) -> None:
    while True:
        try:
            got = inbox.get_nowait()
        except Empty:
            return
        if got is None:
            inbox.put(None)
            return
