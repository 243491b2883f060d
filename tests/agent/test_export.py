"""Export of recovery points: one listing of the point's ranges, parallel ranged reads, sparse output.

Against a real Azurite started with its request log on, so the test counts the requests the export
really made (the old export listed every page range once per 4 MiB read: quadratic in the disk).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dr_agent.catalog import Catalog, Point
from dr_agent.contract import ReplicaLocation
from dr_agent.errors import ConfigError, TargetError
from dr_agent.export import READ_CHUNK, export_location, plan_reads
from dr_agent.pageblob import PageBlobTarget
from dr_agent.target import FileTarget

from tests.agent.conftest import AZURITE_ACCOUNT, AZURITE_KEY, azurite_binary

MIB = 1024 * 1024


class LoggedAzurite:
    """An Azurite of this module's own, with --debug: every request's method and URL in a file."""

    def __init__(self, root: Path, *, port: int = 0) -> None:
        binary = azurite_binary()
        if binary is None:
            pytest.skip("Azurite is not installed: run `bash .ci/setup.d/50-azurite.sh`")
        root.mkdir(parents=True, exist_ok=True)
        self.debug = root / "debug.log"
        self.out = (root / "azurite.out").open("w+")
        self.proc = subprocess.Popen(
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(root / "data"),
             "--loose", "--skipApiVersionCheck", "--disableTelemetry", "--debug", str(self.debug)],
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.1)
            self.out.seek(0)
            m = re.search(r"listens on http://127\.0\.0\.1:(\d+)", self.out.read())
            port = int(m.group(1)) if m else None
        if port is None:
            self.close()
            pytest.fail("Azurite did not start")
        self.conn_str = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                         f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")

    def requests(self) -> list[str]:
        """'METHOD URL' of every request logged so far."""
        text = self.debug.read_text() if self.debug.exists() else ""
        return re.findall(r"BlobStorageContextMiddleware: RequestMethod=(\w+) RequestURL=(\S+)", text)  # type: ignore[return-value]

    def marker(self, name: str) -> None:
        """A request that shows in the log (a HEAD of a missing container): separates the phases."""
        from azure.storage.blob import ContainerClient

        ContainerClient.from_connection_string(self.conn_str, f"marker-{name}").exists()

    def between(self, first: str, second: str) -> list[tuple[str, str]]:
        deadline = time.monotonic() + 10
        while True:  # the log is written asynchronously: wait for the closing marker
            reqs = [tuple(r) for r in self.requests()]
            names = [i for i, (_, url) in enumerate(reqs) if f"marker-{first}" in url or f"marker-{second}" in url]
            if len(names) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(names) >= 2, "the markers did not reach Azurite's request log"
        return reqs[names[0] + 1:names[-1]]  # type: ignore[return-value]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


@pytest.fixture(scope="module")
def logged_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedAzurite]:
    az = LoggedAzurite(tmp_path_factory.mktemp("azurite-log"))
    try:
        yield az
    finally:
        az.close()


def test_plan_reads_joins_near_ranges_and_cuts_at_chunk_boundaries() -> None:
    reads = plan_reads([(0, 4096), (8192, 4096), (10 * MIB, 2 * READ_CHUNK + 512)], gap=64 * 1024)
    assert reads[0] == (0, 12288)  # two ranges 4 KiB apart: one read
    big = reads[1:]
    assert big[0] == (10 * MIB, READ_CHUNK - (10 * MIB) % READ_CHUNK)  # up to the next chunk boundary
    assert all(n <= READ_CHUNK for _, n in big)
    assert sum(n for _, n in big) == 2 * READ_CHUNK + 512
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(big))
    assert plan_reads([]) == []


def test_page_blob_export_lists_ranges_once_reads_in_parallel_and_is_sparse(
        logged_azurite: LoggedAzurite, tmp_path: Path) -> None:
    size = 48 * MIB
    target = PageBlobTarget(logged_azurite.conn_str, "exp1", "web01.disk0.vhd", size)
    expected = bytearray(size)
    writes = [(i * 2 * MIB + 4096 * i, os.urandom(MIB)) for i in range(20)]  # 20 MiB, unaligned to chunks
    writes.append((size - 512, b"\xee" * 512))  # the last sector
    for off, data in writes:
        expected[off:off + len(data)] = data
    target.apply(writes, [])
    target.commit(1)
    snap = target.snapshot("p1", 1)
    target.apply([(0, b"\x01" * 4096)], [])  # the live blob moves on; the point must not
    target.commit(2)

    logged_azurite.marker("a")
    out = export_location(target.location(), snap, tmp_path / "p1.img", connection_string=logged_azurite.conn_str)
    logged_azurite.marker("b")
    target.close()

    assert out.read_bytes() == bytes(expected)
    assert out.stat().st_blocks * 512 < size // 2, "the holes of the point are holes in the export"
    where = ReplicaLocation(kind="pageblob", account="devstoreaccount1", container="exp1", blob="web01.disk0.vhd")
    vhd_out = export_location(where, snap, tmp_path / "p1.vhd", size=size, connection_string=logged_azurite.conn_str)
    assert vhd_out.read_bytes()[:size] == bytes(expected)
    reqs = logged_azurite.between("a", "b")
    listings = [u for m, u in reqs if "comp=pagelist" in u]
    gets = [u for m, u in reqs if m == "GET" and "comp=" not in u]
    assert len(listings) == 1, f"the page ranges were listed {len(listings)} times"
    assert all("snapshot=" in u for u in gets + listings)
    # one GET per planned read: each 1 MiB write plus the last sector, nothing for the empty MiBs
    assert 21 <= len(gets) <= 2 * 21


def test_export_of_a_missing_snapshot_is_one_line_and_leaves_no_partial_file(
        logged_azurite: LoggedAzurite, tmp_path: Path) -> None:
    target = PageBlobTarget(logged_azurite.conn_str, "exp2", "db01.disk0.vhd", 4 * MIB)
    target.apply([(0, os.urandom(MIB))], [])
    target.commit(1)
    snap = target.snapshot("p1", 1)
    target.delete_snapshot(snap)
    target.close()
    with pytest.raises(TargetError) as err:
        export_location(target.location(), snap, tmp_path / "gone.img", connection_string=logged_azurite.conn_str)
    assert "\n" not in str(err.value) and "db01.disk0.vhd" in str(err.value)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="AZURE_STORAGE_CONNECTION_STRING"):
        export_location(target.location(), snap, tmp_path / "x.img")


def test_file_point_export_is_sparse_and_exact(tmp_path: Path) -> None:
    size = 24 * MIB + 512  # not a whole number of MiB
    target = FileTarget(tmp_path / "disk.img", size)
    payload = os.urandom(3 * MIB)
    target.apply([(5 * MIB, payload), (size - 512, b"z" * 512)], [])
    target.commit(1)
    handle = target.snapshot("p1", 1)
    target.apply([(5 * MIB, bytes(4096))], [])
    target.commit(2)
    out = export_location(target.location(), handle, tmp_path / "p1.img")
    target.close()
    data = out.read_bytes()
    assert len(data) == size
    assert data[5 * MIB:8 * MIB] == payload and data[-512:] == b"z" * 512
    assert data.count(0) == size - len(payload) - 512 + payload.count(0)
    assert out.stat().st_blocks * 512 <= 6 * MIB
    # the configuration server's record of the point: the contract's location, the stream's size
    where = ReplicaLocation(kind="file", path=str(tmp_path / "disk.img"))
    again = export_location(where, handle, tmp_path / "again.img", size=size)
    assert again.read_bytes() == data
    with pytest.raises(ConfigError, match="no disk size"):
        export_location(where, handle, tmp_path / "nosize.img")


def test_cli_export_pins_the_point_once_and_prints_its_id(tmp_path: Path) -> None:
    """A new app point arriving while `--point latest-app` exports must not change the id printed:
    the export is held open (the point's file is a FIFO) while the master target adds a newer point."""
    from dr.cli import cli

    size = 2 * MIB
    fifo = tmp_path / "p1.fifo"
    os.mkfifo(fifo)
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.add_disk("web01.disk0", {"kind": "file", "path": str(tmp_path / "disk.img"), "size": size}, size)
    cat.add_point(Point("web01.disk0", "p1", 1, 1_700_000_000.0, "app", None, str(fifo)))
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(CliRunner().invoke(
        cli, ["replica", "export", "web01.disk0", "--point", "latest-app", "--to", str(tmp_path / "out.vhd"),
              "--catalog", str(tmp_path / "catalog.sqlite")])))
    runner.start()
    deadline = time.monotonic() + 30
    writer = None
    while writer is None:  # a FIFO opens for writing only once the export has opened it for reading
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert time.monotonic() < deadline, "the export never opened the point"
            time.sleep(0.02)
    cat.add_point(Point("web01.disk0", "p2", 2, 1_700_000_060.0, "app", None, str(tmp_path / "p2.img")))
    os.close(writer)
    runner.join(30)
    cat.close()
    res = result[0]
    assert res.exit_code == 0, res.output
    assert "at app point p1" in res.output and "p2" not in res.output
