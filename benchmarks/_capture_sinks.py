"""Sinks shared by the capture benchmarks (imported after the script puts agent/ on sys.path)."""

from __future__ import annotations

from dr_agent.changes import BookmarkKind


class CountingSink:
    """A sink that only counts: isolates the capture side's cost from any transport's."""

    def __init__(self) -> None:
        self.bytes = 0
        self.barriers = 0

    def write(self, offset: int, data: bytes) -> None:
        self.bytes += len(data)

    def discard(self, offset: int, length: int) -> None:
        pass

    def flush(self) -> None:
        self.barriers += 1

    def bookmark(self, bookmark_id: str, kind: BookmarkKind, group_id: str | None = None) -> None:
        pass
