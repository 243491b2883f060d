"""Initial sync: copy a whole disk to a new (all-zero) replica, skipping what needs no copy.

The disk is read once, front to back. Unallocated ranges of an image file (SEEK_DATA/SEEK_HOLE)
are never read, and blocks that read back as zeros are never sent: the target is a new page blob
or sparse file, already zero. Progress is durable: every `checkpoint_every` bytes the sink is
flushed (a barrier: everything sent is acknowledged) and then a checkpoint file records the offset
reached, written to a temporary file, fsynced and renamed over the old one, so a restart after a
crash or a kill resumes from the last checkpoint instead of from zero. Resending the few chunks
after the checkpoint is harmless: writes are idempotent.

Writes made to the disk while the sync runs are captured by the splitter or the tracker, which
are started first; with the splitter, pass `exclusive=splitter.exclusive` so a chunk's read and
send never interleave with a write of the same blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from dr_agent.capture._linux import DiskReader
from dr_agent.capture.bitmap import DEFAULT_BLOCK_SIZE
from dr_agent.capture.errors import CaptureError, CheckpointMismatch
from dr_agent.capture.resync import Progress
from dr_agent.changes import ChangeSink

CHUNK = 4 << 20  # bytes read per step: large enough for sequential disk speed, small for the lock
CHECKPOINT_EVERY = 256 << 20  # bytes between durable checkpoints (at most this much is resent)
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class SyncCheckpoint:
    """What a checkpoint file holds: which disk, to which target, how far, and whether done."""

    version: int
    source: str  # the disk's identity: path, device/inode, size
    target: str  # the caller's name for the replica (disk id at the process server)
    size: int
    offset: int  # every byte before it was sent and acknowledged
    complete: bool


@dataclass(frozen=True)
class InitialSyncResult:
    size: int
    resumed_from: int  # 0 on a fresh start
    bytes_read: int
    bytes_sent: int  # non-zero blocks written to the sink
    bytes_skipped_zero: int  # read but all zeros
    bytes_skipped_holes: int  # never read: unallocated in the image file
    complete: bool


def source_identity(path: Path) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}@{st.st_dev}:{st.st_ino}:{st.st_rdev}"


def read_checkpoint(path: Path) -> SyncCheckpoint | None:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise CheckpointMismatch(f"checkpoint {path} is unreadable ({err}); delete it to sync from the start") \
            from None
    try:
        checkpoint = SyncCheckpoint(**raw)
    except TypeError:
        raise CheckpointMismatch(f"checkpoint {path} has unexpected fields; delete it to sync from the start") \
            from None
    if checkpoint.version != CHECKPOINT_VERSION:
        raise CheckpointMismatch(f"checkpoint {path} has version {checkpoint.version}, expected "
                                 f"{CHECKPOINT_VERSION}; delete it to sync from the start")
    return checkpoint


def write_checkpoint(path: Path, checkpoint: SyncCheckpoint) -> None:
    """Atomically and durably replace the checkpoint file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(asdict(checkpoint)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def initial_sync(source: Path | str, sink: ChangeSink, *, checkpoint: Path, target: str = "",
                 block_size: int = DEFAULT_BLOCK_SIZE, chunk: int = CHUNK,
                 checkpoint_every: int = CHECKPOINT_EVERY,
                 exclusive: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
                 progress: Progress | None = None) -> InitialSyncResult:
    """Send every non-zero allocated block of `source` to `sink`, resuming from `checkpoint`.

    `target` names the replica (a checkpoint made for another target is refused). Raises
    CheckpointMismatch when the checkpoint belongs to another disk, target or size.
    """
    if chunk % block_size or checkpoint_every % chunk:
        raise CaptureError(f"chunk ({chunk}) must be a multiple of the block size ({block_size}) and "
                           f"checkpoint_every ({checkpoint_every}) a multiple of the chunk")
    source = Path(source)
    identity = source_identity(source)
    with DiskReader(source, max_read=chunk) as disk:
        size = disk.size
        saved = read_checkpoint(checkpoint)
        if saved is not None and (saved.source, saved.target, saved.size) != (identity, target, size):
            raise CheckpointMismatch(
                f"checkpoint {checkpoint} is for {saved.source} -> {saved.target!r} ({saved.size} bytes), not "
                f"{identity} -> {target!r} ({size} bytes); delete it to sync from the start")
        resumed_from = saved.offset if saved else 0
        if saved is not None and saved.complete:
            return InitialSyncResult(size, size, 0, 0, 0, 0, True)
        read = sent = zero = 0
        holes = 0
        zeros = bytes(block_size)
        last_checkpoint = resumed_from
        pos = resumed_from
        for data_start, data_len in disk.data_ranges(resumed_from):
            holes += data_start - pos
            pos = data_start
            data_end = data_start + data_len
            while pos < data_end:
                step_end = min(data_end, (pos // chunk + 1) * chunk)  # keep reads chunk-aligned
                with exclusive():
                    data = disk.read(pos, step_end - pos)
                    nonzero = 0
                    for lo, hi in _nonzero_runs(data, block_size, zeros):
                        sink.write(pos + lo, data[lo:hi])
                        nonzero += hi - lo
                read += len(data)
                sent += nonzero
                zero += len(data) - nonzero
                pos = step_end
                if pos - last_checkpoint >= checkpoint_every:
                    sink.flush()
                    write_checkpoint(checkpoint, SyncCheckpoint(CHECKPOINT_VERSION, identity, target, size,
                                                                pos, False))
                    last_checkpoint = pos
                if progress is not None:
                    progress(pos, size)
        holes += size - pos
        sink.flush()
        write_checkpoint(checkpoint, SyncCheckpoint(CHECKPOINT_VERSION, identity, target, size, size, True))
        if progress is not None:
            progress(size, size)
    return InitialSyncResult(size, resumed_from, read, sent, zero, holes, True)


def _nonzero_runs(data: bytes, block_size: int, zeros: bytes) -> list[tuple[int, int]]:
    """Byte ranges [lo, hi) of `data` made of consecutive blocks that are not all zeros.

    Fast paths first (measured: per-block memoryview comparisons made this the initial sync's hot
    spot, slower than reading the disk): a chunk with no block of zeros in it at all (one substring
    search), then a loop over block-sized bytes slices. A short last block is checked on its own.
    """
    n = len(data)
    full = n - n % block_size
    runs: list[tuple[int, int]] = []
    if zeros not in data:
        if full:
            runs.append((0, full))
    else:
        lo = -1
        for i in range(0, full, block_size):
            if data[i:i + block_size] == zeros:
                if lo >= 0:
                    runs.append((lo, i))
                    lo = -1
            elif lo < 0:
                lo = i
        if lo >= 0:
            runs.append((lo, full))
    if full < n and data[full:].strip(b"\0"):  # a short last block with data in it
        if runs and runs[-1][1] == full:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((full, n))
    return runs
