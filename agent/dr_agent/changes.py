"""The seam between capture and transport: what a capture mode emits, in order, per disk.

Capture (the FUSE write-splitter, block tracking, resync) calls a `ChangeSink`; the transport
(framing, TLS to the process server) implements it. Calls on one sink are made from a single
ordered apply path and must be made durable in that order: `flush` is a barrier (everything before
it is acknowledged before it returns), and a bookmark marks a consistency point between writes.
"""

from __future__ import annotations

from typing import Literal, Protocol

BookmarkKind = Literal["crash", "app"]


class ChangeSink(Protocol):
    def write(self, offset: int, data: bytes) -> None:
        """`data` was written at byte `offset` of the disk."""

    def discard(self, offset: int, length: int) -> None:
        """`length` bytes at `offset` were discarded or zeroed (they read back as zeros)."""

    def flush(self) -> None:
        """A barrier: returns when every change before it is durable at the next hop."""

    def bookmark(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None = None) -> None:
        """A consistency point after every change before it. `group_id` is set for multi-VM points."""
