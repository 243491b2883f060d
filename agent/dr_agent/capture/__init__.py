"""Capture on the source machine: what changed on a protected disk, in order, with consistency points.

Modes (modelled on ASR/InMage's filter driver, which has a data mode and a bitmap fall-back):

- `splitter`: data mode. The disk is presented through a FUSE file; the workload's loop device sits
  on it; every write/discard/flush goes to the disk and then, in the same order, to a `ChangeSink`.
- `tracking`: for a disk already in use. Block tracepoints (tracefs) mark written blocks in a
  `bitmap.DirtyBitmap`; at each consistency point the file systems are frozen and the dirty
  blocks read and sent.
- `resync`: after tracking is lost, per-block xxh3-128 hashes against the target's, only the
  differing blocks are sent. `initial_sync`: the first full copy, skipping zeros and holes,
  resumable from a durable checkpoint.
- `consistency`: bookmark ids, application-consistent freeze/thaw with pre/post scripts. (Multi-VM
  points: the process server's coordinator, dr_agent.ps_coordinator; the agent's side is
  dr_agent.coordination.)
- `filetarget`: a replica in a local file (a `ChangeSink` and a `BlockHashSource`).

Modules import only the standard library, xxhash and (lazily, in `Splitter.__enter__`) mfusepy.
"""

from __future__ import annotations

from dr_agent.capture.bitmap import DirtyBitmap
from dr_agent.capture.consistency import app_consistent, new_bookmark_id, run_script
from dr_agent.capture.errors import (
    CaptureError,
    CaptureUnavailable,
    CheckpointMismatch,
    CoordinationAborted,
    DeviceError,
    FreezeError,
    ScriptFailed,
    TrackingLost,
)
from dr_agent.capture.filetarget import FileTarget
from dr_agent.capture.initial_sync import InitialSyncResult, initial_sync
from dr_agent.capture.resync import BlockHashSource, ResyncResult, resync
from dr_agent.capture.splitter import Splitter, SplitterStats, attach_loop, detach_loop
from dr_agent.capture.tracking import BlockTracker, TrackingAgent, find_tracefs

__all__ = [
    "BlockHashSource", "BlockTracker", "CaptureError", "CaptureUnavailable", "CheckpointMismatch",
    "CoordinationAborted", "DeviceError", "DirtyBitmap", "FileTarget",
    "FreezeError", "InitialSyncResult", "ResyncResult", "ScriptFailed",
    "Splitter", "SplitterStats", "TrackingAgent", "TrackingLost", "app_consistent", "attach_loop",
    "detach_loop", "find_tracefs", "initial_sync", "new_bookmark_id", "resync", "run_script",
]
