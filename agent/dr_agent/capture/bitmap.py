"""A dirty bitmap: which blocks of a disk changed since they were last sent.

Tracking mode marks the sector ranges the kernel's block tracepoints report; the splitter marks
writes it could not hand to its sink (bitmap fall-back, as ASR's filter driver does when the
process server cannot take data). At a consistency point the dirty ranges are read from the disk
and sent. One bit per block; ranges come back coalesced so the disk is read in large requests.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

DEFAULT_BLOCK_SIZE = 4096  # bytes: the file system block size of ext4/xfs/NTFS defaults

_POPCOUNT = bytes(i.bit_count() for i in range(256))  # byte -> number of set bits
_NONZERO = re.compile(rb"[^\x00]")


class DirtyBitmap:
    """Thread-safe dirty set over a disk of `size` bytes in blocks of `block_size` bytes."""

    def __init__(self, size: int, *, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block size must be a power of two, got {block_size}")
        self.size = size
        self.block_size = block_size
        self.blocks = -(-size // block_size)
        self._bits = bytearray(-(-self.blocks // 8))
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Number of dirty blocks."""
        return self._count

    @property
    def dirty_bytes(self) -> int:
        return self._count * self.block_size

    def mark(self, offset: int, length: int) -> None:
        """Mark every block that [offset, offset+length) touches. Ranges past the end are clipped."""
        if length <= 0 or offset >= self.size:
            return
        first = max(offset, 0) // self.block_size
        last = (min(offset + length, self.size) - 1) // self.block_size
        with self._lock:
            self._set_range(first, last + 1)

    def _set_range(self, first: int, stop: int) -> None:
        bits = self._bits
        added = 0
        block = first
        # leading bits up to a byte boundary, then whole bytes, then trailing bits
        while block < stop and block & 7:
            mask = 1 << (block & 7)
            if not bits[block >> 3] & mask:
                bits[block >> 3] |= mask
                added += 1
            block += 1
        whole = (stop - block) >> 3
        if whole:
            start_byte = block >> 3
            chunk = bits[start_byte:start_byte + whole]
            added += whole * 8 - sum(chunk.translate(_POPCOUNT))
            bits[start_byte:start_byte + whole] = b"\xff" * whole
            block += whole * 8
        while block < stop:
            mask = 1 << (block & 7)
            if not bits[block >> 3] & mask:
                bits[block >> 3] |= mask
                added += 1
            block += 1
        self._count += added

    def is_dirty(self, block: int) -> bool:
        return bool(self._bits[block >> 3] & (1 << (block & 7)))

    def ranges(self, *, max_length: int | None = None) -> list[tuple[int, int]]:
        """Coalesced (offset, length) byte ranges of the dirty blocks, clipped to the disk size.

        `max_length` splits long runs so a caller can read them with a bounded buffer.
        """
        with self._lock:
            return list(self._iter_ranges(max_length))

    def _iter_ranges(self, max_length: int | None) -> Iterator[tuple[int, int]]:
        bits = self._bits
        bs = self.block_size
        limit = max_length // bs if max_length else None
        if limit is not None and limit < 1:
            raise ValueError(f"max_length must be at least one block ({bs} bytes)")
        n = len(bits)
        i = 0
        run_start = -1
        while i < n:
            byte = bits[i]
            if byte == 0 and run_start < 0:
                # skip clean bytes fast
                nxt = _next_nonzero(bits, i)
                i = nxt
                continue
            if byte == 0xFF and run_start >= 0:
                i += 1
                continue
            for bit in range(8):
                block = i * 8 + bit
                if block >= self.blocks:
                    break
                dirty = byte & (1 << bit)
                if dirty and run_start < 0:
                    run_start = block
                elif not dirty and run_start >= 0:
                    yield from _split(run_start, block, bs, self.size, limit)
                    run_start = -1
            i += 1
        if run_start >= 0:
            yield from _split(run_start, self.blocks, bs, self.size, limit)

    def clear(self, offset: int, length: int) -> None:
        """Mark the blocks fully inside [offset, offset+length) clean (after they were sent)."""
        if length <= 0:
            return
        first = -(-offset // self.block_size)
        end = offset + length
        stop = self.blocks if end >= self.size else end // self.block_size
        with self._lock:
            bits = self._bits
            for block in range(first, stop):
                mask = 1 << (block & 7)
                if bits[block >> 3] & mask:
                    bits[block >> 3] &= ~mask & 0xFF
                    self._count -= 1

    def take(self) -> DirtyBitmap:
        """Atomically move every dirty bit into a new bitmap and leave this one clean."""
        other = DirtyBitmap(self.size, block_size=self.block_size)
        with self._lock:
            other._bits, self._bits = self._bits, bytearray(len(self._bits))
            other._count, self._count = self._count, 0
        return other

    def merge(self, other: DirtyBitmap) -> None:
        """Add every dirty block of `other` (same geometry) back, e.g. after a failed send."""
        if (other.size, other.block_size) != (self.size, self.block_size):
            raise ValueError("bitmaps of different geometry cannot be merged")
        with self._lock:
            n = len(self._bits)
            merged = int.from_bytes(self._bits, "little") | int.from_bytes(other._bits, "little")
            self._bits = bytearray(merged.to_bytes(n, "little"))
            self._count = sum(self._bits.translate(_POPCOUNT))

    def mark_all(self) -> None:
        self.mark(0, self.size)


def _next_nonzero(bits: bytearray, start: int) -> int:
    """Index of the next non-zero byte at or after `start` (len(bits) when none)."""
    found = _NONZERO.search(bits, start)
    return found.start() if found else len(bits)


def _split(first: int, stop: int, bs: int, size: int, limit: int | None) -> Iterator[tuple[int, int]]:
    step = limit or (stop - first)
    for block in range(first, stop, step):
        end = min(block + step, stop)
        offset = block * bs
        yield offset, min(end * bs, size) - offset
