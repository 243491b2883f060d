"""The process server's ingest: an agent's disk stream, verified, compressed and durably cached.

Per disk: records are verified, write payloads compressed (zstd, raw when it does not shrink) in a
pool of threads while the connection's thread reads the next frames, and a committer appends what
has arrived with one fsync (group commit, up to GATHER_BYTES) before the agent gets its ACK. When a
group would not fit in the cache, the agent is told to FALL BACK to bitmap tracking from that
sequence instead of anything being dropped.

A stream whose cache dropped records (a corrupt cached record, see ps_forward) heals itself: the
agent resends them from its memory when it still holds them; otherwise its WELCOME says
`resync_from` and the agent resyncs the disk against the replica (block hashes), then says RESYNCED.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from dr_agent.cache import DiskCache
from dr_agent.compress import CODEC_RAW, Compressor
from dr_agent.contract import Ack, Fallback, Hello, Resynced, Welcome
from dr_agent.errors import AgentError, CorruptData
from dr_agent.ps_disks import Disks
from dr_agent.ps_monitor import CacheMonitor
from dr_agent.records import FrameType, Kind, Record, decode_records
from dr_agent.stages import Inbox, ending_stream
from dr_agent.transport import Connection, message

log = logging.getLogger(__name__)

# Bytes of already-arrived frames appended under one fsync (group commit).
GATHER_BYTES = 16 * 1024 * 1024
# Compression threads per process server: one per core (the services' machines have 2 to 16).
COMPRESS_THREADS = max(2, os.cpu_count() or 2)
T = TypeVar("T")


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


class Ingest:
    def __init__(self, disks: Disks, monitor: CacheMonitor, capacity_bytes: int, stop: threading.Event) -> None:
        self.disks, self.monitor, self.capacity_bytes = disks, monitor, capacity_bytes
        self._stop = stop
        # zstandard releases the GIL: a pool compresses frames in parallel with reading them
        self._pool = ThreadPoolExecutor(max_workers=COMPRESS_THREADS, thread_name_prefix="ps-zstd")
        self._compressors: _PerThread[Compressor] = _PerThread(Compressor)

    def welcome(self, hello: Hello, cache: DiskCache) -> Welcome:
        """Where the stream stands for this agent, healing a cache that dropped records."""
        disk = hello.disk
        resync_from = resync_mark = None
        if cache.resync_from is not None:
            first = hello.first_retained
            if hello.resyncing:
                resync_mark = cache.resync_mark  # its RESYNCED names the drops it covers
            elif first is not None and first <= cache.resync_from:
                cache.resynced(cache.resync_mark)  # the agent still holds the dropped records: it replays them
                self.disks.alerts.raise_("info", "resent", f"disk {disk}: the agent resends the dropped records "
                                         "from its memory", disk=disk)
            else:
                resync_from = cache.resync_from
        return Welcome(applied=cache.acked_seq, durable=cache.durable_seq, level=self.monitor.level,
                       resync_from=resync_from, resync_mark=resync_mark)

    def stream(self, conn: Connection, hello: Hello, cache: DiskCache) -> None:
        """Receive the agent's records for `hello.disk` until the connection ends."""
        disk = hello.disk
        conn.send_msg(FrameType.WELCOME, self.welcome(hello, cache))
        self.disks.attach(disk, conn)
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
                        if cache.resynced(message(Resynced, ftype, payload).mark):
                            self.disks.alerts.raise_("info", "resynced", f"disk {disk}: resynced against the "
                                                     "replica after dropped records", disk=disk)
                    else:
                        conn.refuse(f"expected RECORDS, got {ftype.name}")
                        return
                except CorruptData as err:
                    self.disks.corrupt(disk, f"frame from {conn.peer[0]}: {err}")
                    conn.refuse(f"corrupt frame refused: {err}")
                    return
                except AgentError:
                    if inbox.closed:  # the committer ended the connection (fallback)
                        return
                    raise
        finally:
            self.disks.detach(disk, conn)
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
        metrics = self.disks.metrics
        records = [r for a in group for r in a.records]
        if not records:
            conn.send_msg(FrameType.ACK, Ack(applied=cache.acked_seq, durable=cache.durable_seq))
            return True
        nbytes = sum(a.nbytes for a in group)
        metrics.bytes_in.labels(disk).inc(nbytes)
        stored: list[Record] = []
        raw = packed = 0
        for a in group:
            part, r_bytes, p_bytes = a.stored.result()
            stored += part
            raw += r_bytes
            packed += p_bytes
        need = sum(r.size for r in stored)
        if self.disks.used_bytes() + need > self.capacity_bytes:
            fresh = [r.seq for r in records if r.seq > cache.last_seq]
            if fresh:
                self.disks.alerts.raise_once(  # once until the disk's changes fit again, not per retry
                    f"cache-full {disk}", "critical", "cache-full", f"disk {disk}: cache full; agent "
                    f"{conn.peer[0]} falls back to bitmap tracking from seq {fresh[0]}", disk=disk, from_seq=fresh[0])
                conn.send_msg(FrameType.FALLBACK, Fallback(fresh[0], "process server cache full"))
                return False
        durable = cache.append(stored)
        self.disks.alerts.clear(f"cache-full {disk}")  # room again: the next refusal is a new alert
        if raw:
            metrics.compressed(disk, raw, packed)
        self.disks.arrived(disk, durable)
        self.monitor.check_fill()
        conn.send_msg(FrameType.ACK, Ack(applied=cache.acked_seq, durable=durable))
        return True

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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
