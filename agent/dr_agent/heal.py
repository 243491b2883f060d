"""Heal a disk whose stream the process server could not keep: compare it with the replica.

When the process server drops cached records (one failed its checksum: nothing after it may be
applied) and the agent no longer holds them, or the stream has a gap, the sink falls back with
`Fallback(resync=True)`. `resync_after_fallback` then compares every block of the disk with the
replica (xxh3-128 digests computed at the master target, asked through the process server) and
sends only the blocks that differ, then tells the process server the disk is whole again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from dr_agent.capture.resync import ResyncResult, resync
from dr_agent.errors import AgentError
from dr_agent.pki import Identity
from dr_agent.sink import ProcessServerSink, RemoteHashes

log = logging.getLogger(__name__)


def resync_after_fallback(sink: ProcessServerSink, source: Path, *, servers: list[tuple[str, int]],
                          identity: Identity, server_hostname: str | None = None,
                          exclusive: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
                          ) -> ResyncResult:
    """Resync `source` (the disk, or its backing file) after `sink.fallback.resync`; on failure the
    sink is left in fallback, so the caller tries again later."""
    fb = sink.fallback
    if fb is None or not fb.resync:
        raise ValueError(f"disk {sink.disk}: no fallback asking for a resync")
    sink.resume(resync=True)
    hashes = RemoteHashes(disk=sink.disk, size=sink.size, servers=servers, identity=identity,
                          server_hostname=server_hostname)
    try:
        result = resync(source, hashes, sink, exclusive=exclusive)
        sink.resynced(fb.from_seq)
    except AgentError:  # CaptureError is one too
        sink.fall_back(fb)
        raise
    finally:
        hashes.close()
    log.warning("disk %s: resynced against the replica: %d of %d blocks differed, %d bytes sent",
                sink.disk, result.blocks_differing, result.blocks, result.bytes_sent)
    return result
