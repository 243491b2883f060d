"""The agent's exception tree (the data path's own root; `dr` turns these into its errors).

    AgentError                  root of every error of the data path
    ├── CorruptData             bytes failed their checksum or framing (cache segment, wire frame); never applied
    │   └── CorruptRecord       the cached record of a known sequence number is bad or missing
    ├── ProtocolError           the peer broke the wire protocol (unexpected frame, sequence gap)
    ├── TransportError          a connection could not be made or was lost (retried by callers)
    ├── AuthError               a certificate or registration passphrase was refused
    ├── CacheFull               the process server's cache cannot take more; agents fall back to bitmap tracking
    ├── TargetError             the replica target (file or page blob) refused an operation
    ├── ConfigError             a service configuration file is missing a value or has a wrong one
    ├── PointNotFound           no recovery point matches the request
    ├── CoordinationAborted     a multi-VM point was not taken (a member missing, not pausing, failing); no bookmark
    └── CaptureError            dr_agent.capture.errors: root of capture's errors
        ├── CaptureUnavailable  this machine lacks what a capture mode needs (root, /dev/fuse, tracefs, losetup)
        ├── DeviceError         a loop device, mount or FUSE session could not be set up or torn down
        ├── FreezeError         FIFREEZE/FITHAW failed on a mount point (every frozen one is still thawed)
        ├── ScriptFailed        an application pre/post script exited non-zero or timed out
        ├── TrackingLost        block tracking missed events (overrun, restart): a resync is needed
        └── CheckpointMismatch  a resume checkpoint belongs to another disk or another target

This tree is the registry: tests/test_errors.py fails on a subclass that is not drawn here.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of the data path's errors. `str(error)` is one line: what was expected, what was found."""


class CorruptData(AgentError):
    """A record, segment or frame failed its magic, version, length or checksum check."""


class CorruptRecord(CorruptData):
    """The cache cannot serve the record `seq` of a disk's stream (it failed its checks, or is gone)."""

    def __init__(self, message: str, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class ProtocolError(AgentError):
    pass


class TransportError(AgentError):
    pass


class AuthError(AgentError):
    pass


class CacheFull(AgentError):
    pass


class TargetError(AgentError):
    pass


class ConfigError(AgentError):
    pass


class PointNotFound(AgentError):
    pass


class CoordinationAborted(AgentError):
    """A multi-VM point did not complete (the process server's coordinator); every member resumed
    and no bookmark counts."""
