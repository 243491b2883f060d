"""Data-mode capture: a FUSE write-splitter in front of the protected disk.

The protected disk's backing file (or block device) is presented as one FUSE file,
`mountpoint/<name>`; the workload's block device is a loop device over that file
(`losetup --direct-io=on`), and its file system sits on the loop device. Every write, discard
(fallocate punch-hole / zero-range) and flush the kernel sends reaches `_DiskOps` and goes through
one ordered apply path, under one lock: first applied to the backing file, then handed to the
`ChangeSink`, in the same order. fsync and flush are barriers: the backing file is fdatasync'd and
`sink.flush()` returns before the kernel is told the flush completed, so after every barrier the
replica the sink maintains equals the backing file.

FUSE is mounted write-through: no writeback cache (`writeback_cache` is never enabled), and the
file is opened with `direct_io` so no page cache of the FUSE file hides a write from us.

If the sink fails (the process server is unreachable or its cache is full), the splitter falls
back to bitmap mode like ASR's filter driver: writes still reach the disk, their blocks are marked
in a `DirtyBitmap`, and `resume_data_mode()` later sends the dirty blocks and switches back.
Bookmarks are refused while in bitmap mode (the stream has a gap, a point in it would be a lie).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from dr_agent.capture import _linux
from dr_agent.capture.bitmap import DirtyBitmap
from dr_agent.capture.consistency import new_bookmark_id
from dr_agent.capture.errors import CaptureError, CaptureUnavailable, DeviceError
from dr_agent.changes import BookmarkKind, ChangeSink

log = logging.getLogger(__name__)

# Largest write the kernel sends in one FUSE request, in bytes. 1 MiB needs the FUSE_MAX_PAGES
# capability (Linux >= 4.20); older kernels cap it at 128 KiB themselves.
MAX_WRITE = 1 << 20
MOUNT_TIMEOUT = 10.0  # seconds to wait for the FUSE session to come up
UNMOUNT_TIMEOUT = 10.0  # seconds to wait for the FUSE thread to end after umount
SYNC_CHUNK = 4 << 20  # bytes read from the backing per step of resume_data_mode()


@dataclass(frozen=True)
class SplitterStats:
    """Counters of the ordered apply path since mount."""

    writes: int
    bytes_written: int
    discards: int
    bytes_discarded: int
    barriers: int
    bookmarks: int
    mode: str  # "data" or "bitmap"
    dirty_bytes: int  # bitmap mode: bytes waiting for resume_data_mode()


def attach_loop(path: Path | str) -> str:
    """Attach a loop device over `path` with direct I/O; returns the device (`/dev/loopN`)."""
    proc = subprocess.run(
        ["losetup", "--direct-io=on", "--show", "-f", str(path)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise DeviceError(
            f"losetup could not attach a loop device over {path}: {proc.stderr.strip()}; "
            "run as root with util-linux installed and a free /dev/loop*"
        )
    return proc.stdout.strip()


def detach_loop(dev: str) -> None:
    """Detach loop device `dev` (the kernel defers it while a file system on it is mounted)."""
    proc = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "No such device" not in proc.stderr:
        raise DeviceError(f"losetup could not detach {dev}: {proc.stderr.strip()}; unmount it first")


def loops_over(path: Path) -> list[str]:
    """Loop devices currently backed by `path`."""
    proc = subprocess.run(["losetup", "-j", str(path), "-O", "NAME", "-n"],
                          capture_output=True, text=True, check=False)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


class Splitter:
    """Mount `mountpoint/<name>`, a write-through FUSE view of `backing` that copies every change to `sink`.

    Use as a context manager::

        with Splitter(Path("/var/lib/disk0.img"), Path("/run/dr/disk0"), sink) as sp:
            dev = attach_loop(sp.path)          # mkfs/mount the file system on dev
            ...
            sp.bookmark("crash")                # a crash-consistent point in the stream
            detach_loop(dev)

    On exit, loop devices still backed by the FUSE file are detached and the FUSE file system is
    unmounted. The backing file's size is the disk's size and never changes.
    """

    def __init__(self, backing: Path, mountpoint: Path, sink: ChangeSink, *, name: str = "disk") -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"name must be a plain file name, got {name!r}")
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.name = name
        self.sink = sink
        self._apply = threading.Lock()  # the single ordered apply path
        self._fd = -1
        self._size = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._bitmap: DirtyBitmap | None = None  # set in bitmap mode
        self._bitmap_reason = ""
        self._held = False
        self._holder: int | None = None  # the thread that paused the apply path (the coordinator client)
        self._connection = -1
        self._counts = {"writes": 0, "bytes_written": 0, "discards": 0, "bytes_discarded": 0,
                        "barriers": 0, "bookmarks": 0}

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The FUSE file to put a loop device on."""
        return self.mountpoint / self.name

    @property
    def size(self) -> int:
        return self._size

    def __enter__(self) -> Splitter:
        try:
            import mfusepy
        except ImportError:
            raise CaptureUnavailable(
                "the write-splitter needs mfusepy: pip install 'dr-agent[capture]' (and Debian's fuse3)"
            ) from None
        if not os.path.exists("/dev/fuse"):
            raise CaptureUnavailable("the write-splitter needs /dev/fuse: apt-get install fuse3, modprobe fuse")
        if not self.mountpoint.is_dir():
            raise DeviceError(f"mount point {self.mountpoint} is not a directory; create it first")
        if os.path.ismount(self.mountpoint):
            raise DeviceError(f"{self.mountpoint} is already a mount point; unmount it or pick another")
        self._fd = os.open(self.backing, os.O_RDWR | os.O_CLOEXEC)
        self._size = _linux.size_of(self._fd)
        _keep_default_signals()
        ops = _DiskOps(self, mfusepy.Operations)
        self._thread = threading.Thread(target=self._serve, args=(mfusepy, ops),
                                        name=f"dr-splitter-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not (self._ready.is_set() and os.path.ismount(self.mountpoint)):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._close_fd()
                why = repr(self._failure) if self._failure else "the FUSE session did not come up"
                raise DeviceError(f"could not mount the splitter on {self.mountpoint}: {why}; "
                                  "check that fuse3 is installed and /dev/fuse is usable")
            time.sleep(0.01)
        self._connection = os.minor(os.stat(self.mountpoint).st_dev)  # its id under /sys/fs/fuse/connections
        return self

    def _serve(self, mfusepy: Any, ops: Any) -> None:
        try:
            mfusepy.FUSE(
                ops, str(self.mountpoint), foreground=True, direct_io=True,
                fsname=f"dr-splitter:{self.name}", subtype="dr",
                attr_timeout=3600, entry_timeout=3600,
            )
        except BaseException as err:  # reported by __enter__/__exit__; the thread must not die silently
            self._failure = err
            log.exception("splitter %s: FUSE session failed", self.name)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Detach loop devices over the FUSE file, unmount, and wait for the FUSE thread to end."""
        if self._thread is None:
            return
        if self._held:
            self.resume()
        for dev in loops_over(self.path):
            log.warning("splitter %s: detaching %s left attached over %s", self.name, dev, self.path)
            with contextlib.suppress(DeviceError):
                detach_loop(dev)
        deadline = time.monotonic() + UNMOUNT_TIMEOUT
        problem = ""
        while os.path.ismount(self.mountpoint):
            proc = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                break
            if time.monotonic() > deadline:
                # Still busy (a file system on the loop device is still mounted). Waiting longer
                # would hang the agent; abort the FUSE connection so the session ends, and say so.
                problem = (f"could not unmount {self.mountpoint} ({proc.stderr.strip()}); the FUSE connection "
                           "was aborted: unmount the file system on the loop device and detach the loop "
                           "device before stopping the splitter")
                log.error("splitter %s: %s", self.name, problem)
                self._abort_connection()
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)
                break
            time.sleep(0.1)
        self._thread.join(UNMOUNT_TIMEOUT)
        if self._thread.is_alive():
            raise DeviceError(f"the FUSE session on {self.mountpoint} did not end after unmount")
        self._thread = None
        self._close_fd()
        if problem:
            raise DeviceError(problem)

    def _abort_connection(self) -> None:
        connections = Path("/sys/fs/fuse/connections")
        if not (connections / str(self._connection)).is_dir():
            subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            (connections / str(self._connection) / "abort").write_text("1")

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the ordered apply path ---------------------------------------------------------------
    def _write(self, data: bytes, offset: int) -> int:
        if offset < 0 or offset + len(data) > self._size:
            raise OSError(errno.ENOSPC, "write past the end of the disk")
        with self._apply:
            written = os.pwrite(self._fd, data, offset)
            if written != len(data):  # a short write of a regular file means the disk is full
                raise OSError(errno.EIO, f"short write to the backing file ({written} of {len(data)})")
            self._counts["writes"] += 1
            self._counts["bytes_written"] += written
            self._forward(lambda: self.sink.write(offset, data), offset, written)
        return written

    def _discard(self, mode: int, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self._size:
            raise OSError(errno.EOPNOTSUPP, "fallocate past the end of the disk")
        changes_data = bool(mode & (_linux.FALLOC_FL_PUNCH_HOLE | _linux.FALLOC_FL_ZERO_RANGE))
        with self._apply:
            if mode & _linux.FALLOC_FL_PUNCH_HOLE:
                mode |= _linux.FALLOC_FL_KEEP_SIZE
            if changes_data:
                _linux.zero_range(self._fd, mode, offset, length)
            else:
                _linux.fallocate(self._fd, mode, offset, length)
            if changes_data:
                self._counts["discards"] += 1
                self._counts["bytes_discarded"] += length
                self._forward(lambda: self.sink.discard(offset, length), offset, length)

    def _barrier(self) -> None:
        with self._apply:
            os.fdatasync(self._fd)
            self._counts["barriers"] += 1
            self._forward(self.sink.flush, 0, 0)

    def _forward(self, call: Any, offset: int, length: int) -> None:
        """Hand one change to the sink (apply lock held); on failure switch to bitmap mode."""
        if self._bitmap is not None:
            self._bitmap.mark(offset, length)
            return
        try:
            call()
        except Exception as err:  # the sink's failure must never fail the workload's write
            log.warning("splitter %s: sink failed (%s); falling back to bitmap mode", self.name, err)
            self._enter_bitmap(f"the sink failed: {err}")
            self._bitmap_mark(offset, length)

    def _enter_bitmap(self, reason: str) -> None:
        if self._bitmap is None:
            self._bitmap = DirtyBitmap(self._size)
            self._bitmap_reason = reason

    def _bitmap_mark(self, offset: int, length: int) -> None:
        assert self._bitmap is not None
        self._bitmap.mark(offset, length)

    def _read(self, size: int, offset: int) -> bytes:
        if offset >= self._size:
            return b""
        return os.pread(self._fd, min(size, self._size - offset), offset)

    # -- consistency points and the coordinator's pause -----------------------------------------
    def bookmark(self, kind: BookmarkKind = "crash", id: str | None = None,
                 group_id: str | None = None) -> str:
        """Insert a consistency point after every change applied so far; returns its id.

        A barrier precedes the bookmark, so the point is durable at the next hop when this
        returns. Call inside `app_consistent(...)` for an application-consistent point.
        """
        bookmark_id = id or new_bookmark_id()
        if self._holding():
            self._mark_locked(bookmark_id, kind, group_id)
            return bookmark_id
        with self._apply:  # another thread's pause: wait for its resume, then mark after it
            self._mark_locked(bookmark_id, kind, group_id)
        return bookmark_id

    def _mark_locked(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None) -> None:
        if self._bitmap is not None:
            raise CaptureError(
                f"no consistency point while {self.name} is in bitmap mode ({self._bitmap_reason}); "
                "call resume_data_mode() once the sink accepts data again"
            )
        os.fdatasync(self._fd)
        self.sink.flush()
        self.sink.bookmark(bookmark_id, kind, group_id)
        self._counts["bookmarks"] += 1

    def pause(self) -> None:
        """Hold the apply path after the change in flight completes (the coordinator's phase 1).

        New writes wait in the kernel until `resume()`. Everything applied so far is flushed.
        """
        self._apply.acquire()
        self._held = True
        self._holder = threading.get_ident()
        try:
            os.fdatasync(self._fd)
            if self._bitmap is None:
                self.sink.flush()
        except BaseException:
            self._held = False
            self._holder = None
            self._apply.release()
            raise

    def mark(self, bookmark_id: str, group_id: str | None, kind: BookmarkKind = "crash") -> None:
        """Insert a (multi-VM) bookmark while paused (the coordinator's phase 2)."""
        if not self._held:
            raise CaptureError("mark() needs pause() first: a group point is inserted while the disk is held")
        self._mark_locked(bookmark_id, kind, group_id)

    def resume(self) -> None:
        """Let writes through again (phase 3, or an abort). Safe to call when not paused."""
        if self._held:
            self._held = False
            self._holder = None
            self._apply.release()

    def _holding(self) -> bool:
        """True when the calling thread is the one that paused the apply path.

        Only that thread may act as if it held the lock; any other (the agent's own crash points, a
        resync) must wait for the resume, or it would call the sink at the same time as the mark.
        """
        return self._held and self._holder == threading.get_ident()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the apply path for a read-and-send of the backing (initial sync, resync).

        A read of the backing and the send of what was read must not interleave with a write of
        the same blocks, or the replica could end with the older data.
        """
        if self._holding():
            yield
            return
        with self._apply:
            yield

    # -- bitmap fall-back ----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "bitmap" if self._bitmap is not None else "data"

    def fall_back_to_bitmap(self, reason: str) -> None:
        """Stop sending data; only mark changed blocks (e.g. the process server's cache is full)."""
        with self._apply:
            self._enter_bitmap(reason)

    def mark_dirty(self, ranges: list[tuple[int, int]], reason: str) -> None:
        """Enter bitmap mode (if not in it) and mark `ranges`: changes the sink could not ship."""
        with self._apply if not self._holding() else contextlib.nullcontext():
            self._enter_bitmap(reason)
            for offset, length in ranges:
                self._bitmap_mark(offset, length)

    def resume_data_mode(self, room: Callable[[int], None] | None = None) -> int:
        """Send every block changed in bitmap mode, then return to data mode; returns bytes sent.

        Works in steps of SYNC_CHUNK under the apply lock, so the workload keeps running; blocks
        written meanwhile are marked again and sent by a later step. The switch back to data mode
        happens under the lock when the bitmap is empty. `room(n)`, called before each step
        outside the lock, may wait until the sink has room for n more bytes.
        """
        sent = 0
        while True:
            if room is not None:
                room(SYNC_CHUNK)
            with self._apply:
                bitmap = self._bitmap
                if bitmap is None:
                    return sent
                ranges = bitmap.ranges(max_length=SYNC_CHUNK)
                if not ranges:
                    os.fdatasync(self._fd)
                    self.sink.flush()
                    self._bitmap = None
                    self._bitmap_reason = ""
                    return sent
                offset, length = ranges[0]
                data = os.pread(self._fd, length, offset)
                if data.count(0) == len(data):
                    self.sink.discard(offset, length)
                else:
                    self.sink.write(offset, data)
                bitmap.clear(offset, length)
                sent += length

    def stats(self) -> SplitterStats:
        with self._apply if not self._holding() else contextlib.nullcontext():
            bitmap = self._bitmap
            return SplitterStats(mode=self.mode, dirty_bytes=bitmap.dirty_bytes if bitmap else 0,
                                 **self._counts)


def _keep_default_signals() -> None:
    """Keep SIGTERM and SIGHUP terminating the process while a FUSE session runs in it.

    libfuse's `fuse_main` installs its own SIGTERM/SIGHUP/SIGINT handlers wherever the action is
    still SIG_DFL, and its handler only ends the FUSE session: `kill PID` (or a CI runner's
    timeout) would unmount the disk under the workload and leave the process running. A Python
    handler that restores the default action and re-raises keeps the usual behaviour, and libfuse
    leaves a non-default action alone. Only possible from the main thread (a Python rule).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _default_action)


def _default_action(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _DiskOps(splitter: Splitter, base: type) -> Any:
    """The FUSE operations of a one-file file system, bound to `splitter` (mfusepy is imported lazily)."""
    root_mode = stat.S_IFDIR | 0o755
    file_mode = stat.S_IFREG | 0o600
    name = "/" + splitter.name
    started = time.time_ns()

    class DiskOps(base):  # type: ignore[misc]
        use_ns = True

        def init_with_config(self, conn: Any, config: Any) -> None:
            if conn is not None:
                conn.max_write = MAX_WRITE  # libfuse asks the kernel for max_pages to match
            splitter._ready.set()

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            common = {"st_uid": 0, "st_gid": 0, "st_atime": started, "st_mtime": started, "st_ctime": started}
            if path == "/":
                return {"st_mode": root_mode, "st_nlink": 2, "st_size": 0, **common}
            if path == name:
                return {"st_mode": file_mode, "st_nlink": 1, "st_size": splitter.size,
                        "st_blocks": -(-splitter.size // 512), "st_blksize": 4096, **common}
            raise OSError(errno.ENOENT, path)

        def readdir(self, path: str, fh: int) -> list[str]:
            if path != "/":
                raise OSError(errno.ENOTDIR, path)
            return [".", "..", splitter.name]

        def open(self, path: str, flags: int) -> int:
            if path != name:
                raise OSError(errno.ENOENT, path)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return splitter._read(size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return splitter._write(data, offset)

        def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
            splitter._discard(mode, offset, size)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            splitter._barrier()
            return 0

        def flush(self, path: str, fh: int) -> int:
            splitter._barrier()
            return 0

        def release(self, path: str, fh: int) -> int:
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            if length != splitter.size:
                raise OSError(errno.EPERM, "a disk's size is fixed")
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            blocks = -(-splitter.size // 4096)
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": 0,
                    "f_bavail": 0, "f_files": 1, "f_ffree": 0, "f_namemax": 255}

    return DiskOps()
