"""The master target: receives per-disk streams from process servers and applies them to replicas.

Each connection carries one disk. Records are verified (checksum) before anything is applied,
applied strictly in sequence order, and skipped when their sequence is at or below the one the
replica records as applied, so a replay after a reconnect never applies twice. The applied
sequence is committed with the data (page blob metadata after the pages; a side file after fsync
for file targets) in the target's commit thread, and ACKed from there once durable, while the next
group is applied. A bookmark applies everything before it, commits, then takes a snapshot and
records the recovery point in the catalog; retention prunes points as the window moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from dr_agent.alerts import AlertLog
from dr_agent.catalog import Catalog, Point
from dr_agent.compress import Compressor
from dr_agent.contract import (
    MAY_DIAL,
    Ack,
    CatalogPoint,
    CatalogReport,
    HashesRequest,
    MasterTargetHealth,
    ReplicaLocation,
    Role,
    StreamCatalog,
    Welcome,
)
from dr_agent.errors import AgentError, ConfigError, CorruptData, ProtocolError
from dr_agent.metrics import Metrics
from dr_agent.pki import Identity, server_context
from dr_agent.records import FrameType, Kind, Record, decode_records
from dr_agent.retention import RetentionPolicy, prune
from dr_agent.stages import Inbox, ending_stream
from dr_agent.target import Batch, Data, FileTarget, Target
from dr_agent.transport import IDLE_TIMEOUT_S, Connection, Listener, message, receive_hello

log = logging.getLogger(__name__)
# Bytes of already-arrived frames applied under one commit (one fsync or one metadata write).
GATHER_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class MasterTargetConfig:
    identity: Identity
    state_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    storage: str = "file"                       # "file" (state_dir/disks) or "azure" (page blobs)
    connection_string: str | None = None        # azure: the storage account's connection string
    disk_connection_strings: tuple[tuple[str, str], ...] = ()  # azure: (disk, connection string) overrides
    container: str = "replicas"
    retention_s: float = 24 * 3600.0
    metrics_port: int | None = None             # None: no HTTP endpoint


# Seconds `close` waits for each stream to finish the group it is applying (a commit, a snapshot)
# before closing the targets and the catalog under it.
STOP_WAIT_S = 30.0
# Largest hash request (blocks): 64 Ki blocks of 4 KiB is 256 MiB of disk, a 1 MiB reply.
MAX_HASH_BLOCKS = 65536


def block_hashes(target: Target, req: HashesRequest) -> bytes:
    first, count, bs = req.first_block, req.count, req.block_size
    if bs <= 0 or bs % 512 or count < 0 or count > MAX_HASH_BLOCKS or first < 0:
        raise ProtocolError(f"bad hash request {req.to_json()}")
    start = first * bs
    end = min((first + count) * bs, target.size)
    out = bytearray()
    for pos in range(start, end, 4 * 1024 * 1024):
        data = target.read(pos, min(4 * 1024 * 1024, end - pos))
        view = memoryview(data)
        out += b"".join(xxhash.xxh3_128_digest(view[i:i + bs]) for i in range(0, len(data), bs))
    return bytes(out)


@dataclass(frozen=True)
class _Frame:
    """A verified RECORDS frame: its records, the decompressed data of each write, its size."""

    records: list[Record]
    datas: list[Data]
    nbytes: int


class MasterTarget:
    def __init__(self, config: MasterTargetConfig) -> None:
        if config.storage not in ("file", "azure"):
            raise ConfigError(f"storage {config.storage!r}: expected 'file' or 'azure'")
        if config.storage == "azure" and not config.connection_string:
            raise ConfigError("storage 'azure' needs a connection string (connection_string_env in the config)")
        self.config = config
        if config.storage == "azure":
            from dr_agent.pageblob import load_sdk

            load_sdk()  # now, not inside the first disk's stream (about 0.4 s of CPU)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(config.state_dir / "catalog.sqlite")
        self.catalog_lock = threading.Lock()
        self.alerts = AlertLog(config.state_dir / "alerts.jsonl")
        self.metrics = Metrics("master-target")
        self.policy = RetentionPolicy(config.retention_s)
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}
        self._disk_locks: dict[str, threading.Lock] = {}
        self.listener = Listener(config.listen_host, config.listen_port, server_context(config.identity),
                                 MAY_DIAL[Role.MASTER_TARGET], self._handle, name="master-target")
        self.port = self.listener.port
        self.metrics.count_refusals(lambda: self.listener.refused)
        self.metrics_port = (self.metrics.serve(config.listen_host, config.metrics_port)
                             if config.metrics_port is not None else None)

    def _target(self, disk: str, size: int) -> Target:
        with self._lock:
            t = self._targets.get(disk)
            if t is None:
                if self.config.storage == "azure":
                    from dr_agent.pageblob import PageBlobTarget

                    conn = dict(self.config.disk_connection_strings).get(disk, self.config.connection_string)
                    assert conn is not None
                    t = PageBlobTarget(conn, self.config.container, f"{disk}.vhd", size)
                else:
                    t = FileTarget(self.config.state_dir / "disks" / f"{disk}.img", size)
                with self.catalog_lock:
                    self.catalog.add_disk(disk, t.location(), size)
                self._targets[disk] = t
            if t.size != size:
                raise ProtocolError(f"disk {disk} is {t.size} bytes at the replica; the stream says {size}")
            return t

    def _handle(self, conn: Connection) -> None:
        hello = receive_hello(conn)
        if hello is None:
            return
        disk, size = hello.disk, hello.size
        if hello.purpose == "hashes":  # reads only: the disk's stream may go on meanwhile
            self._serve_hashes(conn, self._target(disk, size))
            return
        if hello.purpose == "probe":  # where the stream stands, without waiting for the stream's connection
            conn.send_msg(FrameType.WELCOME, Welcome(applied=self._target(disk, size).applied_seq()))
            return
        with self._lock:
            lock = self._disk_locks.setdefault(disk, threading.Lock())
        if not lock.acquire(timeout=IDLE_TIMEOUT_S + 5):
            conn.refuse(f"disk {disk} is being received on another connection")
            return
        try:
            self._receive(conn, disk, self._target(disk, size))
        finally:
            lock.release()

    def _receive(self, conn: Connection, disk: str, target: Target) -> None:
        try:
            target.drain()  # the previous connection's commits: the WELCOME must say what is durable
        except AgentError as err:
            log.warning("disk %s: the previous stream's last commit failed (%s); resuming from the last durable one",
                        disk, err)
        applied = target.applied_seq()
        self.metrics.applied_seq.labels(disk).set(applied)
        conn.send_msg(FrameType.WELCOME, Welcome(applied=applied))
        # This thread reads, verifies and decompresses frames; an applier thread applies what has
        # arrived (up to GATHER_BYTES) under one commit and ACKs, so receiving overlaps applying.
        inbox: Inbox[_Frame] = Inbox(2 * GATHER_BYTES)
        applier = threading.Thread(target=self._apply_loop, args=(conn, disk, target, applied, inbox),
                                   name=f"mt-apply-{disk}", daemon=True)
        applier.start()
        dc = Compressor()
        try:
            while not inbox.closed:
                try:
                    ftype, payload = conn.recv()
                    if ftype == FrameType.RECORDS:
                        recs = decode_records(payload, views=True)
                        datas = [dc.decompress(r.codec, r.payload, r.length) if r.kind == Kind.WRITE else b""
                                 for r in recs]
                        inbox.put(_Frame(recs, datas, len(payload)))
                    elif ftype == FrameType.PING:
                        inbox.put(None)
                    else:
                        raise ProtocolError(f"expected RECORDS, got {ftype.name}")
                except CorruptData as err:
                    self.metrics.corrupt.labels(disk).inc()
                    self.alerts.raise_("critical", "corrupt-frame", f"disk {disk}: {err}; nothing of it applied",
                                       disk=disk)
                    conn.refuse(f"corrupt frame refused: {err}")
                    return
                except AgentError:
                    if inbox.closed:  # the applier ended the connection
                        return
                    raise
        finally:
            inbox.close()
            applier.join()

    def _apply_loop(self, conn: Connection, disk: str, target: Target, applied: int, inbox: Inbox[_Frame]) -> None:
        """Apply arrived frames in order, idempotently; one commit and one ACK per group.

        The commit runs in the target's commit thread (`commit_later`), which ACKs once the group is
        durable; meanwhile this thread applies the next group. Bookmarks commit synchronously: the
        snapshot must hold everything before it."""
        batch = Batch(target)

        def committed(seq: int) -> Callable[[BaseException | None], None]:
            def done(err: BaseException | None) -> None:
                if err is not None:
                    log.warning("disk %s: commit of seq %d failed: %s", disk, seq, err)
                    conn.close()  # the process server reconnects and replays from the last durable seq
                    return
                self.metrics.applied_seq.labels(disk).set(seq)
                try:
                    conn.send_msg(FrameType.ACK, Ack(applied=seq))
                except AgentError:
                    pass  # the stream ended; the next connection's WELCOME says where the replica is
            return done

        with ending_stream(f"master target: applying {disk}", inbox, conn, log):
            while True:
                group = inbox.take(GATHER_BYTES)
                if group is None:
                    return
                self.metrics.bytes_in.labels(disk).inc(sum(f.nbytes for f in group))
                last = applied
                for frame in group:
                    for rec, data in zip(frame.records, frame.datas, strict=True):
                        if rec.seq <= last:
                            continue  # a replay: already applied
                        if rec.seq != last + 1:
                            batch.apply()
                            if last != applied:
                                target.commit(last)
                            conn.refuse(f"disk {disk}: seq {rec.seq} after {last}")
                            inbox.close()
                            conn.close()
                            return
                        if rec.kind == Kind.WRITE:
                            batch.write(rec.offset, data)
                        elif rec.kind == Kind.DISCARD:
                            batch.discard(rec.offset, rec.length)
                        elif rec.kind == Kind.BOOKMARK:
                            if inbox.closed:  # the stream ended (a stop): no snapshot; the next stream replays it
                                return
                            batch.apply()
                            target.commit(rec.seq)
                            self._point(disk, target, rec)
                        last = rec.seq
                batch.apply()
                applied = last  # a keepalive or a replay commits nothing new, and is ACKed in order too
                target.commit_later(last, committed(last))

    def _serve_hashes(self, conn: Connection, target: Target) -> None:
        """Resync's target side: xxh3-128 digests of replica blocks, as capture's BlockHashSource."""
        conn.send_msg(FrameType.WELCOME, Welcome(applied=target.applied_seq()))
        while True:
            ftype, payload = conn.recv()
            if ftype != FrameType.HASHES:
                raise ProtocolError(f"expected HASHES, got {ftype.name}")
            conn.send_payload(FrameType.HASHES, block_hashes(target, message(HashesRequest, ftype, payload)))

    def _point(self, disk: str, target: Target, rec: Record) -> None:
        b = rec.bookmark()
        point_id, kind = str(b["id"]), str(b["kind"])
        with self.catalog_lock:
            if self.catalog.has_point(disk, point_id):
                return
        snap = target.snapshot(point_id, rec.seq)
        with self.catalog_lock:
            self.catalog.add_point(Point(disk, point_id, rec.seq, float(b["time"]), kind, b.get("group"), snap))
            prune(self.catalog, target, disk, self.policy, time.time())
        self.metrics.points.labels(disk, kind).inc()
        self.metrics.rpo.labels(disk).set(max(0.0, time.time() - float(b["time"])))

    def health(self) -> MasterTargetHealth:
        """The heartbeat body: replicas held, streams received now, points retained."""
        with self._lock:
            receiving = sum(1 for lock in self._disk_locks.values() if lock.locked())
        with self.catalog_lock:
            names = self.catalog.disk_names()
            points = sum(sum(1 for p in self.catalog.points(n) if p.disk == n) for n in names)
        return MasterTargetHealth(replicas=len(names), receiving=receiving, points=points)

    def catalog_report(self) -> CatalogReport:
        """Every replica, where it is, and its recovery points with their snapshots: what the
        configuration server keeps as the catalog of record (failover reads the points from there)."""
        now = time.time()
        streams = []
        with self.catalog_lock:
            for name in self.catalog.disk_names():
                entry = self.catalog.disk(name)
                loc = entry.location
                if loc.get("kind") == "pageblob":
                    conn = dict(self.config.disk_connection_strings).get(name, self.config.connection_string)
                    location = ReplicaLocation(kind="pageblob", account=storage_account(conn or ""),
                                               container=str(loc["container"]), blob=str(loc["blob"]))
                else:
                    location = ReplicaLocation(kind="file", path=str(loc["path"]))
                points = tuple(CatalogPoint(point_id=p.id, time=p.time, kind=p.kind, snapshot=p.snapshot,
                                            group_id=p.group_id)
                               for p in self.catalog.points(name) if p.disk == name)
                streams.append(StreamCatalog(stream=name, size=entry.size, location=location, points=points,
                                             rpo_seconds=max(0.0, now - points[-1].time) if points else None))
        return CatalogReport(streams=tuple(streams))

    def close(self) -> None:
        self.listener.close()  # closes the streams' connections; each stream then ends its applier
        with self._lock:
            streams = list(self._disk_locks.values())
        for held in streams:  # a stream holds its disk's lock until its applier is done with the target
            if held.acquire(timeout=STOP_WAIT_S):
                held.release()
        with self._lock:
            for t in self._targets.values():
                close = getattr(t, "close", None)
                if close:
                    close()
        with self.catalog_lock:  # not under a stream's query; later ones get the catalog's TargetError
            self.catalog.close()


# The storage emulator's account (Azure Storage docs, "Use the Azurite emulator": the
# `UseDevelopmentStorage=true` shortcut stands for it).
DEVELOPMENT_ACCOUNT = "devstoreaccount1"


def storage_account(connection_string: str) -> str:
    """The account a storage connection string names (Azure Storage docs, "Configure Azure Storage
    connection strings"): its `AccountName=`, else the first label of its `BlobEndpoint` host (the
    path's first segment for an emulator's IP endpoint); "" when it names none."""
    parts = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in connection_string.split(";"))}
    if parts.get("accountname"):
        return parts["accountname"]
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return DEVELOPMENT_ACCOUNT
    from urllib.parse import urlsplit

    endpoint = urlsplit(parts.get("blobendpoint", ""))
    host = endpoint.hostname or ""
    if host and not host.replace(".", "").isdigit() and host != "localhost":
        return host.split(".")[0]
    return endpoint.path.strip("/").split("/")[0]
