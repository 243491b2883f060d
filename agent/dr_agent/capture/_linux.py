"""Thin, typed wrappers over the Linux calls capture needs and Python's `os` lacks.

fallocate(2) with a mode, the FIFREEZE/FITHAW and BLKGETSIZE64 ioctls, aligned O_DIRECT reads,
and SEEK_DATA/SEEK_HOLE walking. Nothing here keeps state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# <linux/fs.h>: _IOWR('X', 119, int), _IOWR('X', 120, int), _IOR(0x12, 114, size_t)
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
BLKGETSIZE64 = 0x80081272

# O_DIRECT needs buffers and offsets aligned to the logical block size; 4 KiB covers every
# device we meet (512 e and 4 Kn disks alike).
DIRECT_ALIGN = 4096  # bytes


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    lib.fallocate.restype = ctypes.c_int
    return lib


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (os.posix_fallocate has none). Raises OSError."""
    if _libc().fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def zero_range(fd: int, mode: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) read as zeros with fallocate `mode` (punch-hole or zero-range).

    Falls back to punching a hole, then to writing zeros, where the file system lacks the mode
    (tmpfs has no FALLOC_FL_ZERO_RANGE; some have no hole punching at all).
    """
    punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    for attempt in (mode, punch):
        try:
            fallocate(fd, attempt, offset, length)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    write_zeros(fd, offset, length)


def write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = bytes(min(length, 1 << 20))
    pos, end = offset, offset + length
    while pos < end:
        pos += os.pwrite(fd, zeros[:min(len(zeros), end - pos)], pos)


def _fs_ioctl(mount_point: Path, request: int) -> None:
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def freeze(mount_point: Path) -> None:
    """FIFREEZE: flush the file system and block every new write until `thaw`."""
    _fs_ioctl(mount_point, FIFREEZE)


def thaw(mount_point: Path) -> None:
    """FITHAW: let writes through again."""
    _fs_ioctl(mount_point, FITHAW)


def freeze_held(mount_point: Path) -> int:
    """FIFREEZE through a descriptor that stays open until `thaw_held`: while it is open the file
    system cannot be unmounted (EBUSY), so an unmount racing a consistency point can never leave
    a frozen file system that nothing can thaw. Raises OSError (EINVAL: not a mount point)."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # checked with the descriptor held: an unmount between a check and the open would make us
        # freeze the file system underneath (the root one, say)
        if not os.path.ismount(mount_point) or os.stat(mount_point).st_dev != os.fstat(fd).st_dev:
            raise OSError(errno.EINVAL, f"{mount_point} is not a mount point")
        fcntl.ioctl(fd, FIFREEZE, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def thaw_held(fd: int) -> None:
    """FITHAW through the descriptor `freeze_held` returned, then close it (always)."""
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


def size_of(fd: int) -> int:
    """Size in bytes of a regular file or a block device."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("Q", buf)[0])
    return st.st_size


def is_block_device(path: Path) -> bool:
    return stat.S_ISBLK(os.stat(path).st_mode)


def data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of every allocated range in [start, end), from SEEK_DATA/SEEK_HOLE.

    A block device (or a file system without hole support) reports everything as data.
    """
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data after pos
                return
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, end - pos
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


class AlignedBuffer:
    """A page-aligned buffer for O_DIRECT reads (mmap memory is page-aligned)."""

    def __init__(self, size: int) -> None:
        self.size = -(-size // DIRECT_ALIGN) * DIRECT_ALIGN
        self._map = mmap.mmap(-1, self.size)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        """Read `length` bytes at `offset` (both multiples of DIRECT_ALIGN) through the buffer."""
        if length > self.size:
            raise ValueError(f"read of {length} bytes exceeds the {self.size}-byte buffer")
        view = memoryview(self._map)[:length]
        try:
            got = os.preadv(fd, [view], offset)
        finally:
            view.release()
        return self._map[:got]

    def close(self) -> None:
        self._map.close()


class DiskReader:
    """Reads a disk (block device or image file) by offset.

    A block device is read with O_DIRECT: the file system above it writes with bios that bypass
    the device's page cache, so a buffered read could return stale pages. Image files are read
    through the page cache (the splitter's writes to them go through it too).
    """

    def __init__(self, path: Path | str, *, max_read: int = 4 << 20) -> None:
        self.path = Path(path)
        self.direct = is_block_device(self.path)
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if self.direct else 0)
        self.fd = os.open(self.path, flags)
        self.size = size_of(self.fd)
        self._buf = AlignedBuffer(max_read + DIRECT_ALIGN) if self.direct else None

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if self._buf is None:
            return os.pread(self.fd, length, offset)
        start = offset - offset % DIRECT_ALIGN
        stop = -(-(offset + length) // DIRECT_ALIGN) * DIRECT_ALIGN
        out = []
        pos = start
        while pos < stop:
            step = min(stop - pos, self._buf.size)
            chunk = self._buf.pread(self.fd, step, pos)
            out.append(chunk)
            if len(chunk) < step:
                break
            pos += step
        data = b"".join(out)
        return data[offset - start:offset - start + length]

    def data_ranges(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        return data_ranges(self.fd, start, self.size if end is None else end)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._buf is not None:
            self._buf.close()
            self._buf = None

    def __enter__(self) -> DiskReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
