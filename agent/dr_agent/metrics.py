"""Prometheus metrics of the process server and master target (prometheus-client, one registry per service)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metrics:
    """Every metric of one service instance, in its own registry (no module-level state)."""

    service: str
    registry: Any = field(init=False)
    # raw and stored bytes per disk since the service started: the compression ratio is their quotient
    _totals: dict[str, tuple[int, int]] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge
        except ImportError:
            raise ImportError("metrics need prometheus-client: pip install 'dr-agent[metrics]'") from None
        r = self.registry = CollectorRegistry()
        p = "dr_" + self.service.replace("-", "_")
        self.bytes_in = Counter(f"{p}_bytes_in", "bytes of change data received (as sent)", ["disk"], registry=r)
        self.bytes_out = Counter(f"{p}_bytes_out", "bytes of change data sent on (as stored)", ["disk"],
                                 registry=r)
        self.raw_bytes = Counter(f"{p}_raw_bytes", "change data before compression", ["disk"], registry=r)
        self.stored_bytes = Counter(f"{p}_stored_bytes", "change data after compression", ["disk"], registry=r)
        self.compression_ratio = Gauge(f"{p}_compression_ratio", "raw bytes / stored bytes since the service "
                                       "started (the two counters' quotient)", ["disk"], registry=r)
        self.cache_used = Gauge(f"{p}_cache_used_bytes", "bytes in the cache", registry=r)
        self.cache_capacity = Gauge(f"{p}_cache_capacity_bytes", "cache capacity", registry=r)
        self.cache_fill = Gauge(f"{p}_cache_fill_ratio", "used / capacity", registry=r)
        self.rpo = Gauge(f"{p}_rpo_seconds", "age of the oldest change not yet applied at the target",
                         ["disk"], registry=r)
        self.backlog = Gauge(f"{p}_backlog_bytes", "bytes cached but not yet applied", ["disk"], registry=r)
        self.applied_seq = Gauge(f"{p}_applied_seq", "last sequence applied at the replica", ["disk"],
                                 registry=r)
        self.corrupt = Counter(f"{p}_corrupt_records", "records or frames refused by checksum", ["disk"],
                               registry=r)
        self._prefix = p
        self.alerts = Counter(f"{p}_alerts", "alerts raised", ["level"], registry=r)
        self.points = Counter(f"{p}_recovery_points", "recovery points created", ["disk", "kind"], registry=r)

    def compressed(self, disk: str, raw: int, stored: int) -> None:
        """Count `raw` bytes of change data stored as `stored` bytes; the ratio gauge follows the totals."""
        self.raw_bytes.labels(disk).inc(raw)
        self.stored_bytes.labels(disk).inc(stored)
        with self._lock:
            total_raw, total_stored = self._totals.get(disk, (0, 0))
            total_raw, total_stored = total_raw + raw, total_stored + stored
            self._totals[disk] = (total_raw, total_stored)
        self.compression_ratio.labels(disk).set(total_raw / max(total_stored, 1))

    def count_refusals(self, refused: Callable[[], int]) -> None:
        """Expose `<service>_refused_connections_total`: peers refused (certificate, role, or an agent
        acting for a machine not its own), as the listener counts them (`refused()` is read at each
        scrape)."""
        from prometheus_client.core import CounterMetricFamily

        name = f"{self._prefix}_refused_connections"

        class Refusals:
            def collect(self) -> Iterator[CounterMetricFamily]:
                family = CounterMetricFamily(name, "peers refused (certificate, role, or another machine's disks)")
                family.add_metric([], float(refused()))
                yield family

        self.registry.register(Refusals())

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on `host:port` (0: any free port); returns the port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

    def text(self) -> str:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry)).decode()
