"""The fixed-VHD footer (Microsoft's "Virtual Hard Disk Image Format Specification", v1.0).

A fixed VHD is the raw disk followed by this 512-byte footer; Azure makes a managed disk from a
page blob laid out so. Azure needs the VHD's virtual size to be a whole number of MiB, so a disk
of any other size (an 80 GB drive has 156,301,488 sectors) is padded up to the next MiB: the
footer declares the padded size and the padding reads as zeros (`virtual_size`).

Which size a reader believes: the footer has two, the "current size" and a CHS geometry that can
only approximate most sizes. QEMU (block/vpc.c, `vpc_ignore_current_size`, checked 2026-12-01)
uses the current size only for creator applications it trusts: "win " (Hyper-V), "qem2", "d2v ",
"CTXS", "tap\\0" in every release, and since QEMU 10.0 everything except "vpc " and "qemu"
(Azure's own "wa\\0\\0" is trusted only since then). Debian 12 ships QEMU 7.2 and Ubuntu 24.04 8.2,
so the footer names Hyper-V's "win ": every QEMU then reads the exact size, and Azure and
Hyper-V read the current size whatever the creator.
"""

from __future__ import annotations

import struct
import time
import uuid

FOOTER_SIZE = 512
SECTOR = 512
# Azure managed disks (and images) need a VHD virtual size that is a whole number of MiB (bytes;
# Microsoft Learn, "Upload a VHD to Azure or copy a managed disk", checked 2026-12-01).
VIRTUAL_SIZE_ALIGN = 1024 * 1024
# The largest page blob, in bytes: 8 TiB (Microsoft Learn, "Scalability and performance targets for
# Blob storage", maximum size of a page blob; checked 2026-12-01). A replica is one page blob of
# `blob_bytes(disk)`, so the largest disk the data path replicates is 8 TiB - 1 MiB.
PAGE_BLOB_MAX_BYTES = 8 * 1024**4
PAGE_BLOB_LIMIT_SOURCE = ("Azure Blob storage scale targets, learn.microsoft.com/azure/storage/blobs/"
                          "scalability-targets, checked 2026-12-01")
COOKIE = b"conectix"
# Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z), from the spec.
VHD_EPOCH = 946684800
DISK_TYPE_FIXED = 2
# The creator application and version Hyper-V writes ("win ", 10.0); see the module docstring.
CREATOR_APP = b"win "
CREATOR_VERSION = 0x000A0000
CREATOR_HOST_OS = b"Wi2k"  # the spec's value for Windows hosts
_LAYOUT = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")  # fields up to "saved state"; 427 reserved bytes follow


def virtual_size(disk_size: int) -> int:
    """The VHD virtual size of a disk of `disk_size` bytes: padded up to the next MiB (Azure's rule)."""
    if disk_size <= 0 or disk_size % SECTOR:
        raise ValueError(f"a disk's size must be a positive multiple of {SECTOR} bytes, not {disk_size}")
    return -(-disk_size // VIRTUAL_SIZE_ALIGN) * VIRTUAL_SIZE_ALIGN


def blob_bytes(disk_size: int) -> int:
    """Bytes of the fixed VHD (page blob or file) holding a disk of `disk_size` bytes: padded disk + footer."""
    return virtual_size(disk_size) + FOOTER_SIZE


def largest_disk() -> int:
    """The largest disk (bytes) whose fixed VHD fits in one page blob."""
    return (PAGE_BLOB_MAX_BYTES - FOOTER_SIZE) // VIRTUAL_SIZE_ALIGN * VIRTUAL_SIZE_ALIGN


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
    """The footer of a fixed VHD whose virtual size is `size` bytes (see `virtual_size`)."""
    if size <= 0 or size % SECTOR:
        raise ValueError(f"a VHD's size must be a positive multiple of {SECTOR} bytes, not {size}")
    c, h, s = geometry(size)
    ts = int((time.time() if timestamp is None else timestamp) - VHD_EPOCH) & 0xFFFFFFFF
    uid = (disk_id or uuid.uuid4()).bytes

    def pack(checksum: int) -> bytes:
        body = _LAYOUT.pack(COOKIE, 2, 0x00010000, 0xFFFFFFFFFFFFFFFF, ts, CREATOR_APP, CREATOR_VERSION,
                            CREATOR_HOST_OS, size, size, c, h, s, DISK_TYPE_FIXED, checksum, uid, 0)
        return body + b"\0" * (FOOTER_SIZE - len(body))

    checksum = (~sum(pack(0))) & 0xFFFFFFFF
    return pack(checksum)


def parse_footer(data: bytes) -> int:
    """The virtual size a valid fixed-VHD footer declares; ValueError when it is not one."""
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
