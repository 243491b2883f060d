"""The process server: accepts agents, caches durably, compresses, forwards in order per disk.

Agents dial it (TLS, mutual authentication, role "agent"); it dials the master target (role
"process_server"). A connection opens with HELLO (a disk stream, or a resync's hash requests) or
with JOIN (an agent of a multi-VM group this process server coordinates). An agent's certificate
opens only the streams of the machine it names and joins only as that machine (transport.acts_for).
Its jobs, one module each:

    ps_ingest       an agent's stream: verify, compress, append with one fsync per group, ACK;
                    FALLBACK to bitmap tracking when the cache is full
    ps_forward      per disk, cached records to the master target in order, throttled, windowed
    ps_monitor      cache fill alerts (ASR's 30 % / 25 % free thresholds), RPO and backlog gauges
    ps_resync       an agent's block-hash requests relayed to the master target
    ps_coordinator  the multi-VM coordinator: one bookmark id across a group's machines
    ps_disks        what they share: the per-disk caches and the agents streaming them

When the master target is unreachable the cache keeps filling; alerts fire as free space falls;
when a frame would not fit, the agent falls back instead of anything being dropped. A cached record
that fails its checksum is never forwarded, nor anything after it, and the disk heals without an
operator (the agent resends, or resyncs against the replica).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dr_agent.alerts import AlertLog
from dr_agent.cache import SEGMENT_BYTES
from dr_agent.contract import MAY_DIAL, STREAM_NAME, Hello, ProcessServerHealth, Role
from dr_agent.metrics import Metrics
from dr_agent.pki import Identity, client_context, server_context
from dr_agent.ps_coordinator import Coordinator, GroupConfig
from dr_agent.ps_disks import Disks
from dr_agent.ps_forward import FORWARD_FRAME_BYTES, FORWARD_WINDOW_BYTES, Forwarders, MasterTargetLink, Throttle
from dr_agent.ps_ingest import GATHER_BYTES, Ingest
from dr_agent.ps_monitor import CRITICAL_FREE, WARN_FREE, CacheMonitor, Level
from dr_agent.ps_resync import relay_hashes
from dr_agent.records import FrameType
from dr_agent.transport import Connection, Listener, receive_hello, receive_join

log = logging.getLogger(__name__)

__all__ = ["CRITICAL_FREE", "FORWARD_FRAME_BYTES", "FORWARD_WINDOW_BYTES", "GATHER_BYTES", "WARN_FREE",
           "ProcessServer", "ProcessServerConfig", "Throttle"]
# Seconds between probes of the master target while no forwarder has reached it lately (health).
PROBE_EVERY_S = 30.0


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
    groups: tuple[GroupConfig, ...] = ()         # multi-VM groups this process server coordinates


class ProcessServer:
    def __init__(self, config: ProcessServerConfig) -> None:
        self.config = config
        config.cache_dir.mkdir(parents=True, exist_ok=True)
        self.alerts = AlertLog(config.cache_dir / "alerts.jsonl")
        self.metrics = Metrics("process-server")
        self.metrics.cache_capacity.set(config.capacity_bytes)
        self._stop = threading.Event()
        self.disks = Disks(config.cache_dir, segment_bytes=config.segment_bytes, alerts=self.alerts,
                           metrics=self.metrics)
        self.link = MasterTargetLink(config.master_target, client_context(config.identity), name=config.name,
                                     hostname=config.master_target_hostname)
        self.throttle = Throttle(config.throttle_mbps)
        self.forwarders = Forwarders(self.disks, self.link, self.throttle)
        self.monitor = CacheMonitor(self.disks, config.capacity_bytes)
        self.ingest = Ingest(self.disks, self.monitor, config.capacity_bytes, self._stop)
        self.coordinator = Coordinator(config.groups, self.alerts) if config.groups else None
        for d in sorted(p for p in config.cache_dir.iterdir() if p.is_dir() and STREAM_NAME.match(p.name)):
            cache = self.disks.cache(d.name)
            for c in cache.corruptions:
                self.disks.corrupt(d.name, f"cache scan: {c}")
            if cache.disk_size:
                self.forwarders.ensure(d.name)
        self.listener = Listener(config.listen_host, config.listen_port, server_context(config.identity),
                                 MAY_DIAL[Role.PROCESS_SERVER], self._handle, name="process-server")
        self.port = self.listener.port
        self.metrics.count_refusals(lambda: self.listener.refused)
        self.metrics_port = (self.metrics.serve(config.listen_host, config.metrics_port)
                             if config.metrics_port is not None else None)

    # -- what others read -----------------------------------------------------------------------
    @property
    def level(self) -> Level:
        """The cache's alert level: "ok", "warning" or "critical"."""
        return self.monitor.level

    @property
    def stalled(self) -> dict[str, str]:
        """Disks whose forwarding stopped at a corrupt cached record, and why."""
        return self.forwarders.stalled

    def used_bytes(self) -> int:
        return self.disks.used_bytes()

    def health(self) -> ProcessServerHealth:
        """The heartbeat body: cache, backlog per disk, agents, the master target, multi-VM groups."""
        if time.monotonic() - self.link.last_change > PROBE_EVERY_S and not self.disks.agents():
            self._probe_master_target()
        used = self.disks.used_bytes()
        coord = self.coordinator
        return ProcessServerHealth(
            name=self.config.name, cache_bytes=used, cache_capacity_bytes=self.config.capacity_bytes,
            cache_free_fraction=max(0.0, 1 - used / self.config.capacity_bytes), cache_level=self.monitor.level,
            backlog_bytes={d: c.used_bytes() for d, c in self.disks.items()}, agents=self.disks.agents(),
            master_target_reachable=self.link.reachable,
            groups={g: coord.state(g).complete for g in coord.groups} if coord else {},
            group_problems=coord.problems() if coord else {}, last_group_points=coord.last_points() if coord else {},
            resync_from={d: c.resync_from for d, c in self.disks.items() if c.resync_from is not None})

    def _probe_master_target(self) -> None:
        try:
            self.link.dial(timeout=3).close()
        except Exception as err:  # recorded in link.reachable: health never fails
            log.info("master target %s:%d unreachable: %s", *self.link.address, err)

    # -- a connection ---------------------------------------------------------------------------
    def _handle(self, conn: Connection) -> None:
        first = conn.recv()
        if first[0] == FrameType.JOIN:
            if self.coordinator is None:
                conn.refuse(f"process server {self.config.name} coordinates no multi-VM group; check "
                            "`coordinator` in agent.toml (the first process server of the group's site)")
                return
            join = receive_join(conn, first)
            if join is not None:
                self.coordinator.serve(conn, join)
            return
        hello = receive_hello(conn, first)
        if hello is not None:
            self._stream(conn, hello)

    def _stream(self, conn: Connection, hello: Hello) -> None:
        disk, size = hello.disk, hello.size
        cache = self.disks.cache(disk)
        if cache.last_seq == 0 and cache.used_bytes() == 0:
            # A disk new to this process server (first sync, or an agent that moved here): start
            # the stream where the master target is, or where the agent's retained records begin.
            base = self.forwarders.applied(disk)  # its forwarder holds the stream: it knows
            if base is None:
                base = self.link.applied(disk, size)
            if base is None:
                first = hello.first_retained
                base = first - 1 if first else 0
            cache.rebase(base)
        cache.set_disk_size(size)
        self.forwarders.ensure(disk)
        if hello.purpose == "hashes":
            relay_hashes(conn, disk, cache, self.link, self._stop)
        else:
            self.ingest.stream(conn, hello, cache)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        if self.coordinator is not None:
            self.coordinator.close()
        self.ingest.close()
        self.monitor.close()
        self.forwarders.close()
        self.disks.close()
