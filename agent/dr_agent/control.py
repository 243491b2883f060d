"""The control loop: how a component registers with the configuration server and reports to it.

    register(...)   `dr-agent register --server URL`: ask the vault CA for this machine's identity
                    against the vault passphrase (the key is made here and never leaves), retrying
                    with a capped backoff until a deadline while the server is not there yet; write
                    the identity files and the API token (contract IDENTITY_FILES, TOKEN_FILE)
    ControlLoop     a service's thread: its `health()` every HEARTBEAT_INTERVAL_S and, for a master
                    target, its recovery-point catalog (looked at every CATALOG_POLL_S, sent when it
                    changed and every CATALOG_REFRESH_S),
                    with backoff while the server is away, logging each transition once

Standard library only (urllib, ssl): the agent package stays installable with few dependencies.
Every other call carries `Authorization: Bearer <token>`; the server is verified against the vault
CA (`ca.pem` of the identity), or a CA file the caller names. A machine that has no CA yet fetches
it from the server with the server's proof that it holds the vault passphrase (contract VaultCa),
and sends the passphrase only over TLS verified by that CA.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_agent.contract import (
    CA_PATH,
    CATALOG_PATH,
    CATALOG_REFRESH_S,
    CONTROL_BACKOFF_MAX_S,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_PATHS,
    REGISTER_PATH,
    TOKEN_FILE,
    CatalogReport,
    Message,
    Registration,
    RegistrationAnswer,
    Role,
    VaultCa,
    parse_role,
)
from dr_agent.errors import AuthError, ConfigError, ProtocolError, TransportError
from dr_agent.pki import Identity, certificate_request, new_key_pem, write_identity, write_private

log = logging.getLogger(__name__)

# One HTTP call waits at most this long for the server (seconds; our choice: a registration's
# scrypt check takes about 50 ms, a catalog of thousands of points well under a second).
REQUEST_TIMEOUT_S = 30.0
# The first retry of an unreachable server comes after this long; each next one waits twice as
# long, up to CONTROL_BACKOFF_MAX_S (seconds).
FIRST_BACKOFF_S = 1.0
# How long `dr-agent register` keeps trying by default (seconds): a configuration server deployed
# in the same run as its machines may come up many minutes after them.
DEFAULT_REGISTER_DEADLINE_S = 30 * 60.0
# A master target looks at its catalog this often and reports a change at once (seconds; our
# choice: a local SQLite read of a few milliseconds, and a new point is at the server within it).
CATALOG_POLL_S = 2.0
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{20,200}$")


class _Unreachable(Exception):
    """The server did not answer (not there yet, restarting, 5xx): worth another try."""


def _context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"the CA file {ca_file} cannot be read as PEM certificates ({err}): fix --ca-file") from None


def _call(server: str, path: str, body: dict[str, Any] | None, *, ctx: ssl.SSLContext | None,
          token: str | None = None) -> Any:
    """POST a JSON body (GET without one); the JSON answer (None for 204). AuthError/ProtocolError
    when refused for good, _Unreachable when another try may succeed."""
    url = server.rstrip("/") + path
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S,
                                    context=ctx if url.startswith("https:") else None) as answer:
            data = answer.read()
            return json.loads(data) if data else None
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read() or b"{}").get("detail", err.reason)
        except (ValueError, AttributeError):
            detail = err.reason
        if err.code >= 500 or err.code in (408, 429):
            raise _Unreachable(f"{url} answered {err.code} ({detail})") from None
        if err.code in (401, 403):
            raise AuthError(f"the configuration server refused {path} ({err.code}): {detail}") from None
        raise ProtocolError(f"the configuration server refused {path} ({err.code}): {detail}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise AuthError(f"the configuration server at {server} has a certificate this machine does not trust "
                            f"({reason.verify_message}): give the vault CA with --ca-file") from None
        raise _Unreachable(f"{url}: {reason}") from None
    except (TimeoutError, ConnectionError, ssl.SSLError) as err:
        raise _Unreachable(f"{url}: {err}") from None
    except ValueError:
        raise ProtocolError(f"{url} did not answer JSON: is --server the configuration server?") from None


def _backoff(attempt: int) -> float:
    return float(min(CONTROL_BACKOFF_MAX_S, FIRST_BACKOFF_S * 2 ** min(attempt, 16)))


@dataclass(frozen=True, kw_only=True)
class Registered:
    identity: Identity
    token_file: Path
    attempts: int


def register(server: str, passphrase: str, *, name: str, role: Role | str, out: Path,
             machine: str | None = None, site: str | None = None, addresses: tuple[str, ...] = (),
             ca_file: Path | None = None, deadline_s: float = DEFAULT_REGISTER_DEADLINE_S,
             say: Callable[[str], None] = log.warning, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> Registered:
    """Register `name` as `role` with the configuration server at `server` and write its identity
    (cert.pem, key.pem 0600, ca.pem) and token (0600) into `out`. Retries while the server is not
    reachable, until `deadline_s`; a refusal (wrong passphrase, unknown machine) ends at once."""
    role = parse_role(str(role))
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"--server {server!r}: expected https://HOST:PORT of the configuration server")
    if role == Role.AGENT and not machine:
        machine = name
    key_pem = new_key_pem()
    body = Registration(passphrase=passphrase, name=name, role=role.value, machine=machine, site=site,
                        address=addresses[0] if addresses else None, alt_names=tuple(addresses[1:]),
                        csr_pem=certificate_request(name, key_pem)).to_json()
    ctx = _context(ca_file) if ca_file else None
    give_up = clock() + deadline_s
    attempt = 0
    while True:
        attempt += 1
        try:
            if ctx is None:
                ctx = _proven_ca(server, passphrase)
            answer = RegistrationAnswer.from_json(_call(server, REGISTER_PATH, body, ctx=ctx))
            break
        except _Unreachable as err:
            wait = _backoff(attempt - 1)
            left = give_up - clock()
            if left <= 0:
                raise TransportError(f"the configuration server at {server} did not answer within "
                                     f"{deadline_s:.0f} s ({err}): start it, or check --server and the "
                                     "network") from None
            say(f"waiting for the configuration server at {server} to register {name} ({err}); "
                f"next try in {min(wait, left):.0f} s, giving up in {left:.0f} s")
            sleep(min(wait, left))
    if not TOKEN_PATTERN.match(answer.token):
        raise ProtocolError("the configuration server's answer holds no token: is --server the configuration server?")
    ident = write_identity(out, certificate_pem=answer.certificate_pem, private_key_pem=key_pem, ca_pem=answer.ca_pem)
    token_file = out / TOKEN_FILE
    write_private(token_file, (answer.token + "\n").encode())
    return Registered(identity=ident, token_file=token_file, attempts=attempt)


def _proven_ca(server: str, passphrase: str) -> ssl.SSLContext:
    """A context trusting the vault CA the server hands out, once the server has proven it holds the
    vault passphrase (contract VaultCa): the passphrase is sent only over TLS verified by it."""
    first = ssl.create_default_context()
    first.check_hostname = False
    first.verify_mode = ssl.CERT_NONE  # only for the CA itself, which the proof then authenticates
    vault = VaultCa.from_json(_call(server, CA_PATH, None, ctx=first))
    if not vault.verify(passphrase):
        raise AuthError(f"the server at {server} cannot prove it holds the vault passphrase: the passphrase is "
                        "wrong, or this is not the configuration server; check both (or give --ca-file)")
    return ssl.create_default_context(cadata=vault.ca_pem)


def read_token(identity_dir: Path) -> str:
    path = identity_dir / TOKEN_FILE
    try:
        token = (path.read_text().strip().splitlines() or [""])[0]
    except OSError:
        raise ConfigError(f"{path}: no token there; register this machine first "
                          "(dr-agent register --server ...)") from None
    if not TOKEN_PATTERN.match(token):
        raise ConfigError(f"{path} does not hold a token: register again (dr-agent register --server ...)")
    return token


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    """The `[control]` table of a service's TOML."""

    server: str                                  # https://HOST:CS_PORT
    identity_dir: Path                           # holds the token and ca.pem (the service's identity)
    ca_file: Path | None = None                  # verify the server with this instead of the vault CA
    interval_s: float = HEARTBEAT_INTERVAL_S

    @classmethod
    def from_table(cls, table: dict[str, Any], *, identity_dir: Path, where: str) -> ControlConfig:
        server = table.get("server")
        if not isinstance(server, str) or not server.startswith(("https://", "http://")):
            raise ConfigError(f"{where}: [control] server = {server!r}: expected \"https://HOST:8443\"")
        interval = table.get("heartbeat_interval_s", HEARTBEAT_INTERVAL_S)
        if not isinstance(interval, int | float) or not 0 < interval <= 3600:
            raise ConfigError(f"{where}: [control] heartbeat_interval_s = {interval!r}: expected seconds, 0 to 3600")
        ca = table.get("ca_file")
        return cls(server=server, identity_dir=Path(str(table.get("identity", identity_dir))),
                   ca_file=Path(str(ca)) if ca else None, interval_s=float(interval))


class ControlLoop:
    """Sends a service's heartbeats (and a master target's catalog) from its own thread."""

    def __init__(self, config: ControlConfig, *, role: Role, name: str, health: Callable[[], Message],
                 catalog: Callable[[], CatalogReport] | None = None) -> None:
        self.config = config
        self.role = role
        self.name = name
        self._health = health
        self._catalog = catalog
        self._token = read_token(config.identity_dir)
        self._ctx = _context(config.ca_file or Identity(config.identity_dir).ca)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.beats = 0                           # heartbeats the server took
        self.catalogs = 0                        # catalog reports the server took
        self._sent_catalog: list[dict[str, Any]] | None = None
        self._sent_at = 0.0
        self._beat_due = 0.0                     # monotonic time of the next heartbeat
        self._thread = threading.Thread(target=self._run, name=f"{name}-control", daemon=True)

    def start(self) -> ControlLoop:
        self._thread.start()
        return self

    def nudge(self) -> None:
        """Report now (a new recovery point), not at the next interval."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    def _post(self, path: str, body: dict[str, Any]) -> None:
        _call(self.config.server, path, body, ctx=self._ctx, token=self._token)

    def report(self) -> None:
        """One round: the heartbeat when due, then the catalog when it changed or is due. The token
        is read each round: registering again (a push, a renewal) writes a new one and revokes the old."""
        self._token = read_token(self.config.identity_dir)
        if time.monotonic() >= self._beat_due:
            self._post(HEARTBEAT_PATHS[self.role], self._health().to_json())
            self.beats += 1
            self._beat_due = time.monotonic() + self.config.interval_s
        if self._catalog is not None:
            body = self._catalog().to_json()
            # what changed is the streams and their points; an RPO only ages (the server ages it too)
            content = [{k: v for k, v in s.items() if k != "rpo_seconds"} for s in body["streams"]]
            due = time.monotonic() - self._sent_at >= CATALOG_REFRESH_S
            if content != self._sent_catalog or due:
                self._post(CATALOG_PATH, body)
                self._sent_catalog, self._sent_at = content, time.monotonic()
                self.catalogs += 1

    def _run(self) -> None:
        failures = 0
        refused = ""
        announced = False
        where = self.config.server
        while not self._stop.is_set():
            try:
                self.report()
                if failures:
                    log.warning("%s: the configuration server at %s answers again; heartbeats resumed",
                                self.name, where)
                elif not announced:
                    announced = True
                    log.info("%s: reporting to the configuration server at %s every %.0f s", self.name, where,
                             self.config.interval_s)
                failures = 0
                refused = ""
                # a catalog is looked at often (a new point reaches the server in seconds); the
                # heartbeat goes every interval
                wait = min(self.config.interval_s, CATALOG_POLL_S) if self._catalog else self.config.interval_s
            except _Unreachable as err:
                if not failures:
                    log.warning("%s: the configuration server is unreachable (%s); retrying with backoff up to "
                                "%.0f s", self.name, err, CONTROL_BACKOFF_MAX_S)
                wait = _backoff(failures)
                failures += 1
            except (AuthError, ProtocolError, ConfigError) as err:
                # a refusal (a revoked token, a body the server does not take): logged when it
                # changes; the next round tries again, the service itself runs on
                if str(err) != refused:
                    log.warning("%s: %s", self.name, err)
                refused = str(err)
                failures += 1
                wait = self.config.interval_s
            except Exception as err:  # a fault in health() or the catalog must not end the loop
                if repr(err) != refused:
                    log.exception("%s: the control loop's round failed", self.name)
                refused = repr(err)
                wait = self.config.interval_s
            self._wake.wait(wait)
            self._wake.clear()
