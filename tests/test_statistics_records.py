"""What a run records for comparisons: histograms, input statistics, key-hash replicates."""

from __future__ import annotations

import itertools
import pickle
import zlib

import numpy as np
import pyarrow as pa
import pytest

from transforms import statistics
from transforms.statistics import (
    ALL_DATA,
    FEATURE_REPLICATES_SCHEMA,
    FEATURE_STATS_SCHEMA,
    HISTOGRAM_SCHEMA,
    INPUT_STATS_SCHEMA,
    SLICE_REPLICATES_SCHEMA,
    AttributionStatsCombineFn,
    compute_statistics,
)

N = 2000
R = 4
H = 8


def make_batch(n: int = N, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(size=n)
    amount[rng.random(n) < 0.05] = np.nan  # NaN values of an input
    amount_null = rng.random(n) < 0.05  # missing values of an input
    tokens = [list(rng.normal(size=k)) for k in rng.integers(0, 4, n)]
    color = rng.choice(["red", "green", "blue", "teal"], n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    color[rng.random(n) < 0.03] = None
    return pa.record_batch(
        {
            "key": pa.array([f"ex-{i}" for i in range(n)]),
            "target": pa.array(rng.integers(0, 2, n), pa.int64()),
            "prediction": pa.array(rng.random(n)),
            "delta": pa.array(rng.normal(scale=1e-3, size=n)),
            "attr_a": pa.array(rng.normal(size=n)),
            "attr_b": pa.array(rng.standard_cauchy(n)),
            "in_a": pa.array(amount, mask=amount_null),
            "tokens": pa.array(tokens, pa.list_(pa.float64())),
            "color": pa.array(list(color), pa.string()),
        }
    )


CONFIG = dict(
    features=["a", "b"],
    slices=[["color"]],
    slice_by_target=True,
    replicates=R,
    histogram_buckets=H,
    numeric_inputs=[("a", "in_a")],
    vector_inputs=[("tokens", "tokens")],
    categorical_inputs=[("color", "color")],
    top_values=3,
)


@pytest.fixture(scope="module", autouse=True)
def exact_quantiles():
    """Every column here stays raw values (exact quantiles): these tests compare records exactly.
    Sketched quantiles are checked in test_statistics.py and test_portability.py."""
    old, statistics.RAW_VALUES_LIMIT = statistics.RAW_VALUES_LIMIT, 1 << 20
    yield
    statistics.RAW_VALUES_LIMIT = old


@pytest.fixture(scope="module")
def batch() -> pa.RecordBatch:
    return make_batch()


@pytest.fixture(scope="module")
def stats(batch):
    return compute_statistics([batch], **CONFIG)


def replicate_of(keys: list[str]) -> np.ndarray:
    return np.array([zlib.crc32(b"replicate:" + k.encode()) % R for k in keys])


def rows(table: pa.Table, **match) -> list[dict]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in match.items())]


def col(batch: pa.RecordBatch, name: str) -> np.ndarray:
    return batch.column(name).to_numpy(zero_copy_only=False)


def test_whole_slices_do_not_depend_on_replicates(batch, stats):
    plain = compute_statistics([batch], **{**CONFIG, "replicates": 0})
    assert stats.features.schema == FEATURE_STATS_SCHEMA
    exact = ["slice_name", "slice_value", "feature", "count", "nan_count", "min", "max", "rank"]
    for name in exact:
        assert stats.features.column(name) == plain.features.column(name), name
    for name in ("total_attributions", "mean_absolute_attributions", "std", "share"):
        np.testing.assert_allclose(
            stats.features.column(name).to_numpy(),
            plain.features.column(name).to_numpy(),
            rtol=1e-12,
        )
    # Below the raw-values limit the quantiles are exact either way.
    assert stats.features.column("quantiles") == plain.features.column("quantiles")
    assert stats.slices.column("examples") == plain.slices.column("examples")
    assert plain.feature_replicates.num_rows == 0 and plain.slice_replicates.num_rows == 0


def test_replicates_partition_every_slice_by_key_hash(batch, stats):
    assert stats.feature_replicates.schema == FEATURE_REPLICATES_SCHEMA
    assert stats.slice_replicates.schema == SLICE_REPLICATES_SCHEMA
    replicate = replicate_of(batch.column("key").to_pylist())
    target = col(batch, "target")
    for whole in stats.slices.to_pylist():
        parts = rows(
            stats.slice_replicates, slice_name=whole["slice_name"], slice_value=whole["slice_value"]
        )
        assert sorted(p["replicate"] for p in parts) == list(range(R))
        assert sum(p["examples"] for p in parts) == whole["examples"]
    for r in range(R):
        mask = (replicate == r) & (target == 1)
        (row,) = rows(
            stats.feature_replicates,
            replicate=r,
            slice_name="target",
            slice_value="1",
            feature="a",
        )
        values = col(batch, "attr_a")[mask]
        assert row["count"] == mask.sum() > 0
        np.testing.assert_allclose(row["mean_attributions"], values.mean(), rtol=1e-12)
        np.testing.assert_allclose(row["std"], values.std(), rtol=1e-10)
        assert row["min"] == values.min() and row["max"] == values.max()


def test_histograms_are_exact_quantiles_of_the_values(batch, stats):
    assert stats.histograms.schema == HISTOGRAM_SCHEMA
    replicate = replicate_of(batch.column("key").to_pylist())
    probs = np.linspace(0, 1, H + 1)
    color = np.array(batch.column("color").to_pylist(), dtype=object)
    cases = [
        ("attribution", "b", col(batch, "attr_b")),
        (
            "input",
            "a",
            np.where(batch.column("in_a").is_null().to_numpy(False), np.inf, col(batch, "in_a")),
        ),
    ]
    for source, feature, values in cases:
        for r in (ALL_DATA, 2):
            mask = color == "green"
            if r != ALL_DATA:
                mask &= replicate == r
            chosen = values[mask]
            chosen = chosen[np.isfinite(chosen) | np.isnan(chosen)]  # drop missing (inf marker)
            finite = chosen[~np.isnan(chosen)]
            (row,) = rows(
                stats.histograms,
                replicate=r,
                slice_name="color",
                slice_value="green",
                feature=feature,
                source=source,
            )
            assert row["count"] == finite.size and row["nan_count"] == chosen.size - finite.size
            expected = np.quantile(finite, probs, method="inverted_cdf")
            np.testing.assert_array_equal(row["boundaries"], expected)


def test_numeric_vector_and_categorical_inputs(batch, stats):
    assert stats.inputs.schema == INPUT_STATS_SCHEMA
    amount = col(batch, "in_a")
    missing = batch.column("in_a").is_null().to_numpy(zero_copy_only=False)
    (row,) = rows(stats.inputs, replicate=ALL_DATA, slice_name="all", feature="a")
    finite = amount[~missing & ~np.isnan(amount)]
    assert row["kind"] == "numeric" and row["examples"] == N
    assert row["missing"] == missing.sum() > 0
    assert row["nan_count"] == int(np.isnan(amount[~missing]).sum()) > 0
    assert row["count"] == finite.size
    np.testing.assert_allclose([row["mean"], row["std"]], [finite.mean(), finite.std()], rtol=1e-10)
    assert (row["min"], row["max"]) == (finite.min(), finite.max())
    assert row["unique"] is None and row["top_values"] == []

    tokens = batch.column("tokens").to_pylist()
    (row,) = rows(stats.inputs, replicate=ALL_DATA, slice_name="all", feature="tokens")
    flat = np.array([v for t in tokens for v in t])
    assert row["missing"] == sum(1 for t in tokens if not t)
    assert row["count"] == flat.size
    np.testing.assert_allclose(row["mean"], flat.mean(), rtol=1e-10)

    colors = batch.column("color").to_pylist()
    (row,) = rows(stats.inputs, replicate=ALL_DATA, slice_name="all", feature="color")
    counts = {c: colors.count(c) for c in set(colors) - {None}}
    top = sorted(counts.items(), key=lambda p: (-p[1], p[0]))[:3]
    assert row["kind"] == "categorical" and row["missing"] == colors.count(None)
    assert row["count"] == sum(counts.values())
    # Four distinct values in 12 Misra-Gries buckets: the counts are exact.
    assert [(t["value"], t["count"]) for t in row["top_values"]] == top
    assert row["unique"] == 4
    assert np.isnan(row["mean"])


def test_merging_split_batches_gives_the_same_records(batch):
    fn = AttributionStatsCombineFn(**CONFIG)
    cuts = [0, 333, 334, 1500, N]
    accumulators = [
        pickle.loads(pickle.dumps(fn.add_input(fn.create_accumulator(), batch.slice(a, b - a))))
        for a, b in itertools.pairwise(cuts)
    ]
    merged = fn.extract_output(fn.merge_accumulators(accumulators[::-1]))
    single = compute_statistics([batch], **CONFIG)
    for name in ("histograms", "inputs", "feature_replicates", "slice_replicates"):
        left, right = getattr(merged, name), getattr(single, name)
        assert left.num_rows == right.num_rows > 0, name
        for column in ("replicate", "slice_name", "slice_value"):
            assert left.column(column) == right.column(column), (name, column)
    assert merged.histograms.column("boundaries") == single.histograms.column("boundaries")
    assert merged.histograms.column("count") == single.histograms.column("count")
    for column in ("count", "missing", "nan_count", "top_values", "unique"):
        assert merged.inputs.column(column) == single.inputs.column(column), column
    np.testing.assert_allclose(
        merged.inputs.column("mean").to_numpy(),
        single.inputs.column("mean").to_numpy(),
        rtol=1e-12,
    )


def test_zero_examples_give_empty_tables_with_schemas():
    out = compute_statistics([], **CONFIG)
    assert out.histograms.num_rows == 0 and out.histograms.schema == HISTOGRAM_SCHEMA
    assert out.inputs.num_rows == 0 and out.inputs.schema == INPUT_STATS_SCHEMA
    assert out.feature_replicates.num_rows == 0


def test_invalid_replicates():
    with pytest.raises(ValueError, match="replicates"):
        AttributionStatsCombineFn(features=["a"], replicates=1)
    with pytest.raises(ValueError, match="key"):
        compute_statistics([make_batch(5).drop_columns(["key"])], **CONFIG)
