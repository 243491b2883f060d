"""Issue 15's smaller defects in what the services tell an operator: metrics, alerts and log lines.

The services run as a user runs them (`dr-agent process-server|master-target --config FILE.toml`,
at the default log level); the agent is the data path's sink.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dr_agent.errors import AgentError, CacheFull
from dr_agent.process_server import ProcessServer, ProcessServerConfig
from dr_agent.sink import ProcessServerSink
from dr_agent.transport import dial

from tests.conftest import wait_for as shared_wait_for

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    return shared_wait_for(check, timeout, what)


class Service:
    """`dr-agent KIND --config FILE` at the default log level, its stderr in a file."""

    def __init__(self, kind: str, config: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO)])}
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "dr_agent.cli", kind, "--config", str(config)],
                                         stdout=subprocess.PIPE, stderr=err, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} did not start: {log.read_text()[-2000:]}")
        self.started = json.loads(line)

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if re.search(pattern, line)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class DeadPeer:
    """A TCP port that accepts and hangs up at once (a master target that is down): counts the dials."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for s in reversed(started):
        s.stop()


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_process_server_logs_each_link_transition_once_counts_refusals_and_compression(
        pki: Any, tmp_path: Path, services: list[Service]) -> None:
    mt_port, ps_port, metrics_port = free_port(), free_port(), free_port()
    (tmp_path / "mt.toml").write_text(
        f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\nidentity = "{pki.master_target.directory}"\n'
        f'state_dir = "{tmp_path / "mt"}"\nstorage = "file"\n')
    (tmp_path / "ps.toml").write_text(
        f'[process_server]\nname = "ps01"\nlisten = "127.0.0.1:{ps_port}"\nmetrics = "127.0.0.1:{metrics_port}"\n'
        f'identity = "{pki.process_server.directory}"\ncache_dir = "{tmp_path / "ps"}"\n'
        f'master_target = "127.0.0.1:{mt_port}"\ncapacity_gb = 1\n')
    dead = DeadPeer(mt_port)
    try:
        ps = Service("process-server", tmp_path / "ps.toml", tmp_path / "ps.log")
        services.append(ps)
        sink = ProcessServerSink(disk="sig01.disk0", size=16 * MIB, servers=[("127.0.0.1", ps_port)],
                                 identity=pki.agent_for("sig01"))
        try:
            sink.write(0, bytes(4 * MIB))  # zeros: zstd shrinks them a thousandfold
            sink.flush()
            sink.write(4 * MIB, os.urandom(MIB))  # then incompressible data, the last record
            sink.flush()
            wait_for("three dials of the dead master target", lambda: dead.accepted >= 3)
        finally:
            dead.close()
        down = ps.lines(f"master target 127.0.0.1:{mt_port} unreachable")
        assert len(down) == 1, down

        mt = Service("master-target", tmp_path / "mt.toml", tmp_path / "mt.log")
        services.append(mt)
        sink.wait_applied(60)
        up = wait_for("the 'reachable again' line", lambda: ps.lines("reachable again"))
        assert len(up) == 1 and len(ps.lines("unreachable")) == 1

        # a client with a certificate of another CA, and an agent dialling the master target: refused
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(pki.rogue_agent.cert, pki.rogue_agent.key)
        ctx.load_verify_locations(pki.agent.ca)
        for _ in range(3):
            with pytest.raises(AgentError):
                dial("127.0.0.1", ps_port, ctx).recv()
        m = wait_for("3 refusals counted",
                     lambda: (v := scrape(metrics_port)).get("dr_process_server_refused_connections_total", 0) >= 3
                     and v)
        assert m["dr_process_server_refused_connections_total"] == 3

        raw = m['dr_process_server_raw_bytes_total{disk="sig01.disk0"}']
        stored = m['dr_process_server_stored_bytes_total{disk="sig01.disk0"}']
        ratio = m['dr_process_server_compression_ratio{disk="sig01.disk0"}']
        assert raw == 5 * MIB and ratio == pytest.approx(raw / stored, rel=1e-9) and ratio > 3
    finally:
        sink.close()


def test_cache_full_is_alerted_once_until_the_disk_fits_again(pki: Any, tmp_path: Path) -> None:
    """The master target is down and the cache is full: every retry of the agent is refused, and
    the alert is raised once, not once per retry."""
    dead = DeadPeer(free_port())
    ps = ProcessServer(ProcessServerConfig(identity=pki.process_server, cache_dir=tmp_path / "ps",
                                           master_target=("127.0.0.1", dead.sock.getsockname()[1]),
                                           capacity_bytes=4 * MIB, segment_bytes=MIB))
    try:
        refusals = 0
        for attempt in range(3):  # the agent comes back (a restart, a reconnect) and is refused again
            sink = ProcessServerSink(disk="full02.disk0", size=64 * MIB, servers=[("127.0.0.1", ps.port)],
                                     identity=pki.agent_for("full02"))
            try:
                for i in range(12):
                    try:
                        sink.write((attempt * 12 + i) * MIB, os.urandom(MIB))
                        sink.flush()
                    except CacheFull:
                        refusals += 1
                        break
            finally:
                sink.close()
        assert refusals == 3
        full = [a for a in ps.alerts.read() if a["code"] == "cache-full"]
        assert len(full) == 1, full
    finally:
        ps.close()
        dead.close()


def test_stopping_the_master_target_while_it_applies_logs_no_closed_database(
        pki: Any, tmp_path: Path, services: list[Service]) -> None:
    mt_port = free_port()
    (tmp_path / "mt.toml").write_text(
        f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\nidentity = "{pki.master_target.directory}"\n'
        f'state_dir = "{tmp_path / "mt"}"\nstorage = "file"\n')
    (tmp_path / "ps.toml").write_text(
        f'[process_server]\nname = "ps01"\nlisten = "127.0.0.1:0"\nidentity = "{pki.process_server.directory}"\n'
        f'cache_dir = "{tmp_path / "ps"}"\nmaster_target = "127.0.0.1:{mt_port}"\ncapacity_gb = 1\n')
    mt = Service("master-target", tmp_path / "mt.toml", tmp_path / "mt.log")
    services.append(mt)
    ps = Service("process-server", tmp_path / "ps.toml", tmp_path / "ps.log")
    services.append(ps)
    sink = ProcessServerSink(disk="stop01.disk0", size=64 * MIB, servers=[("127.0.0.1", ps.started["port"])],
                             identity=pki.agent_for("stop01"))
    stop = threading.Event()

    def writer() -> None:  # points and writes keep arriving while the master target stops
        i = 1
        while not stop.is_set():
            try:
                sink.write((i % 64) * MIB, os.urandom(MIB))
                sink.bookmark(f"p{i}", "crash", None)
            except AgentError:
                return
            i += 1

    try:
        sink.write(0, os.urandom(MIB))
        sink.bookmark("first", "crash", None)
        sink.wait_applied(60)
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        wait_for("points applied while writing", lambda: sink.applied > 20)
        mt.stop()
        stop.set()
        thread.join(30)
    finally:
        sink.close()
    assert mt.proc.returncode == 0
    text = mt.log.read_text()
    assert "closed database" not in text and "Traceback" not in text, text[-3000:]


def test_page_blob_target_logs_storage_unreachable_at_once_and_back_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Storage goes away under a replica: one line as the first request fails (not after the SDK's
    retries, about 90 s), none per retry, and one when a commit succeeds again."""
    from dr_agent.pageblob import PageBlobTarget

    from tests.agent.test_export import LoggedAzurite

    port = free_port()
    az = LoggedAzurite(tmp_path / "az1", port=port)
    target = PageBlobTarget(az.conn_str, "down1", "web01.disk0.vhd", 8 * MIB)
    try:
        target.apply([(0, os.urandom(MIB))], [])
        target.commit(1)
        az.close()  # storage unreachable
        target.apply([(MIB, os.urandom(MIB)), (4 * MIB, os.urandom(MIB))], [])
        wait_for("the 'unreachable' line", lambda: [r for r in caplog.records if "unreachable" in r.getMessage()],
                 timeout=10)
        back = LoggedAzurite(tmp_path / "az1", port=port)  # the same account data, the same endpoint
        try:
            target.commit(2)  # the SDK's next retry succeeds
        finally:
            back.close()
    finally:
        target.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "dr_agent.pageblob"]
    assert len([m for m in lines if "unreachable" in m]) == 1, lines
    assert len([m for m in lines if "answers again" in m]) == 1, lines
