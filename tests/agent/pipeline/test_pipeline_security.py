"""Mutual TLS: an agent without a certificate from the deployment's CA is refused, roles are enforced,
an agent's certificate opens only its own machine's disks, registration needs the passphrase, and
nothing listens on the source machine."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dr_agent.errors import AgentError, AuthError, ProtocolError
from dr_agent.pki import client_context, register
from dr_agent.records import FrameType
from dr_agent.sink import ProcessServerSink
from dr_agent.transport import dial
from pipeline_harness import MIB, REPO, free_port, metric, service_pair

from tests.agent.conftest import PASSPHRASE
from tests.conftest import wait_for


def _hello(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    conn = dial("127.0.0.1", port, ctx)
    try:
        conn.send_json(FrameType.HELLO, {"disk": "web01.disk0", "size": 1 << 20})
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


def _open(port: int, ctx: ssl.SSLContext, disk: str, purpose: str) -> dict[str, Any]:
    conn = dial("127.0.0.1", port, ctx)
    try:
        conn.send_json(FrameType.HELLO, {"disk": disk, "size": MIB, "purpose": purpose})
        return conn.recv_json(FrameType.WELCOME)
    finally:
        conn.close()


def test_an_agent_s_certificate_opens_only_its_own_machine_s_disks(tmp_path: Path, pki: Any) -> None:
    mt, ps, ps_port = service_pair(tmp_path, pki)
    metrics_port = free_port()
    with (tmp_path / "ps.toml").open("a") as f:
        f.write(f'metrics = "127.0.0.1:{metrics_port}"\n')
    mt.start()
    ps.start()
    try:
        web01 = client_context(pki.agent)  # a compromised web01 aims at sql01's replica
        with pytest.raises(ProtocolError) as refused:
            _open(ps_port, web01, "sql01.c", "stream")
        assert str(refused.value) == (
            "the peer refused: certificate web01 (machine web01) may not write stream sql01.c: an agent writes "
            "and reads only its own machine's disks; register an agent for sql01 (dr-agent register --name NAME "
            "--machine sql01 --role agent), and keep agent.toml's name and its disks' streams that machine's")
        hashes = r"certificate web01 \(machine web01\) may not read the block hashes of stream sql01\.c"
        with pytest.raises(ProtocolError, match=hashes):
            _open(ps_port, web01, "sql01.c", "hashes")
        assert not (tmp_path / "ps" / "sql01.c").exists()  # the refused HELLOs touched nothing
        # counted where an operator sees refusals: the process server's metrics
        def refusals() -> float | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
                return metric(page.read().decode(), "dr_process_server_refused_connections_total")

        wait_for(lambda: refusals() == 2, 10, "both refusals in the process server's metrics")
        wait_for(lambda: "refused web01 (role agent, machine web01) to read the block hashes of stream sql01.c"
                 in (tmp_path / "ps.log").read_text(), 10, "the process server's warning")

        sink = ProcessServerSink(disk="web01.c", size=MIB, servers=[("127.0.0.1", ps_port)], identity=pki.agent)
        try:  # web01 still writes its own disk, to the replica
            sink.write(4096, b"w" * 4096)
            sink.flush()
            sink.wait_applied(60)
        finally:
            sink.close()
        assert (tmp_path / "mt/disks/web01.c.img").read_bytes()[4096:8192] == b"w" * 4096
        assert _open(ps_port, client_context(pki.agent_for("sql01")), "sql01.c", "stream")["durable"] == 0
        # a component with a name of its own acts for the machine its certificate names (failback's
        # runner, next to sql01's own agent), and for no other
        runner = client_context(register(pki.ca_dir, PASSPHRASE, name="failback-sql01", role="agent",
                                         machine="sql01", out=tmp_path / "failback-sql01"))
        assert _open(ps_port, runner, "sql01.c", "stream")["durable"] == 0
        with pytest.raises(ProtocolError, match=r"certificate failback-sql01 \(machine sql01\) may not write stream"):
            _open(ps_port, runner, "web01.c", "stream")
    finally:
        ps.stop()
        mt.stop()


def test_registration_needs_the_passphrase(pki: Any, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="passphrase"):
        register(pki.ca_dir, "not the passphrase", name="x", role="agent", out=tmp_path / "x")


AGENT_SCRIPT = """
import sys, time
from pathlib import Path
from dr_agent.pki import Identity
from dr_agent.sink import ProcessServerSink
s = ProcessServerSink(disk="s02.disk0", size=1 << 20, servers=[("127.0.0.1", int(sys.argv[1]))],
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
    agent = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, str(p.ps.port), str(pki.agent_for("s02").directory)],
                             stdout=subprocess.PIPE, env=env)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == b"ready"
        sockets = wait_for(lambda: _socket_inodes(agent.pid), 10, "the agent's outbound connection")
        assert not sockets & _listening_inodes()
        assert _socket_inodes(os.getpid()) & _listening_inodes()  # the check sees our own listeners
    finally:
        agent.kill()
        agent.wait()
