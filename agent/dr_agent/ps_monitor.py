"""The process server's cache monitor: fill alerts at ASR's thresholds, RPO and backlog gauges."""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from dr_agent.ps_disks import Disks

log = logging.getLogger(__name__)

# ASR's process server alerts: warning below 30 % free cache, critical below 25 % (ASR docs,
# "Monitor the process server").
WARN_FREE = 0.30
CRITICAL_FREE = 0.25
# Seconds between the monitor's passes (alerts are also checked after every append).
MONITOR_EVERY_S = 0.5
Level = Literal["ok", "warning", "critical"]


class CacheMonitor:
    def __init__(self, disks: Disks, capacity_bytes: int) -> None:
        self.disks = disks
        self.capacity_bytes = capacity_bytes
        self.level: Level = "ok"
        self._fill_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ps-monitor", daemon=True)
        self._thread.start()

    def free_fraction(self) -> float:
        return 1 - self.disks.used_bytes() / self.capacity_bytes

    def check_fill(self) -> None:
        """Raise an alert for every threshold crossed since the last check (called after each append)."""
        alerts, metrics = self.disks.alerts, self.disks.metrics
        used = self.disks.used_bytes()
        free = 1 - used / self.capacity_bytes
        level: Level = "critical" if free < CRITICAL_FREE else "warning" if free < WARN_FREE else "ok"
        metrics.cache_used.set(used)
        metrics.cache_fill.set(used / self.capacity_bytes)
        with self._fill_lock:
            if level == self.level:
                return
            order = ("ok", "warning", "critical")
            old, new = order.index(self.level), order.index(level)
            self.level = level
            if new < old:
                alerts.raise_("info", f"cache-{level}", f"cache {free:.0%} free again", free=free)
                return
            for crossed in order[old + 1:new + 1]:
                lvl: Literal["warning", "critical"] = "critical" if crossed == "critical" else "warning"
                alerts.raise_(lvl, f"cache-{crossed}", f"cache {free:.0%} free ({used} of {self.capacity_bytes} "
                              "bytes used); is the master target reachable?", free=free)
                metrics.alerts.labels(crossed).inc()

    def _loop(self) -> None:
        metrics = self.disks.metrics
        while not self._stop.wait(MONITOR_EVERY_S):
            try:
                self.check_fill()
                now = time.time()
                for disk, cache in self.disks.items():
                    oldest = self.disks.oldest_unapplied(disk, cache.acked_seq)
                    metrics.rpo.labels(disk).set(now - oldest if oldest is not None else 0.0)
                    metrics.backlog.labels(disk).set(cache.used_bytes())
                    metrics.applied_seq.labels(disk).set(cache.acked_seq)
            except Exception:
                log.exception("monitor failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
