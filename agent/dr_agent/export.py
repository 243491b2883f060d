"""Materialize a replica disk at a recovery point: FILE.img (raw) or FILE.vhd (raw + fixed-VHD footer).

Only the ranges the replica holds data in are read (page ranges of a page blob snapshot, allocated
extents of a file snapshot); the output is sparse where the disk is empty.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dr_agent import vhd
from dr_agent.catalog import Catalog
from dr_agent.errors import ConfigError
from dr_agent.target import FilePoint, PointReader

# Bytes read per request while exporting: 4 MiB, the Put Page size, a good Get Blob size too.
READ_CHUNK = 4 * 1024 * 1024


def open_point(catalog: Catalog, disk: str, snapshot: str | None, *,
               connection_string: str | None = None) -> PointReader:
    entry = catalog.disk(disk)
    loc = entry.location
    if loc["kind"] == "file":
        return FilePoint(Path(snapshot or loc["path"]), entry.size)
    if loc["kind"] == "pageblob":
        if not connection_string:
            raise ConfigError(f"disk {disk} is a page blob in container {loc['container']}: set "
                              "AZURE_STORAGE_CONNECTION_STRING (or pass --connection-string-env) to read it")
        from dr_agent.pageblob import PageBlobPoint

        return PageBlobPoint(connection_string, loc["container"], loc["blob"], entry.size, snapshot)
    raise ConfigError(f"disk {disk}: unknown replica kind {loc['kind']!r}")


def export(catalog: Catalog, disk: str, point: str, dest: Path, *, connection_string: str | None = None,
           progress: Callable[[int, int], None] | None = None) -> Path:
    """Write `disk` at `point` (latest, latest-app, an id or an ISO time) to `dest` (.img or .vhd)."""
    if dest.suffix.lower() not in (".img", ".vhd"):
        raise ConfigError(f"export to {dest.name}: expected a FILE.img (raw) or FILE.vhd (fixed VHD) name")
    chosen = catalog.resolve(disk, point)
    reader = open_point(catalog, disk, chosen.snapshot, connection_string=connection_string)
    ranges = list(reader.ranges())
    total = sum(n for _, n in ranges)
    done = 0
    tmp = dest.with_name(dest.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, reader.size)
        for off, n in ranges:
            for pos in range(off, off + n, READ_CHUNK):
                chunk = reader.read(pos, min(READ_CHUNK, off + n - pos))
                if chunk.count(0) != len(chunk):
                    os.pwrite(fd, chunk, pos)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if dest.suffix.lower() == ".vhd":
            os.pwrite(fd, vhd.footer(reader.size), reader.size)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    return dest
