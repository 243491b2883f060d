"""The process server: accepts agents, caches durably, compresses, forwards in order per disk.

Agents dial it (TLS, mutual authentication, role "agent"); it dials the master target (role
"process-server"). Per disk: records are verified, write payloads compressed (zstd, raw when it
does not shrink), appended to the disk's cache and fsynced before the agent gets its ACK. A
forwarder per disk sends cached records to the master target in sequence order, a window at a time,
at most `throttle_mbps`, and drops cache segments once the master target reports them applied.

When the master target is unreachable the cache keeps filling; alerts fire as free space falls
below 30 % (warning) and 25 % (critical), ASR's thresholds; when a frame would not fit, the agent
is told to FALL BACK to bitmap tracking from that sequence instead of anything being dropped.

A cached record that fails its checksum is never forwarded, and nothing after it: the cache drops
the records from it on and remembers where (`resync`), and the agent's connection is closed. The
agent resends them from its memory when it still holds them; otherwise its WELCOME says
`resync_from` and the agent resyncs the disk against the replica (block hashes), then says
RESYNCED. Either way the disk heals without an operator.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

from dr_agent.alerts import AlertLog
from dr_agent.cache import SEGMENT_BYTES, DiskCache
from dr_agent.compress import CODEC_RAW, Compressor
from dr_agent.contract import MAY_DIAL, Role
from dr_agent.errors import AgentError, CorruptData, CorruptRecord, ProtocolError
from dr_agent.master_target import DISK_NAME, receive_hello
from dr_agent.metrics import Metrics
from dr_agent.pki import Identity, client_context, server_context
from dr_agent.records import FrameType, Kind, Record, decode_records
from dr_agent.stages import Inbox, ending_stream
from dr_agent.transport import Connection, Listener, dial

log = logging.getLogger(__name__)

# ASR's process server alerts: warning below 30 % free cache, critical below 25 % (ASR docs,
# "Monitor the process server").
WARN_FREE = 0.30
CRITICAL_FREE = 0.25
# Bytes per RECORDS frame to the master target, and bytes sent but not yet applied per disk.
FORWARD_FRAME_BYTES = 4 * 1024 * 1024
FORWARD_WINDOW_BYTES = 64 * 1024 * 1024
# Seconds between keepalive PINGs on an idle forwarding connection (well under IDLE_TIMEOUT_S).
PING_EVERY_S = 5.0
# Bytes of already-arrived frames appended under one fsync (group commit).
GATHER_BYTES = 16 * 1024 * 1024
# Compression threads per process server: one per core (the services' machines have 2 to 16).
COMPRESS_THREADS = max(2, os.cpu_count() or 2)
T = TypeVar("T")


@dataclass(frozen=True)
class ProcessServerConfig:
    identity: Identity
    cache_dir: Path
    master_target: tuple[str, int]
    name: str = "ps"
    master_target_hostname: str | None = None   # TLS name of the master target (default: its host)
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    capacity_bytes: int = 10 * 1024**3
    throttle_mbps: float | None = None           # None: unthrottled
    segment_bytes: int = SEGMENT_BYTES
    metrics_port: int | None = None


class _PerThread(Generic[T]):
    """One instance of T per thread (zstd contexts are reusable, not shareable)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> T:
        value: T | None = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._factory()
        return value


@dataclass(frozen=True)
class _Arrival:
    """A RECORDS frame as read: its verified records and their compression in the pool; None is a PING."""

    records: list[Record]
    stored: Future[tuple[list[Record], int, int]]
    nbytes: int


class Throttle:
    """A token bucket in bytes per second, shared by the forwarders of one process server."""

    def __init__(self, mbps: float | None) -> None:
        self.rate = mbps * 1e6 / 8 if mbps else None
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, nbytes: int) -> None:
        if self.rate is None:
            return
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + nbytes / self.rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


class ProcessServer:
    def __init__(self, config: ProcessServerConfig) -> None:
        self.config = config
        config.cache_dir.mkdir(parents=True, exist_ok=True)
        self.alerts = AlertLog(config.cache_dir / "alerts.jsonl")
        self.metrics = Metrics("process-server")
        self.metrics.cache_capacity.set(config.capacity_bytes)
        self.throttle = Throttle(config.throttle_mbps)
        self._client_ctx = client_context(config.identity)
        # zstandard releases the GIL: a pool compresses frames in parallel with reading them
        self._pool = ThreadPoolExecutor(max_workers=COMPRESS_THREADS, thread_name_prefix="ps-zstd")
        self._compressors: _PerThread[Compressor] = _PerThread(Compressor)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caches: dict[str, DiskCache] = {}
        self._forwarders: dict[str, threading.Thread] = {}
        self._agents: dict[str, Connection] = {}  # disk -> the agent's stream connection now
        self._times: dict[str, collections.deque[tuple[int, float]]] = {}
        self.level: Literal["ok", "warning", "critical"] = "ok"
        self._fill_lock = threading.Lock()
        self.stalled: dict[str, str] = {}
        for d in sorted(p for p in config.cache_dir.iterdir() if p.is_dir() and DISK_NAME.match(p.name)):
            cache = self._cache(d.name)
            for c in cache.corruptions:
                self._corrupt(d.name, f"cache scan: {c}")
            if cache.disk_size:
                self._ensure_forwarder(d.name)
        self.listener = Listener(config.listen_host, config.listen_port, server_context(config.identity),
                                 MAY_DIAL[Role.PROCESS_SERVER], self._handle, name="process-server")
        self.port = self.listener.port
        self._monitor = threading.Thread(target=self._monitor_loop, name="ps-monitor", daemon=True)
        self._monitor.start()
        self.metrics_port = (self.metrics.serve(config.listen_host, config.metrics_port)
                             if config.metrics_port is not None else None)

    # -- cache and health ---------------------------------------------------------------------
    def _cache(self, disk: str) -> DiskCache:
        with self._lock:
            c = self._caches.get(disk)
            if c is None:
                c = self._caches[disk] = DiskCache(self.config.cache_dir, disk,
                                                   segment_bytes=self.config.segment_bytes)
                self._times[disk] = collections.deque()
            return c

    def used_bytes(self) -> int:
        with self._lock:
            caches = list(self._caches.values())
        return sum(c.used_bytes() for c in caches)

    def _corrupt(self, disk: str, message: str) -> None:
        self.metrics.corrupt.labels(disk).inc()
        self.alerts.raise_("critical", "corrupt", f"disk {disk}: {message}; not forwarded", disk=disk)

    def _check_fill(self) -> None:
        """Raise an alert for every threshold crossed since the last check (called after each append)."""
        used = self.used_bytes()
        free = 1 - used / self.config.capacity_bytes
        level: Literal["ok", "warning", "critical"] = (
            "critical" if free < CRITICAL_FREE else "warning" if free < WARN_FREE else "ok")
        self.metrics.cache_used.set(used)
        self.metrics.cache_fill.set(used / self.config.capacity_bytes)
        with self._fill_lock:
            if level == self.level:
                return
            order = ("ok", "warning", "critical")
            old, new = order.index(self.level), order.index(level)
            self.level = level
            if new < old:
                self.alerts.raise_("info", f"cache-{level}", f"cache {free:.0%} free again", free=free)
                return
            for crossed in order[old + 1:new + 1]:
                lvl: Literal["warning", "critical"] = "critical" if crossed == "critical" else "warning"
                self.alerts.raise_(lvl, f"cache-{crossed}", f"cache {free:.0%} free ({used} of "
                                   f"{self.config.capacity_bytes} bytes used); is the master target reachable?",
                                   free=free)
                self.metrics.alerts.labels(crossed).inc()

    def _monitor_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._check_fill()
                now = time.time()
                with self._lock:
                    items = list(self._caches.items())
                for disk, cache in items:
                    times = self._times[disk]
                    while times and times[0][0] <= cache.acked_seq:
                        times.popleft()
                    self.metrics.rpo.labels(disk).set(now - times[0][1] if times else 0.0)
                    self.metrics.backlog.labels(disk).set(cache.used_bytes())
                    self.metrics.applied_seq.labels(disk).set(cache.acked_seq)
            except Exception:
                log.exception("monitor failed")

    # -- agents -------------------------------------------------------------------------------
    def _handle(self, conn: Connection) -> None:
        got = receive_hello(conn)
        if got is None:
            return
        hello, disk, size = got
        cache = self._cache(disk)
        if cache.last_seq == 0 and cache.used_bytes() == 0:
            # A disk new to this process server (first sync, or an agent that moved here): start
            # the stream where the master target is, or where the agent's retained records begin.
            base = self._master_applied(disk, size)
            if base is None:
                first = hello.get("first_retained")
                base = int(first) - 1 if first else 0
            cache.rebase(base)
        cache.set_disk_size(size)
        self._ensure_forwarder(disk)
        if hello.get("purpose") == "hashes":
            self._relay_hashes(conn, disk, cache)
            return
        welcome: dict[str, object] = {"durable": cache.durable_seq, "applied": cache.acked_seq,
                                      "level": self.level}
        if cache.resync_from is not None:
            first = hello.get("first_retained")
            if hello.get("resyncing"):
                welcome["resync_mark"] = cache.resync_mark  # its RESYNCED names the drops it covers
            elif first is not None and int(first) <= cache.resync_from:
                cache.resynced(cache.resync_mark)  # the agent still holds the dropped records: it replays them
                self.alerts.raise_("info", "resent", f"disk {disk}: the agent resends the dropped records "
                                   f"from its memory", disk=disk)
            else:
                welcome["resync_from"] = cache.resync_from
        conn.send_json(FrameType.WELCOME, welcome)
        with self._lock:
            self._agents[disk] = conn
        # Two stages per connection: this thread reads and verifies frames and hands each to the
        # compression pool at once; a committer appends what has arrived (group commit, up to
        # GATHER_BYTES) with one fsync, then ACKs. Reading goes on while the cache fsyncs.
        inbox: Inbox[_Arrival] = Inbox(2 * GATHER_BYTES)
        committer = threading.Thread(target=self._commit_loop, args=(conn, disk, cache, inbox),
                                     name=f"ps-commit-{disk}", daemon=True)
        committer.start()
        try:
            while not self._stop.is_set() and not inbox.closed:
                try:
                    ftype, payload = conn.recv()
                    if ftype == FrameType.RECORDS:
                        recs = decode_records(payload, views=True)
                        inbox.put(_Arrival(recs, self._pool.submit(self._compress, recs, cache.last_seq),
                                           len(payload)))
                    elif ftype == FrameType.PING:
                        inbox.put(None)
                    elif ftype == FrameType.RESYNCED:  # sent after a flush: the resync is durable here
                        if cache.resynced(int(json.loads(payload).get("mark") or 0)):
                            self.alerts.raise_("info", "resynced", f"disk {disk}: resynced against the "
                                               "replica after dropped records", disk=disk)
                    else:
                        conn.send_json(FrameType.ERROR, {"error": f"expected RECORDS, got {ftype.name}"})
                        return
                except CorruptData as err:
                    self._corrupt(disk, f"frame from {conn.peer[0]}: {err}")
                    conn.send_json(FrameType.ERROR, {"error": f"corrupt frame refused: {err}"})
                    return
                except AgentError:
                    if inbox.closed:  # the committer ended the connection (fallback)
                        return
                    raise
        finally:
            with self._lock:
                if self._agents.get(disk) is conn:
                    del self._agents[disk]
            inbox.close()
            committer.join()

    def _commit_loop(self, conn: Connection, disk: str, cache: DiskCache, inbox: Inbox[_Arrival]) -> None:
        """Append arrived frames (group commit: one fsync, one ACK), in arrival order."""
        with ending_stream(f"process server: committing {disk}", inbox, conn, log):
            while True:
                group = inbox.take(GATHER_BYTES)
                if group is None:
                    return
                if not self._commit(conn, disk, cache, group):
                    inbox.close()
                    conn.close()  # wakes the reader; the agent falls back to bitmap tracking
                    return

    def _commit(self, conn: Connection, disk: str, cache: DiskCache, group: list[_Arrival]) -> bool:
        """Append one group and ACK it; False when the agent was told to fall back instead."""
        records = [r for a in group for r in a.records]
        if not records:
            conn.send_json(FrameType.ACK, {"durable": cache.durable_seq, "applied": cache.acked_seq})
            return True
        nbytes = sum(a.nbytes for a in group)
        self.metrics.bytes_in.labels(disk).inc(nbytes)
        stored: list[Record] = []
        raw = packed = 0
        for a in group:
            part, r_bytes, p_bytes = a.stored.result()
            stored += part
            raw += r_bytes
            packed += p_bytes
        need = sum(r.size for r in stored)
        if self.used_bytes() + need > self.config.capacity_bytes:
            fresh = [r.seq for r in records if r.seq > cache.last_seq]
            if fresh:
                self.alerts.raise_("critical", "cache-full", f"disk {disk}: cache full; agent "
                                   f"{conn.peer[0]} falls back to bitmap tracking from seq {fresh[0]}",
                                   disk=disk, from_seq=fresh[0])
                conn.send_json(FrameType.FALLBACK, {"from_seq": fresh[0], "reason": "process server cache full"})
                return False
        durable = cache.append(stored)
        if raw:
            self.metrics.raw_bytes.labels(disk).inc(raw)
            self.metrics.stored_bytes.labels(disk).inc(packed)
            self.metrics.compression_ratio.labels(disk).set(raw / max(packed, 1))
        self._times[disk].append((durable, time.time()))
        self._check_fill()
        conn.send_json(FrameType.ACK, {"durable": durable, "applied": cache.acked_seq})
        return True

    def _relay_hashes(self, conn: Connection, disk: str, cache: DiskCache) -> None:
        """Relay resync hash requests to the master target once everything cached is applied there."""
        host, port = self.config.master_target
        up = dial(host, port, self._client_ctx, server_hostname=self.config.master_target_hostname)
        try:
            up.send_json(FrameType.HELLO, {"disk": disk, "size": cache.disk_size, "purpose": "hashes"})
            up.recv_json(FrameType.WELCOME)
            conn.send_json(FrameType.WELCOME, {"durable": cache.durable_seq, "applied": cache.acked_seq})
            while not self._stop.is_set():
                ftype, payload = conn.recv()
                if ftype != FrameType.HASHES:
                    raise ProtocolError(f"expected HASHES, got {ftype.name}")
                with cache.changed:  # the replica must hold every change this agent sent first
                    ok = cache.changed.wait_for(lambda: cache.acked_seq >= cache.durable_seq, timeout=300)
                if not ok:
                    conn.send_json(FrameType.ERROR, {"error": "the master target is not catching up"})
                    return
                up.send_payload(FrameType.HASHES, payload)
                rtype, reply = up.recv()
                if rtype != FrameType.HASHES:
                    raise ProtocolError(f"master target answered {rtype.name} to HASHES")
                conn.send_payload(FrameType.HASHES, reply)
        finally:
            up.close()

    def _compress(self, records: list[Record], after_seq: int) -> tuple[list[Record], int, int]:
        """Compress the payloads of new writes (pool thread); returns (records, raw bytes, stored bytes)."""
        comp = self._compressors.get()
        out: list[Record] = []
        raw = packed = 0
        for r in records:
            if r.kind == Kind.WRITE and r.codec == CODEC_RAW and r.seq > after_seq:
                codec, body = comp.compress(r.payload)
                raw += len(r.payload)
                packed += len(body)
                r = Record(r.kind, r.seq, r.offset, r.length, codec, body)
            out.append(r)
        return out, raw, packed

    def _master_applied(self, disk: str, size: int) -> int | None:
        """The master target's applied sequence for `disk`, or None when it cannot be reached now."""
        host, port = self.config.master_target
        try:
            conn = dial(host, port, self._client_ctx, timeout=3,
                        server_hostname=self.config.master_target_hostname)
        except AgentError:
            return None
        try:
            conn.send_json(FrameType.HELLO, {"disk": disk, "size": size, "ps": self.config.name})
            return int(conn.recv_json(FrameType.WELCOME)["applied"])
        except AgentError:
            return None
        finally:
            conn.close()

    # -- forwarding ---------------------------------------------------------------------------
    def _ensure_forwarder(self, disk: str) -> None:
        with self._lock:
            t = self._forwarders.get(disk)
            if t is None or not t.is_alive():
                t = threading.Thread(target=self._forward_loop, args=(disk,), name=f"fwd-{disk}", daemon=True)
                self._forwarders[disk] = t
                t.start()

    def _forward_loop(self, disk: str) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._forward(disk)
                backoff = 0.2
            except CorruptRecord as err:
                self._drop(disk, err)
            except CorruptData as err:
                self.stalled[disk] = str(err)
                self._corrupt(disk, str(err))
                return  # never forward past a corrupt record; resync this disk from the agent
            except AgentError as err:
                log.info("forwarding %s: %s; retrying in %.1f s", disk, err, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _drop(self, disk: str, err: CorruptRecord) -> None:
        """The cached record `err.seq` cannot be forwarded: drop it and what follows, and have the
        agent resend them (from memory) or resync the disk."""
        self._corrupt(disk, str(err))
        dropped = self._cache(disk).drop_from(err.seq)
        self.alerts.raise_("warning", "dropped", f"disk {disk}: dropped {dropped} cached records from seq "
                           f"{err.seq} (none may be applied before it); the agent resends them or resyncs "
                           "the disk against the replica", disk=disk, from_seq=err.seq)
        with self._lock:
            agent = self._agents.get(disk)
        if agent is not None:
            agent.close()  # it reconnects: its WELCOME says what to resend

    def _forward(self, disk: str) -> None:
        cache = self._cache(disk)
        host, port = self.config.master_target
        conn = dial(host, port, self._client_ctx, server_hostname=self.config.master_target_hostname)
        broken = threading.Event()
        try:
            conn.send_json(FrameType.HELLO, {"disk": disk, "size": cache.disk_size, "ps": self.config.name})
            applied = int(conn.recv_json(FrameType.WELCOME)["applied"])
            cache.set_acked(applied)
            sent: collections.deque[tuple[int, int]] = collections.deque()  # (last seq, bytes) in flight

            def read_acks() -> None:
                try:
                    while True:
                        body = conn.recv_json(FrameType.ACK)
                        cache.set_acked(int(body["applied"]))
                except AgentError as err:
                    log.info("forwarding %s: %s", disk, err)
                finally:
                    broken.set()
                    with cache.changed:
                        cache.changed.notify_all()

            reader = threading.Thread(target=read_acks, name=f"fwd-ack-{disk}", daemon=True)
            reader.start()
            nxt = applied + 1
            last_send = time.monotonic()
            while not self._stop.is_set() and not broken.is_set():
                with cache.changed:
                    while sent and sent[0][0] <= cache.acked_seq:
                        sent.popleft()
                    inflight = sum(n for _, n in sent)
                    if cache.durable_seq < nxt or inflight >= FORWARD_WINDOW_BYTES:
                        cache.changed.wait(1.0)
                        if time.monotonic() - last_send > PING_EVERY_S:
                            conn.send_json(FrameType.PING, {})
                            last_send = time.monotonic()
                        continue
                # The cached bytes go out as they are: every record's checksum is verified by
                # read_raw_from, nothing is decoded, decompressed or re-encoded on the way.
                parts, last_seq = cache.read_raw_from(nxt, FORWARD_FRAME_BYTES)
                if not last_seq:
                    continue
                nbytes = sum(len(p) for p in parts)
                self.throttle.take(nbytes)
                conn.send_parts(FrameType.RECORDS, parts)
                last_send = time.monotonic()
                self.metrics.bytes_out.labels(disk).inc(nbytes)
                sent.append((last_seq, nbytes))
                nxt = last_seq + 1
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            threads = list(self._forwarders.values())
            caches = list(self._caches.values())
        for cache in caches:
            with cache.changed:
                cache.changed.notify_all()
        for t in threads:
            t.join(timeout=5)
        for cache in caches:
            cache.close()
