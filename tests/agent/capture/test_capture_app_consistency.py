"""Application-consistent points: pre/post scripts, FIFREEZE, and a thaw that always happens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from capture_helpers import MiB, SplitDisk, e2fsck_clean, is_frozen, mkfs_ext4
from dr_agent.capture.consistency import app_consistent, run_script
from dr_agent.capture.errors import FreezeError, ScriptFailed

pytestmark = pytest.mark.root


@pytest.fixture
def mounted(split_disk) -> SplitDisk:  # type: ignore[no-untyped-def]
    disk: SplitDisk = split_disk(48 * MiB, check_barriers=False)
    mkfs_ext4(disk.dev)
    disk.mount()
    return disk


def test_app_point_runs_scripts_freezes_and_the_replica_is_clean_at_the_point(mounted: SplitDisk,
                                                                               tmp_path: Path) -> None:
    disk = mounted
    disk.snapshot_bookmarks = True
    log = tmp_path / "order.log"
    data = os.urandom(3 * MiB)
    (disk.mnt / "db.bin").write_bytes(data)  # written but never fsynced: the freeze flushes it
    pre = f"echo pre >> {log}"
    post = ["/bin/sh", "-c", f"echo post >> {log}"]
    with app_consistent([disk.mnt], [pre], [post]):
        assert is_frozen(disk.mnt)
        with open(log, "a") as f:
            f.write("point\n")
        point = disk.splitter.bookmark("app")
    assert not is_frozen(disk.mnt)
    assert log.read_text().split() == ["pre", "point", "post"]
    mark = disk.target.received.bookmarks[-1]
    assert (mark.bookmark_id, mark.kind) == (point, "app")
    assert disk.checked.mismatches == []
    snapshot = disk.checked.snapshots[point]  # the replica exactly as it was at the point
    e2fsck_clean(snapshot)  # frozen ext4: no journal to replay, nothing to repair
    (disk.mnt / "after.bin").write_bytes(b"x" * 8192)  # the file system takes writes again


def test_failing_pre_script_freezes_nothing_and_still_runs_post(mounted: SplitDisk, tmp_path: Path) -> None:
    log = tmp_path / "post.log"
    with pytest.raises(ScriptFailed, match="exited with 3"), \
            app_consistent([mounted.mnt], ["echo quiescing failed >&2; exit 3"], [f"echo post > {log}"]):
        pytest.fail("the body must not run when a pre script fails")
    assert not is_frozen(mounted.mnt)
    assert log.read_text() == "post\n"
    assert mounted.target.received.bookmarks == []


def test_failing_post_script_is_reported_after_the_thaw(mounted: SplitDisk) -> None:
    with pytest.raises(ScriptFailed, match="'exit 9' exited with 9"), \
            app_consistent([mounted.mnt], [], ["exit 9"]):
        mounted.splitter.bookmark("app")
    assert not is_frozen(mounted.mnt)
    assert len(mounted.target.received.bookmarks) == 1


def test_error_while_frozen_still_thaws(mounted: SplitDisk) -> None:
    with pytest.raises(RuntimeError, match="sink gone"), app_consistent([mounted.mnt]):
        assert is_frozen(mounted.mnt)
        raise RuntimeError("sink gone")
    assert not is_frozen(mounted.mnt)


def test_a_mount_point_that_cannot_freeze_thaws_the_ones_already_frozen(mounted: SplitDisk,
                                                                         tmp_path: Path) -> None:
    not_a_mount = tmp_path / "plain-dir"
    not_a_mount.mkdir()
    with pytest.raises(FreezeError, match="not a mount point"), app_consistent([mounted.mnt, not_a_mount]):
        pytest.fail("the body must not run when a freeze fails")
    assert not is_frozen(mounted.mnt)


def test_a_file_system_that_is_already_frozen_fails_the_point_and_stays_as_it_was(mounted: SplitDisk,
                                                                                  tmp_path: Path) -> None:
    from dr_agent.capture import _linux

    log = tmp_path / "post.log"
    _linux.freeze(mounted.mnt)  # someone else froze it (an admin's fsfreeze): FIFREEZE says EBUSY
    try:
        with pytest.raises(FreezeError, match="could not freeze"), \
                app_consistent([mounted.mnt], [], [f"echo post > {log}"]):
            pytest.fail("the body must not run when a freeze fails")
        assert is_frozen(mounted.mnt), "a freeze we did not make is not ours to undo"
    finally:
        _linux.thaw(mounted.mnt)
    assert log.read_text() == "post\n"


def test_a_hung_script_is_killed_at_its_timeout() -> None:
    with pytest.raises(ScriptFailed, match="timed out"):
        run_script("sleep 30", timeout=0.3)
