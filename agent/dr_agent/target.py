"""Replica targets: where the master target writes a disk (a page blob, or a file for tests and benchmarks).

A target applies groups of non-overlapping, 512-byte aligned extents (in parallel where it can),
persists the last applied sequence number with the data (`commit`, or `commit_later`, which
returns at once and reports when the data and the sequence are durable, in order, so the next
group is applied while the previous one is made durable), and takes snapshots at recovery points.
`Batch` turns an ordered stream of writes and discards into such groups while keeping the
stream's order: an extent that overlaps one already queued starts a new group.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import ctypes
import ctypes.util
import logging
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import xxhash

from dr_agent.cache import fsync_dir
from dr_agent.errors import TargetError

log = logging.getLogger(__name__)

SECTOR = 512
# fallocate(2) flags from linux/falloc.h
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


# A write's data: bytes, or a view into a received frame (no copy on the way to the replica).
Data = bytes | memoryview
# Called once a `commit_later` is done: None when the data and the sequence are durable, else the error.
Done = Callable[[BaseException | None], None]


class Target(Protocol):
    size: int

    def apply(self, writes: list[tuple[int, Data]], zeros: list[tuple[int, int]]) -> None:
        """Apply aligned, mutually non-overlapping extents (any order, possibly in parallel; an
        extent overlapping one still in flight from an earlier call waits for it)."""

    def read(self, offset: int, length: int) -> bytes:
        """The replica's bytes now, every earlier `apply` included."""

    def applied_seq(self) -> int:
        """The last sequence recorded durable (after `drain`, every commit so far)."""

    def commit_later(self, seq: int, done: Done) -> None:
        """Make everything applied so far durable, then record `seq` as applied; returns at once.
        Commits finish in the order they were asked for; `done` runs in the target's thread."""

    def commit(self, seq: int) -> None:
        """`commit_later` and wait for it."""

    def drain(self) -> None:
        """Wait for everything in flight; raises (once) the first error since the last drain."""

    def snapshot(self, point_id: str, seq: int) -> str:
        """A read-only copy of the disk now; returns its handle."""

    def delete_snapshot(self, handle: str) -> None: ...

    def location(self) -> dict[str, Any]: ...


class PointReader(Protocol):
    """A recovery point's bytes, read for export: list the ranges once, then read them (from
    several threads at once)."""

    size: int

    def ranges(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of the ranges that may hold data, in order; the rest reads as zeros."""

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class Committer:
    """One thread that makes a target's commits durable, in order, several at once.

    `submit(seq, calls, done)` queues a commit of `seq` that may be recorded only after `calls`
    (the target's writes still in flight) succeeded. The thread takes every commit queued by then,
    waits for their calls and records the newest sequence once (one fdatasync or one metadata
    write for all of them: group commit), then tells each `done`. Once a write or a record failed,
    later commits fail too (no sequence is recorded past a lost write) until `drain` reports it."""

    def __init__(self, name: str, record: Callable[[int], None]) -> None:
        self._record = record
        self._cv = threading.Condition()
        self._queue: list[tuple[int, list[cf.Future[None]], Done]] = []
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, seq: int, calls: list[cf.Future[None]], done: Done) -> None:
        with self._cv:
            if self._closed:
                raise TargetError("the target is closed")
            self._queue.append((seq, calls, done))
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._busy = True
            results: list[BaseException | None] = [None] * len(batch)
            good = 0  # the commits whose writes all succeeded, from the first
            try:
                if self._error is not None:
                    raise TargetError(f"an earlier write or commit failed: {self._error}")
                for _, calls, _ in batch:
                    for call in calls:
                        call.result()
                    good += 1
            except BaseException as failure:  # reported to every later `done` and to the next drain
                results[good:] = [failure] * (len(batch) - good)
                self._error = self._error or failure
            if good:
                try:
                    self._record(batch[good - 1][0])
                except BaseException as failure:
                    results[:good] = [failure] * good
                    self._error = self._error or failure
            for (_, _, done), err in zip(batch, results, strict=True):
                try:
                    done(err)
                except Exception:
                    log.exception("a commit's completion failed")
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def wait(self, seq: int, calls: list[cf.Future[None]]) -> None:
        """Commit `seq` and wait for it; raises its error (or an earlier one)."""
        self.submit(seq, calls, lambda err: None)
        self.drain()

    def drain(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: not self._queue and not self._busy)
            err, self._error = self._error, None
        if err is not None:
            raise TargetError(f"commit failed: {err}") from err

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()


# The applied sequence of a file target: two 512-byte slots, written in turn (in place: no rename,
# one fdatasync), each `magic, generation, seq, xxh3-64`; the valid slot of the highest generation
# wins, so a torn slot write leaves the other one.
SEQ_SLOT = struct.Struct("<8sQQQ")
SEQ_MAGIC = b"DRSEQ\x001\x00"


def _seq_slot(generation: int, seq: int) -> bytes:
    head = SEQ_SLOT.pack(SEQ_MAGIC, generation, seq, 0)[:-8]
    return (head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))).ljust(SECTOR, b"\0")


def read_seq_slots(data: bytes) -> tuple[int, int]:
    """(generation, seq) of the newest valid slot in a side file's bytes; (0, 0) when none is."""
    best = (0, 0)
    for pos in (0, SECTOR):
        chunk = data[pos:pos + SEQ_SLOT.size]
        if len(chunk) < SEQ_SLOT.size:
            continue
        magic, gen, seq, check = SEQ_SLOT.unpack(chunk)
        if magic == SEQ_MAGIC and xxhash.xxh3_64_intdigest(chunk[:-8]) == check and gen > best[0]:
            best = (gen, seq)
    return best


@dataclass
class Batch:
    """Ordered writes and discards, cut into groups whose extents do not overlap."""

    target: Target
    max_bytes: int = 32 * 1024 * 1024
    _starts: list[int] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)
    _writes: list[tuple[int, Data]] = field(default_factory=list)
    _zeros: list[tuple[int, int]] = field(default_factory=list)
    _bytes: int = 0

    def _overlaps(self, a: int, b: int) -> bool:
        i = bisect.bisect_right(self._starts, a)
        if i > 0 and self._ends[i - 1] > a:
            return True
        return i < len(self._starts) and self._starts[i] < b

    def _add_interval(self, a: int, b: int) -> None:
        i = bisect.bisect_right(self._starts, a)
        self._starts.insert(i, a)
        self._ends.insert(i, b)

    def write(self, offset: int, data: Data) -> None:
        if offset < 0 or offset + len(data) > self.target.size:
            raise TargetError(f"write of {len(data)} bytes at {offset} beyond the {self.target.size}-byte disk")
        a = offset - offset % SECTOR
        end = offset + len(data)
        b = end + (-end) % SECTOR
        if self._overlaps(a, b):
            self.apply()
        if a != offset or b != end:
            self.apply()  # read-modify-write sees every earlier change
            head = self.target.read(a, offset - a) if a != offset else b""
            tail = self.target.read(end, b - end) if b != end else b""
            data = head + data + tail
        self._add_interval(a, b)
        self._writes.append((a, data))
        self._bytes += len(data)
        if self._bytes >= self.max_bytes:
            self.apply()

    def discard(self, offset: int, length: int) -> None:
        end = min(offset + length, self.target.size)
        a = offset + (-offset) % SECTOR
        b = end - end % SECTOR
        if b <= a:
            if end > offset:
                self.write(offset, bytes(end - offset))
            return
        if a != offset:
            self.write(offset, bytes(a - offset))
        if self._overlaps(a, b):
            self.apply()
        self._add_interval(a, b)
        self._zeros.append((a, b - a))
        if b != end:
            self.write(b, bytes(end - b))

    def apply(self) -> None:
        if self._writes or self._zeros:
            self.target.apply(self._writes, self._zeros)
        self._starts, self._ends, self._writes, self._zeros, self._bytes = [], [], [], [], 0


def _punch(fd: int, offset: int, length: int) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    rc = libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                        ctypes.c_longlong(offset), ctypes.c_longlong(length))
    return bool(rc == 0)


class FileTarget:
    """A disk as a local sparse file `path` (raw image) with `path.seq` holding the applied sequence.

    A commit is one fdatasync of the image and one of the side file, whose slot is rewritten in
    place (see SEQ_SLOT); it runs in the target's commit thread while the next group is written.
    Snapshots are sparse (reflink when the file system can) copies under `path.points/`.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)
        seq_path = path.with_name(path.name + ".seq")
        fresh = not seq_path.exists()
        self._seq_fd = os.open(seq_path, os.O_RDWR | os.O_CREAT, 0o600)
        if fresh:  # the side file's length never changes again: slot writes need no metadata
            os.pwrite(self._seq_fd, bytes(2 * SECTOR), 0)
            os.fsync(self._seq_fd)
            fsync_dir(path.parent)
        self._generation, self._seq = read_seq_slots(os.pread(self._seq_fd, 2 * SECTOR, 0))
        self._points = path.with_name(path.name + ".points")
        self._committer = Committer(f"commit-{path.name}", self._record)

    def apply(self, writes: list[tuple[int, Data]], zeros: list[tuple[int, int]]) -> None:
        if self._fd < 0:  # never a write through a descriptor number another file may reuse
            raise TargetError(f"replica {self.path} is closed (the master target is stopping)")
        for off, length in zeros:
            if not _punch(self._fd, off, length):
                for pos in range(off, off + length, 1 << 20):
                    os.pwrite(self._fd, bytes(min(1 << 20, off + length - pos)), pos)
        for off, data in writes:
            view = memoryview(data)
            while view:  # pwrite may write less than asked
                view = view[os.pwrite(self._fd, view, off + len(data) - len(view)):]

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def applied_seq(self) -> int:
        return self._seq

    def _record(self, seq: int) -> None:
        if seq == self._seq:
            return  # nothing applied since the last commit (a keepalive)
        os.fdatasync(self._fd)  # the data first: the sequence may only name durable writes
        generation = self._generation + 1
        os.pwrite(self._seq_fd, _seq_slot(generation, seq), (generation % 2) * SECTOR)
        os.fdatasync(self._seq_fd)
        self._generation, self._seq = generation, seq

    def commit_later(self, seq: int, done: Done) -> None:
        self._committer.submit(seq, [], done)

    def commit(self, seq: int) -> None:
        self._committer.wait(seq, [])

    def drain(self) -> None:
        self._committer.drain()

    def snapshot(self, point_id: str, seq: int) -> str:
        self._points.mkdir(exist_ok=True)
        dest = self._points / f"{seq:020d}.img"
        tmp = dest.with_suffix(".tmp")
        os.fsync(self._fd)
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(self.path), str(tmp)], check=True)
        os.replace(tmp, dest)
        return str(dest)

    def delete_snapshot(self, handle: str) -> None:
        Path(handle).unlink(missing_ok=True)

    def location(self) -> dict[str, Any]:
        return {"kind": "file", "path": str(self.path), "size": self.size}

    def close(self) -> None:
        self._committer.close()
        fd, seq_fd, self._fd, self._seq_fd = self._fd, self._seq_fd, -1, -1
        os.close(fd)
        os.close(seq_fd)


class FilePoint:
    """A file snapshot, read for export; `ranges` follows the file's allocated extents (SEEK_DATA).

    One descriptor for the point's life; `read` is a pread, safe from several threads."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise TargetError(f"recovery point file {path}: {err.strerror}") from None

    def ranges(self) -> Iterator[tuple[int, int]]:
        pos = 0
        while pos < self.size:
            try:
                start = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                return
            if start >= self.size:
                return
            end = min(os.lseek(self._fd, start, os.SEEK_HOLE), self.size)
            yield start, end - start
            pos = end

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # a point file shorter than the disk: the rest is zeros
            data += bytes(length - len(data))
        return data

    def close(self) -> None:
        os.close(self._fd)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
