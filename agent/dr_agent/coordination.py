"""An agent's membership of a multi-VM group: it dials the group's coordinator and takes its points.

    member = GroupMember([("ps01", 9443)], identity, agent="sql01", group="sharepoint",
                         participant=machine)
    ...
    if not member.connected:   # the coordinator is away, or a member of the group is missing:
        ...                    # the agent takes its own per-machine points
    member.close()

The coordinator runs in the process server of the group's site (dr_agent.ps_coordinator); the
agent dials it on PS_PORT over mutual TLS, with the frames and typed bodies of the disk streams
(JOIN, GROUP, PAUSE, MARK, RESUME, ABORT; answered PAUSED, MARKED, RESUMED or FAILED). The
participant is the agent's machine:

* `pause(kind, point_id=...)`: hold every disk's apply path after the change in flight, flushed
  ("app": run the pre-scripts, with DR_POINT_ID = `point_id`, and freeze the file systems first);
  `point_id` is the id MARK will carry;
* `mark(bookmark_id, group_id)`: the same bookmark id on every disk of the machine;
* `resume()`: thaw, run the post-scripts, let writes through. Called after every `pause`, whatever
  happened: after RESUME, after ABORT, when a pause failed, when the hold timeout passed without
  RESUME, and when the connection dropped.

`connected` is True while the coordinator has accepted this agent and every member of the group is
connected: then the coordinator takes the group's points and the agent takes none of its own, unless
no group point has landed on its disks within its crash interval (a member that cannot take points,
e.g. in its initial sync): then it takes its own crash-consistent points until the group's land again
(dr_agent.agent). The member reconnects by itself, with a backoff from RECONNECT_MIN_S doubling up to RECONNECT_MAX_S.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from dr_agent.contract import PS_PORT, Error, Failed, GroupState, Join, Mark, Pause, PointStep
from dr_agent.errors import AgentError, ProtocolError, TransportError
from dr_agent.pki import Identity, client_context
from dr_agent.records import FrameType
from dr_agent.transport import PING_INTERVAL_S, Connection, dial, message

log = logging.getLogger(__name__)

# Seconds between attempts to reach the coordinator: from RECONNECT_MIN_S, doubling up to
# RECONNECT_MAX_S (our choice: an agent notices a restarted process server within half a minute).
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
# Seconds to wait for a TCP connection and the TLS handshake with the coordinator.
DIAL_TIMEOUT_S = 5.0


class GroupParticipant(Protocol):
    """The agent's machine as a multi-VM group point sees it (see the module docstring)."""

    def pause(self, kind: str, point_id: str | None = None) -> None: ...

    def mark(self, bookmark_id: str, group_id: str) -> None: ...

    def resume(self) -> None: ...


def coordinator_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` (agent.toml's `coordinator`), or `HOST` for PS_PORT."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, PS_PORT
    if not host or not port.isdigit():
        raise ProtocolError(f"coordinator = {value!r}: expected HOST:PORT, e.g. ps01:{PS_PORT}")
    return host, int(port)


class GroupMember:
    """One agent in its multi-VM group: a thread that keeps a connection to the coordinator and
    answers its points with `participant`."""

    def __init__(self, servers: Sequence[tuple[str, int] | str], identity: Identity, *, agent: str, group: str,
                 participant: GroupParticipant, server_hostname: str | None = None) -> None:
        if not servers:
            raise ProtocolError(f"agent {agent}: group {group} needs a coordinator address")
        self.servers = [coordinator_address(s) if isinstance(s, str) else s for s in servers]
        self.agent, self.group = agent, group
        self._participant = participant
        self._hostname = server_hostname
        self._ctx = client_context(identity)
        self._stop = threading.Event()
        self._lock = threading.Lock()           # guards the fields below
        self._conn: Connection | None = None
        self._state: GroupState | None = None
        self._changed = threading.Condition(self._lock)
        self._hold = threading.RLock()          # held while the participant is paused or being paused/marked
        self._paused: str | None = None         # the point this agent is paused for
        self._watchdog: threading.Timer | None = None
        self._last_problem = ""
        self._thread = threading.Thread(target=self._run, name=f"group-{group}-{agent}", daemon=True)
        self._thread.start()

    # -- what the agent reads ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Accepted by the coordinator, and every member of the group connected to it."""
        with self._lock:
            return self._conn is not None and self._state is not None and self._state.complete

    @property
    def state(self) -> GroupState | None:
        """The coordinator's last word on the group (None while not connected)."""
        with self._lock:
            return self._state

    @property
    def problem(self) -> str:
        """Why the agent is not in its group now ("" when it is): the coordinator unreachable, or
        refusing it (not a member, no such group there)."""
        return self._last_problem

    def wait_connected(self, timeout: float) -> bool:
        """Wait until `connected` (True) or `timeout` seconds passed (False)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._conn is not None and self._state is not None and self._state.complete, timeout)

    def close(self) -> None:
        """Leave the group: the connection closes, a held participant resumes."""
        self._stop.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.close()
        self._thread.join(timeout=10)
        self._release(None, "the agent is stopping")

    # -- the connection ---------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while not self._stop.is_set():
            try:
                conn = self._dial()
            except AgentError as err:
                self._problem(f"cannot reach the coordinator of group {self.group}: {err}",
                              "; retrying with a backoff (the agent takes its own points meanwhile)")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            try:
                self._session(conn)
                backoff = RECONNECT_MIN_S
            except AgentError as err:
                if not self._stop.is_set():
                    self._problem(f"group {self.group}: the coordinator connection ended: {err}")
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
            finally:
                with self._changed:
                    self._conn, self._state = None, None
                    self._changed.notify_all()
                conn.close()
                self._release(None, "the coordinator connection ended")  # never stay held without it
            self._stop.wait(backoff)

    def _dial(self) -> Connection:
        last: AgentError | None = None
        for host, port in self.servers:
            try:
                conn = dial(host, port, self._ctx, timeout=DIAL_TIMEOUT_S, server_hostname=self._hostname)
            except AgentError as err:
                last = err
                continue
            try:
                conn.send_msg(FrameType.JOIN, Join(self.agent, self.group))
                state = conn.recv_msg(FrameType.GROUP, GroupState)
            except AgentError as err:
                conn.close()
                last = err
                continue
            with self._changed:
                self._conn, self._state = conn, state
                self._changed.notify_all()
            if self._last_problem:
                log.warning("agent %s: joined group %s at %s:%d", self.agent, self.group, host, port)
                self._last_problem = ""
            return conn
        raise last or TransportError("no coordinator address")

    def _problem(self, text: str, more: str = "") -> None:
        """Log a problem once (until it changes or the agent joins again)."""
        if text != self._last_problem:
            log.warning("agent %s: %s%s", self.agent, text, more)
            self._last_problem = text

    def _session(self, conn: Connection) -> None:
        done = threading.Event()
        pinger = threading.Thread(target=self._keepalive, args=(conn, done), name=f"group-ping-{self.agent}",
                                  daemon=True)
        pinger.start()
        try:
            while not self._stop.is_set():
                ftype, payload = conn.recv()
                if ftype == FrameType.PING:
                    continue
                if ftype == FrameType.GROUP:
                    state = message(GroupState, ftype, payload)
                    with self._changed:
                        self._state = state
                        self._changed.notify_all()
                elif ftype == FrameType.PAUSE:
                    self._on_pause(conn, message(Pause, ftype, payload))
                elif ftype == FrameType.MARK:
                    self._on_mark(conn, message(Mark, ftype, payload))
                elif ftype in (FrameType.RESUME, FrameType.ABORT):
                    step = message(PointStep, ftype, payload)
                    self._release(step.point, "" if ftype == FrameType.RESUME else "the coordinator aborted the point")
                    conn.send_msg(FrameType.RESUMED, step)
                elif ftype == FrameType.ERROR:
                    raise ProtocolError(f"the coordinator refused: {conn_error(payload)}")
                else:
                    raise ProtocolError(f"unexpected {ftype.name} frame from the coordinator")
        finally:
            done.set()

    def _keepalive(self, conn: Connection, done: threading.Event) -> None:
        while not done.wait(PING_INTERVAL_S):
            try:
                conn.send_json(FrameType.PING, {})
            except AgentError:
                return

    # -- a point ----------------------------------------------------------------------------------
    def _on_pause(self, conn: Connection, pause: Pause) -> None:
        try:
            with self._hold:
                if self._paused is not None:  # a new point while held for an old one: that one is dead
                    self._release(None, f"point {pause.point} replaces point {self._paused}")
                try:
                    self._participant.pause(pause.kind, point_id=pause.point)
                except BaseException:
                    self._resume_participant()
                    raise
                self._paused = pause.point
                self._watchdog = threading.Timer(pause.hold_timeout, self._release,
                                                 args=(pause.point, f"held past {pause.hold_timeout:g} s"))
                self._watchdog.daemon = True
                self._watchdog.start()
        except Exception as err:
            log.warning("agent %s: could not pause for group point %s: %s", self.agent, pause.point, err)
            conn.send_msg(FrameType.FAILED, Failed(pause.point, str(err) or type(err).__name__))
            return
        conn.send_msg(FrameType.PAUSED, PointStep(pause.point))

    def _on_mark(self, conn: Connection, mark: Mark) -> None:
        try:
            with self._hold:
                if self._paused != mark.point:
                    raise ProtocolError(f"MARK of point {mark.point} while not paused for it (the hold timed out?)")
                self._participant.mark(mark.bookmark_id, mark.group_id)
        except Exception as err:
            log.warning("agent %s: could not mark group point %s: %s", self.agent, mark.point, err)
            conn.send_msg(FrameType.FAILED, Failed(mark.point, str(err) or type(err).__name__))
            return
        conn.send_msg(FrameType.MARKED, PointStep(mark.point))

    def _release(self, point: str | None, why: str) -> None:
        """Resume the participant if it is paused (for `point`, or for any point when None)."""
        with self._hold:
            if self._paused is None or (point is not None and point != self._paused):
                return
            if why:
                log.warning("agent %s: resuming after group point %s: %s", self.agent, self._paused, why)
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            self._paused = None
            self._resume_participant()

    def _resume_participant(self) -> None:
        try:
            self._participant.resume()
        except Exception as err:  # resume must not kill the connection; the participant logs details
            log.error("agent %s: resume after a group point failed: %s", self.agent, err)


def conn_error(payload: bytes | bytearray) -> str:
    """The reason an ERROR frame gives."""
    try:
        return message(Error, FrameType.ERROR, payload).error
    except ProtocolError:
        return "?"
