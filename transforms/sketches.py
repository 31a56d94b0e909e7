"""A small mergeable quantile sketch (KLL), numpy only: bounded memory whatever the count.

The statistics keep one quantile sketch per slice x replicate x column, thousands per run; a
tfx-bsl `QuantilesSketch` at epsilon 0.01 is ~180 KB compacted whatever the count (measured in
`benchmarks/RESULTS.md`), which made the statistics' memory grow to GBs. This is the KLL sketch
of Karnin, Lang and Liberty ("Optimal Quantile Approximation in Streams", FOCS 2016): levels of
items, level h holding items of weight 2^h; a level over its capacity is sorted and every other
item moves up a level (alternating which half, so errors cancel), and capacities shrink
geometrically below the top level (k, 2k/3, 4k/9, ... at least 2). It holds at most ~3k
floats (12 KB with `k_for(0.01)`; measured 3-5 KB pickled for 20k-2M values). Merging
concatenates the levels and compacts.

Deterministic: the same inputs in the same order give the same sketch (no random coins), so runs
are reproducible; different merge orders give different sketches, each within the error bound.
The minimum and maximum are exact, and the total weight equals the count exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

__all__ = ["KllSketch", "k_for"]

_SHRINK = 2.0 / 3.0


def k_for(epsilon: float) -> int:
    """The top-level capacity for rank errors within `epsilon`: 5 / epsilon. Measured worst
    rank error of 10-, 20- and 100-bucket boundaries over 20k-2M normal, Cauchy, lognormal and
    sorted values merged from 50 parts in random order: 0.0055 at epsilon 0.01 (k 500; 0.0026
    with k 1,000, at twice the memory); `tests/test_sketches.py` checks <= epsilon."""
    return max(16, math.ceil(5.0 / epsilon))


class KllSketch:
    """Mergeable quantiles of float64 values (NaNs are the caller's to remove).

    The interface of the parts of tfx-bsl's `QuantilesSketch` that the statistics use:
    `AddValues`, `Merge` (leaves `other` unchanged), `Compact`, `GetQuantiles`.
    """

    __slots__ = ("count", "k", "levels", "maximum", "minimum", "parity")

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.levels: list[np.ndarray] = [np.zeros(0, np.float64)]
        self.parity: list[int] = [0]
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _capacity(self, level: int) -> int:
        depth = len(self.levels) - 1 - level
        return max(2, math.ceil(self.k * _SHRINK**depth))

    def add_array(self, values: np.ndarray) -> None:
        """Adds float64 values (no NaNs)."""
        if not len(values):
            return
        self.count += len(values)
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        self.levels[0] = np.concatenate([self.levels[0], values.astype(np.float64, copy=False)])
        self._compress()

    def AddValues(self, values: pa.Array) -> None:  # noqa: N802 - QuantilesSketch's interface
        self.add_array(values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))

    def _compact_level(self, level: int) -> None:
        if level + 1 == len(self.levels):
            self.levels.append(np.zeros(0, np.float64))
            self.parity.append(0)
        items = np.sort(self.levels[level])
        keep = items[-1:] if len(items) % 2 else items[:0]  # an odd item stays
        even = items[: len(items) - len(keep)]
        promoted = even[self.parity[level] :: 2]
        self.parity[level] ^= 1
        self.levels[level] = keep.copy()
        self.levels[level + 1] = np.concatenate([self.levels[level + 1], promoted])

    def _compress(self) -> None:
        while True:
            for level, items in enumerate(self.levels):
                if len(items) > self._capacity(level):
                    self._compact_level(level)
                    break
            else:
                return

    def Merge(self, other: KllSketch) -> None:  # noqa: N802
        if not other.count:
            return
        while len(self.levels) < len(other.levels):
            self.levels.append(np.zeros(0, np.float64))
            self.parity.append(0)
        for level, items in enumerate(other.levels):
            if len(items):
                self.levels[level] = np.concatenate([self.levels[level], items])
        self.count += other.count
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self._compress()

    def Compact(self) -> None:  # noqa: N802
        """Levels are compacted as they fill: nothing to do."""

    def quantiles(self, buckets: int) -> np.ndarray:
        """`buckets + 1` boundaries: the minimum, the inverted-CDF quantiles, the maximum."""
        if not self.count:
            return np.zeros(0, np.float64)
        items = np.concatenate(self.levels)
        weights = np.concatenate(
            [np.full(len(items), 1 << level, np.int64) for level, items in enumerate(self.levels)]
        )
        order = np.argsort(items, kind="stable")
        items, cumulative = items[order], np.cumsum(weights[order])
        targets = np.linspace(0.0, 1.0, buckets + 1)[1:-1] * cumulative[-1]
        inner = items[np.minimum(np.searchsorted(cumulative, targets, "left"), len(items) - 1)]
        return np.concatenate([[self.minimum], inner, [self.maximum]])

    def GetQuantiles(self, buckets: int) -> pa.Array:  # noqa: N802
        """As `QuantilesSketch.GetQuantiles`: one row of `buckets + 1` boundaries."""
        if not self.count:
            return pa.array([], pa.list_(pa.float64()))
        return pa.array([self.quantiles(buckets).tolist()], pa.list_(pa.float64()))
