"""Helpers of the capture tests (imported by name: conftest modules are not importable reliably)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dr_agent.capture import _linux
from dr_agent.capture.filetarget import FileTarget, ReceivedBookmark
from dr_agent.capture.splitter import Splitter

from tests.conftest import require_root

MiB = 1 << 20


def need_root_tools(*tools: str, fuse: bool = False) -> None:
    require_root(*tools, devices=("/dev/fuse", "/dev/loop-control") if fuse else ("/dev/loop-control",))


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def mkfs_ext4(dev: str) -> None:
    # no lazy init: the kernel would otherwise keep writing inode tables in the background
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)


def e2fsck_clean(image: Path) -> None:
    proc = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"e2fsck -fn {image} found problems:\n{proc.stdout}{proc.stderr}"


def first_difference(a: Path | str, b: Path | str, *, chunk: int = 4 * MiB) -> int | None:
    """Offset of the first differing byte of two equally sized disks or images, or None."""
    with _linux.DiskReader(a) as ra, _linux.DiskReader(b) as rb:
        assert ra.size == rb.size, f"{a} is {ra.size} bytes, {b} is {rb.size}"
        for pos in range(0, ra.size, chunk):
            x, y = ra.read(pos, chunk), rb.read(pos, chunk)
            if x != y:
                return pos + next(i for i in range(len(x)) if x[i] != y[i])
    return None


def differing_blocks(a: Path | str, b: Path | str, block_size: int = 4096) -> int:
    count = 0
    with _linux.DiskReader(a) as ra, _linux.DiskReader(b) as rb:
        for pos in range(0, ra.size, 4 * MiB):
            x, y = ra.read(pos, 4 * MiB), rb.read(pos, 4 * MiB)
            count += sum(x[i:i + block_size] != y[i:i + block_size] for i in range(0, len(x), block_size))
    return count


def is_frozen(mount_point: Path) -> bool:
    """FIFREEZE fails with EBUSY on a frozen file system; a successful probe is undone at once."""
    try:
        _linux.freeze(mount_point)
    except OSError:
        return True
    _linux.thaw(mount_point)
    return False


@dataclass
class Checked:
    """What the barrier/bookmark hooks verified."""

    barriers: int = 0
    bookmarks: list[ReceivedBookmark] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    snapshots: dict[str, Path] = field(default_factory=dict)


@dataclass
class SplitDisk:
    """A backing file behind the splitter, a replica FileTarget, a loop device over the FUSE file."""

    backing: Path
    replica: Path
    target: FileTarget
    splitter: Splitter
    dev: str
    mnt: Path
    checked: Checked
    snapshot_bookmarks: bool = False

    def mount(self, *options: str) -> None:
        run("mount", *(["-o", ",".join(options)] if options else []), self.dev, str(self.mnt))

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            run("umount", str(self.mnt))


