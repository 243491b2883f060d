"""First-fit bin packing in O(log bins) per item, shared by every sizing rule.

Every server and account of the plan is a bin: a configuration server holds volumes, a process
server daily churn, a master target disks, a storage account IOPS. `FirstFit` keeps the free room
of each bin in a max segment tree so that "the first bin, in opening order, with room for this
item" costs O(log n) instead of a scan: the 30,000-disk benchmark estate opens thousands of bins.

Sorting items largest first before placing them (first-fit decreasing) uses at most
11/9·OPT + 6/9 bins (Dósa, 2007), and never fewer than the volume lower bound ceil(sum/capacity),
since no bin is ever filled above its capacity.
"""

from __future__ import annotations

import math

EPSILON = 1e-9  # tolerance of float sums (IOPS and GB are floats)
_CLOSED = -math.inf


class FirstFit:
    """Bins in the order they were opened, each with a capacity and what it already holds."""

    def __init__(self) -> None:
        self._size = 1
        self._tree: list[float] = [_CLOSED, _CLOSED]
        self.capacity: list[float] = []
        self.used: list[float] = []
        self._closed: list[bool] = []

    def __len__(self) -> int:
        return len(self.capacity)

    def open(self, capacity: float) -> int:
        """Open a new bin (it goes last); returns its index."""
        index = len(self.capacity)
        if index == self._size:
            self._grow()
        self.capacity.append(capacity)
        self.used.append(0.0)
        self._closed.append(False)
        self._set(index, capacity)
        return index

    def first_with_room(self, need: float) -> int | None:
        """The lowest-index open bin whose free room is at least `need`, or None."""
        tree = self._tree
        if tree[1] < need - EPSILON:
            return None
        node = 1
        while node < self._size:
            node = 2 * node if tree[2 * node] >= need - EPSILON else 2 * node + 1
        return node - self._size

    def add(self, index: int, amount: float) -> None:
        self.used[index] += amount
        self._refresh(index)

    def close(self, index: int) -> None:
        """Take no more items in this bin (e.g. a process server at its machine limit)."""
        self._closed[index] = True
        self._refresh(index)

    def free(self, index: int) -> float:
        return self.capacity[index] - self.used[index]

    def _refresh(self, index: int) -> None:
        self._set(index, _CLOSED if self._closed[index] else self.free(index))

    def _set(self, index: int, value: float) -> None:
        tree = self._tree
        node = self._size + index
        tree[node] = value
        node //= 2
        while node:
            left, right = tree[2 * node], tree[2 * node + 1]
            best = left if left >= right else right
            if tree[node] == best:
                break  # the ancestors above are unchanged too
            tree[node] = best
            node //= 2

    def _grow(self) -> None:
        count = len(self.capacity)
        self._size *= 2
        tree = [_CLOSED] * (2 * self._size)
        for index in range(count):
            tree[self._size + index] = _CLOSED if self._closed[index] else self.free(index)
        for node in range(self._size - 1, 0, -1):
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
        self._tree = tree


def r3(value: float) -> float:
    """Round for output: 3 decimals, and -0.0 never appears."""
    return round(value, 3) + 0.0
