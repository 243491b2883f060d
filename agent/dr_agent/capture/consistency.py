"""Consistency points: bookmark ids, application-consistent freeze/thaw, and multi-VM coordination.

* A **crash-consistent** point is a bookmark inserted in a disk's ordered change stream
  (`Splitter.bookmark("crash")`): everything before it, nothing after.
* An **application-consistent** point runs the application's pre scripts (a database flushes and
  quiesces), freezes the file systems (FIFREEZE: dirty data is written, new writes block), inserts
  the bookmark, thaws, and runs the post scripts: `with app_consistent(...): sp.bookmark("app")`.
  Thaw happens in a `finally`, whatever failed: a writer blocked on a frozen file system cannot
  even be killed, so a forgotten thaw hangs the machine's workload.
* A **multi-VM** point puts the same bookmark id in every disk stream of a protection group.
  The agents DIAL a `Coordinator` (it runs beside the process server; the source machines listen
  on nothing), and the coordinator runs two phases: PAUSE (each agent holds its ordered apply path
  after the change in flight, flushed) then, once every agent is paused, MARK (the same id in every
  stream) and RESUME. If any agent does not pause in time, everyone gets ABORT and resumes with no
  bookmark. An agent also resumes by itself when held longer than its hold timeout or when the
  coordinator's connection drops, so a lost coordinator never stalls a workload.

A multi-VM point is valid for failover only when its id is in every disk stream of the group
(the recovery-point catalog checks that); an abort never leaves the id in any stream, because
MARK is only sent once every agent is paused.

Control frames (both directions) are self-describing: magic `DRCP`, version, type, body length,
CRC-32 of the body, then a JSON body. The transport is injectable: the coordinator takes a
listening socket and an optional `wrap` for each accepted connection (TLS with client
certificates in production), the client takes a `connect()` returning a connected socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Protocol

from dr_agent.capture import _linux
from dr_agent.capture.errors import CoordinationAborted, FreezeError, ScriptFailed
from dr_agent.errors import CorruptData, ProtocolError

log = logging.getLogger(__name__)

SCRIPT_TIMEOUT = 300.0  # seconds; ASR's default pre/post script timeout is 5 minutes (ASR docs)
DEFAULT_PAUSE_TIMEOUT = 10.0  # seconds a coordinator waits for every agent to pause
DEFAULT_HOLD_TIMEOUT = 30.0  # seconds an agent stays paused without MARK/RESUME before resuming alone


def new_bookmark_id() -> str:
    """A sortable unique bookmark id: UTC time in milliseconds, then 8 random hex digits."""
    return f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}"


# -- application consistency ------------------------------------------------------------------
Script = str | Sequence[str]


def run_script(script: Script, *, timeout: float = SCRIPT_TIMEOUT) -> None:
    """Run one pre/post script: a string through `/bin/sh -c`, a sequence as argv. Raises ScriptFailed."""
    argv = ["/bin/sh", "-c", script] if isinstance(script, str) else list(script)
    shown = script if isinstance(script, str) else " ".join(script)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as err:
        raise ScriptFailed(shown, 127, str(err)) from None
    try:
        out, err_text = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ScriptFailed(shown, None, f"no exit after {timeout:g} s") from None
    if proc.returncode != 0:
        raise ScriptFailed(shown, proc.returncode, err_text)
    log.info("script %s ran: %s", shown, out.strip()[-200:])


@contextlib.contextmanager
def app_consistent(mount_points: Sequence[Path | str], pre_scripts: Sequence[Script] = (),
                   post_scripts: Sequence[Script] = (), *,
                   script_timeout: float = SCRIPT_TIMEOUT) -> Iterator[None]:
    """Pre scripts, freeze every mount point, yield (insert the bookmark), ALWAYS thaw, post scripts.

    Post scripts always run (they undo what the pre scripts did, even if a pre script or the
    freeze failed). Errors: the first failure is raised after every thaw and post script ran;
    a failure inside the block wins over a failing post script.
    """
    frozen: list[Path] = []
    try:
        for script in pre_scripts:
            run_script(script, timeout=script_timeout)
        for mount_point in map(Path, mount_points):
            if not os.path.ismount(mount_point):  # FIFREEZE on any path freezes that path's whole file system
                raise FreezeError(f"{mount_point} is not a mount point; list the mount points of the protected "
                                  "file systems (see `findmnt`)")
            try:
                _linux.freeze(mount_point)
            except OSError as err:
                raise FreezeError(
                    f"could not freeze {mount_point}: {err.strerror}; it must be the mount point of a "
                    "file system that supports FIFREEZE (ext4, xfs, btrfs) and the agent must run as root"
                ) from None
            frozen.append(mount_point)
        yield
    except BaseException:
        _thaw_all(frozen, raise_errors=False)
        _run_post(post_scripts, script_timeout, raise_errors=False)
        raise
    else:
        thaw_error = _thaw_all(frozen, raise_errors=False)
        post_error = _run_post(post_scripts, script_timeout, raise_errors=False)
        if thaw_error is not None:
            raise thaw_error
        if post_error is not None:
            raise post_error


def _thaw_all(frozen: list[Path], *, raise_errors: bool) -> FreezeError | None:
    first: FreezeError | None = None
    for mount_point in reversed(frozen):
        try:
            _linux.thaw(mount_point)
        except OSError as err:
            log.error("could not thaw %s: %s", mount_point, err)
            first = first or FreezeError(f"could not thaw {mount_point}: {err.strerror}; "
                                         f"run `fsfreeze --unfreeze {mount_point}` now")
    if first is not None and raise_errors:
        raise first
    return first


def _run_post(scripts: Sequence[Script], timeout: float, *, raise_errors: bool) -> ScriptFailed | None:
    first: ScriptFailed | None = None
    for script in scripts:
        try:
            run_script(script, timeout=timeout)
        except ScriptFailed as err:
            log.error("%s", err)
            first = first or err
    if first is not None and raise_errors:
        raise first
    return first


# -- multi-VM coordination: framing -----------------------------------------------------------
MAGIC = b"DRCP"
VERSION = 1
_HEADER = struct.Struct(">4sBBHII")  # magic, version, type, reserved, body length, crc32(body)
MAX_BODY = 64 * 1024  # bytes; control messages are a few hundred bytes

HELLO, PAUSE, PAUSED, FAILED, MARK, MARKED, RESUME, ABORT, RESUMED = range(1, 10)
_NAMES = {HELLO: "HELLO", PAUSE: "PAUSE", PAUSED: "PAUSED", FAILED: "FAILED", MARK: "MARK",
          MARKED: "MARKED", RESUME: "RESUME", ABORT: "ABORT", RESUMED: "RESUMED"}


def send_frame(sock: socket.socket, kind: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    sock.sendall(_HEADER.pack(MAGIC, VERSION, kind, 0, len(payload), zlib.crc32(payload)) + payload)


def recv_frame(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one frame; raises EOFError on a closed connection, CorruptData on a bad frame."""
    header = _recv_exact(sock, _HEADER.size)
    magic, version, kind, _, length, crc = _HEADER.unpack(header)
    if magic != MAGIC:
        raise CorruptData(f"control frame magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(f"control protocol version {version}, expected {VERSION}; upgrade the older side")
    if kind not in _NAMES or length > MAX_BODY:
        raise ProtocolError(f"control frame type {kind} of {length} bytes is not part of the protocol")
    payload = _recv_exact(sock, length)
    if zlib.crc32(payload) != crc:
        raise CorruptData("control frame failed its CRC-32")
    body = json.loads(payload)
    if not isinstance(body, dict):
        raise ProtocolError("control frame body is not a JSON object")
    return kind, body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def tcp_listener(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A plain TCP listening socket (tests, or behind a TLS `wrap`)."""
    sock = socket.create_server((host, port))
    return sock


def tcp_connector(host: str, port: int, *, timeout: float = 5.0) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(None)
        return sock
    return connect


# -- multi-VM coordination: the coordinator ----------------------------------------------------
@dataclass(frozen=True)
class GroupPoint:
    """A multi-VM consistency point every listed agent put in its streams."""

    bookmark_id: str
    group_id: str
    agents: tuple[str, ...]
    paused_for: float  # seconds between the first PAUSE and the last RESUMED


class _AgentConn:
    def __init__(self, sock: socket.socket, agent_id: str, group_id: str) -> None:
        self.sock = sock
        self.agent_id = agent_id
        self.group_id = group_id
        self.inbox: Queue[tuple[int, dict[str, Any]] | None] = Queue()
        self.send_lock = threading.Lock()

    def send(self, kind: int, body: dict[str, Any]) -> None:
        with self.send_lock:
            send_frame(self.sock, kind, body)

    def shutdown(self) -> None:
        """Wake the thread reading this connection (it closes the socket: see `close`).

        Never close a socket another thread may be inside: TLS keeps the descriptor's number, and
        a file opened meanwhile could get it (issue 6). socket.shutdown, not SSLSocket.shutdown,
        so a TLS read or write in progress keeps its state and just sees the end of the stream.
        """
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """Called by the connection's reader when it is done; waits for a send in progress."""
        with self.send_lock:
            self.sock.close()


class Coordinator:
    """Accepts agents on `listener`, groups them by protection group, runs group checkpoints.

    Runs beside the process server (or the configuration server); the source machines only dial.
    """

    def __init__(self, listener: socket.socket, *,
                 wrap: Callable[[socket.socket], socket.socket] | None = None) -> None:
        self._listener = listener
        self._wrap = wrap
        self._agents: dict[tuple[str, str], _AgentConn] = {}
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()  # one group point at a time
        self._joined = threading.Condition(self._lock)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="dr-coordinator", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def __enter__(self) -> Coordinator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._agents.values())
        for conn in conns:
            conn.shutdown()  # its reader closes it
        if self._thread.is_alive():
            self._thread.join(5)

    def agents(self, group_id: str) -> list[str]:
        with self._lock:
            return sorted(a for (g, a) in self._agents if g == group_id)

    def wait_for_agents(self, group_id: str, agent_ids: Sequence[str], timeout: float) -> None:
        """Block until every listed agent has dialled in (raises CoordinationAborted on timeout)."""
        deadline = time.monotonic() + timeout
        with self._joined:
            while missing := set(agent_ids) - {a for (g, a) in self._agents if g == group_id}:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CoordinationAborted(
                        f"agents {sorted(missing)} of group {group_id} did not connect within {timeout:g} s; "
                        "check that they run, can reach the coordinator and hold a valid certificate")
                self._joined.wait(left)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), name="dr-coordinator-conn", daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        conn: _AgentConn | None = None
        sock = raw
        try:
            sock = self._wrap(raw) if self._wrap else raw
            kind, body = recv_frame(sock)
            if kind != HELLO:
                raise ProtocolError(f"first frame {_NAMES[kind]}, expected HELLO")
            conn = _AgentConn(sock, str(body["agent_id"]), str(body["group_id"]))
            with self._joined:
                old = self._agents.get((conn.group_id, conn.agent_id))
                self._agents[(conn.group_id, conn.agent_id)] = conn
                self._joined.notify_all()
            if old is not None:
                old.shutdown()  # its reader closes it
            log.info("coordinator: agent %s of group %s joined", conn.agent_id, conn.group_id)
            while True:
                conn.inbox.put(recv_frame(sock))
        except (EOFError, OSError, CorruptData, ProtocolError, KeyError, ValueError) as err:
            log.info("coordinator: connection ended: %s", err)
        finally:
            if conn is not None:
                conn.inbox.put(None)
                with self._lock:
                    if self._agents.get((conn.group_id, conn.agent_id)) is conn:
                        del self._agents[(conn.group_id, conn.agent_id)]
                conn.close()
            sock.close()
            raw.close()

    def checkpoint(self, group_id: str, *, bookmark_id: str | None = None,
                   timeout: float = DEFAULT_PAUSE_TIMEOUT,
                   hold_timeout: float = DEFAULT_HOLD_TIMEOUT) -> GroupPoint:
        """Put one bookmark id in every stream of every agent of `group_id` (two-phase).

        Raises CoordinationAborted (every agent resumed, no bookmark anywhere) when an agent does
        not pause within `timeout` seconds, refuses, or is gone.
        """
        with self._checkpoint_lock:
            with self._lock:
                conns = [c for (g, _), c in sorted(self._agents.items()) if g == group_id]
            if not conns:
                raise CoordinationAborted(f"no agent of group {group_id} is connected; start the agents first")
            point = bookmark_id or new_bookmark_id()
            started = time.monotonic()
            for conn in conns:
                _drain(conn.inbox)
            # phase 1: pause everyone
            self._broadcast(conns, PAUSE, {"point": point, "hold_timeout": hold_timeout})
            problem = self._collect(conns, point, PAUSED, started + timeout)
            if problem:
                self._broadcast(conns, ABORT, {"point": point})
                self._collect(conns, point, RESUMED, time.monotonic() + timeout)
                raise CoordinationAborted(f"group point {point} of {group_id} aborted: {problem}; every agent "
                                          "resumed and no bookmark was inserted")
            # phase 2: the same id in every stream, then resume
            self._broadcast(conns, MARK, {"point": point, "bookmark_id": point, "group_id": group_id})
            problem = self._collect(conns, point, MARKED, time.monotonic() + timeout)
            self._broadcast(conns, RESUME, {"point": point})
            self._collect(conns, point, RESUMED, time.monotonic() + timeout)
            if problem:
                raise CoordinationAborted(f"group point {point} of {group_id} is incomplete: {problem}; it "
                                          "is not in every stream and must not be used for failover")
            return GroupPoint(point, group_id, tuple(c.agent_id for c in conns), time.monotonic() - started)

    def _broadcast(self, conns: list[_AgentConn], kind: int, body: dict[str, Any]) -> None:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.send(kind, body)

    def _collect(self, conns: list[_AgentConn], point: str, want: int, deadline: float) -> str:
        """Wait for `want` from every agent; returns '' or what went wrong."""
        for conn in conns:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"agent {conn.agent_id} did not answer {_NAMES[want]} in time"
                try:
                    msg = conn.inbox.get(timeout=left)
                except Empty:
                    return f"agent {conn.agent_id} did not answer {_NAMES[want]} in time"
                if msg is None:
                    conn.inbox.put(None)  # stays gone for later phases
                    return f"agent {conn.agent_id} disconnected"
                kind, body = msg
                if body.get("point") != point:
                    continue  # a late answer to an earlier, aborted point
                if kind == FAILED:
                    return f"agent {conn.agent_id} failed: {body.get('reason', '?')}"
                if kind == want:
                    break
        return ""


def _drain(inbox: Queue[tuple[int, dict[str, Any]] | None]) -> None:
    while True:
        try:
            msg = inbox.get_nowait()
        except Empty:
            return
        if msg is None:
            inbox.put(None)
            return


# -- multi-VM coordination: the agent side ------------------------------------------------------
class Participant(Protocol):
    """One disk (or capture session) an agent holds during a group point: a Splitter, a TrackingAgent."""

    def pause(self) -> None: ...

    def mark(self, bookmark_id: str, group_id: str | None) -> None: ...

    def resume(self) -> None: ...


class CoordinatorClient:
    """The agent's side: dials the coordinator and answers PAUSE/MARK/RESUME/ABORT for its disks.

    Reconnects with a backoff when the connection drops; resumes by itself when held longer than
    the coordinator's hold timeout or when the connection is lost while paused.
    """

    def __init__(self, connect: Callable[[], socket.socket], *, agent_id: str, group_id: str,
                 participants: Sequence[Participant], retry_interval: float = 1.0) -> None:
        self._connect = connect
        self.agent_id = agent_id
        self.group_id = group_id
        self._participants = list(participants)
        self._retry = retry_interval
        self._stop = threading.Event()
        self._state = threading.Lock()  # guards _paused_point and the participants' hold
        self._paused_point: str | None = None
        self._watchdog: threading.Timer | None = None
        self._sock: socket.socket | None = None
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dr-coord-client-{agent_id}", daemon=True)

    def __enter__(self) -> CoordinatorClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._resume(None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = self._connect()
            except OSError as err:
                log.warning("agent %s: cannot reach the coordinator: %s", self.agent_id, err)
                self._stop.wait(self._retry)
                continue
            self._sock = sock
            try:
                send_frame(sock, HELLO, {"agent_id": self.agent_id, "group_id": self.group_id})
                self.connected.set()
                while not self._stop.is_set():
                    kind, body = recv_frame(sock)
                    self._handle(sock, kind, body)
            except (EOFError, OSError, CorruptData, ProtocolError) as err:
                if not self._stop.is_set():
                    log.warning("agent %s: coordinator connection lost: %s", self.agent_id, err)
            finally:
                self.connected.clear()
                self._resume(None)  # never stay held without a coordinator
                sock.close()
                self._sock = None
            self._stop.wait(self._retry)

    def _handle(self, sock: socket.socket, kind: int, body: dict[str, Any]) -> None:
        point = str(body.get("point", ""))
        if kind == PAUSE:
            try:
                self._pause(point, float(body.get("hold_timeout", DEFAULT_HOLD_TIMEOUT)))
            except Exception as err:
                send_frame(sock, FAILED, {"point": point, "reason": str(err)})
                return
            send_frame(sock, PAUSED, {"point": point})
        elif kind == MARK:
            try:
                with self._state:
                    if self._paused_point != point:
                        raise ProtocolError(f"MARK for {point} while not paused for it (hold timed out?)")
                    for part in self._participants:
                        part.mark(str(body["bookmark_id"]), str(body["group_id"]))
            except Exception as err:
                send_frame(sock, FAILED, {"point": point, "reason": str(err)})
                return
            send_frame(sock, MARKED, {"point": point})
        elif kind in (RESUME, ABORT):
            self._resume(point)
            send_frame(sock, RESUMED, {"point": point})
        else:
            raise ProtocolError(f"unexpected {_NAMES.get(kind, kind)} from the coordinator")

    def _pause(self, point: str, hold_timeout: float) -> None:
        with self._state:
            if self._paused_point is not None:
                self._release_locked()
            held: list[Participant] = []
            try:
                for part in self._participants:
                    part.pause()
                    held.append(part)
            except BaseException:
                for part in reversed(held):
                    part.resume()
                raise
            self._paused_point = point
            self._watchdog = threading.Timer(hold_timeout, self._resume, args=(point,))
            self._watchdog.daemon = True
            self._watchdog.start()

    def _resume(self, point: str | None) -> None:
        """Resume if paused (for `point`, or for any point when None)."""
        with self._state:
            if self._paused_point is None or (point is not None and point != self._paused_point):
                return
            if point is not None and threading.current_thread() is self._watchdog:
                log.warning("agent %s: held for point %s past the hold timeout; resuming", self.agent_id, point)
            self._release_locked()

    def _release_locked(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._paused_point = None
        for part in reversed(self._participants):
            part.resume()
