"""`dr-agent agent` as a process: presents a disk through the splitter, ships it, inserts crash points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dr_agent.catalog import Catalog
from pipeline_harness import MIB, REPO, need_root, run

pytestmark = pytest.mark.root


def _start_agent(tmp_path: Path, pki: Any, ps_port: int, name: str, backing: Path) -> subprocess.Popen[bytes]:
    (tmp_path / "agent.toml").write_text(
        f'[agent]\nname = "{name}"\nidentity = "{pki.agent.directory}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'process_servers = ["127.0.0.1:{ps_port}"]\ncrash_consistent_every_s = 1\n\n'
        f'[[agent.disks]]\nname = "{name}-sdb"\nbacking = "{backing}"\nmountpoint = "{tmp_path / "fuse"}"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO)])}
    return subprocess.Popen([sys.executable, "-m", "dr_agent.cli", "agent", "--config", str(tmp_path / "agent.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _empty_disk(tmp_path: Path, size: int) -> Path:
    backing = tmp_path / "sdb.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    return backing


def _wait_equal(replica: Path, backing: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.exists() and replica.read_bytes() == backing.read_bytes():
            return True
        time.sleep(0.2)
    return False


def test_agent_service_replicates_and_marks_points(make_pipeline: Any, pki: Any, tmp_path: Path) -> None:
    need_root()
    p = make_pipeline()
    backing = _empty_disk(tmp_path, 32 * MIB)
    agent = _start_agent(tmp_path, pki, p.ps.port, "svc01", backing)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        assert agent.stdout is not None
        dev = json.loads(agent.stdout.readline())["device"]
        run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
        run("mount", dev, str(mnt))
        (mnt / "hello.txt").write_text("replicated by the agent service\n")
        run("umount", str(mnt))  # a clean file system on the source, all flushed
        unmounted = time.time()
        cat = Catalog(tmp_path / "mt/catalog.sqlite")
        deadline = time.monotonic() + 30
        want = None
        while time.monotonic() < deadline:
            points = [pt for pt in cat.points("svc01-sdb") if pt.kind == "crash" and pt.time > unmounted]
            if points:  # a point taken after the unmount holds the whole file system
                want = points[0]
                break
            time.sleep(0.2)
        assert want is not None, "the agent inserted no crash-consistent points"
        replica = Path(want.snapshot).read_bytes()
        assert replica == backing.read_bytes()
        cat.close()
    finally:
        if os.path.ismount(mnt):
            run("umount", str(mnt))
        agent.terminate()
        agent.wait(30)
    assert not (tmp_path / "state/svc01-sdb.running").exists()  # stopped cleanly: no comparison next time


def test_an_agent_that_died_compares_the_disk_with_the_replica_at_start(
        make_pipeline: Any, pki: Any, tmp_path: Path) -> None:
    need_root()
    p = make_pipeline()
    backing = _empty_disk(tmp_path, 16 * MIB)
    agent = _start_agent(tmp_path, pki, p.ps.port, "svc02", backing)
    replica = tmp_path / "mt/disks/svc02-sdb.img"
    try:
        assert agent.stdout is not None
        dev = json.loads(agent.stdout.readline())["device"]
        with open(dev, "r+b") as f:
            f.write(os.urandom(4 * MIB))
            os.fsync(f.fileno())
        assert _wait_equal(replica, backing, 30)
        agent.kill()  # kill -9: what reached the disk after this never reached the stream
        agent.wait(30)
        assert (tmp_path / "state/svc02-sdb.running").exists()
        run("losetup", "-d", dev)
        subprocess.run(["fusermount3", "-uz", str(tmp_path / "fuse")], check=False)
        with open(backing, "r+b") as f:  # changes on the disk the stream never carried
            for off in (0, 5 * MIB + 4096, 15 * MIB):
                f.seek(off)
                f.write(os.urandom(8192))
        assert replica.read_bytes() != backing.read_bytes()

        agent = _start_agent(tmp_path, pki, p.ps.port, "svc02", backing)
        assert agent.stdout is not None
        dev = json.loads(agent.stdout.readline())["device"]
        assert _wait_equal(replica, backing, 60), "the restarted agent did not bring the replica back"
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert b"did not stop cleanly" in err and b"resynced against the replica: 6 of 4096 blocks" in err
    assert not (tmp_path / "state/svc02-sdb.running").exists()
