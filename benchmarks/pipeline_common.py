"""Shared set-up of the pipeline benchmarks: certificates, the services as processes, Azurite, data.

Not a benchmark itself; `python benchmarks/pipeline_*.py` imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "agent"), str(REPO)]

from dr_agent.pki import Identity, create_ca, register  # noqa: E402

MIB = 1024 * 1024
PASSPHRASE = "benchmark passphrase"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def bench_args(doc: str | None, default_mib: int) -> argparse.Namespace:
    """The pipeline benchmarks' command line: `[MiB] [--json]`."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     epilog=f"example: python {Path(sys.argv[0]).name} {default_mib} --json")
    parser.add_argument("mib", nargs="?", type=int, default=default_mib,
                        help=f"MiB of data written through the pipeline (default {default_mib})")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with every figure instead of the human lines")
    return parser.parse_args()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def mixed_data(total: int, seed: int = 1) -> list[bytes]:
    """1 MiB chunks: half random (incompressible), half log-like text (zstd -1 shrinks it ~4x)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(3, 9)).hex() for _ in range(2000)]
    chunks = []
    for i in range(total // MIB):
        if i % 2:
            chunks.append(rng.randbytes(MIB))
        else:
            text = " ".join(rng.choice(words) for _ in range(MIB // 8)).encode()
            chunks.append((text * 2)[:MIB])
    return chunks


@dataclass
class Pki:
    agent: Identity
    ps: Identity
    mt: Identity


def make_pki(root: Path) -> Pki:
    ca = create_ca(root / "ca", PASSPHRASE)
    # the agent of machine "bench": a process server opens an agent only its own machine's streams (bench.*)
    return Pki(register(ca, PASSPHRASE, name="bench", role="agent", out=root / "agent"),
               register(ca, PASSPHRASE, name="ps", role="process-server", out=root / "ps"),
               register(ca, PASSPHRASE, name="mt", role="master-target", out=root / "mt"))


class Service:
    def __init__(self, kind: str, config: Path, env: dict[str, str] | None = None) -> None:
        self.kind, self.config, self.env = kind, config, env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO)])}
        self.proc = subprocess.Popen([sys.executable, "-m", "dr_agent.cli", self.kind, "--config", str(self.config)],
                                     stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def services(root: Path, pki: Pki, *, storage: str = "file", conn_env: str | None = None,
             capacity_gb: float = 8) -> tuple[Service, Service, int]:
    mt_port, ps_port = free_port(), free_port()
    azure = f'storage = "azure"\nconnection_string_env = "{conn_env}"\ncontainer = "bench"\n' if storage == "azure" \
        else 'storage = "file"\n'
    (root / "mt.toml").write_text(f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\n'
                                  f'identity = "{pki.mt.directory}"\nstate_dir = "{root / "mt"}"\n{azure}')
    (root / "ps.toml").write_text(f'[process_server]\nlisten = "127.0.0.1:{ps_port}"\n'
                                  f'identity = "{pki.ps.directory}"\ncache_dir = "{root / "ps"}"\n'
                                  f'master_target = "127.0.0.1:{mt_port}"\ncapacity_gb = {capacity_gb}\n')
    return Service("master-target", root / "mt.toml"), Service("process-server", root / "ps.toml"), ps_port


class Azurite:
    def __init__(self, root: Path) -> None:
        binary = next((c for c in (os.environ.get("AZURITE_BLOB", ""),
                                   str(REPO / ".ci/cache/node_modules/.bin/azurite-blob"),
                                   shutil.which("azurite-blob") or "") if c and os.access(c, os.X_OK)), None)
        if binary is None:
            raise SystemExit("Azurite is not installed: bash .ci/setup.d/50-azurite.sh")
        self.log = root / "azurite.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", "0", "--location",
                                          str(root / "azurite"), "--loose", "--skipApiVersionCheck",
                                          "--disableTelemetry"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"listens on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if m:
                port = int(m.group(1))
                self.conn_str = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
                                 f"{AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
                return
            time.sleep(0.1)
        raise SystemExit(f"Azurite did not start: {self.log.read_text()[-1000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def drive(sink: Any, chunks: list[bytes], disk_size: int, *, flush_every: int = 16) -> float:
    """Write every chunk once, sequentially, flushing every `flush_every` MiB; returns seconds to applied."""
    start = time.perf_counter()
    for i, chunk in enumerate(chunks):
        sink.write((i * MIB) % disk_size, chunk)
        if i % flush_every == flush_every - 1:
            sink.flush()
    sink.flush()
    sink.wait_applied(600)
    return time.perf_counter() - start


def measured_pipeline(root: Path, pki: Pki, chunks: list[bytes], disk_size: int, meter_factory: Any, *,
                      disk: str, also: dict[str, int] | None = None, **service_kw: Any) -> tuple[float, Any]:
    """Start the master target and the process server, drive `chunks` through an agent sink in this
    process while `meter_factory(pids)` (pipeline_ceiling.Meter) samples the CPU of this process,
    both services and `also`; stop the services. Returns (seconds to applied, the phase's usage)."""
    mt, ps, ps_port = services(root, pki, **service_kw)
    mt.start()
    ps.start()
    try:
        assert mt.proc is not None and ps.proc is not None
        meter = meter_factory({"process_server": ps.proc.pid, "master_target": mt.proc.pid, **(also or {})})
        from dr_agent.sink import ProcessServerSink

        sink = ProcessServerSink(disk=disk, size=disk_size, servers=[("127.0.0.1", ps_port)], identity=pki.agent)
        with meter.measure():
            seconds = drive(sink, chunks, disk_size)
        sink.close()
    finally:
        ps.stop()
        mt.stop()
    assert meter.usage is not None
    return seconds, meter.usage
