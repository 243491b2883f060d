"""The capture side's errors, under the data path's root `dr_agent.errors.AgentError`.

Their place in the data path's tree, with one line each, is drawn in dr_agent/errors.py (the registry).

Every message is one line: what was expected, what was found, and how to fix it.
"""

from __future__ import annotations

from dr_agent.errors import AgentError
from dr_agent.errors import CoordinationAborted as CoordinationAborted  # the coordinator's; kept importable here


class CaptureError(AgentError):
    """Root of the capture side's errors."""


class CaptureUnavailable(CaptureError):
    """The machine lacks a prerequisite of a capture mode; the message names it and how to get it."""


class DeviceError(CaptureError):
    """A loop device, a mount or the FUSE session failed; the message quotes the command's stderr."""


class FreezeError(CaptureError):
    """Freezing or thawing a file system failed."""


class ScriptFailed(CaptureError):
    """An application-consistency script failed: `script`, `returncode` (None on a timeout)."""

    def __init__(self, script: str, returncode: int | None, stderr: str) -> None:
        self.script = script
        self.returncode = returncode
        what = "timed out" if returncode is None else f"exited with {returncode}"
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output on stderr"
        super().__init__(f"application script {script!r} {what} ({tail}); fix the script or remove it")


class TrackingLost(CaptureError):
    """Block tracking can no longer vouch for the dirty set; `reason` says why. Resync, then track again."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"block tracking lost: {reason}; a hash resync of the disk is needed")


class CheckpointMismatch(CaptureError):
    """A checkpoint file describes another source or target than the one being synced."""
