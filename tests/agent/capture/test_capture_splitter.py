"""The FUSE write-splitter under a real ext4 on a real loop device: the replica follows exactly."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from capture_helpers import MiB, SplitDisk, e2fsck_clean, first_difference, mkfs_ext4, run
from dr_agent.capture.errors import CaptureError
from dr_agent.capture.filetarget import FileTarget
from dr_agent.capture.splitter import Splitter, loops_over

pytestmark = pytest.mark.root


def write_file(path: Path, data: bytes, *, sync: bool = True) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def workload(root: Path, seed: int) -> dict[str, str]:
    """Files, fsyncs, overwrites, a copied tree, deletes; returns sha256 of every file kept."""
    rng = random.Random(seed)
    (root / "docs").mkdir()
    for i in range(40):
        write_file(root / "docs" / f"f{i:02d}.bin", rng.randbytes(rng.randint(1, 96) * 1024), sync=i % 3 == 0)
    write_file(root / "large.bin", rng.randbytes(12 * MiB))
    with open(root / "large.bin", "r+b") as f:  # overwrites in place, fsynced
        for _ in range(20):
            f.seek(rng.randrange(0, 12 * MiB - 8192))
            f.write(rng.randbytes(rng.randint(1, 8192)))
        os.fsync(f.fileno())
    shutil.copytree(root / "docs", root / "docs-copy")
    for i in range(0, 40, 2):  # deletes: online discard punches the freed blocks
        (root / "docs" / f"f{i:02d}.bin").unlink()
    (root / "large.bin").rename(root / "large-renamed.bin")
    os.sync()
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "lost+found" not in p.parts}


def test_ext4_through_the_splitter_replica_identical_at_every_barrier(split_disk: Callable[..., SplitDisk],
                                                                     tmp_path: Path) -> None:
    disk: SplitDisk = split_disk(96 * MiB)
    mkfs_ext4(disk.dev)  # mkfs discards the whole device first: a discard through the splitter
    assert disk.target.received.discards >= 1
    disk.mount("discard")
    expected = workload(disk.mnt, seed=6)
    run("fstrim", str(disk.mnt))
    disk.umount()

    stats = disk.splitter.stats()
    received = disk.target.received
    assert disk.checked.mismatches == []
    assert disk.checked.barriers >= 10, "ext4 with fsync must have sent barriers"
    assert (stats.writes, stats.bytes_written) == (received.writes, received.bytes_written)
    assert (stats.discards, stats.bytes_discarded) == (received.discards, received.bytes_discarded)
    assert first_difference(disk.backing, disk.replica) is None
    e2fsck_clean(disk.replica)

    check = tmp_path / "check"  # the replica mounts and holds every file, byte for byte
    check.mkdir()
    run("mount", "-o", "loop,ro", str(disk.replica), str(check))
    try:
        assert file_hashes(check) == expected
    finally:
        run("umount", str(check))


def test_discard_and_zeroout_reach_the_replica_as_holes(split_disk: Callable[..., SplitDisk]) -> None:
    disk: SplitDisk = split_disk(32 * MiB, check_barriers=False)
    with open(disk.dev, "r+b", buffering=0) as dev:
        dev.write(os.urandom(32 * MiB))
        os.fsync(dev.fileno())
    assert first_difference(disk.backing, disk.replica) is None
    before = disk.target.received.bytes_discarded
    run("blkdiscard", "-o", str(4 * MiB), "-l", str(2 * MiB), disk.dev)
    run("blkdiscard", "-z", "-o", str(10 * MiB), "-l", str(1 * MiB), disk.dev)
    with open(disk.dev, "r+b", buffering=0) as dev:
        os.fsync(dev.fileno())
    assert disk.target.received.bytes_discarded - before == 3 * MiB
    data = disk.replica.read_bytes()
    assert data[4 * MiB:6 * MiB] == bytes(2 * MiB)
    assert data[10 * MiB:11 * MiB] == bytes(MiB)
    assert first_difference(disk.backing, disk.replica) is None
    with open(disk.replica, "rb") as f:  # the discarded range is a hole in the replica
        assert os.lseek(f.fileno(), 4 * MiB, os.SEEK_HOLE) == 4 * MiB
    with open(disk.backing, "rb") as f:  # and in the protected disk's backing file
        assert os.lseek(f.fileno(), 4 * MiB, os.SEEK_HOLE) == 4 * MiB


def test_crash_bookmark_falls_after_every_earlier_write(split_disk: Callable[..., SplitDisk]) -> None:
    disk: SplitDisk = split_disk(16 * MiB)
    with open(disk.dev, "r+b", buffering=0) as dev:
        dev.write(b"a" * MiB)
        os.fsync(dev.fileno())
        first = disk.splitter.bookmark("crash")
        dev.seek(8 * MiB)
        dev.write(b"b" * MiB)
        os.fsync(dev.fileno())
        second = disk.splitter.bookmark("crash", id="fixed-id")
    marks = disk.target.received.bookmarks
    assert [m.bookmark_id for m in marks] == [first, "fixed-id"] and second == "fixed-id"
    assert marks[0].sequence < marks[1].sequence <= disk.target.received.writes
    assert disk.checked.mismatches == []


def test_another_threads_bookmark_waits_for_the_coordinators_resume(split_disk: Callable[..., SplitDisk]) -> None:
    """While the coordinator client holds the disk, the agent's own crash point must not reach the
    sink beside the group mark: it waits for the resume and lands after the group point."""
    disk: SplitDisk = split_disk(16 * MiB)
    disk.splitter.pause()
    own: list[str] = []
    thread = threading.Thread(target=lambda: own.append(disk.splitter.bookmark("crash", id="agent-own")))
    thread.start()
    thread.join(timeout=1.0)
    assert thread.is_alive(), "a crash point from another thread went through a held disk"
    disk.splitter.mark("group-point", "farm")
    disk.splitter.resume()
    thread.join(timeout=10)
    assert not thread.is_alive() and own == ["agent-own"]
    marks = disk.target.received.bookmarks
    assert [m.bookmark_id for m in marks] == ["group-point", "agent-own"]


class FlakySink(FileTarget):
    """A replica whose link goes down on demand: the real file target with injected failures."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.down = threading.Event()

    def write(self, offset: int, data: bytes) -> None:
        if self.down.is_set():
            raise ConnectionError("process server unreachable")
        super().write(offset, data)

    def flush(self) -> None:
        if self.down.is_set():
            raise ConnectionError("process server unreachable")
        super().flush()


def test_sink_failure_falls_back_to_bitmap_and_resumes(tmp_path: Path) -> None:
    from capture_helpers import need_root_tools

    need_root_tools(fuse=True)
    size = 16 * MiB
    backing, replica, fuse_dir = tmp_path / "b.img", tmp_path / "r.img", tmp_path / "fuse"
    fuse_dir.mkdir()
    backing.write_bytes(bytes(size))
    sink = FlakySink(replica, size)
    with Splitter(backing, fuse_dir, sink) as sp:
        fd = os.open(sp.path, os.O_RDWR)
        try:
            os.pwrite(fd, b"1" * 65536, 0)
            sink.down.set()
            os.pwrite(fd, b"2" * 65536, 4 * MiB)  # the workload's write still succeeds
            os.pwrite(fd, b"3" * 100, 9 * MiB + 17)
            os.fsync(fd)
            assert sp.mode == "bitmap"
            assert sp.stats().dirty_bytes == 65536 + 4096
            with pytest.raises(CaptureError, match="bitmap mode"):
                sp.bookmark("crash")
            sink.down.clear()
            assert sp.resume_data_mode() == 65536 + 4096
            assert sp.mode == "data"
            sp.bookmark("crash")
        finally:
            os.close(fd)
    assert backing.read_bytes() == replica.read_bytes()
    sink.close()


def test_exit_detaches_a_forgotten_loop_device(tmp_path: Path) -> None:
    from capture_helpers import need_root_tools
    from dr_agent.capture.splitter import attach_loop

    need_root_tools(fuse=True)
    backing, fuse_dir = tmp_path / "b.img", tmp_path / "fuse"
    fuse_dir.mkdir()
    backing.write_bytes(bytes(MiB))
    with FileTarget(tmp_path / "r.img", MiB) as target, Splitter(backing, fuse_dir, target) as sp:
        attach_loop(sp.path)
        path = sp.path
    assert not os.path.ismount(fuse_dir)
    assert loops_over(path) == []


def test_refuses_a_mount_point_in_use(tmp_path: Path) -> None:
    from capture_helpers import need_root_tools
    from dr_agent.capture.errors import DeviceError

    need_root_tools(fuse=True)
    backing, fuse_dir = tmp_path / "b.img", tmp_path / "fuse"
    fuse_dir.mkdir()
    backing.write_bytes(bytes(MiB))
    with FileTarget(tmp_path / "r.img", MiB) as target, Splitter(backing, fuse_dir, target):
        with pytest.raises(DeviceError, match="already a mount point"):
            Splitter(backing, fuse_dir, target).__enter__()
    assert subprocess.run(["mountpoint", "-q", str(fuse_dir)]).returncode != 0


def test_initial_sync_of_a_disk_in_use_through_the_splitter(split_disk: Callable[..., SplitDisk],
                                                           tmp_path: Path) -> None:
    """An existing disk gets protected: the splitter forwards new writes while the initial sync
    copies the rest; once both are done the replica equals the disk."""
    from dr_agent.capture.initial_sync import initial_sync

    disk: SplitDisk = split_disk(64 * MiB, check_barriers=False)
    mkfs_ext4(disk.dev)
    disk.mount("discard")
    workload(disk.mnt, seed=7)  # data already on the disk before protection starts ...
    disk.umount()
    with open(disk.replica, "r+b") as f:  # ... and a new, empty replica
        f.truncate(0)
        f.truncate(64 * MiB)
    disk.mount("discard")
    stop = threading.Event()

    def keep_writing() -> None:  # the workload does not stop for the sync
        rng = random.Random(8)
        n = 0
        while not stop.is_set():
            n += 1
            write_file(disk.mnt / f"live{n % 7}.bin", rng.randbytes(rng.randint(1, 256) * 1024))
            if n % 5 == 0:
                (disk.mnt / f"live{(n + 3) % 7}.bin").unlink(missing_ok=True)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        result = initial_sync(disk.backing, disk.target, checkpoint=tmp_path / "sync.ckpt", target="disk",
                              chunk=MiB, checkpoint_every=8 * MiB, exclusive=disk.splitter.exclusive)
    finally:
        stop.set()
        writer.join(30)
    disk.umount()
    assert result.complete and result.bytes_sent > 0
    assert result.bytes_skipped_holes + result.bytes_skipped_zero > 0
    assert first_difference(disk.backing, disk.replica) is None
    e2fsck_clean(disk.replica)


SPLITTER_PROCESS = """
import sys, time
from pathlib import Path
from dr_agent.capture.filetarget import FileTarget
from dr_agent.capture.splitter import Splitter
base = Path(sys.argv[1])
with FileTarget(base / "r.img", 1 << 20) as target, Splitter(base / "b.img", base / "fuse", target):
    print("mounted", flush=True)
    time.sleep(60)
"""


def test_sigterm_still_ends_an_agent_process_with_a_splitter(tmp_path: Path) -> None:
    """libfuse would catch SIGTERM and only end its session; the process must terminate as usual."""
    import signal
    import sys

    from capture_helpers import need_root_tools

    need_root_tools(fuse=True)
    (tmp_path / "fuse").mkdir()
    (tmp_path / "b.img").write_bytes(bytes(MiB))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SPLITTER_PROCESS, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "mounted"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["umount", "-l", str(tmp_path / "fuse")], capture_output=True, check=False)
