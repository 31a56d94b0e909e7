"""The KLL quantile sketch (`transforms.sketches`): rank error, merges, exact extremes and count,
bounded size, determinism. Checked against the exact ranks of the data (numpy)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from transforms.sketches import KllSketch, k_for

EPSILON = 0.01


def rank_error(values: np.ndarray, boundaries: np.ndarray) -> float:
    """Largest distance of a boundary's rank range in `values` from its target rank."""
    ordered = np.sort(values)
    n = len(values)
    low = np.searchsorted(ordered, boundaries, "left") / n
    high = np.searchsorted(ordered, boundaries, "right") / n
    targets = np.linspace(0.0, 1.0, len(boundaries))
    return float(np.maximum(0.0, np.maximum(low - targets, targets - high)).max())


def sketch_of(values: np.ndarray, parts: int, rng: np.random.Generator) -> KllSketch:
    """`values` added in runs of 256 into `parts` sketches, merged in a random order."""
    sketches = []
    for chunk in np.array_split(values, parts):
        sketch = KllSketch(k_for(EPSILON))
        for start in range(0, len(chunk), 256):
            sketch.add_array(chunk[start : start + 256])
        sketches.append(sketch)
    merged = KllSketch(k_for(EPSILON))
    for i in rng.permutation(len(sketches)):
        merged.Merge(sketches[i])
    return merged


@pytest.mark.parametrize("n", [5_000, 200_000])
@pytest.mark.parametrize("distribution", ["normal", "cauchy", "few values", "sorted"])
def test_boundaries_are_within_the_rank_error_after_random_merges(n, distribution):
    rng = np.random.default_rng(n)
    values = {
        "normal": rng.standard_normal(n),
        "cauchy": rng.standard_cauchy(n),
        "few values": rng.integers(0, 5, n).astype(np.float64),
        "sorted": np.sort(rng.standard_normal(n)),  # adversarial order for a stream
    }[distribution]
    sketch = sketch_of(values, parts=37, rng=rng)
    for buckets in (10, 20):
        boundaries = sketch.quantiles(buckets)
        assert len(boundaries) == buckets + 1
        assert rank_error(values, boundaries) <= EPSILON
    assert sketch.count == n
    assert (sketch.minimum, sketch.maximum) == (values.min(), values.max())
    weights = sum(len(items) << level for level, items in enumerate(sketch.levels))
    assert weights == n  # compaction keeps the total weight exact


def test_size_is_bounded_whatever_the_count():
    """Capacities shrink by 2/3 per level below the top: at most 3k items plus 2 per level."""
    rng = np.random.default_rng(0)
    k = k_for(EPSILON)
    for n in (10_000, 100_000, 1_000_000):
        sketch = KllSketch(k)
        values = rng.standard_normal(n)
        for start in range(0, n, 4096):
            sketch.add_array(values[start : start + 4096])
        items = sum(len(level) for level in sketch.levels)
        assert items <= 3 * k + 2 * len(sketch.levels)
        assert len(pickle.dumps(sketch)) < 8 * (3 * k + 2 * len(sketch.levels)) + 4096
    # ~25 KB at most for epsilon 0.01; tfx-bsl's QuantilesSketch: ~180 KB whatever the count.
    assert 8 * 3 * k <= 25_000


def test_small_inputs_are_exact_and_merge_leaves_the_other_unchanged():
    a, b = KllSketch(16), KllSketch(16)
    a.add_array(np.array([3.0, 1.0, 2.0]))
    b.add_array(np.array([5.0, 4.0]))
    before = pickle.dumps(b)
    a.Merge(b)
    assert pickle.dumps(b) == before
    assert a.quantiles(4).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert a.GetQuantiles(4).to_pylist() == [[1.0, 2.0, 3.0, 4.0, 5.0]]
    empty = KllSketch(16)
    assert len(empty.quantiles(4)) == 0 and empty.GetQuantiles(4).to_pylist() == []
    a.Merge(empty)
    assert a.count == 5


def test_the_same_inputs_give_the_same_sketch():
    values = np.random.default_rng(3).standard_normal(50_000)
    first, second = KllSketch(200), KllSketch(200)
    for sketch in (first, second):
        for start in range(0, len(values), 1000):
            sketch.add_array(values[start : start + 1000])
    assert pickle.dumps(first) == pickle.dumps(second)
    assert pickle.loads(pickle.dumps(first)).quantiles(10).tolist() == first.quantiles(10).tolist()
