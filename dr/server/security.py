"""The configuration server's guards against hostile requests, apart from the schemas (which bound
every field of every body: `dr.server.schemas`).

    BodyLimit          ASGI middleware: a body past its path's limit is refused with 413 before it
                       is read whole (Content-Length up front, or counted as it streams); a body past
                       the small anonymous limit needs a known token first
    same_origin        a state-changing request that names an Origin (or Referer) must name this
                       server: a page on another port of the same host is another origin
    csrf_token         the token a dashboard form carries when the browser is authenticated by its
                       cookie (an HMAC of the session token under the vault's CSRF key)
    PassphraseThrottle the vault passphrase check, per client address: a few free tries, then a
                       delay that doubles with every refused try (answered 429 with Retry-After,
                       without spending a passphrase hash on it)
    RefusalLog         refusals become events aggregated per client and window, not one row each

The state a guard keeps (throttle entries, refusal counters) lives in the objects `create_app`
makes, bounded in size; a restart forgets it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dr_agent.contract import CATALOG_PATH
from starlette.concurrency import run_in_threadpool

from dr.server.store import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Body limits (bytes; our choice). Anything without a known token: 64 KiB (a registration with a
# 16 KiB CSR is about 20 KiB). A known token: 2 MiB (a process server's per-stream backlog of 4096
# streams is about 1 MiB). The catalog of record: 64 MiB (dr.server.schemas.MAX_CATALOG_POINTS
# points of about 120 bytes each).
ANONYMOUS_BODY_BYTES = 64 * 1024
DEFAULT_BODY_BYTES = 2 * 1024 * 1024
PATH_BODY_BYTES: Mapping[str, int] = {CATALOG_PATH: 64 * 1024 * 1024}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Passphrase throttle (our choice): FREE_TRIES wrong passphrases from one address cost nothing; each
# refused try after that doubles the wait from DELAY_BASE_S up to DELAY_MAX_S. At most
# THROTTLE_ADDRESSES addresses are remembered (the oldest are forgotten first).
FREE_TRIES = 5
DELAY_BASE_S = 1.0
DELAY_MAX_S = 15 * 60.0
THROTTLE_ADDRESSES = 10_000
# Refusal events: one event per (kind, client) per window, carrying how many refusals it stands for.
REFUSAL_WINDOW_S = 60.0
REFUSAL_KEYS = 10_000


def _json(status: int, detail: str, headers: Mapping[str, str] | None = None) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def request_token(scope: Scope, cookie: str) -> tuple[str | None, bool]:
    """The bearer token of a request, and whether it came from the cookie (a browser)."""
    header = _header(scope, b"authorization") or ""
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    value = _cookie(scope, cookie)
    return value, value is not None


def own_origin(scope: Scope) -> str:
    scheme = scope.get("scheme", "http")
    host = _header(scope, b"host") or ""
    if not host and scope.get("server"):
        server_host, server_port = scope["server"]
        host = f"{server_host}:{server_port}"
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return f"{scheme}://{host.removesuffix(default).lower()}"


def same_origin(scope: Scope) -> str | None:
    """None when a state-changing request may come from where it says; else why not."""
    origin = _header(scope, b"origin")
    mine = own_origin(scope)
    if origin is not None:
        if origin.lower().rstrip("/") != mine:
            return f"a state-changing request from origin {origin} is refused: this server is {mine}"
        return None
    referer = _header(scope, b"referer")
    if referer is not None:
        parts = urlsplit(referer)
        theirs = f"{parts.scheme}://{parts.netloc}".lower()
        default = {"http": ":80", "https": ":443"}.get(parts.scheme, "")
        if theirs.removesuffix(default) != mine:
            return f"a state-changing request from a page of {theirs} is refused: this server is {mine}"
    return None


def csrf_token(key: bytes, session_token: str) -> str:
    """What a form posted with the session cookie must carry (field `csrf`, or header X-CSRF-Token)."""
    return hmac.new(key, b"csrf:" + session_token.encode(), hashlib.sha256).hexdigest()


def csrf_key(store: Store) -> bytes:
    """The vault's CSRF key, made once (first writer wins)."""
    import secrets

    return bytes.fromhex(store.set_meta_once("csrf_key", secrets.token_hex(32)))


class BodyLimit:
    """Refuse bodies past their limit with 413 before reading them whole; refuse a body past the
    anonymous limit from a caller without a known token (401) before reading it at all."""

    def __init__(self, app: ASGIApp, *, known_token: Callable[[str], bool], cookie: str) -> None:
        self.app = app
        self.known_token = known_token
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        limit = PATH_BODY_BYTES.get(scope.get("path", ""), DEFAULT_BODY_BYTES)
        length_text = _header(scope, b"content-length")
        declared: int | None = None
        if length_text is not None:
            if not length_text.strip().isdigit() or len(length_text.strip()) > 18:
                await self._answer(send, 400, f"Content-Length {length_text[:40]!r} is not a byte count")
                return
            declared = int(length_text)
            if declared > limit:
                await self._answer(send, 413, f"the body of {declared} bytes is over this call's limit of "
                                              f"{limit} bytes")
                return
        if declared is None or declared > ANONYMOUS_BODY_BYTES:
            token, _ = request_token(scope, self.cookie)
            if not token or not await run_in_threadpool(self.known_token, token):
                if declared is not None:
                    await self._answer(send, 401, f"a body over {ANONYMOUS_BODY_BYTES} bytes needs a valid token",
                                       {"WWW-Authenticate": "Bearer"})
                    return
                limit = ANONYMOUS_BODY_BYTES  # streamed without a length: counted against the small limit
        started = False
        refused = False
        received = 0

        async def counted() -> Message:
            nonlocal received, started, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now: the framework turns any error while reading into its own 400.
                    if not started:
                        started = refused = True
                        await self._answer(send, 413, f"the body is over this call's limit of {limit} bytes")
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 is out: whatever the app says after it is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            pass

    @staticmethod
    async def _answer(send: Send, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        start, body = _json(status, detail, headers)
        await send(start)
        await send(body)


@dataclass
class _Tries:
    refused: int = 0
    blocked_until: float = 0.0


@dataclass(kw_only=True)
class PassphraseThrottle:
    """Per client address: FREE_TRIES wrong passphrases, then a doubling delay (every refused try,
    wrong or too early, counts). Thread-safe; remembers at most THROTTLE_ADDRESSES addresses."""

    clock: Callable[[], float] = time.monotonic
    _tries: OrderedDict[str, _Tries] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, address: str) -> float:
        """Seconds this address must still wait (0: it may try now). A try while waiting is refused
        and lengthens the wait."""
        now = self.clock()
        with self._lock:
            tries = self._tries.get(address)
            if tries is None or tries.blocked_until <= now:
                return 0.0
            self._refuse(address, tries, now)
            return tries.blocked_until - now

    def failed(self, address: str) -> float:
        """A wrong passphrase: the wait it now has (0 while tries are free)."""
        now = self.clock()
        with self._lock:
            tries = self._tries.get(address) or _Tries()
            self._refuse(address, tries, now)
            return max(0.0, tries.blocked_until - now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._tries.pop(address, None)

    def _refuse(self, address: str, tries: _Tries, now: float) -> None:
        tries.refused += 1
        if tries.refused > FREE_TRIES:
            tries.blocked_until = now + min(DELAY_MAX_S, DELAY_BASE_S * 2 ** min(tries.refused - FREE_TRIES - 1, 40))
        self._tries[address] = tries
        self._tries.move_to_end(address)
        while len(self._tries) > THROTTLE_ADDRESSES:
            self._tries.popitem(last=False)


@dataclass
class _Count:
    since: float
    logged: float
    count: int = 0


@dataclass(kw_only=True)
class RefusalLog:
    """Refusal events, aggregated: the first refusal of a (kind, client) writes an event; later ones
    within REFUSAL_WINDOW_S are counted, and the next event after the window says how many there were."""

    write: Callable[[str, str, str, str], None]
    clock: Callable[[], float] = time.time
    _counts: OrderedDict[tuple[str, str], _Count] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refused(self, kind: str, client: str, message: str) -> None:
        now = self.clock()
        with self._lock:
            count = self._counts.get((kind, client))
            if count is not None and now - count.logged < REFUSAL_WINDOW_S:
                count.count += 1
                return
            text = message
            if count is not None and count.count:
                text += (f" ({count.count + 1} refusals from {client} since "
                         f"{time.strftime('%H:%M:%S', time.gmtime(count.since))} UTC)")
            self._counts[(kind, client)] = _Count(since=now, logged=now)
            self._counts.move_to_end((kind, client))
            while len(self._counts) > REFUSAL_KEYS:
                self._counts.popitem(last=False)
        self.write("warning", kind, client, text)
