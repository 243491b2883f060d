"""The agent's ChangeSink that ships changes to a process server (see dr_agent.changes).

Changes are numbered per disk, batched into RECORDS frames and sent pipelined over one TLS
connection the agent dials (nothing listens on the source machine). `flush` returns once the
process server has fsynced every change before it. Records stay in memory until the master target
has applied them (bounded by `retain_bytes`), so after a lost connection the sink reconnects (to
the same process server, or the next healthy one in its list) and replays from the receiver's last
durable sequence. If the process server's cache is full it answers FALLBACK: the sink stops
shipping data and keeps a dirty-range map instead (bitmap tracking) for a resync to read later.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dr_agent.changes import BookmarkKind
from dr_agent.errors import AgentError, CacheFull, TransportError
from dr_agent.pki import Identity, client_context
from dr_agent.records import FrameType, Kind, Record, bookmark_record
from dr_agent.transport import IDLE_TIMEOUT_S, PING_INTERVAL_S, Connection, dial

log = logging.getLogger(__name__)

# Bytes per RECORDS frame: 1 MiB keeps frames large enough for throughput (FUSE hands up to 1 MiB
# per write) and small enough that a flush barrier ships promptly.
BATCH_BYTES = 1024 * 1024
# Bytes sent but not yet durable at the process server before `write` waits (backpressure).
WINDOW_BYTES = 64 * 1024 * 1024
# Bytes kept after they are durable at the process server, until the master target applied them,
# so a move to another process server can replay them.
RETAIN_BYTES = 256 * 1024 * 1024
# Reconnection: the first retry after every process server failed waits about this long (seconds),
# each further one twice as long, up to BACKOFF_MAX_S, forever; each wait is drawn from its upper
# half (jitter), so agents that lost the same server do not all call it back at the same instant.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 60.0
# Seconds a dial (TCP connect and TLS handshake) may take before the next server is tried.
CONNECT_TIMEOUT_S = 5.0


class Backoff:
    """Capped exponential backoff with jitter: `delay()` for the next wait, `reset()` on success."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"backoff: need 0 < initial ({initial_s}) <= max ({max_s})")
        self.initial_s, self.max_s = initial_s, max_s
        self._next = initial_s

    def delay(self) -> float:
        ceiling = self._next
        self._next = min(self.max_s, self._next * 2)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._next = self.initial_s


@dataclass(frozen=True)
class Fallback:
    """The process server asked for bitmap tracking (its cache is full) or the stream has a gap;
    `resync`: it dropped records this agent no longer holds, from `from_seq` on, so the whole disk
    is compared with the replica (`resume(resync=True)`, a hash resync, then `resynced(from_seq)`)."""

    from_seq: int
    reason: str
    resync: bool = False


class RemoteHashes:
    """Capture's BlockHashSource for a resync: digests of the replica, through the process server.

    The process server answers once every change it cached for the disk is applied, so the
    digests describe the replica as of everything this agent sent before asking.
    """

    def __init__(self, *, disk: str, size: int, servers: list[tuple[str, int]], identity: Identity,
                 server_hostname: str | None = None) -> None:
        self.disk, self.size, self.servers = disk, size, list(servers)
        self._ctx = client_context(identity)
        self._hostname = server_hostname
        self._conn: Connection | None = None

    def _connect(self) -> Connection:
        last: Exception | None = None
        for host, port in self.servers:
            try:
                conn = dial(host, port, self._ctx, server_hostname=self._hostname)
                conn.send_json(FrameType.HELLO, {"disk": self.disk, "size": self.size, "purpose": "hashes"})
                conn.recv_json(FrameType.WELCOME)
                return conn
            except AgentError as err:
                last = err
        raise TransportError(f"no process server of {self.servers} serves hashes: {last}")

    def hashes(self, first_block: int, count: int, block_size: int) -> list[bytes]:
        if self._conn is None:
            self._conn = self._connect()
        self._conn.send_json(FrameType.HASHES, {"first_block": first_block, "count": count,
                                                "block_size": block_size})
        ftype, payload = self._conn.recv()
        if ftype == FrameType.ERROR:
            raise TransportError(f"hashes refused: {json.loads(payload).get('error')}")
        if ftype != FrameType.HASHES or len(payload) % 16:
            raise TransportError(f"expected 16-byte digests, got a {ftype.name} frame of {len(payload)} bytes")
        return [bytes(payload[i:i + 16]) for i in range(0, len(payload), 16)]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ProcessServerSink:
    def __init__(self, *, disk: str, size: int, servers: list[tuple[str, int]], identity: Identity,
                 server_hostname: str | None = None, batch_bytes: int = BATCH_BYTES,
                 window_bytes: int = WINDOW_BYTES, retain_bytes: int = RETAIN_BYTES,
                 patience_s: float = 300.0, on_fallback: Callable[[Fallback], None] | None = None,
                 backoff: Backoff | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 io_timeout_s: float | None = None) -> None:
        if not servers:
            raise TransportError("a sink needs at least one process server address")
        self.disk, self.size = disk, size
        self.servers = list(servers)
        self._ctx = client_context(identity)
        self._hostname = server_hostname
        self.batch_bytes, self.window_bytes, self.retain_bytes = batch_bytes, window_bytes, retain_bytes
        self.patience_s = patience_s
        self.on_fallback = on_fallback
        self.backoff = backoff or Backoff()
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s  # None: the transport's idle timeout
        self._closing = threading.Event()
        self.last_error = ""                     # why the last dial failed ("" once connected)
        self._cv = threading.Condition()
        self._conn: Connection | None = None
        self._broken = True
        self._server = 0
        self.seq = 0
        self._numbered = False  # True once a process server told us where the stream is
        self.durable = 0
        self.applied = 0
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._retained: collections.deque[Record] = collections.deque()
        self._retained_bytes = 0
        self._undurable: dict[int, int] = {}     # seq -> bytes, sent but not durable yet
        self._undurable_bytes = 0
        self._written_at: collections.deque[tuple[int, float]] = collections.deque()
        self.lag_samples: collections.deque[float] = collections.deque(maxlen=100_000)  # write->applied, s
        self.fallback: Fallback | None = None
        self.dirty: list[tuple[int, int]] = []   # (offset, length) changed while tracking
        self.sent_bytes = 0                      # payload bytes of WRITE records shipped (resync checks)
        self._resyncing = False                  # told the process server a resync is under way
        self._resync_mark = 0                    # the process server's count of drops, as last told
        self.reconnects = 0
        self._last_send = time.monotonic()
        self._keepalive = threading.Thread(target=self._keepalive_loop, name=f"sink-ping-{disk}", daemon=True)
        self._closed = False
        self._keepalive.start()

    # -- ChangeSink ---------------------------------------------------------------------------
    # In fallback every call records its range in `dirty` and raises CacheFull: the splitter then
    # enters its own bitmap mode and refuses consistency points until `resume()` and a resync.
    def write(self, offset: int, data: bytes) -> None:
        if self.fallback is not None:
            self.dirty.append((offset, len(data)))
            self._refuse()
        self._add(Record(Kind.WRITE, self.seq + 1, offset, len(data), 0, bytes(data)))
        self.sent_bytes += len(data)
        self._check_fallback()

    def discard(self, offset: int, length: int) -> None:
        if self.fallback is not None:
            self.dirty.append((offset, length))
            self._refuse()
        self._add(Record(Kind.DISCARD, self.seq + 1, offset, length, 0, b""))
        self._check_fallback()

    def flush(self) -> None:
        if self.fallback is not None:
            self._refuse()
        self._add(Record(Kind.FLUSH, self.seq + 1, 0, 0, 0, b""))
        target = self.seq
        self._ship()
        self._wait(lambda: self.durable >= target or self.fallback is not None, "flush")
        self._check_fallback()

    def barrier(self) -> None:
        """A FLUSH record in the stream, shipped without waiting for it to be durable."""
        if self.fallback is not None:
            self._refuse()
        self._add(Record(Kind.FLUSH, self.seq + 1, 0, 0, 0, b""))
        self._ship()
        self._check_fallback()

    @property
    def connected(self) -> bool:
        return not self._broken

    def bookmark(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None = None) -> None:
        if self.fallback is not None:
            self._refuse()
        self._add(bookmark_record(self.seq + 1, bookmark_id, kind, group_id, time.time()))
        self._ship()
        self._check_fallback()

    def _check_fallback(self) -> None:
        if self.fallback is not None:
            self._refuse()

    def _refuse(self) -> None:
        fb = self.fallback
        assert fb is not None
        raise CacheFull(f"disk {self.disk}: {fb.reason} (from seq {fb.from_seq}); tracking changes in a "
                        "bitmap until resume() and a resync")

    def resume(self, *, resync: bool = False) -> list[tuple[int, int]]:
        """Leave fallback: returns the dirty ranges to resend (read them from the disk) and re-arms.

        With `resync` the caller compares the whole disk with the replica next and then calls
        `resynced(fallback.from_seq)`; until then every HELLO says a resync is under way."""
        with self._cv:
            self._resyncing = resync
            dirty, self.dirty = self.dirty, []
            self.fallback = None
            conn, self._conn, self._broken = self._conn, None, True
            self._numbered = False  # learn the stream's position again from the process server
            self.seq = 0
            self._retained.clear()
            self._retained_bytes = 0
            self._undurable.clear()
            self._undurable_bytes = 0
            self._written_at.clear()
            self.durable = self.applied = 0
        if conn is not None:
            conn.close()
        return dirty

    def fall_back(self, fb: Fallback) -> None:
        """Enter fallback again (a resync that failed is retried later)."""
        with self._cv:
            self._fall_back(fb)

    def resynced(self, from_seq: int) -> None:
        """The resync after a `Fallback(resync=True)` is complete and flushed: tell the process server."""
        self.flush()
        with self._cv:
            conn = self._conn if not self._broken else None
        if conn is None:
            raise TransportError(f"disk {self.disk}: not connected to tell the process server the resync is done")
        conn.send_json(FrameType.RESYNCED, {"from": from_seq, "mark": self._resync_mark})
        self._resyncing = False

    # -- extras -------------------------------------------------------------------------------
    def wait_applied(self, timeout: float = 120.0) -> None:
        """Wait until the master target applied everything sent so far (tests, benchmarks, shutdown)."""
        self._ship()
        target = self.seq
        deadline = time.monotonic() + timeout
        while self.applied < target and self.fallback is None:
            if time.monotonic() > deadline:
                raise TransportError(f"disk {self.disk}: applied {self.applied} of {target} "
                                     f"within {timeout:.0f} s")
            self._wait(lambda: not self._broken or self.fallback is not None, "wait_applied")
            self._ping()
            with self._cv:
                self._cv.wait_for(lambda: self.applied >= target, timeout=0.2)

    def close(self) -> None:
        self._closed = True
        self._closing.set()
        with self._cv:
            conn, self._conn, self._broken = self._conn, None, True
            self._cv.notify_all()
        if conn is not None:
            conn.close()

    # -- internals ----------------------------------------------------------------------------
    def _add(self, rec: Record) -> None:
        if not self._numbered:
            # A (re)started agent continues the stream's numbering: learn it before the first change.
            self._wait(lambda: self._numbered, "connect")
            if self.fallback is not None:  # the process server's WELCOME refused the stream: keep the range
                if rec.kind in (Kind.WRITE, Kind.DISCARD):
                    self.dirty.append((rec.offset, rec.length))
                self._refuse()
            rec = Record(rec.kind, self.seq + 1, rec.offset, rec.length, rec.codec, rec.payload)
        self.seq = rec.seq
        self._pending.append(rec)
        self._pending_bytes += rec.size
        self._written_at.append((rec.seq, time.monotonic()))
        if self._pending_bytes >= self.batch_bytes:
            self._ship()

    def _ship(self) -> None:
        while self._pending and self.fallback is None:
            self._wait(lambda: self._undurable_bytes < self.window_bytes or self.fallback is not None, "window")
            if self.fallback is not None:
                return
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            with self._cv:
                for r in batch:
                    self._retained.append(r)
                    self._retained_bytes += r.size
                    self._undurable[r.seq] = r.size
                    self._undurable_bytes += r.size
                conn = self._conn if not self._broken else None
            if conn is None:
                continue  # _wait reconnects and replays the retained records
            try:
                conn.send_parts(FrameType.RECORDS, [p for r in batch for p in r.parts()])
                self._last_send = time.monotonic()
            except TransportError as err:
                self._mark_broken(conn, err)

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.patience_s
        while True:
            with self._cv:
                if done():
                    return
                if self._closed:
                    raise TransportError(f"disk {self.disk}: the sink is closed ({what})")
                broken = self._broken
                if not broken:
                    self._cv.wait(0.5)
                    continue
            if time.monotonic() > deadline:
                raise TransportError(f"disk {self.disk}: no process server of {self.servers} took the "
                                     f"stream within {self.patience_s:.0f} s ({what})")
            self._connect()

    def _mark_broken(self, conn: Connection, err: Exception) -> None:
        log.info("sink %s: connection lost: %s", self.disk, err)
        with self._cv:
            if self._conn is conn:
                self._broken = True
                self._conn = None
            self._cv.notify_all()
        conn.close()

    def _connect(self) -> None:
        """Dial the current process server, else the next one; replay what it lacks."""
        for attempt in range(len(self.servers)):
            host, port = self.servers[self._server]
            try:
                conn = dial(host, port, self._ctx, timeout=self.connect_timeout_s, server_hostname=self._hostname)
                conn.sock.settimeout(self.io_timeout_s or self.connect_timeout_s)
                with self._cv:
                    first = self._retained[0].seq if self._retained else None
                conn.send_json(FrameType.HELLO, {"disk": self.disk, "size": self.size, "first_retained": first,
                                                 "resyncing": self._resyncing})
                welcome = conn.recv_json(FrameType.WELCOME)
            except AgentError as err:
                log.info("sink %s: process server %s:%d unavailable: %s", self.disk, host, port, err)
                self.last_error = f"{host}:{port}: {err}"
                self._server = (self._server + 1) % len(self.servers)
                if attempt == len(self.servers) - 1:
                    self._closing.wait(self.backoff.delay())  # every server failed: back off
                continue
            conn.sock.settimeout(self.io_timeout_s or IDLE_TIMEOUT_S)
            self.backoff.reset()
            self.last_error = ""
            resync_from = welcome.get("resync_from")
            self._resync_mark = int(welcome.get("resync_mark") or 0)
            self._resume(conn, int(welcome["durable"]), int(welcome.get("applied", 0)),
                         int(resync_from) if resync_from is not None else None)
            return

    def _resume(self, conn: Connection, durable: int, applied: int, resync_from: int | None = None) -> None:
        with self._cv:
            self.reconnects += 1
            if not self._numbered:
                self.seq = max(self.seq, durable)  # a restarted agent continues the stream's numbering
                self.durable = max(self.durable, durable)
                self._numbered = True
            self._on_ack(durable, applied)
            replay = [r for r in self._retained if r.seq > durable]
            gap = bool(replay) and replay[0].seq != durable + 1
            if resync_from is not None:
                gap = True
                fb = Fallback(resync_from, f"the process server dropped cached records from seq {resync_from} "
                                           "(a corrupt record) that this agent no longer holds: resync needed",
                              resync=True)
                self._fall_back(fb)
            elif gap:
                fb = Fallback(durable + 1, f"the process server has up to seq {durable}; this agent "
                                           f"retains from {replay[0].seq}: resync needed", resync=True)
                self._fall_back(fb)
            if not gap:
                self._conn, self._broken = conn, False
            self._cv.notify_all()
        if gap:
            conn.close()
            if self.on_fallback is not None:
                self.on_fallback(fb)
            return
        threading.Thread(target=self._read_loop, args=(conn,), name=f"sink-ack-{self.disk}", daemon=True).start()
        try:
            for i in range(0, len(replay), 256):
                conn.send_parts(FrameType.RECORDS, [p for r in replay[i:i + 256] for p in r.parts()])
        except TransportError as err:
            self._mark_broken(conn, err)

    def _on_ack(self, durable: int, applied: int) -> None:
        """Called with self._cv held."""
        if durable > self.durable:
            for s in range(self.durable + 1, durable + 1):
                self._undurable_bytes -= self._undurable.pop(s, 0)
            self.durable = durable
        if applied > self.applied:
            self.applied = applied
            now = time.monotonic()
            while self._written_at and self._written_at[0][0] <= applied:
                self.lag_samples.append(now - self._written_at.popleft()[1])
        while self._retained and (self._retained[0].seq <= self.applied or (
                self._retained_bytes > self.retain_bytes and self._retained[0].seq <= self.durable)):
            self._retained_bytes -= self._retained.popleft().size
        self._cv.notify_all()

    def _fall_back(self, fb: Fallback) -> None:
        """Called with self._cv held: keep the unsent changes as dirty ranges and stop shipping."""
        self.fallback = fb
        for r in list(self._retained) + self._pending:
            if r.seq >= fb.from_seq and r.kind in (Kind.WRITE, Kind.DISCARD):
                self.dirty.append((r.offset, r.length))
        self._pending, self._pending_bytes = [], 0
        self._cv.notify_all()

    def _read_loop(self, conn: Connection) -> None:
        try:
            while True:
                ftype, payload = conn.recv()
                body = json.loads(payload) if payload else {}
                if ftype == FrameType.ACK:
                    with self._cv:
                        self._on_ack(int(body.get("durable", self.durable)), int(body.get("applied", 0)))
                elif ftype == FrameType.FALLBACK:
                    fb = Fallback(int(body["from_seq"]), str(body.get("reason", "")))
                    with self._cv:
                        self._fall_back(fb)
                    if self.on_fallback is not None:
                        self.on_fallback(fb)
                    raise TransportError("fallback to bitmap tracking")
                elif ftype == FrameType.ERROR:
                    raise TransportError(f"process server: {body.get('error')}")
        except AgentError as err:
            self._mark_broken(conn, err)

    def _ping(self) -> None:
        with self._cv:
            conn = self._conn if not self._broken else None
        if conn is not None:
            try:
                conn.send_json(FrameType.PING, {})
                self._last_send = time.monotonic()
            except TransportError as err:
                self._mark_broken(conn, err)

    def _keepalive_loop(self) -> None:
        while not self._closing.wait(min(1.0, (self.io_timeout_s or IDLE_TIMEOUT_S) / 6)):
            # ping well inside our own receive timeout too, so an idle stream is not taken for a dead one
            if time.monotonic() - self._last_send > min(PING_INTERVAL_S, (self.io_timeout_s or IDLE_TIMEOUT_S) / 3):
                self._ping()


# -- the workload's side: a bounded buffer that never waits on the network ---------------------
# Bytes of changes the agent holds in memory per disk, waiting for the process server, before it
# stops buffering and tracks changed blocks in a bitmap instead (issue 15: the workload's fsync
# must never wait on the network). Configurable per agent (`buffer_mb`).
BUFFER_BYTES = 64 * 1024 * 1024

_Item = tuple[str, int, int, bytes, str, str, str | None]  # kind, offset, length, data, id, point kind, group
_KIND_CODES = {"write": 1, "discard": 2, "barrier": 3, "sync": 4, "bookmark": 5}
_CODE_KINDS = {v: k for k, v in _KIND_CODES.items()}


class _Spill:
    """A FIFO of buffered changes in a local file, used once the memory buffer is full (`spill_mb`).

    Not durable and never read after a restart: an agent that stops with changes here did not stop
    cleanly, and its next start compares the disk with the replica anyway. Emptied, the file is
    truncated, so it takes space only during an outage."""

    # kind, offset, length, data bytes, then the lengths of the point id, point kind and group
    HEAD = struct.Struct(">BQQIHHH")

    def __init__(self, path: Path, capacity_bytes: int) -> None:
        self.path, self.capacity_bytes = path, capacity_bytes
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._write = self._read = 0
        self.items = 0
        self.bytes = 0  # data bytes of the writes held

    def put(self, item: _Item) -> None:
        kind, offset, length, data, point, point_kind, group = item
        texts = [t.encode() for t in (point, point_kind, group or "")]
        record = self.HEAD.pack(_KIND_CODES[kind], offset, length, len(data), *map(len, texts)) + data + b"".join(texts)
        os.pwrite(self._fd, record, self._write)
        self._write += len(record)
        self.items += 1
        self.bytes += len(data)

    def get(self) -> _Item:
        code, offset, length, ndata, *sizes = self.HEAD.unpack(os.pread(self._fd, self.HEAD.size, self._read))
        body = os.pread(self._fd, ndata + sum(sizes), self._read + self.HEAD.size)
        self._read += self.HEAD.size + len(body)
        data, texts, pos = body[:ndata], [], ndata
        for n in sizes:
            texts.append(body[pos:pos + n].decode())
            pos += n
        self.items -= 1
        self.bytes -= ndata
        if self.items == 0:
            self.reset()
        return (_CODE_KINDS[code], offset, length, data, texts[0], texts[1], texts[2] or None)

    def reset(self) -> None:
        self._write = self._read = self.items = self.bytes = 0
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class DurablePoint:
    """A bookmark the process server holds durably: its id and when it was taken (UNIX seconds)."""

    bookmark_id: str
    taken: float


class BufferedSink:
    """The ChangeSink capture writes to: a bounded in-memory buffer in front of a `ProcessServerSink`,
    drained by its own thread, so a write, discard, barrier or bookmark never waits on the network.

    When the buffer is full, or the process server refuses the stream (its cache is full, or it
    lost records), the sink *falls back* at once: what it could not ship becomes dirty ranges
    (`take_dirty()`) and every later call raises CacheFull, which sends the capture into its
    bitmap. `drained()` says when everything handed on is durable at the process server again;
    the agent then calls `rearm()` and resends the dirty blocks from the disk.

    `paced()` is the view for the agent's own bulk sends (initial sync, resync, leaving bitmap
    mode): its writes wait for room instead of falling back, and its flush waits until durable.
    """

    def __init__(self, downstream: ProcessServerSink, *, capacity_bytes: int = BUFFER_BYTES,
                 spill: Path | None = None, spill_bytes: int = 0) -> None:
        self.down = downstream
        self.disk = downstream.disk
        self.size = downstream.size
        self.capacity_bytes = capacity_bytes
        self._spill = _Spill(spill, spill_bytes) if spill is not None and spill_bytes > 0 else None
        self._cv = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_bytes = 0
        self._busy = False                     # the shipper is handing an item on
        self._handed = 0                       # items handed on (or dropped) so far
        self._added = 0                        # items accepted so far
        self.fallback: str | None = None       # why the sink stopped buffering
        self._dirty: list[tuple[int, int]] = []
        self._points: collections.deque[tuple[int, DurablePoint]] = collections.deque()  # (down seq, point)
        self.newest_durable: DurablePoint | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"sink-buffer-{self.disk}", daemon=True)
        self._thread.start()

    # -- ChangeSink (the workload's path: never waits) ----------------------------------------
    def write(self, offset: int, data: bytes) -> None:
        self._put(("write", offset, len(data), bytes(data), "", "", None), len(data), wait=False)

    def discard(self, offset: int, length: int) -> None:
        self._put(("discard", offset, length, b"", "", "", None), 0, wait=False)

    def flush(self) -> None:
        self._put(("barrier", 0, 0, b"", "", "", None), 0, wait=False)

    def bookmark(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None = None) -> None:
        self._put(("bookmark", 0, 0, b"", bookmark_id, kind, group_id), 0, wait=False)

    # -- the agent's side ---------------------------------------------------------------------
    def paced(self, stop: threading.Event) -> PacedSink:
        return PacedSink(self, stop)

    @property
    def backlog_bytes(self) -> int:
        """Bytes buffered here plus bytes sent but not yet durable at the process server."""
        spilled = self._spill.bytes if self._spill is not None else 0
        return self._queued_bytes + spilled + self.down._undurable_bytes + self.down._pending_bytes

    @property
    def connected(self) -> bool:
        return self.down.connected

    def drained(self) -> bool:
        """Nothing buffered, nothing in flight, and every change handed on is durable."""
        with self._cv:
            idle = not self._queue and not self._busy and not self._spilled
        return idle and self.down.connected and self.down.fallback is None and self.down.durable >= self.down.seq

    def wait_idle(self, stop: threading.Event) -> None:
        """Wait until the shipper hands nothing on (after `fall_back`: the stream is the caller's)."""
        with self._cv:
            while self._busy and not stop.is_set():
                self._cv.wait(0.05)

    def take_dirty(self) -> list[tuple[int, int]]:
        """The ranges whose changes were dropped (read them from the disk again); clears them."""
        with self._cv:
            dirty, self._dirty = self._dirty, []
        return dirty

    def rearm(self) -> None:
        """Leave fallback: buffer and ship again (after `drained()`)."""
        with self._cv:
            self.fallback = None
            self._cv.notify_all()

    def fall_back(self, reason: str) -> None:
        with self._cv:
            self._fall_back(reason)

    def wait(self, done: Callable[[], bool], stop: threading.Event, what: str) -> None:
        """Wait until `done()` (checked under the buffer's lock); TransportError on stop or fallback."""
        with self._cv:
            while not done():
                if stop.is_set() or self._closed:
                    raise TransportError(f"disk {self.disk}: stopped while waiting for {what}")
                if self.fallback is not None:
                    raise CacheFull(f"disk {self.disk}: {self.fallback}")
                self._cv.wait(0.2)
                self._refresh_points()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self.down.close()
        self._thread.join(5)
        if self._spill is not None:
            self._spill.close()

    # -- internals ------------------------------------------------------------------------------
    @property
    def _spilled(self) -> bool:
        return self._spill is not None and self._spill.items > 0

    def _put(self, item: _Item, nbytes: int, *, wait: bool, stop: threading.Event | None = None) -> int:
        with self._cv:
            while True:
                if self.fallback is not None:
                    if item[0] in ("write", "discard"):
                        self._dirty.append((item[1], item[2]))
                    raise CacheFull(f"disk {self.disk}: {self.fallback}; tracking changes in a bitmap")
                # the agent's own bulk sends leave half the buffer to the workload's changes
                limit = self.capacity_bytes // 2 if wait else self.capacity_bytes
                if not self._spilled and (self._queued_bytes + nbytes <= limit or not self._queue):
                    break
                spill = self._spill
                if not wait and spill is not None and spill.bytes + nbytes <= spill.capacity_bytes:
                    spill.put(item)  # after everything in memory, in order: the shipper reads it next
                    self._added += 1
                    self._cv.notify_all()
                    return self._added
                if not wait:
                    spilled = f" and {spill.capacity_bytes >> 20} MiB on disk" if spill is not None else ""
                    self._fall_back(f"{(self._queued_bytes + (spill.bytes if spill else 0)) >> 20} MiB of changes "
                                    f"are waiting for the process server (the buffer holds "
                                    f"{self.capacity_bytes >> 20} MiB{spilled})")
                    continue
                if self._closed or (stop is not None and stop.is_set()):
                    raise TransportError(f"disk {self.disk}: stopped while waiting for room in the buffer")
                self._cv.wait(0.2)
            self._queue.append(item)
            self._queued_bytes += nbytes
            self._added += 1
            self._cv.notify_all()
            return self._added

    def _fall_back(self, reason: str) -> None:
        """Called with the lock held: drop the buffer into dirty ranges and refuse until rearm()."""
        if self.fallback is None:
            self.fallback = reason
        for kind, offset, length, *_ in self._queue:
            if kind in ("write", "discard"):
                self._dirty.append((offset, length))
        self._handed += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        while self._spill is not None and self._spill.items:
            kind, offset, length, *_ = self._spill.get()
            if kind in ("write", "discard"):
                self._dirty.append((offset, length))
            self._handed += 1
        self._cv.notify_all()

    def _refresh_points(self) -> None:
        while self._points and self._points[0][0] <= self.down.durable:
            self.newest_durable = self._points.popleft()[1]

    def _run(self) -> None:
        while True:
            if not self.down.connected and self.down._numbered and self.down.fallback is None:
                # nothing else dials while the workload is idle: reconnect (backoff inside), so
                # what the process server lacks is replayed and points can resume
                try:
                    self.down._wait(lambda: self.down.connected or self.down.fallback is not None, "reconnect")
                except AgentError:
                    if self._closed:
                        return
            with self._cv:
                while not self._queue and not self._spilled and not self._closed:
                    self._cv.wait(0.5)
                    self._refresh_points()
                    if not self.down.connected:
                        break
                if self._closed:
                    return
                if self._queue:  # memory first: everything spilled came after it
                    item = self._queue.popleft()
                    if item[0] == "write":
                        self._queued_bytes -= item[2]
                elif self._spill is not None and self._spill.items:
                    item = self._spill.get()
                else:
                    continue
                self._busy = True
            try:
                self._hand_on(item)
            except AgentError as err:
                with self._cv:
                    if self._closed:
                        return
                    if item[0] in ("write", "discard"):
                        self._dirty.append((item[1], item[2]))
                    reason = self.down.fallback.reason if self.down.fallback is not None else str(err)
                    self._dirty.extend(self.down.dirty)
                    self.down.dirty = []
                    self._fall_back(reason)
            finally:
                with self._cv:
                    self._busy = False
                    self._handed += 1
                    self._refresh_points()
                    self._cv.notify_all()

    def _hand_on(self, item: _Item) -> None:
        kind, offset, length, data, point, point_kind, group = item
        if kind == "write":
            self.down.write(offset, data)
        elif kind == "discard":
            self.down.discard(offset, length)
        elif kind == "barrier":
            self.down.barrier()
        elif kind == "sync":
            self.down.flush()
        else:
            taken = time.time()
            self.down.bookmark(point, point_kind, group)  # type: ignore[arg-type]
            with self._cv:
                self._points.append((self.down.seq, DurablePoint(point, taken)))


class PacedSink:
    """A BufferedSink's view for the agent's bulk sends: writes wait for room (never fall back on a
    full buffer), flush waits until everything before it is durable at the process server. Raises
    TransportError when `stop` is set, CacheFull when the sink fell back meanwhile."""

    def __init__(self, buffered: BufferedSink, stop: threading.Event) -> None:
        self.buffered = buffered
        self.stop = stop

    def write(self, offset: int, data: bytes) -> None:
        self.buffered._put(("write", offset, len(data), bytes(data), "", "", None), len(data), wait=True,
                           stop=self.stop)

    def discard(self, offset: int, length: int) -> None:
        self.buffered._put(("discard", offset, length, b"", "", "", None), 0, wait=True, stop=self.stop)

    def flush(self) -> None:
        number = self.buffered._put(("sync", 0, 0, b"", "", "", None), 0, wait=True, stop=self.stop)
        b = self.buffered
        b.wait(lambda: b._handed >= number, self.stop, "the process server to make the sync durable")
        if b.fallback is not None:
            raise CacheFull(f"disk {b.disk}: {b.fallback}")

    def room(self, nbytes: int) -> None:
        """Wait until `nbytes` more fit in the buffer (call outside any lock the workload needs)."""
        b = self.buffered
        b.wait(lambda: not b._spilled and (b._queued_bytes + nbytes <= b.capacity_bytes // 2 or not b._queue),
               self.stop, "room in the buffer")

    def bookmark(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None = None) -> None:
        self.buffered.bookmark(bookmark_id, kind, group_id)
