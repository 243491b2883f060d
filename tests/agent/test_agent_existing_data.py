"""`dr-agent agent` on disks that already hold a populated ext4: the initial sync copies what was
there before the agent came, and a later point exports to a file system whose every file matches.

Run as a user runs it: the agent, process server and master target are the `dr-agent` processes,
the export is `dr replica export`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from agent_harness import MIB, Estate, need_root, populate, run, tree_hashes, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def estate(tmp_path: Path, pki: Any) -> Any:
    need_root()
    e = Estate(tmp_path, pki)
    e.start()
    yield e
    e.close()


def test_tracking_mode_protects_a_mounted_disk_with_data(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdb")
    disk.mount()
    populate(disk.mnt / "before", seed=1, count=40)  # on the disk before any agent
    config = estate.agent_config("web01", [f'name = "web01.sdb"\nmode = "tracking"\ndevice = "{disk.dev}"\n'
                                           f'mount_points = ["{disk.mnt}"]'], crash_consistent_every_s=1)
    agent = estate.start_agent(config)
    populate(disk.mnt / "after", seed=2, count=20)  # while the initial sync runs
    (disk.mnt / "before" / "f1-3.bin").unlink()
    written = time.time()
    want = tree_hashes(disk.mnt)
    point = estate.wait_point("web01.sdb", written, 90, agent=agent)
    got = estate.exported_hashes(estate.export("web01.sdb", point.id, tmp_path / "export.img"))
    assert got == want
    # nothing of the point machinery is in the I/O path: the file system never went read-only
    assert "ro" not in run("findmnt", "-no", "OPTIONS", str(disk.mnt)).split(",")
    agent.terminate()
    assert agent.wait(30) == 0
    log = estate.agent_log("web01")
    assert "initial-sync -> protected" in log and "final point" in log


def test_splitter_mode_protects_a_disk_with_data(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdc")
    disk.mount()
    populate(disk.mnt / "before", seed=3, count=30)
    disk.umount()
    run("losetup", "-d", disk.dev)  # the agent presents the disk itself, from its image
    config = estate.agent_config("app01", [f'name = "app01.sdc"\nmode = "splitter"\ndevice = "{disk.image}"\n'
                                           f'mountpoint = "{tmp_path / "fuse"}"\nmount_points = ["{disk.mnt}"]'],
                                 crash_consistent_every_s=1)
    agent = estate.start_agent(config)
    link = tmp_path / "fuse.dev"
    wait_for(link.exists, 30, "the splitter's device link", agent=agent)
    disk.dev = str(link.resolve())
    health = wait_for(lambda: _protected(estate, "app01"), 90, "the initial sync to finish", agent=agent)
    assert health
    disk.mount(str(link))
    populate(disk.mnt / "after", seed=4, count=10)
    written = time.time()
    want = tree_hashes(disk.mnt)
    point = estate.wait_point("app01.sdc", written, 60, agent=agent)
    disk.umount()  # the unit stops the agent after the workload's mounts
    got = estate.exported_hashes(estate.export("app01.sdc", point.id, tmp_path / "export.img"))
    assert got == want
    agent.terminate()
    assert agent.wait(30) == 0
    assert not (tmp_path / "state/app01/app01.sdc.running").exists()  # a clean stop: nothing to compare


def _protected(estate: Estate, name: str) -> bool:
    log = estate.agent_log(name)
    return "initial-sync -> protected" in log


def test_agent_config_errors_are_one_line(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdd")
    disk.mount()
    config = estate.agent_config("db01", [f'name = "db01.sdd"\nmode = "splitter"\ndevice = "{disk.dev}"\n'
                                          f'mountpoint = "{tmp_path / "fuse"}"'])
    import subprocess

    proc = subprocess.run(["dr-agent", "agent", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "mode = \"tracking\"" in proc.stderr
    assert json.dumps  # the announcement is never printed for a refused config
    assert proc.stdout == ""


def test_a_restart_resumes_the_initial_sync(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sde", 160 * MIB)
    disk.mount()
    with open(disk.mnt / "big.bin", "wb") as f:  # incompressible: the sync takes a while
        for _ in range(120):
            f.write(os.urandom(MIB))
        os.fsync(f.fileno())
    config = estate.agent_config("fs01", [f'name = "fs01.sde"\nmode = "tracking"\ndevice = "{disk.dev}"\n'
                                          f'mount_points = ["{disk.mnt}"]'],
                                 crash_consistent_every_s=1, sync_checkpoint_mb=8, buffer_mb=8)
    checkpoint = tmp_path / "state/fs01/fs01.sde.sync.json"
    agent = estate.start_agent(config)
    wait_for(lambda: checkpoint.exists() and json.loads(checkpoint.read_text())["offset"] > 0, 120,
             "a first checkpoint", agent=agent)
    agent.kill()
    agent.wait(30)
    reached = json.loads(checkpoint.read_text())
    assert not reached["complete"], "the sync finished before the kill: make the disk larger"
    populate(disk.mnt / "meanwhile", seed=7, count=5)  # written while no agent ran
    agent = estate.start_agent(config)
    written = time.time()
    want = tree_hashes(disk.mnt)
    point = estate.wait_point("fs01.sde", written, 120, agent=agent)
    assert estate.exported_hashes(estate.export("fs01.sde", point.id, tmp_path / "export.img")) == want
    assert f"initial sync resumes at {reached['offset'] >> 20} MiB" in estate.agent_log("fs01")
