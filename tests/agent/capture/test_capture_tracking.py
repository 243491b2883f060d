"""Tracking mode on a real ext4 on a loop device: block tracepoints, freeze, dirty blocks, resync."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest
from capture_helpers import MiB, differing_blocks, e2fsck_clean, first_difference, is_frozen, mkfs_ext4, run
from dr_agent.capture import _linux
from dr_agent.capture.errors import TrackingLost
from dr_agent.capture.filetarget import FileTarget, ReceivedBookmark
from dr_agent.capture.tracking import TrackingAgent

pytestmark = pytest.mark.root
BS = 4096
SIZE = 64 * MiB


def files(root: Path, seed: int, count: int = 12) -> None:
    rng = random.Random(seed)
    for i in range(count):
        (root / f"s{seed}-{i}.bin").write_bytes(rng.randbytes(rng.randint(1, 200) * 1024))
    os.sync()


def checking_target(replica: Path, dev: str, mismatches: list[str]) -> FileTarget:
    def on_bookmark(mark: ReceivedBookmark) -> None:  # the file system is frozen: the device is still
        diff = first_difference(dev, replica)
        if diff is not None:
            mismatches.append(f"{mark.bookmark_id}: first difference at {diff}")
    return FileTarget(replica, SIZE, on_bookmark=on_bookmark)


@pytest.fixture
def ext4(loop_file, tracefs, tmp_path: Path):  # type: ignore[no-untyped-def]
    _, dev = loop_file(SIZE)
    mkfs_ext4(dev)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", dev, str(mnt))
    yield dev, mnt
    if os.path.ismount(mnt):
        run("umount", str(mnt))


def test_points_carry_exactly_the_written_blocks(ext4, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dev, mnt = ext4
    replica = tmp_path / "replica.img"
    mismatches: list[str] = []
    with checking_target(replica, dev, mismatches) as target, \
            TrackingAgent(dev, [mnt], target, target) as agent:
        first = agent.start()
        assert first.bytes_sent > 0  # the new replica differed everywhere mkfs wrote
        files(mnt, seed=1)
        point = agent.consistency_point("crash")
        assert 0 < point.bytes_sent < SIZE // 2
        with open(mnt / "s1-3.bin", "r+b") as f:  # an overwrite in place
            f.seek(4096)
            f.write(b"z" * 10_000)
        (mnt / "s1-5.bin").unlink()
        log = tmp_path / "scripts.log"
        app = agent.consistency_point("app", pre_scripts=[f"echo pre >> {log}"],
                                      post_scripts=[f"echo post >> {log}"])
        assert not is_frozen(mnt)
        assert log.read_text() == "pre\npost\n"
        assert [(m.bookmark_id, m.kind) for m in target.received.bookmarks] == \
            [(point.bookmark_id, "crash"), (app.bookmark_id, "app")]
    assert mismatches == []
    e2fsck_clean(replica)  # the replica as of the application-consistent point: clean


def test_agent_restart_loses_tracking_and_resync_sends_only_what_differs(ext4, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dev, mnt = ext4
    replica = tmp_path / "replica.img"
    mismatches: list[str] = []
    with checking_target(replica, dev, mismatches) as target:
        with TrackingAgent(dev, [mnt], target, target) as agent:
            agent.start()
            files(mnt, seed=2)
            agent.consistency_point()
        files(mnt, seed=3, count=5)  # written while no agent runs: nobody tracked these
        with open(mnt / "s2-0.bin", "r+b") as f:
            f.write(b"changed")
        os.sync()
        before = target.received.bytes_written + target.received.bytes_discarded
        _linux.freeze(mnt)  # hold the file system still to count the differing blocks exactly
        try:
            expected = differing_blocks(dev, replica, BS)
            with TrackingAgent(dev, [mnt], target, target) as agent:
                assert agent.tracker.lost is None or "restart" in agent.tracker.lost
                result = agent.start()  # tracking is lost at start: a resync, not a full copy
                sent = target.received.bytes_written + target.received.bytes_discarded - before
                assert first_difference(dev, replica) is None
                _linux.thaw(mnt)  # (ext4 rewrites its superblock on thaw: compared before)
                assert 0 < expected < SIZE // BS // 4
                assert result.blocks_differing == expected
                assert sent == result.bytes_sent == expected * BS
                files(mnt, seed=4, count=3)
                agent.consistency_point()
        finally:
            if is_frozen(mnt):
                _linux.thaw(mnt)
    assert mismatches == []


def test_a_trace_buffer_overrun_loses_tracking_until_a_resync(ext4, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dev, mnt = ext4
    replica = tmp_path / "replica.img"
    mismatches: list[str] = []
    with checking_target(replica, dev, mismatches) as target, \
            TrackingAgent(dev, [mnt], target, target, buffer_kb=4) as agent:
        agent.start(background=False)  # nothing drains the 4 KiB buffer until the next point
        subprocess.run(["dd", "if=/dev/urandom", f"of={mnt}/burst.bin", "bs=4k", "count=3000", "oflag=direct"],
                       check=True, capture_output=True, timeout=60)
        with pytest.raises(TrackingLost, match="dropped events"):
            agent.consistency_point()
        assert not is_frozen(mnt)
        assert target.received.bookmarks == []
        agent.resync()
        assert agent.tracker.lost is None
        point = agent.consistency_point()
        assert [m.bookmark_id for m in target.received.bookmarks] == [point.bookmark_id]
    assert mismatches == []
    digest = hashlib.sha256((mnt / "burst.bin").read_bytes()).hexdigest()
    run("umount", str(mnt))
    check = tmp_path / "check"
    check.mkdir()
    run("mount", "-o", "loop,ro", str(replica), str(check))
    try:
        assert hashlib.sha256((check / "burst.bin").read_bytes()).hexdigest() == digest
    finally:
        run("umount", str(check))
