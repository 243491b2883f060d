"""A point's freeze cannot outlive the point: while frozen the file system cannot be unmounted (the
agent holds it open), and it is thawed whatever happens inside the point."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from agent_harness import MIB, Disk, need_root, run
from dr_agent.capture.consistency import app_consistent

pytestmark = pytest.mark.root


def test_an_unmount_racing_a_point_waits_for_the_thaw(tmp_path: Path) -> None:
    need_root()
    disk = Disk(tmp_path, "sdb", 32 * MIB)
    try:
        disk.mount()
        with pytest.raises(RuntimeError), app_consistent([disk.mnt]):
            busy = subprocess.run(["umount", str(disk.mnt)], capture_output=True, text=True, check=False)
            assert busy.returncode != 0  # refused while frozen: a frozen file system is never left unmountable
            raise RuntimeError("the point failed")
        (disk.mnt / "after.txt").write_text("thawed\n")  # would hang were it still frozen
        run("umount", str(disk.mnt))
    finally:
        disk.detach()
