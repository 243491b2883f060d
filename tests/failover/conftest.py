"""Fixtures of the failover tests: Azurite (the Azure Storage emulator, a real peer), a
configuration server store with the recovery point catalog the master targets report, and an
exporter standing in for the data path's `dr replica export` until it lands.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dr_agent.contract import stream_name

from dr.failover.provider import BlobDiskStore, Environment, StoreCatalog
from dr.model import Estate
from dr.server.schemas import CatalogReport, RecoveryPoint, RegisterRequest, ReplicaLocation, StreamCatalog
from dr.server.service import ConfigServer, Principal
from dr.server.store import Store

PASSPHRASE = "failover tests vault passphrase"
# Azurite's well-known development account (Azurite docs, "Connection strings").
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Azurite starts in about a second here; allow for a cold npm cache on 2 cores.
AZURITE_START_TIMEOUT_S = 60
# Disk images the test exporter writes (bytes; small: the data path's own tests cover size).
IMAGE_BYTES = 64 * 1024


def _azurite_binary() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    # .ci/setup.d/50-azurite.sh installs it project-locally; a developer may have it elsewhere.
    for candidate in (repo / ".ci" / "cache" / "node_modules" / ".bin" / "azurite-blob",
                      Path("/tmp/az/node_modules/.bin/azurite-blob")):
        if candidate.exists():
            return str(candidate)
    return shutil.which("azurite-blob")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    binary = _azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed: run `bash .ci/setup.d/50-azurite.sh` (npm install azurite)")
    location = tempfile.mkdtemp(prefix="dr-azurite-")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", location, "--loose",
         "--skipApiVersionCheck", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + AZURITE_START_TIMEOUT_S
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Azurite did not start: {process.stderr.read() if process.stderr else b''!r}")
        time.sleep(0.1)
    try:
        yield (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
               f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
    finally:
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:  # Azurite keeps no state we need: its folder is removed below
            process.kill()
            process.wait()
        shutil.rmtree(location, ignore_errors=True)


def image_bytes(machine: str, disk: str, point_id: str) -> bytes:
    """What a disk holds at a point, in these tests: distinct for every (machine, disk, point)."""
    seed = hashlib.sha256(f"{machine}/{disk}@{point_id}".encode()).digest()
    block = seed * (4096 // len(seed))
    return (block * (IMAGE_BYTES // len(block)))[: IMAGE_BYTES - 100] + b"\0" * 100


class RecordingExporter:
    """Writes `image_bytes` for the asked point, and remembers every export (thread-safe appends)."""

    def __init__(self) -> None:
        self.exports: list[tuple[str, str, str]] = []

    def export(self, machine: str, disk: str, point_id: str, dest: Path) -> int:
        data = image_bytes(machine, disk, point_id)
        dest.write_bytes(data)
        self.exports.append((machine, disk, point_id))
        return len(data)


@pytest.fixture
def state(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "state.db")


def make_server(store: Store, estate: Estate) -> ConfigServer:
    server = ConfigServer(store=store, estate=estate)
    server.init_vault(PASSPHRASE)
    server.register(RegisterRequest(passphrase=PASSPHRASE, name="mt01", role="master_target"))
    return server


def report_points(server: ConfigServer, points: dict[str, list[RecoveryPoint]]) -> None:
    """The master target reports, for each machine, the same points on each of its disks (file
    replicas: these tests export through RecordingExporter, not from the replicas)."""
    streams = [
        StreamCatalog(stream=stream_name(name, d.name), size=IMAGE_BYTES, rpo_seconds=10, points=points[name],
                      location=ReplicaLocation(kind="file", path=f"/var/lib/mt/{stream_name(name, d.name)}.img"))
        for name in points for d in server.estate.machine(name).disks
    ]
    server.report_catalog(Principal(name="mt01", role="master_target"), CatalogReport(streams=streams))


def environment(server: ConfigServer, connection: str, exporter: RecordingExporter, workdir: Path) -> Environment:
    return Environment(catalog=StoreCatalog(store=server.store), exporter=exporter,
                       disks=BlobDiskStore(connection_string=connection), workdir=workdir)


def blob_bytes(connection: str, container: str, name: str) -> bytes:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(connection)
    return bytes(client.get_container_client(container).download_blob(name).readall())



@pytest.fixture(scope="session")
def sharepoint() -> Estate:
    from dr.validate import load_valid

    estate, _ = load_valid(Path(__file__).resolve().parents[2] / "examples" / "sharepoint" / "dr.yaml")
    return estate
