"""The fixed-VHD footer (Microsoft's "Virtual Hard Disk Image Format Specification", v1.0).

A fixed VHD is the raw disk followed by this 512-byte footer; Azure makes a managed disk from a
page blob laid out so (its virtual size must be a whole number of MiB).
"""

from __future__ import annotations

import struct
import time
import uuid

FOOTER_SIZE = 512
COOKIE = b"conectix"
# Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z), from the spec.
VHD_EPOCH = 946684800
DISK_TYPE_FIXED = 2
_LAYOUT = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")  # fields up to "saved state"; 427 reserved bytes follow


def geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track): the algorithm in the spec's appendix."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def footer(size: int, *, disk_id: uuid.UUID | None = None, timestamp: float | None = None) -> bytes:
    if size % 512:
        raise ValueError(f"a VHD's size must be a multiple of 512 bytes, not {size}")
    c, h, s = geometry(size)
    ts = int((time.time() if timestamp is None else timestamp) - VHD_EPOCH) & 0xFFFFFFFF
    uid = (disk_id or uuid.uuid4()).bytes

    def pack(checksum: int) -> bytes:
        body = _LAYOUT.pack(COOKIE, 2, 0x00010000, 0xFFFFFFFFFFFFFFFF, ts, b"dr  ", 0x00010000, b"Wi2k",
                            size, size, c, h, s, DISK_TYPE_FIXED, checksum, uid, 0)
        return body + b"\0" * (FOOTER_SIZE - len(body))

    checksum = (~sum(pack(0))) & 0xFFFFFFFF
    return pack(checksum)


def parse_footer(data: bytes) -> int:
    """The disk size a valid fixed-VHD footer declares; ValueError when it is not one."""
    if len(data) != FOOTER_SIZE or data[:8] != COOKIE:
        raise ValueError("no 'conectix' cookie: not a VHD footer")
    fields = _LAYOUT.unpack_from(data)
    stored = fields[14]
    zeroed = data[:64] + b"\0\0\0\0" + data[68:]
    if (~sum(zeroed)) & 0xFFFFFFFF != stored:
        raise ValueError("VHD footer checksum mismatch")
    if fields[13] != DISK_TYPE_FIXED:
        raise ValueError(f"VHD disk type {fields[13]}, expected {DISK_TYPE_FIXED} (fixed)")
    return int(fields[9])
