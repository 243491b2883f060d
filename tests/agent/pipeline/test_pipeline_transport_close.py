"""Closing a connection that another thread is reading or writing must never touch a file.

TLS (OpenSSL) keeps the socket's descriptor number. If `close` freed the descriptor while the
connection's reader thread was still inside a TLS read (the sink's ACK reader, the process server's
forwarder ACK reader), a file opened next by the same process could get that number, and the
reader's TLS read went to the file: it consumed the TLS record header's 5 bytes and moved the
file's offset, so the file's next write landed 5 bytes late (issue 6: a resync found one block
next to a changed block differing). Here a reader is blocked on a connection, the connection is
closed and a file is opened at once, many times over: the file's offset and bytes must stay put.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from dr_agent.errors import AgentError
from dr_agent.pki import client_context, server_context
from dr_agent.records import FrameType
from dr_agent.transport import Connection, Listener, dial

ROUNDS = 300  # closes raced against a blocked reader; the old close lost about one in ten


def test_close_while_reading_never_reads_a_reused_descriptor(pki: Any, tmp_path: Path) -> None:
    held: list[Connection] = []
    release = threading.Event()

    def serve(conn: Connection) -> None:  # the peer says nothing: the client's reader stays blocked
        held.append(conn)
        release.wait(60)

    listener = Listener("127.0.0.1", 0, server_context(pki.master_target), ("process-server",), serve,
                        name="peer")
    victim = tmp_path / "victim.img"
    content = os.urandom(64 * 1024)
    victim.write_bytes(content)
    moved = []
    try:
        for i in range(ROUNDS):
            conn = dial("127.0.0.1", listener.port, client_context(pki.process_server))
            conn.send_json(FrameType.PING, {})
            started = threading.Event()
            ended = threading.Event()

            def read(conn: Connection = conn, started: threading.Event = started,
                     ended: threading.Event = ended) -> None:
                started.set()
                try:
                    conn.recv()
                except AgentError:
                    pass
                finally:
                    ended.set()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            started.wait(5)
            conn.close()
            fd = os.open(victim, os.O_RDWR)  # most likely the number the socket just freed
            try:
                os.lseek(fd, 4096, os.SEEK_SET)
                assert ended.wait(10), "the reader did not notice the close"
                pos = os.lseek(fd, 0, os.SEEK_CUR)
                if pos != 4096:
                    moved.append((i, pos))
            finally:
                os.close(fd)
    finally:
        release.set()
        listener.close()
    assert not moved, f"a closed connection's reader read a file through a reused descriptor: {moved[:5]}"
    assert victim.read_bytes() == content
