"""Mutual TLS: an agent without a certificate from the deployment's CA is refused, roles are enforced,
registration needs the passphrase, and nothing listens on the source machine."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dr_agent.errors import AgentError, AuthError
from dr_agent.pki import client_context, register
from dr_agent.records import FrameType
from dr_agent.transport import dial
from pipeline_harness import REPO, metric

from tests.conftest import wait_for


def _hello(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    conn = dial("127.0.0.1", port, ctx)
    try:
        conn.send_json(FrameType.HELLO, {"disk": "s01-disk0", "size": 1 << 20})
        return conn.recv_json(FrameType.WELCOME)
    finally:
        conn.close()


def test_agent_from_another_ca_is_refused(make_pipeline: Any, pki: Any) -> None:
    p = make_pipeline()
    assert _hello(p.ps.port, client_context(pki.agent))["durable"] == 0
    # a client that trusts the deployment's CA but presents a certificate from another CA
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(pki.rogue_agent.cert, pki.rogue_agent.key)
    ctx.load_verify_locations(pki.agent.ca)
    with pytest.raises(AgentError):
        _hello(p.ps.port, ctx)
    # The refusal is counted where an operator sees it: the process server's metrics.
    wait_for(lambda: (metric(p.ps.metrics.text(), "dr_process_server_refused_connections_total") or 0) >= 1, 10,
             "the refused connection in the process server's metrics")
    with pytest.raises(AgentError):  # and an agent never trusts a process server of another CA
        _hello(p.ps.port, client_context(pki.rogue_agent))


def test_agent_without_a_certificate_is_refused(make_pipeline: Any, pki: Any) -> None:
    p = make_pipeline()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.agent.ca)
    with pytest.raises(AgentError):
        _hello(p.ps.port, ctx)


def test_roles_are_enforced(make_pipeline: Any, pki: Any) -> None:
    p = make_pipeline()
    with pytest.raises(AgentError, match="may not dial"):
        _hello(p.mt.port, client_context(pki.agent))  # agents never reach the master target


def test_registration_needs_the_passphrase(pki: Any, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="passphrase"):
        register(pki.ca_dir, "not the passphrase", name="x", role="agent", out=tmp_path / "x")


AGENT_SCRIPT = """
import sys, time
from pathlib import Path
from dr_agent.pki import Identity
from dr_agent.sink import ProcessServerSink
s = ProcessServerSink(disk="s02-disk0", size=1 << 20, servers=[("127.0.0.1", int(sys.argv[1]))],
                      identity=Identity(Path(sys.argv[2])))
s.write(0, b"a" * 4096)
s.flush()
print("ready", flush=True)
time.sleep(60)
"""


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _listening_inodes() -> set[str]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" or table.startswith("/proc/net/udp"):  # TCP LISTEN, or any bound UDP
                out.add(cols[9])
    return out


def test_no_listening_socket_on_the_source_side(make_pipeline: Any, pki: Any) -> None:
    p = make_pipeline()
    env = {**os.environ, "PYTHONPATH": str(REPO / "agent")}
    agent = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, str(p.ps.port), str(pki.agent.directory)],
                             stdout=subprocess.PIPE, env=env)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == b"ready"
        sockets = wait_for(lambda: _socket_inodes(agent.pid), 10, "the agent's outbound connection")
        assert not sockets & _listening_inodes()
        assert _socket_inodes(os.getpid()) & _listening_inodes()  # the check sees our own listeners
    finally:
        agent.kill()
        agent.wait()
