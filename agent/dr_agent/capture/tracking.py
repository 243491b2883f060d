"""Tracking mode: capture a disk already in use, through the kernel's block tracepoints.

For a disk that cannot be re-presented through the splitter (the root file system of a running
server), the agent subscribes to the block layer's tracepoints in a private tracefs instance
(`instances/dr-capture-MAJ_MIN`): `block/block_bio_queue` (or `block_rq_issue` where the former is
missing), filtered in the kernel on the device number and on non-read operations. Each event
gives a written sector range; the agent marks it in a `DirtyBitmap`. At each consistency point
the file systems on the device are frozen (FIFREEZE), the trace buffer is drained up to a marker
written after the freeze (so every write before the freeze is in the bitmap), the dirty ranges
are read from the device with O_DIRECT and sent, the bookmark follows, and the file systems are
thawed (always, in a `finally`).

Tracking is **lost** when the kernel drops events (the per-CPU ring buffer overran: the stats
files' `overrun`/`dropped events` grow, or trace_pipe reports `[LOST n EVENTS]`) and whenever the
agent (re)starts, since writes made while no tracker ran are unknown. A lost tracker refuses
consistency points (`TrackingLost`) until a hash resync (`TrackingAgent.resync`) re-establishes
the replica; the tracepoint stays enabled during the resync, so writes made meanwhile are in the
bitmap for the next point.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dr_agent.capture import _linux
from dr_agent.capture.bitmap import DEFAULT_BLOCK_SIZE, DirtyBitmap
from dr_agent.capture.consistency import Script, app_consistent, new_bookmark_id
from dr_agent.capture.errors import CaptureError, CaptureUnavailable, FreezeError, TrackingLost
from dr_agent.capture.resync import BlockHashSource, Progress, ResyncResult, resync
from dr_agent.changes import BookmarkKind, ChangeSink

log = logging.getLogger(__name__)

TRACEFS_PLACES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
EVENTS = ("block_bio_queue", "block_rq_issue")  # preferred first: one event per bio, before merges
SECTOR = 512  # bytes: tracepoint sector numbers are always in 512-byte units
BUFFER_KB = 8192  # per-CPU ring buffer of our instance, KiB: ~100k events of ~80 bytes each
SYNC_TIMEOUT = 10.0  # seconds to wait for our marker to come out of trace_pipe
PUMP_INTERVAL = 0.2  # seconds between drains of trace_pipe by the background pump
READ_CHUNK = 4 << 20  # bytes read from the device per step at a consistency point

_EVENT_RE = re.compile(
    rb"block_(?:bio_queue|rq_issue): (\d+),(\d+) (\S+) (?:\d+ \([^)]*\) )?(\d+) \+ (\d+)")
_LOST_RE = re.compile(rb"\[LOST (\d+) EVENTS\]")
_MARK_RE = re.compile(rb"dr-sync-(\d+)")
_STAT_RE = re.compile(r"^(overrun|dropped events): (\d+)$", re.M)
NOT_SYNCED = "tracking started: changes made before it are unknown (first start or agent restart)"


def find_tracefs(*, mount: bool = True) -> Path:
    """The tracefs directory with block events; mounts tracefs at /sys/kernel/tracing if needed."""
    for place in TRACEFS_PLACES:
        if (place / "events").is_dir():
            return _check_block_events(place)
    if mount and os.geteuid() == 0 and TRACEFS_PLACES[0].is_dir() and shutil.which("mount"):
        proc = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS_PLACES[0])],
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0 and (TRACEFS_PLACES[0] / "events").is_dir():
            return _check_block_events(TRACEFS_PLACES[0])
    raise CaptureUnavailable(
        "tracking mode needs tracefs (/sys/kernel/tracing) with block events; run as root on a kernel "
        "with CONFIG_FTRACE and CONFIG_BLK_DEV_IO_TRACE, or `mount -t tracefs nodev /sys/kernel/tracing`")


def _check_block_events(root: Path) -> Path:
    if not any((root / "events" / "block" / event).is_dir() for event in EVENTS):
        raise CaptureUnavailable(f"{root} has no block tracepoints ({', '.join(EVENTS)}); tracking mode needs "
                                 "a kernel built with block tracepoints")
    return root


def kernel_dev(device: str | Path) -> int:
    """The kernel's internal dev_t of a block device (major << 20 | minor), as tracepoints print it."""
    rdev = os.stat(device).st_rdev
    return (os.major(rdev) << 20) | os.minor(rdev)


class BlockTracker:
    """Marks the blocks written to `device` in `bitmap`, from a private tracefs instance."""

    def __init__(self, device: str | Path, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 buffer_kb: int = BUFFER_KB, tracefs: Path | None = None) -> None:
        self.device = str(device)
        if not _linux.is_block_device(Path(self.device)):
            raise CaptureError(f"{self.device} is not a block device; tracking mode follows block devices")
        rdev = os.stat(self.device).st_rdev
        self.major, self.minor = os.major(rdev), os.minor(rdev)
        with open(self.device, "rb") as dev:
            size = _linux.size_of(dev.fileno())
        self.bitmap = DirtyBitmap(size, block_size=block_size)
        self.buffer_kb = buffer_kb
        self._tracefs = tracefs
        self._instance: Path | None = None
        self._event = ""
        self._fd = -1
        self._rest = b""
        self._read_lock = threading.Lock()
        self._marks = itertools.count(1)
        self._seen_mark = 0
        self._mark_seen = threading.Condition(self._read_lock)
        self._baseline: dict[str, int] = {}
        self._losses = 0
        self.lost: str | None = NOT_SYNCED
        self.events = 0
        self._pump: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def losses(self) -> int:
        """How many times tracking was lost since start (a resync clears `lost` only if unchanged)."""
        return self._losses

    def start(self, *, background: bool = True) -> None:
        """Enable the tracepoint; with `background`, a thread drains the trace buffer continuously."""
        root = self._tracefs or find_tracefs()
        instance = root / "instances" / f"dr-capture-{self.major}_{self.minor}"
        if instance.exists():  # left by an agent that died: its session's tracking is gone anyway
            log.warning("tracking %s: removing the instance left by a previous agent", self.device)
            _remove_instance(instance)
        try:
            instance.mkdir()
        except OSError as err:
            raise CaptureUnavailable(f"cannot create tracefs instance {instance}: {err.strerror}; run as root") \
                from None
        self._instance = instance
        try:
            self._event = next(e for e in EVENTS if (instance / "events" / "block" / e).is_dir())
            event_dir = instance / "events" / "block" / self._event
            (instance / "buffer_size_kb").write_text(str(self.buffer_kb))
            (instance / "options" / "overwrite").write_text("0")  # drop new events (counted) when full
            dev = (self.major << 20) | self.minor
            try:
                (event_dir / "filter").write_text(f'dev == {dev} && !(rwbs ~ "R*")')
            except OSError:  # older kernels: no glob operator; reads are skipped in userspace
                (event_dir / "filter").write_text(f"dev == {dev}")
            self._baseline = self._loss_counters()
            self._fd = os.open(instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            (event_dir / "enable").write_text("1")
            (instance / "tracing_on").write_text("1")
        except BaseException:
            self.stop()
            raise
        log.info("tracking %s through %s", self.device, event_dir)
        if background:
            self._stop.clear()
            self._pump = threading.Thread(target=self._run_pump, name=f"dr-tracker-{self.minor}", daemon=True)
            self._pump.start()

    def stop(self) -> None:
        self._stop.set()
        if self._pump is not None:
            self._pump.join(5)
            self._pump = None
        instance, self._instance = self._instance, None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if instance is not None:
            _remove_instance(instance)

    def __enter__(self) -> BlockTracker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_pump(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                poller.poll(PUMP_INTERVAL * 1000)
                self.collect()
            except OSError as err:
                if self._stop.is_set():
                    return
                self._lose(f"reading trace_pipe failed: {err}")
                self._stop.wait(PUMP_INTERVAL)

    def collect(self) -> int:
        """Drain trace_pipe into the bitmap now; returns the number of write events read."""
        with self._read_lock:
            if self._fd < 0:
                raise CaptureError(f"the tracker of {self.device} is not started")
            count = 0
            while True:
                try:
                    chunk = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError as err:
                    if err.errno == errno.EINTR:
                        continue
                    raise
                if not chunk:
                    break
                count += self._parse(chunk)
            self._check_counters()
            self.events += count
            return count

    def _parse(self, chunk: bytes) -> int:
        data = self._rest + chunk
        lines = data.split(b"\n")
        self._rest = lines.pop()
        count = 0
        for line in lines:
            match = _EVENT_RE.search(line)
            if match:
                major, minor, rwbs = int(match[1]), int(match[2]), match[3]
                sector, sectors = int(match[4]), int(match[5])
                if (major, minor) != (self.major, self.minor) or rwbs.startswith(b"R") or sectors == 0:
                    continue
                self.bitmap.mark(sector * SECTOR, sectors * SECTOR)
                count += 1
                continue
            lost = _LOST_RE.search(line)
            if lost:
                self._lose(f"the kernel dropped {int(lost[1])} block events (trace buffer overrun)")
                continue
            mark = _MARK_RE.search(line)
            if mark:
                self._seen_mark = max(self._seen_mark, int(mark[1]))
                self._mark_seen.notify_all()
        return count

    def _loss_counters(self) -> dict[str, int]:
        assert self._instance is not None
        totals: dict[str, int] = {}
        for stats in sorted((self._instance / "per_cpu").glob("cpu*/stats")):
            for name, value in _STAT_RE.findall(stats.read_text()):
                totals[name] = totals.get(name, 0) + int(value)
        return totals

    def _check_counters(self) -> None:
        now = self._loss_counters()
        for name, value in now.items():
            if value > self._baseline.get(name, 0):
                self._lose(f"the trace buffer reports {value - self._baseline.get(name, 0)} {name} "
                           f"(events lost: raise buffer_kb above {self.buffer_kb} KiB or shorten the interval)")
        self._baseline = now

    def _lose(self, reason: str) -> None:
        log.warning("tracking %s lost: %s", self.device, reason)
        self._losses += 1
        self.lost = reason

    def sync(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Return when every event recorded before this call is in the bitmap (or tracking is lost)."""
        if self._instance is None:
            raise CaptureError(f"the tracker of {self.device} is not started")
        number = next(self._marks)
        for attempt in (1, 2):
            try:
                (self._instance / "trace_marker").write_text(f"dr-sync-{number}\n")
                break
            except OSError as err:  # EBADF: the ring buffer is full (overwrite is off): drain, retry
                self.collect()
                if attempt == 2:
                    self._lose(f"the trace buffer is full and refused our marker ({err.strerror})")
                    return
        deadline = time.monotonic() + timeout
        while True:
            self.collect()
            with self._read_lock:
                if self._seen_mark >= number:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self._lose(f"the trace marker did not come back within {timeout:g} s")
                    return
                self._mark_seen.wait(min(left, 0.05))

    def synced(self, losses_before: int) -> None:
        """A resync that started when `losses` was `losses_before` finished: tracking is whole again."""
        if self._losses == losses_before:
            self.lost = None


def _remove_instance(instance: Path) -> None:
    with contextlib.suppress(OSError):
        for enable in instance.glob("events/block/*/enable"):
            enable.write_text("0")
    try:
        instance.rmdir()
    except OSError as err:
        log.warning("could not remove tracefs instance %s: %s", instance, err)


@dataclass(frozen=True)
class PointResult:
    bookmark_id: str
    bytes_sent: int
    frozen_for: float  # seconds the file systems were frozen


class TrackingAgent:
    """Tracking-mode capture of one device whose file systems are mounted at `mount_points`.

    `start()` enables tracking and resyncs against `target` (tracking is always lost at start);
    `consistency_point()` freezes, sends the dirty blocks and the bookmark, and thaws. Implements
    the coordinator's `Participant` (pause/mark/resume) for multi-VM points.
    """

    def __init__(self, device: str | Path, mount_points: Sequence[Path | str], sink: ChangeSink,
                 target: BlockHashSource, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 buffer_kb: int = BUFFER_KB) -> None:
        if not mount_points:
            raise CaptureError(f"tracking {device} needs the mount points of its file systems, to freeze "
                               "them at each consistency point")
        self.device = str(device)
        self.mount_points = [Path(m) for m in mount_points]
        self.sink = sink
        self.target = target
        self.tracker = BlockTracker(device, block_size=block_size, buffer_kb=buffer_kb)
        self._reader: _linux.DiskReader | None = None
        self._frozen: list[tuple[Path, int]] = []  # mount point, the descriptor that holds it frozen
        self._frozen_at = 0.0

    def start(self, *, background: bool = True, progress: Progress | None = None) -> ResyncResult:
        self.tracker.start(background=background)
        self._reader = _linux.DiskReader(self.device, max_read=READ_CHUNK)
        return self.resync(progress=progress)

    def stop(self) -> None:
        self._thaw()
        self.tracker.stop()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> TrackingAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def resync(self, *, progress: Progress | None = None) -> ResyncResult:
        """Hash-compare the whole device with the target and send what differs; tracking is whole after."""
        losses = self.tracker.losses
        self.tracker.sync()
        self.tracker.bitmap.take()  # the resync reads every block: earlier marks are covered by it
        result = resync(self.device, self.target, self.sink, block_size=self.tracker.bitmap.block_size,
                        progress=progress)
        self.tracker.synced(losses)
        return result

    def consistency_point(self, kind: BookmarkKind = "crash", *, bookmark_id: str | None = None,
                          group_id: str | None = None, pre_scripts: Sequence[Script] = (),
                          post_scripts: Sequence[Script] = ()) -> PointResult:
        """Freeze, drain the tracepoint, send dirty blocks, bookmark, thaw. Raises TrackingLost."""
        point = bookmark_id or new_bookmark_id()
        with app_consistent(self.mount_points, pre_scripts, post_scripts):
            started = time.monotonic()
            sent = self._send_dirty(point, kind, group_id)
            frozen_for = time.monotonic() - started
        return PointResult(point, sent, frozen_for)

    def _send_dirty(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None) -> int:
        self.tracker.sync()
        if self.tracker.lost is not None:
            raise TrackingLost(self.tracker.lost)
        assert self._reader is not None, "start() first"
        dirty = self.tracker.bitmap.take()
        sent = 0
        try:
            for offset, length in dirty.ranges(max_length=READ_CHUNK):
                data = self._reader.read(offset, length)
                if data.count(0) == len(data):
                    self.sink.discard(offset, len(data))
                else:
                    self.sink.write(offset, data)
                sent += len(data)
            self.sink.flush()
            self.sink.bookmark(bookmark_id, kind, group_id)
        except BaseException:
            self.tracker.bitmap.merge(dirty)  # nothing is lost: send them at the next point
            raise
        return sent

    # -- Participant -------------------------------------------------------------------------
    def pause(self) -> None:
        for mount_point in self.mount_points:
            if not os.path.ismount(mount_point):
                self._thaw()
                raise FreezeError(f"{mount_point} is not a mount point; list the mount points of {self.device}")
            try:
                fd = _linux.freeze_held(mount_point)
            except OSError as err:
                self._thaw()
                raise FreezeError(f"could not freeze {mount_point}: {err.strerror}") from None
            self._frozen.append((mount_point, fd))
        self._frozen_at = time.monotonic()
        self.tracker.sync()
        if self.tracker.lost is not None:
            self._thaw()
            raise TrackingLost(self.tracker.lost)

    def mark(self, bookmark_id: str, group_id: str | None) -> None:
        if not self._frozen:
            raise CaptureError("mark() needs pause() first")
        self._send_dirty(bookmark_id, "crash", group_id)

    def resume(self) -> None:
        self._thaw()

    def _thaw(self) -> None:
        while self._frozen:
            mount_point, fd = self._frozen.pop()
            try:
                _linux.thaw_held(fd)
            except OSError as err:
                log.error("could not thaw %s: %s", mount_point, err)
