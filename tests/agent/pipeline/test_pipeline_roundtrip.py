"""The round trip: ext4 on a loop device through the splitter, replicated through the process server
and master target into Azurite page blobs, exported at an application-consistent point, checked."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from dr_agent.catalog import Catalog
from dr_agent.export import export
from pipeline_harness import MIB, REPO, need_root, run

pytestmark = pytest.mark.root


def _hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and "lost+found" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_round_trip_through_azurite(make_pipeline: Any, azurite: str, tmp_path: Path) -> None:
    need_root()
    from dr_agent.capture.consistency import app_consistent
    from dr_agent.capture.splitter import Splitter, attach_loop, detach_loop

    p = make_pipeline(storage="azure", connection_string=azurite, container="roundtrip")
    size = 128 * MIB
    backing, fuse_dir, mnt = tmp_path / "backing.img", tmp_path / "fuse", tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    with open(backing, "wb") as f:
        f.truncate(size)
    sink = p.sink("rt01.disk0", size)
    rng_data = os.urandom(24 * MIB)
    with Splitter(backing, fuse_dir, sink, name="disk") as sp:
        dev = attach_loop(sp.path)
        try:
            run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
            run("mount", dev, str(mnt))
            try:
                big = mnt / "big.bin"  # a large fsynced file
                with open(big, "wb") as f:
                    f.write(rng_data)
                    f.flush()
                    os.fsync(f.fileno())
                shutil.copytree(REPO / "dr", mnt / "tree-a")  # copied trees
                shutil.copytree(REPO / "agent", mnt / "tree-b")
                with open(big, "r+b") as f:  # overwrites
                    f.seek(5 * MIB)
                    f.write(b"\xab" * MIB)
                    f.seek(20 * MIB)
                    f.write(os.urandom(3 * MIB))
                    os.fsync(f.fileno())
                shutil.rmtree(mnt / "tree-a" / "cli")  # deletes
                (mnt / "tree-b" / "pyproject.toml").unlink()
                with app_consistent([mnt]):
                    sp.bookmark("app", id="app-1")
                expected = _hashes(mnt)
                assert "big.bin" in expected and len(expected) > 20
                # after the point: a file never synced, and more overwrites
                (mnt / "never-synced.bin").write_bytes(os.urandom(2 * MIB))
                with open(big, "r+b") as f:
                    f.write(b"after the point")
                sink.wait_applied(120)
            finally:
                run("umount", str(mnt))
        finally:
            detach_loop(dev)

    cat = Catalog(tmp_path / "mt/catalog.sqlite")
    assert cat.resolve("rt01.disk0", "latest-app").id == "app-1"
    img = export(cat, "rt01.disk0", "latest-app", tmp_path / "rt.img", connection_string=azurite)
    vhd = export(cat, "rt01.disk0", "app-1", tmp_path / "rt.vhd", connection_string=azurite)
    cat.close()
    assert vhd.stat().st_size == size + 512
    run("e2fsck", "-fn", str(img))
    restored = tmp_path / "restored"
    restored.mkdir()
    run("mount", "-o", "loop,ro", str(img), str(restored))
    try:
        assert _hashes(restored) == expected
        assert not (restored / "never-synced.bin").exists()
    finally:
        run("umount", str(restored))
