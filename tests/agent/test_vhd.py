"""The fixed VHD the replicas and exports are: read by another implementation (Debian's qemu-img).

`qemu-img` comes from .ci/setup.d/55-qemu.sh (qemu-utils). QEMU sizes a VHD by its CHS geometry
unless the footer's creator is one it trusts for the current size: a footer it reads short makes
every tool that converts the export lose the disk's end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dr_agent import vhd
from dr_agent.catalog import Catalog
from dr_agent.errors import TargetError
from dr_agent.export import export_location
from dr_agent.pageblob import PageBlobTarget
from dr_agent.sink import ProcessServerSink
from dr_agent.target import FileTarget

from tests.agent.test_export_service_signals import Service, free_port

MIB = 1024 * 1024
# An 80 GB drive has 156,301,488 sectors, not a whole number of MiB; a 1/1024 scale keeps that.
ODD_SECTORS = 156_301_488 // 1024


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("qemu-img")
    if binary is None:
        pytest.skip("qemu-img is not installed: run `bash .ci/setup.d/55-qemu.sh` (Debian's qemu-utils)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def vpc_size(path: Path) -> int:
    res = qemu_img("info", "-f", "vpc", "--output", "json", str(path))
    assert res.returncode == 0, res.stderr
    return int(json.loads(res.stdout)["virtual-size"])


def test_virtual_size_is_padded_to_the_next_mib() -> None:
    assert vhd.virtual_size(16 * MIB) == 16 * MIB
    assert vhd.virtual_size(16 * MIB + 512) == 17 * MIB
    assert vhd.virtual_size(ODD_SECTORS * 512) == 75 * MIB
    with pytest.raises(ValueError, match="multiple of 512"):
        vhd.virtual_size(1000)
    assert vhd.blob_bytes(vhd.largest_disk()) <= vhd.PAGE_BLOB_MAX_BYTES < vhd.blob_bytes(vhd.largest_disk() + 512)
    with pytest.raises(TargetError, match="at most 8 TiB"):  # refused before any request
        PageBlobTarget("UseDevelopmentStorage=true", "c", "b.vhd", vhd.largest_disk() + 512)


@pytest.mark.parametrize("size", [16 * MIB, 75 * MIB, 1023 * MIB, 127 * 1024 * MIB + 7 * MIB])
def test_qemu_reads_the_footers_exact_size(tmp_path: Path, size: int) -> None:
    """Sizes whose CHS geometry falls short of them: qemu must use the current size."""
    c, h, s = vhd.geometry(size)
    assert c * h * s * 512 < size
    path = tmp_path / "disk.vhd"
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(vhd.footer(size))
    assert vhd.footer(size)[28:32] == b"win "
    assert vpc_size(path) == size


def test_exported_vhd_converts_back_to_the_exact_disk(tmp_path: Path) -> None:
    size = 24 * MIB
    target = FileTarget(tmp_path / "disk.img", size)
    target.apply([(0, os.urandom(MIB)), (size - 4096, os.urandom(4096))], [])
    target.commit(1)
    handle = target.snapshot("p1", 1)
    out = export_location(target.location(), handle, tmp_path / "p1.vhd")
    target.close()
    res = qemu_img("convert", "-f", "vpc", "-O", "raw", str(out), str(tmp_path / "back.raw"))
    assert res.returncode == 0, res.stderr
    back = (tmp_path / "back.raw").read_bytes()
    assert len(back) == size and back == Path(handle).read_bytes()


def test_odd_sized_disk_replicates_exports_and_qemu_agrees(azurite: str, pki: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk of a sector count that is not a whole number of MiB: the master target service takes
    it (a page blob padded to the next MiB, the footer saying the padded size), `dr replica export`
    writes it, and qemu-img reads the VHD as the source plus zeros."""
    from azure.storage.blob import BlobClient

    from dr.cli import cli

    size = ODD_SECTORS * 512
    padded = vhd.virtual_size(size)
    assert size % MIB and padded == 75 * MIB
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    mt_port, ps_port = free_port(), free_port()
    (tmp_path / "mt.toml").write_text(
        f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\nidentity = "{pki.master_target.directory}"\n'
        f'state_dir = "{tmp_path / "mt"}"\nstorage = "azure"\ncontainer = "oddsize"\n'
        'connection_string_env = "AZURE_STORAGE_CONNECTION_STRING"\n')
    (tmp_path / "ps.toml").write_text(
        f'[process_server]\nname = "ps01"\nlisten = "127.0.0.1:{ps_port}"\n'
        f'identity = "{pki.process_server.directory}"\ncache_dir = "{tmp_path / "ps"}"\n'
        f'master_target = "127.0.0.1:{mt_port}"\ncapacity_gb = 1\n')
    services = [Service("master-target", tmp_path / "mt.toml", tmp_path / "mt.log")]
    source = bytearray(size)
    try:
        services.append(Service("process-server", tmp_path / "ps.toml", tmp_path / "ps.log"))
        sink = ProcessServerSink(disk="hdd01.disk0", size=size, servers=[("127.0.0.1", ps_port)],
                                 identity=pki.agent_for("hdd01"))
        try:
            for off, data in [(0, os.urandom(MIB)), (40 * MIB + 512, os.urandom(3 * MIB)),
                              (size - 4096 - 512, os.urandom(4096 + 512))]:  # up to the very last sector
                source[off:off + len(data)] = data
                sink.write(off, data)
            sink.flush()
            sink.bookmark("final", "app", None)
            sink.wait_applied(60)
        finally:
            sink.close()
    finally:
        for service in reversed(services):
            service.stop()

    blob = BlobClient.from_connection_string(azurite, "oddsize", "hdd01.disk0.vhd")
    assert blob.get_blob_properties().size == padded + vhd.FOOTER_SIZE
    assert vhd.parse_footer(blob.download_blob(offset=padded, length=vhd.FOOTER_SIZE).readall()) == padded

    src = tmp_path / "source.img"
    src.write_bytes(bytes(source))
    catalog = str(tmp_path / "mt/catalog.sqlite")
    for name in ("hdd01.vhd", "hdd01.img"):
        res = CliRunner().invoke(cli, ["replica", "export", "hdd01.disk0", "--point", "latest-app",
                                       "--to", str(tmp_path / name), "--catalog", catalog])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "hdd01.img").read_bytes() == bytes(source)  # raw: the exact disk
    out = tmp_path / "hdd01.vhd"
    assert out.stat().st_size == padded + vhd.FOOTER_SIZE
    assert vpc_size(out) == padded
    res = qemu_img("compare", "-f", "raw", "-F", "vpc", str(src), str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    cat = Catalog.open_readonly(Path(catalog))
    assert cat.disk("hdd01.disk0").size == size
    cat.close()


def test_validate_refuses_a_disk_above_the_page_blob_limit(tmp_path: Path) -> None:
    """The current profile allows 32 TB managed disks, but a replica is one page blob (8 TiB)."""
    from dr.cli import cli

    root = Path(__file__).resolve().parents[2]
    spec = tmp_path / "estate"
    shutil.copytree(root / "examples/linux-estate", spec)
    text = (spec / "dr.yaml").read_text()
    assert text.count("size_gb: 300,") == 2
    (spec / "dr.yaml").write_text(text.replace("size_gb: 300,", "size_gb: 9000,", 1))
    res = CliRunner().invoke(cli, ["validate", str(spec / "dr.yaml")])
    assert res.exit_code != 0, res.output
    assert "9000 GB: a disk replicates into one Azure page blob, which holds at most 8 TiB" in res.output
    assert "scalability-targets" in res.output and "8191.999 GB" in res.output

    (spec / "dr.yaml").write_text(text.replace("size_gb: 300,", "size_gb: 8191,", 1))
    res = CliRunner().invoke(cli, ["validate", str(spec / "dr.yaml")])
    assert "page blob" not in res.output, res.output
