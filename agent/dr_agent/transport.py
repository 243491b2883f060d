"""Framed, mutually authenticated TLS connections: who dials whom, and the frame reader.

Connections are outbound from the primary site: agents dial the process server and the process
server dials the master target. Nothing on a source machine listens. A connection carries one disk
stream (opened by HELLO, which names the disk) or one agent's membership of a multi-VM group at its
coordinator (opened by JOIN); frames are verified before anything reads their payload, and control
bodies parse into dr_agent.contract's typed messages (`send_msg`, `recv_msg`, `message`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dr_agent.contract import Error, Hello, Join, Message, Role, parse_role, parse_stream
from dr_agent.errors import AuthError, CorruptData, ProtocolError, TransportError
from dr_agent.pki import peer_machine, peer_role
from dr_agent.records import (
    FRAME_HEADER_SIZE,
    FrameType,
    encode_frame,
    frame_header,
    json_frame,
    parse_frame_header,
    verify_frame_payload,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

# A peer that sends nothing for this long (seconds) is considered gone; senders PING well within it.
IDLE_TIMEOUT_S = 30.0
# Seconds of silence after which a sender PINGs (well inside IDLE_TIMEOUT_S).
PING_INTERVAL_S = 5.0
# TLS handshakes must finish within this (seconds), so a silent client cannot hold a thread.
HANDSHAKE_TIMEOUT_S = 10.0
# Parts of a frame at least this long (bytes) are handed to TLS as they are; shorter ones are
# joined first, so a frame of many small records still costs few TLS records and syscalls.
SEND_DIRECT_BYTES = 64 * 1024


@dataclass(eq=False)
class Connection:
    sock: ssl.SSLSocket
    peer: tuple[str, str] = ("", "")  # (common name, role)
    machine: str | None = None        # the spec machine an agent's certificate acts for (pki.peer_machine)
    overreached: bool = False         # refused for acting for a machine not its own (acts_for)
    _send_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _state: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _users: int = field(default=0, repr=False)  # threads inside a send or receive now
    _closed: bool = field(default=False, repr=False)

    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        """Keep the socket's descriptor open while this thread sends or receives on it.

        OpenSSL holds the descriptor's number. Were it freed while another thread is inside a TLS
        read or write, a file this process opens next could get the number and that thread would
        read or write the file (issue 6: an ACK reader's TLS read took the start of a TLS record
        from a disk image, moving the image's file offset, so its next write landed a few bytes
        late). So `close` only shuts the socket down while it is in use; the
        last user closes it.
        """
        with self._state:
            if self._closed:
                raise TransportError("the connection is closed")
            self._users += 1
        try:
            yield
        finally:
            with self._state:
                self._users -= 1
                last = self._closed and self._users == 0
            if last:
                self.sock.close()

    def send(self, frame: bytes) -> None:
        try:
            with self._use(), self._send_lock:
                self.sock.sendall(frame)
        except (OSError, ValueError) as err:
            raise TransportError(f"send failed: {err}") from None

    def send_json(self, ftype: FrameType, body: dict[str, Any]) -> None:
        self.send(json_frame(ftype, body))

    def send_payload(self, ftype: FrameType, payload: bytes | bytearray) -> None:
        if len(payload) < SEND_DIRECT_BYTES:
            self.send(encode_frame(ftype, payload))
        else:
            self.send_parts(ftype, (payload,))

    def send_parts(self, ftype: FrameType, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send one frame whose payload is the concatenation of `parts`, without copying large parts."""
        small: list[bytes | bytearray | memoryview] = [frame_header(ftype, parts)]
        try:
            with self._use(), self._send_lock:
                for part in parts:
                    if len(part) >= SEND_DIRECT_BYTES:
                        self.sock.sendall(b"".join(small))
                        small = []
                        self.sock.sendall(part)
                    else:
                        small.append(part)
                if small:
                    self.sock.sendall(b"".join(small))
        except (OSError, ValueError) as err:
            raise TransportError(f"send failed: {err}") from None

    def _read_exact(self, n: int) -> bytearray:
        """`n` bytes, received in place (a 4 MiB frame is not copied again into a bytes object)."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except (OSError, ValueError) as err:
                raise TransportError(f"receive failed: {err}") from None
            if not k:
                raise TransportError("the peer closed the connection")
            got += k
        return buf

    def pending(self) -> bool:
        """True when a frame has (at least partly) arrived: reading it now will not wait long."""
        try:
            with self._use():
                return self.sock.pending() > 0 or bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError, TransportError):
            return False

    def recv(self) -> tuple[FrameType, bytearray]:
        """The next verified frame. Raises CorruptData on a bad checksum, TransportError when closed."""
        with self._use():
            ftype, plen, checksum = parse_frame_header(self._read_exact(FRAME_HEADER_SIZE))
            payload = self._read_exact(plen)
        verify_frame_payload(payload, checksum)
        return ftype, payload

    def recv_json(self, expect: FrameType) -> dict[str, Any]:
        ftype, payload = self.recv()
        body = _json(ftype, payload)
        if ftype == FrameType.ERROR:
            raise ProtocolError(f"the peer refused: {body.get('error', '?')}")
        if ftype != expect:
            raise ProtocolError(f"expected a {expect.name} frame, got {ftype.name}")
        return body

    def send_msg(self, ftype: FrameType, msg: Message) -> None:
        """One control frame of type `ftype` whose body is `msg`."""
        self.send(json_frame(ftype, msg.to_json()))

    def recv_msg(self, expect: FrameType, cls: type[M]) -> M:
        """The next frame as `cls`; ProtocolError when it is another type (an ERROR says why)."""
        return cls.from_json(self.recv_json(expect))

    def refuse(self, reason: str) -> None:
        """Tell the peer why it is refused (an ERROR frame); the caller closes the connection."""
        try:
            self.send_msg(FrameType.ERROR, Error(reason))
        except TransportError:
            pass

    def close(self) -> None:
        """Shut the connection down (a thread blocked on it wakes with an error) and free the socket
        once no thread uses it. Safe from any thread, and more than once."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            idle = self._users == 0
        try:
            # socket.shutdown, not SSLSocket.shutdown: a reader or writer still inside TLS keeps
            # its TLS state and sees the end of the stream, never plaintext.
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass
        if idle:
            self.sock.close()


def _json(ftype: FrameType, payload: bytes | bytearray) -> dict[str, Any]:
    try:
        body = json.loads(payload) if payload else {}
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"a {ftype.name} frame's body is not JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"a {ftype.name} frame's body is not a JSON object")
    return body


def message(cls: type[M], ftype: FrameType, payload: bytes | bytearray) -> M:
    """The body of a frame already read, as `cls`; ProtocolError when it is not one."""
    return cls.from_json(_json(ftype, payload))


def receive_hello(conn: Connection, first: tuple[FrameType, bytearray] | None = None) -> Hello | None:
    """The HELLO that opens a disk stream (`first`: the frame, when already read); None, after an
    ERROR to the peer, when it is not a HELLO of a stream name and a disk size, or an agent's
    certificate names another machine than the stream's (`acts_for`). One check for the process
    server and the master target."""
    ftype, payload = first if first is not None else conn.recv()
    if ftype != FrameType.HELLO:
        conn.refuse(f"expected a HELLO frame, got {ftype.name}")
        return None
    try:
        hello = message(Hello, ftype, payload)
        machine = parse_stream(hello.disk)[0]
    except ProtocolError as err:
        conn.refuse(str(err))
        return None
    doing = {"stream": "write", "hashes": "read the block hashes of"}.get(hello.purpose, hello.purpose)
    if not acts_for(conn, machine, f"{doing} stream {hello.disk}", "writes and reads only its own machine's disks"):
        return None
    return hello


def receive_join(conn: Connection, first: tuple[FrameType, bytearray]) -> Join | None:
    """The JOIN that opens a group membership at a coordinator; None, after an ERROR to the peer,
    when it is not one, or names another machine than the agent's certificate."""
    try:
        join = message(Join, *first)
    except ProtocolError as err:
        conn.refuse(str(err))
        return None
    if not acts_for(conn, join.agent, f"join group {join.group} as {join.agent}", "joins only as its own machine"):
        return None
    return join


def acts_for(conn: Connection, machine: str, doing: str, rule: str) -> bool:
    """Whether the peer may act for source machine `machine`: an agent's certificate acts only for
    the spec machine it names (contract `machine_uri`, set at registration from `--machine`, by
    default the agent's name; a certificate naming none acts for its common name), so a compromised
    source machine cannot overwrite or read another's replica nor speak for it in its group. Other
    roles keep what MAY_DIAL lets them do. When not, the peer is told why (the caller closes the
    connection)."""
    name, role = conn.peer
    own = conn.machine or name
    if role != Role.AGENT or own == machine:
        return True
    log.warning("refused %s (role %s, machine %s) to %s: its certificate is not %s's", name, role, own, doing,
                machine)
    conn.overreached = True
    conn.refuse(f"certificate {name} (machine {own}) may not {doing}: an agent {rule}; register an agent for "
                f"{machine} (dr-agent register --name NAME --machine {machine} --role agent), and keep "
                "agent.toml's name and its disks' streams that machine's")
    return False


def dial(host: str, port: int, ctx: ssl.SSLContext, *, timeout: float = 10.0,
         server_hostname: str | None = None) -> Connection:
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise TransportError(f"cannot connect to {host}:{port}: {err.strerror or err}") from None
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock = ctx.wrap_socket(raw, server_hostname=server_hostname or host)
    except ssl.SSLError as err:
        raw.close()
        raise AuthError(f"TLS handshake with {host}:{port} failed: {err.reason or err}") from None
    except OSError as err:
        raw.close()
        raise TransportError(f"TLS handshake with {host}:{port} failed: {err}") from None
    sock.settimeout(IDLE_TIMEOUT_S)
    conn = Connection(sock)
    conn.peer = peer_role(sock)
    return conn


class Listener:
    """Accepts TLS connections on loopback or a given address and runs `handler` per connection.

    Peers whose certificate is not signed by the CA fail the handshake; peers whose role is not in
    `roles` are refused with an ERROR frame. Each connection gets its own thread.
    """

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, roles: tuple[Role | str, ...],
                 handler: Callable[[Connection], None], *, name: str) -> None:
        self._ctx = ctx
        self._roles = tuple(parse_role(str(r)) for r in roles)  # contract MAY_DIAL; OUs spell roles as Role
        self._handler = handler
        self._name = name
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.5)
        self.port: int = self._sock.getsockname()[1]
        self.refused = 0  # handshakes, roles, or machines not the agent's refused (metrics read it)
        self._stop = threading.Event()
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), name=f"{self._name}-conn", daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            sock = self._ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as err:
            self.refused += 1
            log.warning("%s: refused a TLS client: %s", self._name, err)
            raw.close()
            return
        sock.settimeout(IDLE_TIMEOUT_S)
        conn = Connection(sock)
        try:
            conn.peer = peer_role(sock)
            conn.machine = peer_machine(sock)
        except AuthError:
            self.refused += 1
            conn.close()
            return
        if conn.peer[1] not in self._roles:
            self.refused += 1
            log.warning("%s: refused %s: role %r may not dial here", self._name, conn.peer[0], conn.peer[1])
            conn.refuse(f"role {conn.peer[1]!r} may not dial a {self._name}")
            conn.close()
            return
        with self._lock:
            self._conns.add(conn)
        try:
            self._handler(conn)
        except (TransportError, ProtocolError, CorruptData) as err:
            log.info("%s: connection from %s ended: %s", self._name, conn.peer[0], err)
        except Exception:  # a bug must not kill the service: log it with its traceback
            log.exception("%s: connection handler failed", self._name)
        finally:
            with self._lock:
                self._conns.discard(conn)
                if conn.overreached:
                    self.refused += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()
