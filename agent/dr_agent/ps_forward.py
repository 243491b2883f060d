"""The process server's forwarders: cached records to the master target, in order, per disk.

A forwarder per disk dials the master target (role "process_server"), learns from WELCOME what the
replica has applied, and sends cached records from there, a window at a time, at most
`throttle_mbps` across all disks; cache segments go once the master target ACKs them applied. A
cached record that fails its checksum is never forwarded, nor anything after it: the cache drops
the records from it on and the agent streaming the disk is disconnected, so that its next WELCOME
says what to resend (or to resync).
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import time

from dr_agent.cache import DiskCache
from dr_agent.contract import Ack, Hello, Welcome
from dr_agent.errors import AgentError, CorruptData, CorruptRecord
from dr_agent.ps_disks import Disks
from dr_agent.records import FrameType
from dr_agent.transport import Connection, dial

log = logging.getLogger(__name__)

# Bytes per RECORDS frame to the master target, and bytes sent but not yet applied per disk.
FORWARD_FRAME_BYTES = 4 * 1024 * 1024
FORWARD_WINDOW_BYTES = 64 * 1024 * 1024
# Seconds between keepalive PINGs on an idle forwarding connection (well under IDLE_TIMEOUT_S).
PING_EVERY_S = 5.0
# Seconds a whole probe of the master target may take (connect, HELLO, WELCOME) when only asking
# where a stream stands: an agent's WELCOME waits on it.
PROBE_TIMEOUT_S = 3.0


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


class MasterTargetLink:
    """How this process server reaches its master target; remembers whether the last dial worked."""

    def __init__(self, address: tuple[str, int], ctx: ssl.SSLContext, *, name: str,
                 hostname: str | None = None) -> None:
        self.address, self.name, self.hostname = address, name, hostname
        self._ctx = ctx
        self.reachable = False
        self.last_change = 0.0  # monotonic time of the last dial's outcome
        self._down_logged = False  # an "unreachable" line was logged and no "reachable again" since
        self._log_lock = threading.Lock()

    def dial(self, *, timeout: float = 10.0) -> Connection:
        host, port = self.address
        try:
            conn = dial(host, port, self._ctx, timeout=timeout, server_hostname=self.hostname)
        except AgentError as err:
            self._seen(False, err)
            raise
        self._seen(True)
        return conn

    def _seen(self, ok: bool, err: AgentError | None = None) -> None:
        self.reachable = ok
        self.last_change = time.monotonic()
        with self._log_lock:  # one line per transition at the default level, not one per retry
            if ok == self._down_logged:
                self._down_logged = not ok
                host, port = self.address
                if ok:
                    log.warning("master target %s:%d reachable again; forwarding the cached changes", host, port)
                else:
                    log.warning("master target %s:%d unreachable: %s; the cache keeps the changes and "
                                "forwarding retries until it answers", host, port, err)

    def hello(self, disk: str, size: int, *, purpose: str = "stream", timeout: float = 10.0) -> tuple[Connection, int]:
        """A connection for `disk` past its WELCOME, and the replica's applied sequence."""
        conn = self.dial(timeout=timeout)
        try:
            conn.send_msg(FrameType.HELLO, Hello(disk, size, purpose=purpose, ps=self.name if purpose == "stream"
                                                 else None))
            return conn, conn.recv_msg(FrameType.WELCOME, Welcome).applied
        except BaseException:
            conn.close()
            raise

    def applied(self, disk: str, size: int) -> int | None:
        """The master target's applied sequence for `disk`, or None when it cannot say within
        PROBE_TIMEOUT_S. A "probe" HELLO: the master target answers it without the disk's stream
        connection (one per disk, which this process server's forwarder may hold)."""
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        try:
            conn = self.dial(timeout=PROBE_TIMEOUT_S)
        except AgentError:
            return None
        try:
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))  # the read, too, within the probe's time
            conn.send_msg(FrameType.HELLO, Hello(disk, size, purpose="probe"))
            return conn.recv_msg(FrameType.WELCOME, Welcome).applied
        except AgentError as err:
            log.info("master target %s:%d did not say where %s stands: %s", *self.address, disk, err)
            return None
        finally:
            conn.close()


class Forwarders:
    """One forwarding thread per disk with a cache."""

    def __init__(self, disks: Disks, link: MasterTargetLink, throttle: Throttle) -> None:
        self.disks, self.link, self.throttle = disks, link, throttle
        self.stalled: dict[str, str] = {}  # disk -> why its forwarding stopped for good (a corrupt cache)
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._streaming: set[str] = set()  # disks whose forwarder holds the master target's stream now

    def ensure(self, disk: str) -> None:
        """A forwarder for `disk` runs (started if it is not)."""
        with self._lock:
            t = self._threads.get(disk)
            if t is None or not t.is_alive():
                t = threading.Thread(target=self._loop, args=(disk,), name=f"fwd-{disk}", daemon=True)
                self._threads[disk] = t
                t.start()

    def _loop(self, disk: str) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._forward(disk)
                backoff = 0.2
            except CorruptRecord as err:
                self._drop(disk, err)
            except CorruptData as err:
                self.stalled[disk] = str(err)
                self.disks.corrupt(disk, str(err))
                return  # never forward past a corrupt record; resync this disk from the agent
            except AgentError as err:
                log.info("forwarding %s: %s; retrying in %.1f s", disk, err, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _drop(self, disk: str, err: CorruptRecord) -> None:
        """The cached record `err.seq` cannot be forwarded: drop it and what follows, and have the
        agent resend them (from memory) or resync the disk."""
        self.disks.corrupt(disk, str(err))
        dropped = self.disks.cache(disk).drop_from(err.seq)
        self.disks.alerts.raise_("warning", "dropped", f"disk {disk}: dropped {dropped} cached records from seq "
                                 f"{err.seq} (none may be applied before it); the agent resends them or resyncs "
                                 "the disk against the replica", disk=disk, from_seq=err.seq)
        agent = self.disks.agent(disk)
        if agent is not None:
            agent.close()  # it reconnects: its WELCOME says what to resend

    def _forward(self, disk: str) -> None:
        cache = self.disks.cache(disk)
        conn, applied = self.link.hello(disk, cache.disk_size)
        broken = threading.Event()
        try:
            cache.set_acked(applied)
            with self._lock:
                self._streaming.add(disk)
            reader = threading.Thread(target=self._read_acks, args=(conn, disk, cache, broken),
                                      name=f"fwd-ack-{disk}", daemon=True)
            reader.start()
            self._send(conn, disk, cache, applied + 1, broken)
        finally:
            with self._lock:
                self._streaming.discard(disk)
            conn.close()

    def applied(self, disk: str) -> int | None:
        """The master target's applied sequence for `disk` as this disk's forwarder knows it (its
        WELCOME, then the ACKs), or None when the forwarder holds no stream to the master target now."""
        with self._lock:
            return self.disks.cache(disk).acked_seq if disk in self._streaming else None

    @staticmethod
    def _read_acks(conn: Connection, disk: str, cache: DiskCache, broken: threading.Event) -> None:
        try:
            while True:
                cache.set_acked(conn.recv_msg(FrameType.ACK, Ack).applied)
        except AgentError as err:
            log.info("forwarding %s: %s", disk, err)
        finally:
            broken.set()
            with cache.changed:
                cache.changed.notify_all()

    def _send(self, conn: Connection, disk: str, cache: DiskCache, nxt: int, broken: threading.Event) -> None:
        sent: collections.deque[tuple[int, int]] = collections.deque()  # (last seq, bytes) in flight
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
            self.disks.metrics.bytes_out.labels(disk).inc(nbytes)
            sent.append((last_seq, nbytes))
            nxt = last_seq + 1

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        for _, cache in self.disks.items():
            with cache.changed:
                cache.changed.notify_all()
        for t in threads:
            t.join(timeout=5)
