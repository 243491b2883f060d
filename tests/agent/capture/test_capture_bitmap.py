"""The dirty bitmap against a plain set of block numbers, on random operations."""

from __future__ import annotations

import itertools

import pytest
from dr_agent.capture.bitmap import DirtyBitmap
from hypothesis import given, settings
from hypothesis import strategies as st

BS = 4096
SIZE = 300 * BS + 1000  # not a multiple of the block size: the last block is short
BLOCKS = 301

ranges = st.tuples(st.integers(0, SIZE + BS), st.integers(0, 40 * BS))


def model_blocks(offset: int, length: int) -> set[int]:
    if length <= 0 or offset >= SIZE:
        return set()
    return set(range(offset // BS, (min(offset + length, SIZE) - 1) // BS + 1))


def blocks_of(bitmap: DirtyBitmap) -> set[int]:
    out: set[int] = set()
    for offset, length in bitmap.ranges():
        assert offset % BS == 0
        assert offset + length <= SIZE
        out |= set(range(offset // BS, -(-(offset + length) // BS)))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), ranges), max_size=30))
def test_marks_and_clears_match_a_set(ops: list[tuple[bool, tuple[int, int]]]) -> None:
    bitmap = DirtyBitmap(SIZE, block_size=BS)
    model: set[int] = set()
    for is_mark, (offset, length) in ops:
        if is_mark:
            bitmap.mark(offset, length)
            model |= model_blocks(offset, length)
        else:
            bitmap.clear(offset, length)
            end = offset + length
            stop = BLOCKS if end >= SIZE else end // BS
            model -= set(range(-(-offset // BS), stop))
    assert blocks_of(bitmap) == model
    assert len(bitmap) == len(model)
    assert bitmap.dirty_bytes == len(model) * BS


@settings(max_examples=100, deadline=None)
@given(st.lists(ranges, max_size=20), st.integers(1, 9))
def test_ranges_are_coalesced_and_split_at_max_length(marks: list[tuple[int, int]], max_blocks: int) -> None:
    bitmap = DirtyBitmap(SIZE, block_size=BS)
    for offset, length in marks:
        bitmap.mark(offset, length)
    whole = bitmap.ranges()
    for (a, la), (b, _) in itertools.pairwise(whole):
        assert a + la < b, "adjacent dirty runs must be one range"
    split = bitmap.ranges(max_length=max_blocks * BS)
    assert all(length <= max_blocks * BS for _, length in split)
    assert blocks_of(bitmap) == {o // BS + i for o, n in split for i in range(-(-n // BS))}


def test_take_moves_everything_and_merge_puts_it_back() -> None:
    bitmap = DirtyBitmap(SIZE, block_size=BS)
    bitmap.mark(0, 3 * BS)
    bitmap.mark(SIZE - 1, 1)
    taken = bitmap.take()
    assert len(bitmap) == 0 and bitmap.ranges() == []
    assert taken.ranges() == [(0, 3 * BS), (300 * BS, 1000)]
    bitmap.mark(BS, BS)
    bitmap.merge(taken)
    assert bitmap.ranges() == [(0, 3 * BS), (300 * BS, 1000)]
    assert len(bitmap) == 4


def test_block_size_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        DirtyBitmap(SIZE, block_size=3000)
