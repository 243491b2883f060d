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


def test_agent_service_replicates_and_marks_points(make_pipeline: Any, pki: Any, tmp_path: Path) -> None:
    need_root()
    p = make_pipeline()
    size = 32 * MIB
    backing = tmp_path / "sdb.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    (tmp_path / "agent.toml").write_text(
        f'[agent]\nname = "svc01"\nidentity = "{pki.agent.directory}"\n'
        f'process_servers = ["127.0.0.1:{p.ps.port}"]\ncrash_consistent_every_s = 1\n\n'
        f'[[agent.disks]]\nname = "svc01-sdb"\nbacking = "{backing}"\nmountpoint = "{tmp_path / "fuse"}"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO)])}
    agent = subprocess.Popen([sys.executable, "-m", "dr_agent.cli", "agent", "--config", str(tmp_path / "agent.toml")],
                             stdout=subprocess.PIPE, env=env)
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
