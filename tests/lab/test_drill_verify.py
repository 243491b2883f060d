"""The drill's check of a recovered disk, on real bytes: an ext4 image wrapped as a fixed VHD and
uploaded as a page blob to Azurite by the failover's own disk store, then downloaded, fsck'd,
mounted read-only and compared with a manifest. A checker that cannot fail proves nothing: each
kind of damage (a changed file, a file more, lost seed data, a broken file system) must be caught."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dr_agent.vhd import footer

from dr.failover.provider import BlobDiskStore
from dr.lab.drill import download_disk, verify_disk
from dr.lab.workload import file_manifest
from tests.agent.conftest import azurite  # noqa: F401 - the real Azurite fixture, shared
from tests.conftest import require_root

pytestmark = pytest.mark.root
MIB = 1024 * 1024


@pytest.fixture()
def filesystem(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 16 MiB ext4 image with seed files and workload files, mounted read-write (image, mount)."""
    require_root("mkfs.ext4", "e2fsck", "dumpe2fs")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "data_1", str(image)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        (mnt / "seed").mkdir()
        for i in range(5):
            (mnt / "seed" / f"s{i}.bin").write_bytes(os.urandom(20_000 + i))
        (mnt / "workload").mkdir()
        (mnt / "workload" / "file00.bin").write_bytes(os.urandom(70_000))
        os.sync()
        yield image, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def as_page_blob(connection: str, image: Path, name: str) -> str:
    vhd = image.with_suffix(".vhd")
    shutil.copyfile(image, vhd)
    with open(vhd, "ab") as f:
        f.write(footer(image.stat().st_size))
    url = BlobDiskStore(connection_string=connection).put_disk("drill-test-rg", name, vhd)
    vhd.unlink()
    return url


def test_a_recovered_disk_equal_to_the_manifest_verifies_and_each_damage_is_caught(
        azurite: str, filesystem: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    image, mnt = filesystem
    manifest = file_manifest({"d": mnt})["d"]
    seed = {p: h for p, h in manifest.items() if p.startswith("seed/")}
    subprocess.run(["umount", str(mnt)], check=True)
    url = as_page_blob(azurite, image, "web_01/data_1.vhd")
    got = tmp_path / "got.img"
    assert download_disk(azurite, url, got) == image.stat().st_size
    assert got.read_bytes() == image.read_bytes()

    ok = verify_disk("web_01", "data_1", got, manifest, seed, tmp_path)
    assert ok.ok and ok.files == 6 and ok.seed_files == 5, ok.detail
    assert "e2fsck -fn clean" in ok.detail

    changed = {**manifest, "workload/file00.bin": "0" * 64}
    bad = verify_disk("web_01", "data_1", got, changed, seed, tmp_path)
    assert not bad.ok and "1 different (workload/file00.bin)" in bad.detail
    fewer = {p: h for p, h in manifest.items() if p != "seed/s3.bin"}
    bad = verify_disk("web_01", "data_1", got, fewer, {}, tmp_path)
    assert not bad.ok and "1 not in the manifest (seed/s3.bin)" in bad.detail
    lost_seed = {**seed, "seed/s9.bin": "1" * 64}
    bad = verify_disk("web_01", "data_1", got, manifest, lost_seed, tmp_path)
    assert not bad.ok and "seed data lost or changed (seed/s9.bin)" in bad.detail

    # a broken file system: its block bitmap's group descriptor checksum no longer matches
    broken = tmp_path / "broken.img"
    shutil.copyfile(got, broken)
    with open(broken, "r+b") as f:
        f.seek(4096)  # the group descriptor table follows the superblock (4 KiB blocks)
        f.write(os.urandom(64))
    bad = verify_disk("web_01", "data_1", broken, manifest, seed, tmp_path)
    assert not bad.ok and "e2fsck -fn exit" in bad.detail
    assert not list(tmp_path.glob("mnt-*")), "a mount point was left behind"


def test_a_disk_captured_while_mounted_is_checked_after_its_journal_replay(
        filesystem: tuple[Path, Path], tmp_path: Path) -> None:
    image, mnt = filesystem
    (mnt / "workload" / "file01.bin").write_bytes(b"x" * 50_000)
    os.sync()
    manifest = file_manifest({"d": mnt})["d"]
    copy = tmp_path / "captured.img"
    shutil.copyfile(image, copy)  # the bytes of a mounted file system, as a crash-consistent point holds them
    verdict = verify_disk("web_01", "data_1", copy, manifest, {}, tmp_path)
    assert verdict.ok, verdict.detail
    assert verdict.detail.startswith("journal replayed, then e2fsck -fn clean"), verdict.detail
