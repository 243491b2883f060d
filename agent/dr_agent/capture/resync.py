"""Resync: make the replica equal to the disk by sending only the blocks that differ.

After block tracking is lost (overrun, agent restart) or when the process server sheds load, the
agent does not copy the disk blindly: it hashes each block of the disk with xxh3-128, asks the
target for the hashes of the same blocks (`BlockHashSource`: a local replica file here, the master
target over the wire in production), and sends only the blocks whose hashes differ (DRBD's
`verify`/bdsync style). Adjacent differing blocks are sent as one write; a differing block that is
all zeros is sent as a discard.

Resync runs while the workload writes: the writes are captured meanwhile (splitter, or tracking
with the tracepoint enabled before the resync starts) and sent in order after it, so a block read
mid-write is corrected by its later change. With the splitter, pass `exclusive=splitter.exclusive`
so a block's read-and-send never interleaves with a write of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import xxhash

from dr_agent.capture._linux import DiskReader
from dr_agent.capture.bitmap import DEFAULT_BLOCK_SIZE
from dr_agent.capture.errors import CaptureError
from dr_agent.changes import ChangeSink

BATCH_BLOCKS = 1024  # blocks per hash request: 4 MiB of disk per round trip at 4 KiB blocks
HASH_SIZE = 16  # bytes in an xxh3-128 digest

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class BlockHashSource(Protocol):
    """The target's side of a resync: xxh3-128 digests of its copy of the disk's blocks."""

    def hashes(self, first_block: int, count: int, block_size: int) -> list[bytes]:
        """Digests of blocks [first_block, first_block+count); the disk's last block may be short."""
        ...


@dataclass(frozen=True)
class ResyncResult:
    blocks: int  # blocks compared
    blocks_differing: int
    bytes_sent: int  # bytes written plus bytes discarded on the target
    bytes_compared: int


def block_hashes(data: bytes, block_size: int) -> list[bytes]:
    view = memoryview(data)
    return [xxhash.xxh3_128_digest(view[i:i + block_size]) for i in range(0, len(data), block_size)]


def resync(source: Path | str, target: BlockHashSource, sink: ChangeSink, *,
           block_size: int = DEFAULT_BLOCK_SIZE, batch_blocks: int = BATCH_BLOCKS,
           exclusive: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
           progress: Progress | None = None, start: int = 0, end: int | None = None) -> ResyncResult:
    """Compare [start, end) of `source` block by block with `target`; send differing blocks to `sink`.

    Ends with `sink.flush()`: when this returns the replica equals the disk as it was read.
    """
    if block_size <= 0 or block_size % 512:
        raise CaptureError(f"resync block size must be a multiple of 512 bytes, got {block_size}")
    if start % block_size:
        raise CaptureError(f"resync start {start} is not aligned to the {block_size}-byte block")
    with DiskReader(source, max_read=batch_blocks * block_size) as disk:
        stop = disk.size if end is None else min(end, disk.size)
        total = max(0, stop - start)
        blocks = differing = sent = 0
        for first in range(start // block_size, -(-stop // block_size), batch_blocks):
            count = min(batch_blocks, -(-stop // block_size) - first)
            theirs = target.hashes(first, count, block_size)  # outside the lock: a round trip
            if len(theirs) != count:
                raise CaptureError(f"the target returned {len(theirs)} hashes for {count} blocks at block "
                                   f"{first}; is the replica smaller than the disk?")
            offset = first * block_size
            with exclusive():
                data = disk.read(offset, min(count * block_size, stop - offset))
                ours = block_hashes(data, block_size)
                diff = [i for i in range(len(ours)) if ours[i] != theirs[i]]
                for run_start, run_stop in _runs(diff):
                    lo, hi = run_start * block_size, min(run_stop * block_size, len(data))
                    chunk = data[lo:hi]
                    if chunk.count(0) == len(chunk):
                        sink.discard(offset + lo, hi - lo)
                    else:
                        sink.write(offset + lo, chunk)
                    sent += hi - lo
            blocks += count
            differing += len(diff)
            if progress is not None:
                progress(min(offset + len(data), stop) - start, total)
        sink.flush()
    return ResyncResult(blocks=blocks, blocks_differing=differing, bytes_sent=sent, bytes_compared=total)


def _runs(indexes: list[int]) -> Iterator[tuple[int, int]]:
    """[3, 4, 5, 9] -> (3, 6), (9, 10)."""
    if not indexes:
        return
    lo = prev = indexes[0]
    for i in indexes[1:]:
        if i != prev + 1:
            yield lo, prev + 1
            lo = i
        prev = i
    yield lo, prev + 1
