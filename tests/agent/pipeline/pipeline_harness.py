"""The pipeline harness (imported by the tests and conftest): a master target and process server
in this process (or as processes), a sink as the agent, and a shadow disk that knows what the
replica must hold."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_agent.master_target import MasterTarget
from dr_agent.process_server import ProcessServer
from dr_agent.sink import ProcessServerSink

from tests.conftest import require_root

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]


@dataclass
class Shadow:
    """What the source disk holds, change by change; `points` keeps a copy at every bookmark."""

    size: int
    data: bytearray = field(init=False)
    points: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = bytearray(self.size)

    def write(self, sink: Any, offset: int, payload: bytes) -> None:
        self.data[offset:offset + len(payload)] = payload
        sink.write(offset, payload)

    def discard(self, sink: Any, offset: int, length: int) -> None:
        self.data[offset:offset + length] = bytes(length)
        sink.discard(offset, length)

    def bookmark(self, sink: Any, point_id: str, kind: str = "crash", group: str | None = None) -> None:
        self.points[point_id] = bytes(self.data)
        sink.bookmark(point_id, kind, group)


def workload(shadow: Shadow, sink: Any, rng: random.Random, *, ops: int, bookmark_every: int = 50,
             prefix: str = "p") -> None:
    """Mixed writes (aligned and not, compressible and not), overwrites, discards, flushes, bookmarks."""
    for i in range(ops):
        r = rng.random()
        if r < 0.75:
            n = rng.choice([512, 4096, 4096, 65536, 131072, 1 << 20, rng.randrange(1, 9000)])
            off = rng.randrange(0, shadow.size - n)
            if rng.random() < 0.7:
                off -= off % 4096
            payload = rng.randbytes(n) if rng.random() < 0.4 else bytes([rng.randrange(256)]) * n
            shadow.write(sink, off, payload)
        elif r < 0.85:
            n = rng.choice([4096, 65536, rng.randrange(1, 20000)])
            shadow.discard(sink, rng.randrange(0, shadow.size - n), n)
        elif r < 0.95:
            sink.flush()
        if i % bookmark_every == bookmark_every - 1:
            shadow.bookmark(sink, f"{prefix}{i}", "app" if i % (bookmark_every * 3) == bookmark_every * 3 - 1
                            else "crash")


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus exposition (what a scraper reads), or None when it is absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def welcome_durable(port: int, identity: Any, disk: str, size: int) -> int:
    """Where a (re)starting agent's stream continues: the durable sequence a process server's WELCOME names."""
    from dr_agent.pki import client_context
    from dr_agent.records import FrameType
    from dr_agent.transport import dial

    conn = dial("127.0.0.1", port, client_context(identity))
    try:
        conn.send_json(FrameType.HELLO, {"disk": disk, "size": size})
        return int(conn.recv_json(FrameType.WELCOME)["durable"])
    finally:
        conn.close()


@dataclass
class Pipeline:
    root: Path
    mt: MasterTarget
    ps: ProcessServer
    pki: Any
    sinks: list[ProcessServerSink] = field(default_factory=list)

    def sink(self, disk: str, size: int, **kw: Any) -> ProcessServerSink:
        s = ProcessServerSink(disk=disk, size=size, servers=[("127.0.0.1", self.ps.port)],
                              identity=self.pki.agent_for_stream(disk), **kw)
        self.sinks.append(s)
        return s

    def close(self) -> None:
        for s in self.sinks:
            s.close()
        self.ps.close()
        self.mt.close()


class TcpProxy:
    """A loopback TCP relay we can cut and restore: the process server's link to the master target."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.port: int = self._srv.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(1 << 20)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._srv.close()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


class Service:
    """A `dr-agent process-server|master-target` process on a fixed loopback port, killable with -9."""

    def __init__(self, kind: str, config: Path, log: Path) -> None:
        self.kind, self.config, self.log = kind, config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import sys

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO)])}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dr_agent.cli", "-v", self.kind, "--config",
                                          str(self.config)], stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} did not start: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def service_pair(root: Path, pki: Any, *, capacity_gb: float = 1.0) -> tuple[Service, Service, int]:
    """Config files for a master target (file storage) and a process server; returns (mt, ps, ps port)."""
    mt_port, ps_port = free_port(), free_port()
    (root / "mt.toml").write_text(
        f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\nidentity = "{pki.master_target.directory}"\n'
        f'state_dir = "{root / "mt"}"\nstorage = "file"\n')
    (root / "ps.toml").write_text(
        f'[process_server]\nname = "ps01"\nlisten = "127.0.0.1:{ps_port}"\n'
        f'identity = "{pki.process_server.directory}"\ncache_dir = "{root / "ps"}"\n'
        f'master_target = "127.0.0.1:{mt_port}"\ncapacity_gb = {capacity_gb}\n')
    mt = Service("master-target", root / "mt.toml", root / "mt.log")
    ps = Service("process-server", root / "ps.toml", root / "ps.log")
    return mt, ps, ps_port


def need_root() -> None:
    require_root("mkfs.ext4", "e2fsck", devices=("/dev/fuse", "/dev/loop-control"))


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}"
    return proc.stdout
