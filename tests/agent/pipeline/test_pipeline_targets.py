"""Replica targets on their own: commits that return at once and finish in order, the applied
sequence's two slots, and Put Page calls in flight across groups (against Azurite)."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from dr_agent.errors import TargetError
from dr_agent.pageblob import PageBlobTarget
from dr_agent.target import SECTOR, FileTarget, read_seq_slots
from pipeline_harness import MIB


class Done:
    """Collects `commit_later` results in the order they arrive."""

    def __init__(self) -> None:
        self.results: list[tuple[int, BaseException | None]] = []
        self.lock = threading.Lock()

    def __call__(self, seq: int) -> object:
        def done(err: BaseException | None) -> None:
            with self.lock:
                self.results.append((seq, err))
        return done


def test_file_commits_finish_in_order_and_survive_a_reopen(tmp_path: Path) -> None:
    rng = random.Random(3)
    shadow = bytearray(4 * MIB)
    target = FileTarget(tmp_path / "d.img", 4 * MIB)
    done = Done()
    for seq in range(1, 41):
        off = rng.randrange(0, 4 * MIB // SECTOR - 16) * SECTOR
        data = rng.randbytes(rng.randrange(1, 16) * SECTOR)
        shadow[off:off + len(data)] = data
        target.apply([(off, memoryview(data))], [])
        target.commit_later(seq, done(seq))
    target.drain()
    assert done.results == [(seq, None) for seq in range(1, 41)]
    assert target.applied_seq() == 40
    target.close()

    again = FileTarget(tmp_path / "d.img", 4 * MIB)
    assert again.applied_seq() == 40
    assert again.read(0, 4 * MIB) == bytes(shadow)
    again.close()


def test_a_torn_sequence_slot_leaves_the_previous_one(tmp_path: Path) -> None:
    target = FileTarget(tmp_path / "d.img", MIB)
    target.apply([(0, b"a" * SECTOR)], [])
    target.commit(7)
    target.apply([(0, b"b" * SECTOR)], [])
    target.commit(8)
    target.close()
    side = tmp_path / "d.img.seq"
    raw = bytearray(side.read_bytes())
    assert read_seq_slots(bytes(raw)) == (2, 8)
    raw[2 * 0 + 20] ^= 0xFF  # generation 2 is slot 0: a torn write there
    side.write_bytes(bytes(raw))
    assert FileTarget(tmp_path / "d.img", MIB).applied_seq() == 7
    side.write_bytes(bytes(2 * SECTOR))  # nothing valid: nothing applied
    assert FileTarget(tmp_path / "d.img", MIB).applied_seq() == 0


def test_page_blob_keeps_the_order_of_overlapping_writes_in_flight(azurite: str) -> None:
    size = 8 * MIB
    target = PageBlobTarget(azurite, "targets", "order.vhd", size)
    rng = random.Random(5)
    shadow = bytearray(size)
    done = Done()
    for seq in range(1, 61):  # every write overlaps earlier ones still in flight
        off = rng.randrange(0, 64) * 64 * 1024
        data = rng.randbytes(rng.choice([64 * 1024, MIB, 5 * MIB // 2]))
        data = data[:size - off]
        shadow[off:off + len(data)] = data
        target.apply([(off, data)], [])
        if seq % 3 == 0:
            z = rng.randrange(0, 128) * 64 * 1024
            shadow[z:z + 64 * 1024] = bytes(64 * 1024)
            target.apply([], [(z, 64 * 1024)])
        target.commit_later(seq, done(seq))
    target.drain()
    assert [s for s, err in done.results] == list(range(1, 61)) and not any(e for _, e in done.results)
    assert target.read(0, size) == bytes(shadow)
    target.close()
    reopened = PageBlobTarget(azurite, "targets", "order.vhd", size)
    assert reopened.applied_seq() == 60
    reopened.close()


def test_a_failed_put_page_stops_the_sequence_until_drained(azurite: str) -> None:
    size = MIB
    target = PageBlobTarget(azurite, "targets", "fail.vhd", size)
    done = Done()
    target.apply([(0, os.urandom(SECTOR))], [])
    target.commit_later(1, done(1))
    target.apply([(size + 64 * SECTOR, os.urandom(SECTOR))], [])  # past the blob's end: Azure refuses
    target.commit_later(2, done(2))
    target.apply([(SECTOR, os.urandom(SECTOR))], [])
    target.commit_later(3, done(3))
    with pytest.raises(TargetError):
        target.drain()
    assert done.results[0] == (1, None)
    assert [s for s, _ in done.results[1:]] == [2, 3] and all(e is not None for _, e in done.results[1:])
    assert target.applied_seq() == 1  # no sequence recorded past the lost write
    target.drain()  # reported once
    target.apply([(SECTOR, b"x" * SECTOR)], [])
    target.commit(4)
    assert target.applied_seq() == 4
    target.close()
