"""The agent service: protects a source machine's disks, beside ProcessServer and MasterTarget.

    agent = Agent(AgentConfig(...))     # `dr-agent agent --config agent.toml` builds this
    agent.health()                      # contract.AgentHealth: per disk state, sync, RPO, backlog
    agent.close()                       # a final point once every change is durable, then stop

Each disk is captured in the mode its config names (contract.DISK_MODES):

* `tracking`: a block device already in use, its file system mounted directly. Block tracepoints
  mark written blocks in a bitmap (capture.tracking.BlockTracker); the agent is not in the I/O
  path, so stopping or killing it never fails a write. At a point the file systems are frozen,
  the blocks written since the last point are read and sent, the bookmark follows, they are
  thawed. Blocks written since the previous point are pre-copied before the freeze, so a freeze
  lasts as long as the last few changes take to read, not the whole interval's.
* `splitter`: the agent presents the disk itself (capture.splitter: a FUSE file with a loop device
  over it, `device` in the health); the workload's file system is mounted on that loop device.

A disk's life (contract.DISK_STATES): `initial-sync` (capture.initial_sync: resumable, skipping
zeros and holes), then `protected` (streaming; points offered), `bitmap` when the process server
is away or full (changed blocks tracked, resent when it is back), `resync` (compared with the
replica by block hashes: after a restart in tracking mode, an unclean stop in splitter mode, or
records the process server lost). No point is taken before every disk of the machine finished its
initial sync at the process server, durably.

The workload never waits on the network: capture writes into a bounded buffer (sink.BufferedSink)
drained by its own thread; when it is full the disk drops to its bitmap at once. The agent starts
without the process server, reconnects with capped exponential backoff and jitter forever, and
heals by itself: every state change is logged once at WARNING.

Points carry one bookmark id across all the machine's disks. In a multi-VM group with a
coordinator (`coordination.GroupMember`), the coordinator takes the points while it is connected
(this Agent is its participant: pause/mark/resume); otherwise the agent takes its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_agent.capture import _linux
from dr_agent.capture.consistency import SCRIPT_TIMEOUT, freeze, new_bookmark_id, run_script, thaw
from dr_agent.capture.errors import CaptureError, TrackingLost
from dr_agent.capture.initial_sync import (
    CHECKPOINT_EVERY,
    CHUNK,
    initial_sync,
    read_checkpoint,
    source_identity,
)
from dr_agent.capture.resync import resync
from dr_agent.changes import BookmarkKind
from dr_agent.contract import AgentDiskHealth, AgentHealth
from dr_agent.errors import AgentError, ConfigError
from dr_agent.pki import Identity
from dr_agent.sink import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    BUFFER_BYTES,
    CONNECT_TIMEOUT_S,
    Backoff,
    BufferedSink,
    ProcessServerSink,
    RemoteHashes,
)

log = logging.getLogger("dr_agent.agent")

# Seconds a stopping agent waits for its final point to be durable at the process server, so a
# planned failover's drain finds it; past it the next start compares the disks with the replica.
STOP_PATIENCE_S = 10.0
# Seconds between the agent's checks of each disk (sink state, tracking losses, healing).
TICK_S = 0.2
# Seconds a point waits for a disk's worker to finish a step before it is skipped (a group point's
# pause must answer well inside the coordinator's pause timeout).
LOCK_WAIT_S = 2.0
# A point's dirty blocks read while the file systems are frozen may take at most this share of
# the buffer; more means the pre-copy fell behind: the point is skipped, the next one tries again.
FROZEN_SHARE = 0.5


@dataclass(frozen=True)
class DiskConfig:
    name: str                              # the stream: contract.stream_name(machine, disk)
    mode: str                              # "tracking" or "splitter"
    device: Path                           # tracking: the block device; splitter: the backing disk or file
    mount_points: tuple[str, ...] = ()     # tracking: its file systems; splitter: those on the loop device
    fuse_dir: Path | None = None           # splitter: where the FUSE file appears


@dataclass(frozen=True)
class AgentConfig:
    name: str
    identity: Identity
    process_servers: tuple[tuple[str, int], ...]
    disks: tuple[DiskConfig, ...]
    state_dir: Path
    server_hostname: str | None = None
    crash_every_s: float = 300.0
    app_every_s: float | None = None
    group: str | None = None               # multi-VM group (its points carry this group id)
    coordinator: tuple[str, int] | None = None
    pre_scripts: tuple[str, ...] = ()      # app points: run before the freeze (DR_POINT_ID, DR_POINT_KIND)
    post_scripts: tuple[str, ...] = ()     # app points: run after the thaw, always
    script_timeout_s: float = SCRIPT_TIMEOUT
    buffer_bytes: int = BUFFER_BYTES
    spill_bytes: int = 0                   # then this much in a local file (state_dir/<disk>.spill); 0: none
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    io_timeout_s: float | None = None      # None: the transport's idle timeout
    stop_patience_s: float = STOP_PATIENCE_S
    sync_checkpoint_bytes: int = CHECKPOINT_EVERY  # at most this much is copied again after a restart

    def __post_init__(self) -> None:
        if self.sync_checkpoint_bytes <= 0 or self.sync_checkpoint_bytes % CHUNK:
            raise ConfigError(f"sync_checkpoint_mb: {self.sync_checkpoint_bytes / 2**20:g} MiB; expected a positive "
                              f"multiple of {CHUNK >> 20} MiB")
        if not self.disks:
            raise ConfigError(f"agent {self.name}: no disks to protect; add [[agent.disks]] tables")
        names = [d.name for d in self.disks]
        if len(set(names)) != len(names):
            raise ConfigError(f"agent {self.name}: a disk is listed twice ({', '.join(names)})")
        for d in self.disks:
            if d.mode not in ("tracking", "splitter"):
                raise ConfigError(f"disk {d.name}: mode = {d.mode!r}; expected \"tracking\" (a disk already in "
                                  "use, its file system mounted directly) or \"splitter\" (the agent presents it)")
            if d.mode == "tracking" and not d.mount_points:
                raise ConfigError(f"disk {d.name}: tracking mode freezes the disk's file systems at each point; "
                                  "list them: mount_points = [\"/data\"]")
            if d.mode == "splitter" and d.fuse_dir is None:
                raise ConfigError(f"disk {d.name}: splitter mode needs mountpoint = \"/run/dr-agent/{d.name}\"")


@dataclass
class _Sync:
    """A sync's progress for the health: bytes done of total, and the rate since it started."""

    done: int = 0
    total: int = 0
    started: float = 0.0
    first: int | None = None

    def progress(self, done: int, total: int) -> None:
        if self.first is None:
            self.first, self.started = done, time.monotonic()
        self.done = done

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done - (self.first or 0)) / elapsed if self.first is not None and elapsed > 0 else 0.0


@dataclass
class _Disk:
    config: DiskConfig
    down: ProcessServerSink
    buffered: BufferedSink
    size: int
    marker: Path
    checkpoint: Path
    unclean: bool                          # the last run did not stop cleanly
    state: str = "initial-sync"
    problem: str = ""
    tracker: Any = None                    # BlockTracker (tracking mode)
    reader: Any = None                     # DiskReader of the device (tracking mode)
    splitter: Any = None                   # Splitter (splitter mode)
    device: str | None = None              # splitter: the loop device
    sync: _Sync = field(default_factory=_Sync)
    # a point vs this disk's worker; a Lock, not an RLock: a group point may resume from another thread
    lock: threading.Lock = field(default_factory=threading.Lock)
    splitter_held: bool = False            # paused by the point under way
    was_connected: bool = False
    said_unreachable: bool = False
    retry_at: float = 0.0                  # the process server's cache was full: ask it again after this

    @property
    def name(self) -> str:
        return self.config.name


class Agent:
    """Protects the configured disks until `close()`; see the module docstring."""

    port: int | None = None                # no listening port on a source machine
    metrics_port: int | None = None

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._point_lock = threading.Lock()
        self._frozen: list[tuple[Path, int]] = []
        self._held: list[_Disk] = []
        self._point: tuple[str, BookmarkKind, str] | None = None  # (id or "", kind, scripts' env id)
        self.last_point: str | None = None
        self.points_taken = 0
        # monotonic time of the newest multi-VM point marked on this machine's disks (start: none yet)
        self._group_point_at = time.monotonic()
        self._own_while_grouped = False  # own points taken while in a group whose points do not land
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._disks: list[_Disk] = []
        self._threads: list[threading.Thread] = []
        self._member: Any = None
        try:
            for dc in config.disks:
                self._disks.append(self._open_disk(dc))
        except BaseException:
            self._release()
            raise
        self.devices = {d.name: d.device for d in self._disks if d.device}
        for d in self._disks:
            self._spawn(self._work, d, name=f"agent-disk-{d.name}")
        self._spawn(self._schedule, name="agent-points")
        if config.coordinator is not None and config.group:
            from dr_agent.coordination import GroupMember

            self._member = GroupMember([config.coordinator], config.identity, agent=config.name,
                                       group=config.group, participant=self,
                                       server_hostname=config.server_hostname)

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- starting a disk (never waits on the process server) ---------------------------------
    def _open_disk(self, dc: DiskConfig) -> _Disk:
        c = self.config
        if not dc.device.exists():
            raise ConfigError(f"disk {dc.name}: {dc.device} does not exist; check `device` in the agent's config")
        with open(dc.device, "rb") as f:
            size = _linux.size_of(f.fileno())
        if size <= 0 or size % 512:
            raise ConfigError(f"disk {dc.name}: {dc.device} is {size} bytes; expected a positive multiple of 512")
        down = ProcessServerSink(disk=dc.name, size=size, servers=list(c.process_servers), identity=c.identity,
                                 server_hostname=c.server_hostname, patience_s=float("inf"),
                                 backoff=Backoff(c.backoff_initial_s, c.backoff_max_s),
                                 connect_timeout_s=c.connect_timeout_s, io_timeout_s=c.io_timeout_s)
        buffered = BufferedSink(down, capacity_bytes=c.buffer_bytes, spill=c.state_dir / f"{dc.name}.spill",
                                spill_bytes=c.spill_bytes)
        marker = c.state_dir / f"{dc.name}.running"
        d = _Disk(dc, down, buffered, size, marker, c.state_dir / f"{dc.name}.sync.json", marker.exists())
        try:
            if d.unclean:
                log.warning("disk %s: the agent did not stop cleanly; the disk will be compared with the replica",
                            dc.name)
            marker.write_bytes(b"")
            if dc.mode == "tracking":
                self._start_tracking(d)
            else:
                self._start_splitter(d)
        except BaseException:
            buffered.close()
            raise
        d.state = self._first_state(d)
        log.info("disk %s: %s mode, %s", dc.name, dc.mode, d.state)
        return d

    def _start_tracking(self, d: _Disk) -> None:
        from dr_agent.capture.tracking import BlockTracker

        dc = d.config
        if not _linux.is_block_device(dc.device):
            raise ConfigError(f"disk {dc.name}: tracking mode follows a block device; {dc.device} is not one "
                              "(a disk image is protected with mode = \"splitter\")")
        for mp in dc.mount_points:
            # a file system left frozen by an agent killed during a point: thaw it now (FITHAW on
            # a file system that is not frozen fails with EINVAL and changes nothing)
            with contextlib.suppress(OSError):
                _linux.thaw(Path(mp))
                log.warning("disk %s: thawed %s, left frozen by an agent that stopped during a point", dc.name, mp)
        d.tracker = BlockTracker(dc.device)
        d.tracker.start()
        d.reader = _linux.DiskReader(dc.device, max_read=CHUNK)

    def _start_splitter(self, d: _Disk) -> None:
        from dr_agent.capture.splitter import Splitter, attach_loop

        dc = d.config
        mounted = _mounted_on(dc.device)
        if mounted:
            raise ConfigError(f"disk {dc.name}: {dc.device} is mounted directly on {', '.join(mounted)}; writes "
                              "there would bypass the splitter. Protect it with mode = \"tracking\" instead")
        assert dc.fuse_dir is not None
        dc.fuse_dir.mkdir(parents=True, exist_ok=True)
        d.splitter = Splitter(dc.device, dc.fuse_dir, d.buffered, name=dc.name)
        d.splitter.__enter__()
        try:
            d.device = attach_loop(d.splitter.path)
            link = _device_link(dc)
            link.unlink(missing_ok=True)
            link.symlink_to(d.device)
        except BaseException:
            d.splitter.close()
            raise
        log.warning("disk %s: presented as %s (also %s); mount the file system there", dc.name, d.device, link)

    def _first_state(self, d: _Disk) -> str:
        saved = read_checkpoint(d.checkpoint)
        if saved is None or saved.source != source_identity(d.config.device) or saved.size != d.size:
            if saved is not None:
                log.warning("disk %s: its initial sync checkpoint is for another disk; starting over", d.name)
                d.checkpoint.unlink()
            return "initial-sync"
        if not saved.complete:
            return "initial-sync"
        # tracking starts blind: writes made while no tracker ran are unknown
        return "resync" if d.config.mode == "tracking" or d.unclean else "protected"

    # -- each disk's worker: initial sync, resync, healing ------------------------------------
    def _work(self, d: _Disk) -> None:
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        said = ""
        while not self._stop.is_set():
            try:
                if self._fell_back(d):  # first: a sync's sends would be refused meanwhile
                    if not self._heal(d):
                        self._stop.wait(TICK_S)
                        continue
                elif d.state == "initial-sync":
                    self._initial_sync(d)
                elif d.state == "resync":
                    self._resync(d)
                elif d.tracker is not None and d.tracker.lost is not None:
                    self._set_state(d, "resync", f"tracking lost: {d.tracker.lost}")
                else:
                    self._stop.wait(TICK_S)
                backoff.reset()
                said = ""
            except AgentError as err:
                if self._stop.is_set():
                    return
                if str(err) != said:
                    said = str(err)
                    log.warning("%s; retrying", said if said.startswith(f"disk {d.name}") else f"disk {d.name}: {said}")
                d.problem = str(err)
                self._stop.wait(backoff.delay())
            except Exception:  # a defect: say so, keep protecting the other disks, retry later
                log.exception("disk %s: unexpected failure; retrying", d.name)
                self._stop.wait(backoff.delay())

    def _watch_link(self, d: _Disk) -> None:
        connected = d.buffered.connected
        if connected and not d.was_connected:
            if d.said_unreachable:
                log.warning("disk %s: reconnected to the process server", d.name)
            d.said_unreachable = False
        elif not connected and not d.said_unreachable and (d.was_connected or d.down.last_error):
            log.warning("disk %s: the process server is unreachable (%s); changes are buffered, then tracked "
                        "in a bitmap, and sent when it is back; retrying with backoff", d.name,
                        d.down.last_error or "connection lost")
            d.said_unreachable = True
        d.was_connected = connected

    def _set_state(self, d: _Disk, state: str, why: str) -> None:
        if d.state != state:
            log.warning("disk %s: %s -> %s (%s)", d.name, d.state, state, why)
            d.state = state
        d.problem = "" if state == "protected" else why

    def _exclusive(self, d: _Disk,
                   room: Callable[[int], None]) -> Callable[[], contextlib.AbstractContextManager[None]]:
        """A read-and-send step's lock: wait for room in the buffer first (outside the workload's
        lock), then hold the splitter's apply path (nothing to hold in tracking mode)."""
        @contextlib.contextmanager
        def exclusive() -> Iterator[None]:
            room(CHUNK)
            if d.splitter is None:
                yield
            else:
                with d.splitter.exclusive():
                    yield
        return exclusive

    def _initial_sync(self, d: _Disk) -> None:
        paced = d.buffered.paced(self._stop)
        saved = read_checkpoint(d.checkpoint)
        resumed = saved.offset if saved else 0
        d.sync = _Sync(total=d.size)
        log.warning("disk %s: initial sync %s (%d MiB)", d.name,
                    f"resumes at {resumed >> 20} MiB" if resumed else "starts", d.size >> 20)
        if d.tracker is not None:
            losses = d.tracker.losses
            d.tracker.sync()
            d.tracker.bitmap.take()  # the copy reads every block: earlier marks are covered
        if resumed and (d.tracker is not None or d.unclean):
            # the part copied before the restart may have changed while no capture ran
            hashes = self._hashes(d)
            try:
                resync(d.config.device, hashes, paced, end=resumed, exclusive=self._exclusive(d, paced.room),
                       progress=d.sync.progress)
            finally:
                hashes.close()
        result = initial_sync(d.config.device, paced, checkpoint=d.checkpoint, target=d.name,
                              checkpoint_every=self.config.sync_checkpoint_bytes,
                              exclusive=self._exclusive(d, paced.room), progress=d.sync.progress)
        if d.tracker is not None:
            d.tracker.synced(losses)
        d.unclean = False
        self._set_state(d, "protected", f"initial sync done: {result.bytes_sent >> 20} MiB sent, "
                                        f"{(result.bytes_skipped_zero + result.bytes_skipped_holes) >> 20} MiB "
                                        "of zeros skipped")

    def _hashes(self, d: _Disk) -> RemoteHashes:
        c = self.config
        return RemoteHashes(disk=d.name, size=d.size, servers=list(c.process_servers), identity=c.identity,
                            server_hostname=c.server_hostname)

    def _resync(self, d: _Disk) -> None:
        """Compare the whole disk with the replica by block hashes; send what differs."""
        paced = d.buffered.paced(self._stop)
        d.sync = _Sync(total=d.size)
        losses = d.tracker.losses if d.tracker is not None else 0
        if d.tracker is not None:
            d.tracker.sync()
            d.tracker.bitmap.take()
        hashes = self._hashes(d)
        try:
            result = resync(d.config.device, hashes, paced, exclusive=self._exclusive(d, paced.room),
                            progress=d.sync.progress)
        finally:
            hashes.close()
        if d.tracker is not None:
            d.tracker.synced(losses)
            if d.tracker.lost is not None:
                raise TrackingLost(f"tracking was lost again during the resync: {d.tracker.lost}")
        d.unclean = False
        self._set_state(d, "protected", f"resynced against the replica: {result.blocks_differing} of "
                                        f"{result.blocks} blocks differed")

    def _fell_back(self, d: _Disk) -> bool:
        return (d.buffered.fallback is not None or d.down.fallback is not None
                or (d.splitter is not None and d.splitter.mode == "bitmap"))

    def _heal(self, d: _Disk) -> bool:
        """Leave bitmap mode once the process server takes changes again; True when healed."""
        with d.lock:
            reason = d.buffered.fallback or (d.down.fallback.reason if d.down.fallback else "") or "the sink failed"
            if d.state == "protected":
                self._set_state(d, "bitmap", f"{reason}; tracking changed blocks")
            elif d.state != "bitmap":  # a sync under way continues from its checkpoint once healed
                d.problem = f"{reason}; tracking changed blocks"
            before = d.state
            fb = d.down.fallback
            if fb is not None and fb.resync:
                d.buffered.fall_back(fb.reason)
                d.buffered.wait_idle(self._stop)  # the resync writes to the stream itself
                self._mark_dirty(d, d.buffered.take_dirty(), fb.reason)
                from dr_agent.heal import resync_after_fallback

                c = self.config
                d.state = "resync"
                try:
                    resync_after_fallback(d.down, d.config.device, servers=list(c.process_servers),
                                          identity=c.identity, server_hostname=c.server_hostname,
                                          exclusive=d.splitter.exclusive if d.splitter is not None
                                          else contextlib.nullcontext)
                finally:
                    d.state = before
            elif fb is not None:  # the process server's cache was full: ask it again, not too often
                if time.monotonic() < d.retry_at:
                    return False
                d.retry_at = time.monotonic() + d.down.backoff.delay()
                self._mark_dirty(d, d.down.resume(), fb.reason)
            self._mark_dirty(d, d.buffered.take_dirty(), reason)
            if not d.buffered.drained():
                return False
            d.buffered.rearm()
            sent = 0
            if d.splitter is not None:
                sent = d.splitter.resume_data_mode(room=d.buffered.paced(self._stop).room)
            why = (f"the process server takes changes again; {sent >> 20} MiB of changed blocks resent"
                   if d.splitter is not None else
                   "the process server takes changes again; the changed blocks go with the next point")
            if d.state == "bitmap":
                self._set_state(d, "protected", why)
            else:
                log.warning("disk %s: %s; the %s continues", d.name, why, d.state)
                d.problem = ""
            return True

    def _mark_dirty(self, d: _Disk, ranges: list[tuple[int, int]], reason: str) -> None:
        if d.splitter is not None:
            d.splitter.mark_dirty(ranges, reason)
        elif d.tracker is not None:
            for offset, length in ranges:
                d.tracker.bitmap.mark(offset, length)

    # -- points: one id across every disk of the machine ---------------------------------------
    def _schedule(self) -> None:
        c = self.config
        now = time.monotonic()
        next_crash = now + c.crash_every_s
        next_app = now + c.app_every_s if c.app_every_s else float("inf")
        said = ""
        while not self._stop.wait(TICK_S):
            for d in self._disks:  # here, not in the disks' workers: those may be waiting on the link
                self._watch_link(d)
            now = time.monotonic()
            if now < min(next_crash, next_app):
                continue
            grouped = self._member is not None and self._member.connected
            if grouped:
                # The group's coordinator takes the points (app points are the group's alone); but when
                # none has landed here within the crash interval (a member cannot take points: in its
                # initial sync, stuck), the machine takes its own crash-consistent point, as ASR keeps
                # per-VM points besides multi-VM ones: this machine's RPO stays bounded meanwhile.
                next_app = now + c.app_every_s if c.app_every_s else float("inf")
                next_crash = max(next_crash, self._group_point_at + c.crash_every_s)
                if now < next_crash:
                    continue
            not_ready = [f"{d.name} is in {d.state}" for d in self._disks
                         if d.state != "protected" or not d.buffered.connected]
            if not_ready:
                continue  # a point needs every disk streaming; the state change was logged
            kind: BookmarkKind = "app" if now >= next_app else "crash"
            if grouped and not self._own_while_grouped:
                self._own_while_grouped = True
                log.warning("group %s: no multi-VM point has landed on this machine's disks for %.0f s "
                            "(crash_consistent_every_s); taking this machine's own crash-consistent points "
                            "until the group's resume", c.group, now - self._group_point_at)
            try:
                self.take_point(kind)
                said = ""
            except AgentError as err:
                if str(err) != said:
                    log.warning("%s point skipped: %s", kind, err)
                    said = str(err)
            next_crash = now + c.crash_every_s
            if kind == "app" and c.app_every_s:
                next_app = now + c.app_every_s

    def take_point(self, kind: BookmarkKind = "crash", *, group_id: str | None = None,
                   stop: threading.Event | None = None) -> str:
        """One point on every disk: pause, mark (one id), resume. Raises AgentError when skipped."""
        point_id = new_bookmark_id()
        self.pause(kind, point_id=point_id, stop=stop)
        try:
            # the machine's own point: not a group point (only the coordinator's carry the group id)
            self.mark(point_id, group_id)
        finally:
            self.resume()
        return point_id

    # GroupParticipant (coordination.GroupMember) -------------------------------------------
    def pause(self, kind: str, point_id: str | None = None, *, stop: threading.Event | None = None) -> None:
        """Hold every disk after the change in flight: pre-copy, pre-scripts (app), freeze, hold."""
        if kind not in ("crash", "app"):
            raise CaptureError(f"a point is \"crash\" or \"app\", not {kind!r}")
        point_kind: BookmarkKind = "app" if kind == "app" else "crash"
        self._point_lock.acquire()
        try:
            self._point = (point_id or "", point_kind, point_id or "")
            for d in self._disks:
                if d.state != "protected" or d.buffered.fallback is not None:
                    raise CaptureError(f"disk {d.name} is in {d.state}: {d.problem or 'not protected yet'}")
                if not d.lock.acquire(timeout=LOCK_WAIT_S):  # its worker is healing it: no point now
                    raise CaptureError(f"disk {d.name} is busy ({d.state}); no point now")
                self._held.append(d)
            for d in self._disks:
                if d.tracker is not None:
                    self._precopy(d, stop or self._stop)
            env = {"DR_POINT_ID": point_id or "", "DR_POINT_KIND": point_kind}
            if point_kind == "app":
                for script in self.config.pre_scripts:
                    run_script(script, timeout=self.config.script_timeout_s, env=env)
            for mp in self._freeze_list(point_kind):
                self._frozen.append((Path(mp), freeze(Path(mp))))
            for d in self._disks:
                if d.tracker is not None:
                    d.tracker.sync()
                    if d.tracker.lost is not None:
                        raise TrackingLost(d.tracker.lost)
                else:
                    d.splitter.pause()
                    d.splitter_held = True
        except BaseException:
            self.resume()
            raise

    def mark(self, bookmark_id: str, group_id: str | None) -> None:
        """The same bookmark id on every disk (after `pause`)."""
        if self._point is None:
            raise CaptureError("mark() needs pause() first")
        _, kind, _ = self._point
        self._point = (bookmark_id, kind, bookmark_id)
        room = int(self.config.buffer_bytes * FROZEN_SHARE)
        for d in self._disks:
            if d.tracker is not None:
                dirty = d.tracker.bitmap.take()
                if dirty.dirty_bytes > room:
                    d.tracker.bitmap.merge(dirty)
                    raise CaptureError(f"disk {d.name}: {dirty.dirty_bytes >> 20} MiB changed since the pre-copy, "
                                       f"more than {room >> 20} MiB may be read while frozen; the next point "
                                       "tries again")
                try:
                    self._send(d, dirty.ranges(max_length=CHUNK), d.buffered.write, d.buffered.discard)
                    d.buffered.flush()
                    d.buffered.bookmark(bookmark_id, kind, group_id)
                except BaseException:
                    d.tracker.bitmap.merge(dirty)
                    raise
            else:
                d.splitter.mark(bookmark_id, group_id, kind)
        self.last_point = bookmark_id
        self.points_taken += 1
        if group_id is not None:
            self._group_point_at = time.monotonic()
            if self._own_while_grouped:
                self._own_while_grouped = False
                log.warning("group %s: multi-VM points land again (%s); this machine's own points stop",
                            group_id, bookmark_id)

    def resume(self) -> None:
        """Let writes through, thaw (always), post-scripts (app); safe to call more than once."""
        if self._point is None and not self._held:
            return
        problems: list[str] = []
        for d in self._disks:
            if getattr(d, "splitter_held", False):
                d.splitter.resume()
                d.splitter_held = False
        while self._frozen:
            mp, fd = self._frozen.pop()
            err = thaw(mp, fd)
            if err is not None:
                problems.append(str(err))
        point = self._point
        if point is not None and point[1] == "app":
            env = {"DR_POINT_ID": point[2], "DR_POINT_KIND": "app"}
            for script in self.config.post_scripts:
                try:
                    run_script(script, timeout=self.config.script_timeout_s, env=env)
                except AgentError as err:
                    log.error("%s", err)
        self._point = None
        while self._held:
            self._held.pop().lock.release()
        self._point_lock.release()
        for problem in problems:
            log.error("%s", problem)

    def _freeze_list(self, kind: BookmarkKind) -> list[str]:
        """Tracking disks' file systems always (the freeze makes the cut); the splitter's for app points."""
        out: list[str] = []
        for d in self._disks:
            if d.tracker is not None or kind == "app":
                out += [m for m in d.config.mount_points if m not in out]
        return out

    def _precopy(self, d: _Disk, stop: threading.Event) -> None:
        """Send the blocks written since the last point before freezing (only the rest is read frozen)."""
        d.tracker.sync()
        dirty = d.tracker.bitmap.take()
        paced = d.buffered.paced(stop)
        try:
            self._send(d, dirty.ranges(max_length=CHUNK), paced.write, paced.discard, room=paced.room)
        except BaseException:
            d.tracker.bitmap.merge(dirty)
            raise

    def _send(self, d: _Disk, ranges: list[tuple[int, int]], write: Callable[[int, bytes], None],
              discard: Callable[[int, int], None], room: Callable[[int], None] | None = None) -> None:
        for offset, length in ranges:
            if room is not None:
                room(length)
            data = d.reader.read(offset, length)
            if data.count(0) == len(data):
                discard(offset, len(data))
            else:
                write(offset, data)

    # -- health and stopping ------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What the agent does, for its start-up line: it listens on nothing, it dials these."""
        c = self.config
        return {"disks": {d.name: {"mode": d.config.mode, "device": str(d.config.device)} for d in self._disks},
                "process_servers": [f"{h}:{p}" for h, p in c.process_servers],
                "coordinator": f"{c.coordinator[0]}:{c.coordinator[1]}" if c.coordinator else None,
                "group": c.group}

    def health(self) -> AgentHealth:
        now = time.time()
        disks = []
        for d in self._disks:
            newest = d.buffered.newest_durable
            syncing = d.state in ("initial-sync", "resync")
            disks.append(AgentDiskHealth(
                stream=d.name, mode=d.config.mode, state=d.state,
                sync_done_bytes=d.sync.done if syncing else d.sync.total,
                sync_total_bytes=d.sync.total, sync_rate_bytes_s=round(d.sync.rate, 1) if syncing else 0.0,
                rpo_seconds=round(now - newest.taken, 3) if newest is not None else None,
                backlog_bytes=d.buffered.backlog_bytes, connected=d.buffered.connected, device=d.device,
                problem=d.problem))
        return AgentHealth(name=self.config.name, disks=tuple(disks), last_point=self.last_point,
                           group=self.config.group,
                           coordinated=bool(self._member is not None and self._member.connected))

    def close(self) -> None:
        """Stop: a final point once every change is durable at the process server (within
        `stop_patience_s`), then release the disks. A disk whose changes did not all become durable
        keeps its marker: the next start compares it with the replica."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._member is not None:
            self._member.close()
        deadline = time.monotonic() + 3.0  # a worker inside a network call is left behind (daemon)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        patience = threading.Event()
        timer = threading.Timer(self.config.stop_patience_s, patience.set)
        timer.start()
        try:
            self._final_point(patience)
            for d in self._disks:
                self._stop_cleanly(d, patience)
        finally:
            timer.cancel()
            self._release()

    def _final_point(self, patience: threading.Event) -> None:
        if not all(d.state == "protected" and d.buffered.fallback is None and d.buffered.connected
                   for d in self._disks):
            return  # the process server would not have it soon: stop now
        try:
            point = self.take_point("crash", stop=patience)
            log.warning("final point %s taken on every disk", point)
        except AgentError as err:
            log.warning("no final point: %s", err)

    def _stop_cleanly(self, d: _Disk, patience: threading.Event) -> None:
        if d.state != "protected":
            why = f"it was in {d.state}"
        elif not d.buffered.connected:
            why = "the process server is unreachable"
        elif d.buffered.fallback is not None:
            why = d.buffered.fallback
        else:
            try:
                if d.splitter is not None:
                    with d.splitter.exclusive():  # nothing more from the workload until the marker is gone
                        d.buffered.flush()
                        d.buffered.paced(patience).flush()
                        if d.splitter.mode == "data":
                            d.marker.unlink(missing_ok=True)
                            return
                        why = "changes were tracked in the splitter's bitmap, which does not outlive the agent"
                else:
                    d.buffered.paced(patience).flush()
                    d.marker.unlink(missing_ok=True)
                    return
            except AgentError as err:
                why = str(err)
        log.warning("disk %s: not stopped cleanly (%s); the next start compares it with the replica", d.name, why)

    def _release(self) -> None:
        for d in self._disks:
            if d.splitter is not None:
                still = _mounted_on(Path(d.device)) if d.device else []
                if still:
                    log.error("disk %s: %s is still mounted on %s; the agent stops anyway and that file system "
                              "gets I/O errors: unmount it before stopping the agent (mount it with "
                              "x-systemd.requires=dr-agent.service so systemd does)", d.name, d.device,
                              ", ".join(still))
                _device_link(d.config).unlink(missing_ok=True)
                try:
                    d.splitter.close()
                except AgentError as err:
                    log.error("disk %s: %s", d.name, err)
            if d.tracker is not None:
                d.tracker.stop()
            if d.reader is not None:
                d.reader.close()
            d.buffered.close()


def _device_link(dc: DiskConfig) -> Path:
    """Splitter mode: a stable name of the loop device the workload mounts (`<mountpoint>.dev`)."""
    assert dc.fuse_dir is not None
    return dc.fuse_dir.with_name(dc.fuse_dir.name + ".dev")


def _mounted_on(device: Path) -> list[str]:
    """Mount points of file systems mounted directly on `device` (a block device), from /proc/self/mounts."""
    try:
        rdev = os.stat(device).st_rdev
        if not _linux.is_block_device(device):
            return []
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        source, target = line.split()[:2]
        with contextlib.suppress(OSError):
            if source.startswith("/") and _linux.is_block_device(Path(source)) and os.stat(source).st_rdev == rdev:
                out.append(target.replace("\\040", " "))
    return out

