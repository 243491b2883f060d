"""Fixtures of the capture tests: real loop devices, ext4, the FUSE splitter, tracefs.

Root-only fixtures skip with the reason when this machine cannot run them (not root, no
/dev/fuse, no losetup/mkfs.ext4, no tracefs); CI runs as root and has them all
(`.ci/setup.d/40-capture.sh`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from capture_helpers import Checked, MiB, SplitDisk, first_difference, need_root_tools
from dr_agent.capture.filetarget import FileTarget, ReceivedBookmark
from dr_agent.capture.splitter import Splitter, attach_loop, detach_loop


@pytest.fixture
def split_disk(tmp_path: Path) -> Iterator[Callable[..., SplitDisk]]:
    """Factory: `split_disk(size=..., check_barriers=True)` -> a SplitDisk, torn down in order."""
    need_root_tools("mkfs.ext4", "e2fsck", fuse=True)
    made: list[SplitDisk] = []

    def make(size: int = 64 * MiB, *, check_barriers: bool = True, name: str = "disk") -> SplitDisk:
        base = tmp_path / name
        base.mkdir()
        backing, replica, fuse_dir, mnt = base / "backing.img", base / "replica.img", base / "fuse", base / "mnt"
        fuse_dir.mkdir()
        mnt.mkdir()
        with open(backing, "wb") as f:
            f.truncate(size)
        checked = Checked()
        holder: dict[str, SplitDisk] = {}

        def on_barrier() -> None:
            # the splitter calls the sink with its apply lock held: the backing cannot change now
            checked.barriers += 1
            if check_barriers:
                diff = first_difference(backing, replica)
                if diff is not None:
                    checked.mismatches.append(f"barrier {checked.barriers}: first difference at byte {diff}")

        def on_bookmark(mark: ReceivedBookmark) -> None:
            checked.bookmarks.append(mark)
            diff = first_difference(backing, replica)
            if diff is not None:
                checked.mismatches.append(f"bookmark {mark.bookmark_id}: first difference at byte {diff}")
            disk = holder.get("disk")
            if disk is not None and disk.snapshot_bookmarks:
                snap = base / f"point-{mark.bookmark_id}.img"
                shutil.copyfile(replica, snap)
                checked.snapshots[mark.bookmark_id] = snap

        target = FileTarget(replica, size, on_barrier=on_barrier, on_bookmark=on_bookmark)
        splitter = Splitter(backing, fuse_dir, target, name=name)
        splitter.__enter__()
        try:
            dev = attach_loop(splitter.path)
        except BaseException:
            splitter.close()
            raise
        disk = SplitDisk(backing, replica, target, splitter, dev, mnt, checked)
        holder["disk"] = disk
        made.append(disk)
        return disk

    yield make
    for disk in reversed(made):
        try:
            disk.umount()
        finally:
            detach_loop(disk.dev)
            disk.splitter.close()
            disk.target.close()


@pytest.fixture
def loop_file(tmp_path: Path) -> Iterator[Callable[[int], tuple[Path, str]]]:
    """Factory: a sparse image of `size` bytes with a (direct-io) loop device over it."""
    need_root_tools("mkfs.ext4", "e2fsck")
    made: list[str] = []

    def make(size: int) -> tuple[Path, str]:
        image = tmp_path / f"source{len(made)}.img"
        with open(image, "wb") as f:
            f.truncate(size)
        dev = attach_loop(image)
        made.append(dev)
        return image, dev

    yield make
    for dev in made:
        detach_loop(dev)


@pytest.fixture
def tracefs() -> Path:
    need_root_tools()
    from dr_agent.capture.errors import CaptureUnavailable
    from dr_agent.capture.tracking import find_tracefs

    try:
        return find_tracefs()
    except CaptureUnavailable as err:
        pytest.skip(str(err))
