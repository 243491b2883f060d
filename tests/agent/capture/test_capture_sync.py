"""Resync (hash compare, only differing blocks) and initial sync (zeros/holes skipped, resumable)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from capture_helpers import MiB, differing_blocks, first_difference
from dr_agent.capture.errors import CaptureError, CheckpointMismatch
from dr_agent.capture.filetarget import FileTarget
from dr_agent.capture.initial_sync import initial_sync, read_checkpoint
from dr_agent.capture.resync import resync
from hypothesis import given, settings
from hypothesis import strategies as st

BS = 4096


def make_image(path: Path, size: int, *, seed: int) -> int:
    """A sparse image: random data, explicit zero blocks, holes. Returns its non-zero byte count."""
    rng = random.Random(seed)
    nonzero = 0
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            kind = rng.choice(("data", "data", "zeros", "hole"))
            length = min(rng.randint(1, 64) * BS, size - pos)
            if kind == "data":
                f.seek(pos)
                f.write(rng.randbytes(length))
                nonzero += length
            elif kind == "zeros":  # allocated, but zeros: read, never sent
                f.seek(pos)
                f.write(bytes(length))
            pos += length
    return nonzero


def test_resync_sends_only_the_blocks_that_differ(tmp_path: Path) -> None:
    size = 24 * MiB + 3 * 512  # a last block shorter than the block size
    source, replica = tmp_path / "source.img", tmp_path / "replica.img"
    make_image(source, size, seed=1)
    with open(source, "rb") as f, open(replica, "wb") as out:  # an identical replica ...
        out.write(f.read())
    rng = random.Random(2)
    with open(source, "r+b") as f:  # ... then the source changes while nobody tracks it
        for _ in range(50):
            f.seek(rng.randrange(0, size - 10_000))
            f.write(rng.randbytes(rng.randint(1, 10_000)))
        f.seek(5 * MiB)
        f.write(bytes(64 * 1024))  # zeroed: may go as a discard
        f.seek(size - 100)
        f.write(b"\xff" * 100)  # the short last block
    expected = differing_blocks(source, replica, BS)
    assert expected > 50
    with FileTarget(replica, size) as target:
        result = resync(source, target, target, block_size=BS, batch_blocks=256)
        received = target.received
        sent = received.bytes_written + received.bytes_discarded
    assert result.blocks_differing == expected
    # every differing block is a full block except the short last one (1536 bytes)
    assert sent == result.bytes_sent == (expected - 1) * BS + 1536
    assert received.barriers == 1
    assert first_difference(source, replica) is None
    with FileTarget(replica, size) as target:  # a second pass finds nothing to send
        again = resync(source, target, target, block_size=BS)
        assert (again.blocks_differing, target.received.bytes_written) == (0, 0)


def test_resync_refuses_a_replica_of_another_size(tmp_path: Path) -> None:
    source, replica = tmp_path / "source.img", tmp_path / "replica.img"
    make_image(source, 4 * MiB, seed=3)
    with FileTarget(replica, 2 * MiB) as target, \
            pytest.raises(CaptureError, match="returned 512 hashes for 1024 blocks"):
        resync(source, target, target)


def test_initial_sync_skips_zeros_and_holes(tmp_path: Path) -> None:
    size = 32 * MiB
    source, replica = tmp_path / "source.img", tmp_path / "replica.img"
    nonzero = make_image(source, size, seed=4)
    seen: list[tuple[int, int]] = []
    with FileTarget(replica, size) as target:
        result = initial_sync(source, target, checkpoint=tmp_path / "sync.ckpt", target="disk0",
                              chunk=MiB, checkpoint_every=4 * MiB,
                              progress=lambda done, total: seen.append((done, total)))
        assert target.received.bytes_written == nonzero == result.bytes_sent
        assert target.received.discards == 0
    allocated = os.stat(source).st_blocks * 512
    assert result.bytes_read <= allocated < size  # holes were never read
    assert result.bytes_skipped_holes >= size - allocated - MiB
    assert result.bytes_skipped_zero > 0
    assert result.bytes_read + result.bytes_skipped_holes == size
    assert result.bytes_sent + result.bytes_skipped_zero == result.bytes_read
    assert seen[-1] == (size, size) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert first_difference(source, replica) is None
    assert read_checkpoint(tmp_path / "sync.ckpt").complete  # type: ignore[union-attr]


KILLED_SYNC = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dr_agent.capture.filetarget import FileTarget
    from dr_agent.capture.initial_sync import initial_sync

    source, replica, ckpt, size = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])

    def progress(done: int, total: int) -> None:
        print(done, flush=True)
        if done >= total // 2:
            time.sleep(3600)  # hung here until the test kills the process with SIGKILL

    with FileTarget(replica, size) as target:
        initial_sync(source, target, checkpoint=ckpt, target="disk0", chunk=1 << 20,
                     checkpoint_every=2 << 20, progress=progress)
""")


def test_initial_sync_resumes_from_its_checkpoint_after_a_kill(tmp_path: Path) -> None:
    size = 16 * MiB
    source, replica, ckpt = tmp_path / "source.img", tmp_path / "replica.img", tmp_path / "sync.ckpt"
    make_image(source, size, seed=5)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SYNC, str(source), str(replica), str(ckpt), str(size)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the sync ended early with {proc.wait()}"
            if int(line) >= size // 2:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = json.loads(ckpt.read_text())
    assert not saved["complete"] and 0 < saved["offset"] <= size // 2
    with FileTarget(replica, size) as target:
        result = initial_sync(source, target, checkpoint=ckpt, target="disk0", chunk=MiB,
                              checkpoint_every=2 * MiB)
    assert result.resumed_from == saved["offset"]
    assert result.bytes_read + result.bytes_skipped_holes == size - saved["offset"]
    assert first_difference(source, replica) is None
    with FileTarget(replica, size) as target:  # a finished sync is not redone
        again = initial_sync(source, target, checkpoint=ckpt, target="disk0", chunk=MiB,
                             checkpoint_every=2 * MiB)
        assert (again.bytes_read, target.received.writes) == (0, 0)


def test_a_checkpoint_of_another_target_is_refused(tmp_path: Path) -> None:
    source, ckpt = tmp_path / "source.img", tmp_path / "sync.ckpt"
    make_image(source, 4 * MiB, seed=6)
    with FileTarget(tmp_path / "r1.img", 4 * MiB) as target:
        initial_sync(source, target, checkpoint=ckpt, target="disk0", chunk=MiB, checkpoint_every=MiB)
    with FileTarget(tmp_path / "r2.img", 4 * MiB) as target, \
            pytest.raises(CheckpointMismatch, match="delete it to sync from the start"):
        initial_sync(source, target, checkpoint=ckpt, target="disk1", chunk=MiB, checkpoint_every=MiB)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["zero", "data", "one-byte"]), min_size=1, max_size=12), st.integers(0, BS - 1))
def test_nonzero_runs_match_a_block_by_block_scan(kinds: list[str], tail: int) -> None:
    from dr_agent.capture.initial_sync import _nonzero_runs

    rng = random.Random(len(kinds) * 7919 + tail)
    data = bytearray()
    for kind in kinds:
        block = bytearray(BS)
        if kind == "data":
            block = bytearray(rng.randbytes(BS))
        elif kind == "one-byte":
            block[rng.randrange(BS)] = 1
        data += block
    data = data[:len(data) - tail] if tail < len(data) else data
    expected: list[tuple[int, int]] = []
    for i in range(0, len(data), BS):
        if any(data[i:i + BS]):
            if expected and expected[-1][1] == i:
                expected[-1] = (expected[-1][0], min(i + BS, len(data)))
            else:
                expected.append((i, min(i + BS, len(data))))
    assert _nonzero_runs(bytes(data), BS, bytes(BS)) == expected
