"""A replica in a local file: a `ChangeSink` that applies changes, and a `BlockHashSource` over it.

This is the simplest real target of the capture side: the replica of a disk kept in a sparse
file on this machine (a standby disk, a test replica, the benchmark's target). It applies every
change in the order received, makes it durable at each barrier (fdatasync), and keeps a record of
what it received (byte counts and the bookmarks with the offset in the stream where they fell),
which is what the tests and the resync byte-count assertions read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from dr_agent.capture import _linux
from dr_agent.changes import BookmarkKind


@dataclass(frozen=True)
class ReceivedBookmark:
    bookmark_id: str
    kind: BookmarkKind
    group_id: str | None
    sequence: int  # number of changes (writes + discards) received before it


@dataclass
class Received:
    """What the target was sent (mutable counters owned by one FileTarget)."""

    writes: int = 0
    bytes_written: int = 0
    discards: int = 0
    bytes_discarded: int = 0
    barriers: int = 0
    bookmarks: list[ReceivedBookmark] = field(default_factory=list)


class FileTarget:
    """Apply a disk's change stream to `replica` (created sparse, `size` bytes, if missing).

    `on_barrier` / `on_bookmark` are called after a barrier or bookmark is applied (the tests
    compare the replica with the source there, while the source cannot change).
    """

    def __init__(self, replica: Path, size: int, *, punch_holes: bool = True,
                 on_barrier: Callable[[], None] | None = None,
                 on_bookmark: Callable[[ReceivedBookmark], None] | None = None) -> None:
        self.replica = Path(replica)
        self.size = size
        self.punch_holes = punch_holes
        self.on_barrier = on_barrier
        self.on_bookmark = on_bookmark
        self.received = Received()
        self._lock = threading.Lock()
        self._fd = os.open(self.replica, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ChangeSink ---------------------------------------------------------------------------
    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        with self._lock:
            os.pwrite(self._fd, data, offset)
            self.received.writes += 1
            self.received.bytes_written += len(data)

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)
        with self._lock:
            if self.punch_holes:
                _linux.zero_range(self._fd, _linux.FALLOC_FL_PUNCH_HOLE | _linux.FALLOC_FL_KEEP_SIZE,
                                  offset, length)
            else:
                _linux.write_zeros(self._fd, offset, length)
            self.received.discards += 1
            self.received.bytes_discarded += length

    def flush(self) -> None:
        with self._lock:
            os.fdatasync(self._fd)
            self.received.barriers += 1
        if self.on_barrier is not None:
            self.on_barrier()

    def bookmark(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None = None) -> None:
        with self._lock:
            mark = ReceivedBookmark(bookmark_id, kind, group_id,
                                    self.received.writes + self.received.discards)
            self.received.bookmarks.append(mark)
        if self.on_bookmark is not None:
            self.on_bookmark(mark)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"change [{offset}, {offset + length}) is outside the {self.size}-byte replica")

    # -- BlockHashSource ----------------------------------------------------------------------
    def hashes(self, first_block: int, count: int, block_size: int) -> list[bytes]:
        """xxh3-128 digests of blocks [first_block, first_block+count) of the replica."""
        with self._lock:
            return file_block_hashes(self._fd, first_block, count, block_size, self.size)


def file_block_hashes(fd: int, first_block: int, count: int, block_size: int, size: int) -> list[bytes]:
    """xxh3-128 of each block; the last block of a disk whose size is not a multiple is hashed short."""
    start = first_block * block_size
    end = min(size, (first_block + count) * block_size)
    if start >= end:
        return []
    data = os.pread(fd, end - start, start)
    view = memoryview(data)
    return [xxhash.xxh3_128_digest(view[i:i + block_size]) for i in range(0, len(data), block_size)]
