"""Replica targets: where the master target writes a disk (a page blob, or a file for tests and benchmarks).

A target applies groups of non-overlapping, 512-byte aligned extents (in parallel where it can),
persists the last applied sequence number with the data (`commit`), and takes snapshots at
recovery points. `Batch` turns an ordered stream of writes and discards into such groups while
keeping the stream's order: an extent that overlaps one already queued starts a new group.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dr_agent import vhd
from dr_agent.cache import write_atomic
from dr_agent.errors import TargetError

SECTOR = 512
# fallocate(2) flags from linux/falloc.h
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class Target(Protocol):
    size: int

    def apply(self, writes: list[tuple[int, bytes]], zeros: list[tuple[int, int]]) -> None:
        """Apply aligned, mutually non-overlapping extents (any order, possibly in parallel)."""

    def read(self, offset: int, length: int) -> bytes: ...

    def applied_seq(self) -> int: ...

    def commit(self, seq: int) -> None:
        """Make everything applied durable, then record `seq` as applied (with the data)."""

    def snapshot(self, point_id: str, seq: int) -> str:
        """A read-only copy of the disk now; returns its handle."""

    def delete_snapshot(self, handle: str) -> None: ...

    def location(self) -> dict[str, Any]: ...


class PointReader(Protocol):
    size: int

    def ranges(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of the ranges that may hold data; the rest reads as zeros."""

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass
class Batch:
    """Ordered writes and discards, cut into groups whose extents do not overlap."""

    target: Target
    max_bytes: int = 32 * 1024 * 1024
    _starts: list[int] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)
    _writes: list[tuple[int, bytes]] = field(default_factory=list)
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

    def write(self, offset: int, data: bytes) -> None:
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

    Snapshots are sparse (reflink when the file system can) copies under `path.points/`.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)
        self._seq_path = path.with_name(path.name + ".seq")
        self._points = path.with_name(path.name + ".points")

    def apply(self, writes: list[tuple[int, bytes]], zeros: list[tuple[int, int]]) -> None:
        for off, length in zeros:
            if not _punch(self._fd, off, length):
                for pos in range(off, off + length, 1 << 20):
                    os.pwrite(self._fd, bytes(min(1 << 20, off + length - pos)), pos)
        for off, data in writes:
            os.pwrite(self._fd, data, off)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def applied_seq(self) -> int:
        try:
            return int(json.loads(self._seq_path.read_text())["seq"])
        except FileNotFoundError:
            return 0

    def commit(self, seq: int) -> None:
        os.fsync(self._fd)
        write_atomic(self._seq_path, json.dumps({"seq": seq}).encode())

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
        os.close(self._fd)


class FilePoint:
    """A file snapshot, read for export; `ranges` follows the file's allocated extents (SEEK_DATA)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def ranges(self) -> Iterator[tuple[int, int]]:
        with open(self.path, "rb") as f:
            fd = f.fileno()
            pos = 0
            while pos < self.size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    return
                end = min(os.lseek(fd, start, os.SEEK_HOLE), self.size)
                yield start, end - start
                pos = end

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), length, offset)


def footer_for(size: int) -> bytes:
    return vhd.footer(size)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
