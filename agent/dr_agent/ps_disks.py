"""The process server's disks: one durable cache per disk stream, when each sequence arrived (for
the RPO), and which agent connection streams each disk now. Shared by the process server's jobs
(ingest, forwarder, cache monitor, resync relay)."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

from dr_agent.alerts import AlertLog
from dr_agent.cache import DiskCache
from dr_agent.metrics import Metrics
from dr_agent.transport import Connection


class Disks:
    def __init__(self, cache_dir: Path, *, segment_bytes: int, alerts: AlertLog, metrics: Metrics) -> None:
        self.cache_dir = cache_dir
        self.segment_bytes = segment_bytes
        self.alerts = alerts
        self.metrics = metrics
        self._lock = threading.Lock()
        self._caches: dict[str, DiskCache] = {}
        self._times: dict[str, collections.deque[tuple[int, float]]] = {}  # (durable seq, arrival time)
        self._agents: dict[str, Connection] = {}  # disk -> the agent's stream connection now

    def cache(self, disk: str) -> DiskCache:
        """The disk's cache (opened, and scanned, on first use)."""
        with self._lock:
            c = self._caches.get(disk)
            if c is None:
                c = self._caches[disk] = DiskCache(self.cache_dir, disk, segment_bytes=self.segment_bytes)
                self._times[disk] = collections.deque()
            return c

    def items(self) -> list[tuple[str, DiskCache]]:
        with self._lock:
            return list(self._caches.items())

    def used_bytes(self) -> int:
        return sum(c.used_bytes() for _, c in self.items())

    def arrived(self, disk: str, durable: int) -> None:
        """Records up to `durable` became durable now (the RPO counts from here)."""
        self._times[disk].append((durable, time.time()))

    def oldest_unapplied(self, disk: str, acked: int) -> float | None:
        """When the oldest record not yet applied at the master target arrived (epoch s), or None."""
        times = self._times[disk]
        while times and times[0][0] <= acked:
            times.popleft()
        return times[0][1] if times else None

    def corrupt(self, disk: str, message: str) -> None:
        self.metrics.corrupt.labels(disk).inc()
        self.alerts.raise_("critical", "corrupt", f"disk {disk}: {message}; not forwarded", disk=disk)

    # -- agents streaming -----------------------------------------------------------------------
    def attach(self, disk: str, conn: Connection) -> None:
        with self._lock:
            self._agents[disk] = conn

    def detach(self, disk: str, conn: Connection) -> None:
        with self._lock:
            if self._agents.get(disk) is conn:
                del self._agents[disk]

    def agent(self, disk: str) -> Connection | None:
        with self._lock:
            return self._agents.get(disk)

    def agents(self) -> dict[str, str]:
        """disk -> the name (certificate) of the agent streaming it now."""
        with self._lock:
            return {d: c.peer[0] for d, c in self._agents.items()}

    def close(self) -> None:
        caches = [c for _, c in self.items()]
        for cache in caches:
            with cache.changed:
                cache.changed.notify_all()
        for cache in caches:
            cache.close()
