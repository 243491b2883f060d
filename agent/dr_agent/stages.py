"""A bounded hand-off between the two stages of a receiving connection.

The process server and the master target each read and verify frames in the connection's thread
and commit them (cache append and fsync; replica apply and commit) in a second thread, so reading
the next frames overlaps the fsync or the Put Page calls of the previous ones. The committer takes
everything that has arrived at once (group commit); the reader waits when `limit_bytes` are queued.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar

from dr_agent.errors import AgentError


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Sized)


class Inbox(Generic[T]):
    """Items read but not yet committed, in arrival order (one reader, one committer).

    `None` is a keepalive: it wakes the committer with an empty group (answered with an ACK)."""

    def __init__(self, limit_bytes: int) -> None:
        self._cv = threading.Condition()
        self._items: collections.deque[T | None] = collections.deque()
        self._bytes = 0
        self._limit = limit_bytes
        self.closed = False

    def put(self, item: T | None) -> None:
        """Queue `item`; waits while `limit_bytes` are queued already (the reader stops reading)."""
        with self._cv:
            while self._bytes >= self._limit and not self.closed:
                self._cv.wait()
            self._items.append(item)
            self._bytes += item.nbytes if item is not None else 0
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def take(self, max_bytes: int) -> list[T] | None:
        """Everything arrived (at least one item, at most about `max_bytes`); None once closed and empty."""
        with self._cv:
            while not self._items and not self.closed:
                self._cv.wait()
            if not self._items:
                return None
            group: list[T] = []
            nbytes = 0
            while self._items and nbytes < max_bytes:
                item = self._items.popleft()
                if item is not None:
                    group.append(item)
                    nbytes += item.nbytes
            self._bytes -= nbytes
            self._cv.notify_all()
            return group


class _Closable(Protocol):
    def close(self) -> None: ...


@contextlib.contextmanager
def ending_stream(what: str, inbox: Inbox[Any], conn: _Closable, log: logging.Logger) -> Iterator[None]:
    """Run a connection's second stage; on any error end the stream: close the inbox and the
    connection (which wakes its reader). An expected failure is logged as such, a bug with its
    traceback; neither may leave the reader waiting forever."""
    try:
        yield
    except AgentError as err:
        log.info("%s: %s", what, err)
        inbox.close()
        conn.close()
    except Exception:
        log.exception("%s failed", what)
        inbox.close()
        conn.close()
