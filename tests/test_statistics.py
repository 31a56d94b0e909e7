"""Tests for transforms.statistics: per-slice, per-feature attribution statistics."""

from __future__ import annotations

import itertools
import math
import pickle

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from transforms import statistics
from transforms.statistics import (
    FEATURE_STATS_SCHEMA,
    NULL_SLICE_VALUE,
    SLICE_STATS_SCHEMA,
    AttributionStatistics,
    AttributionStatsCombineFn,
    ComputeAttributionStatistics,
    compute_statistics,
)

FEATURES = ["x", "y", "tokens"]
SLICES = [["country"], ["country", "device"], ["bucket"]]
TARGETS = np.array([-1, 2, 10, 0])
COUNTRIES = np.array(["DE", "US", "FR", None], dtype=object)
DEVICES = np.array(["mobile", "desktop"], dtype=object)
EPSILON = 0.01
QUANTILES = 10
CONFIG = dict(
    features=FEATURES, slices=SLICES, slice_by_target=True, quantiles=QUANTILES, epsilon=EPSILON
)


class Data:
    """Random per-example results kept as numpy/Python values, plus Arrow conversions."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n = n
        self.target = rng.choice(TARGETS, n)
        self.prediction = rng.random(n)
        self.prediction[rng.random(n) < 0.02] = np.nan
        self.delta = rng.normal(scale=0.1, size=n)
        self.delta[rng.random(n) < 0.02] = np.nan
        self.country = rng.choice(COUNTRIES, n)
        self.device = rng.choice(DEVICES, n)
        self.bucket = rng.integers(0, 3, n).astype(object)
        self.bucket[rng.random(n) < 0.1] = None
        self.x = rng.standard_cauchy(n)  # Heavy tails make the quantiles non-trivial.
        self.x[rng.random(n) < 0.05] = np.nan
        self.y = rng.normal(loc=3.0, size=n)
        self.y[self.country == "FR"] = np.nan  # A feature with no data in one slice.
        self.y_null = rng.random(n) < 0.03  # Null scalars count as NaN.
        lengths = rng.integers(0, 6, n)
        self.tokens: list[list[float] | None] = [
            list(rng.normal(scale=2.0, size=k)) for k in lengths
        ]
        for i in np.flatnonzero(rng.random(n) < 0.03):
            if self.tokens[i]:
                self.tokens[i][0] = math.nan  # One NaN token poisons that example only.
        for i in np.flatnonzero(rng.random(n) < 0.02):
            self.tokens[i] = None  # A null vector counts as NaN.

    def values(self, feature: str) -> np.ndarray:
        """Reference per-example values (vector features summed), computed in Python."""
        if feature == "x":
            return self.x.copy()
        if feature == "y":
            return np.where(self.y_null, np.nan, self.y)
        return np.array([math.nan if t is None else math.fsum(t) for t in self.tokens])

    def slice_keys(self, i: int) -> list[tuple[str, str]]:
        def s(v):
            return NULL_SLICE_VALUE if v is None else str(v)

        return [
            ("all", ""),
            ("country", s(self.country[i])),
            ("country,device", f"{s(self.country[i])},{s(self.device[i])}"),
            ("bucket", s(self.bucket[i])),
            ("target", str(self.target[i])),
        ]

    def masks(self) -> dict[tuple[str, str], np.ndarray]:
        masks: dict[tuple[str, str], np.ndarray] = {}
        for i in range(self.n):
            for key in self.slice_keys(i):
                masks.setdefault(key, np.zeros(self.n, dtype=bool))[i] = True
        return masks

    def batch(self, start: int, stop: int, list_type: str = "list") -> pa.RecordBatch:
        rows = slice(start, stop)
        tokens = self.tokens[rows]
        if list_type == "large_list":
            token_type = pa.large_list(pa.float64())
        else:
            token_type = pa.list_(pa.float64())
        return pa.record_batch(
            {
                "key": pa.array([f"k{i}" for i in range(start, stop)]),
                "target": pa.array(self.target[rows], pa.int64()),
                "prediction": pa.array(self.prediction[rows]),
                "baseline_prediction": pa.array(np.zeros(stop - start)),
                "delta": pa.array(self.delta[rows]),
                "attr_x": pa.array(self.x[rows]),
                "attr_y": pa.array(self.y[rows], mask=self.y_null[rows]),
                "attr_tokens": pa.array(tokens, token_type),
                "country": pa.array(list(self.country[rows]), pa.string()),
                "device": pa.array(list(self.device[rows]), pa.string()),
                "bucket": pa.array(list(self.bucket[rows]), pa.int64()),
            }
        )

    def batches(self, cuts: list[int], list_type: str = "list") -> list[pa.RecordBatch]:
        bounds = [0, *cuts, self.n]
        return [self.batch(a, b, list_type) for a, b in itertools.pairwise(bounds)]


@pytest.fixture(scope="module", autouse=True, params=["raw-values", "sketches"])
def raw_values_limit(request):
    """Runs the module twice: small slices kept as raw values (exact quantiles), and every
    slice promoted to a tfx-bsl sketch early (so merges mix raw values and sketches)."""
    old = statistics.RAW_VALUES_LIMIT
    statistics.RAW_VALUES_LIMIT = old if request.param == "raw-values" else 40
    yield statistics.RAW_VALUES_LIMIT
    statistics.RAW_VALUES_LIMIT = old


@pytest.fixture(scope="module")
def data() -> Data:
    return Data(3000, seed=0)


@pytest.fixture(scope="module")
def stats(data: Data, raw_values_limit: int) -> AttributionStatistics:
    return compute_statistics(data.batches([700, 701, 1900]), **CONFIG)


def rank_error(sorted_data: np.ndarray, boundaries: np.ndarray, fractions: np.ndarray) -> float:
    """Largest distance between a boundary's rank range in the data and its expected rank."""
    n = len(sorted_data)
    lo = np.searchsorted(sorted_data, boundaries, side="left")
    hi = np.searchsorted(sorted_data, boundaries, side="right") - 1
    expected = fractions * (n - 1)
    return float(np.max(np.maximum(0.0, np.maximum(lo - expected, expected - hi))))


def column_values(table: pa.Table, name: str) -> np.ndarray:
    """A column as numpy, list columns flattened (so NaNs compare equal in assert_array_equal)."""
    column = table.column(name).combine_chunks()
    if pa.types.is_list(column.type):
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False)


def assert_tables_equal(actual: pa.Table, expected: pa.Table, columns=None) -> None:
    """Exact equality of (some) columns of two tables, treating NaN as equal to NaN."""
    assert actual.schema == expected.schema
    assert actual.num_rows == expected.num_rows
    for name in columns or expected.schema.names:
        np.testing.assert_array_equal(
            column_values(actual, name), column_values(expected, name), err_msg=name
        )


def feature_rows(table: pa.Table) -> dict[tuple[str, str, str], dict]:
    return {(r["slice_name"], r["slice_value"], r["feature"]): r for r in table.to_pylist()}


def slice_rows(table: pa.Table) -> dict[tuple[str, str], dict]:
    return {(r["slice_name"], r["slice_value"]): r for r in table.to_pylist()}


def test_schemas_and_slices(stats: AttributionStatistics, data: Data):
    assert stats.features.schema == FEATURE_STATS_SCHEMA
    assert stats.slices.schema == SLICE_STATS_SCHEMA
    masks = data.masks()
    assert set(slice_rows(stats.slices)) == set(masks)
    assert ("country", NULL_SLICE_VALUE) in masks and ("bucket", NULL_SLICE_VALUE) in masks
    assert stats.features.num_rows == len(masks) * len(FEATURES)


def test_feature_statistics_match_numpy(stats: AttributionStatistics, data: Data):
    rows = feature_rows(stats.features)
    fractions = np.arange(QUANTILES + 1) / QUANTILES
    for key, mask in data.masks().items():
        for feature in FEATURES:
            row = rows[(*key, feature)]
            values = data.values(feature)[mask]
            finite = values[~np.isnan(values)]
            assert row["count"] == finite.size, (key, feature)
            assert row["nan_count"] == values.size - finite.size, (key, feature)
            if finite.size == 0:
                for name in ("mean_attributions", "std", "min", "max", "share"):
                    assert math.isnan(row[name]), (key, feature, name)
                assert len(row["quantiles"]) == QUANTILES + 1
                assert all(math.isnan(q) for q in row["quantiles"])
                assert row["rank"] == len(FEATURES)
                continue
            np.testing.assert_allclose(row["total_attributions"], finite.sum(), rtol=1e-10)
            np.testing.assert_allclose(row["mean_attributions"], finite.mean(), rtol=1e-10)
            np.testing.assert_allclose(
                row["mean_absolute_attributions"], np.abs(finite).mean(), rtol=1e-10
            )
            np.testing.assert_allclose(row["std"], finite.std(), rtol=1e-9, atol=1e-12)
            # Vector sums are compared with an exact `fsum`, hence the tolerance.
            np.testing.assert_allclose(row["min"], finite.min(), rtol=1e-13)
            np.testing.assert_allclose(row["max"], finite.max(), rtol=1e-13)
            boundaries = np.array(row["quantiles"])
            assert boundaries.shape == (QUANTILES + 1,)
            assert np.all(np.diff(boundaries) >= 0)
            tolerance = EPSILON * finite.size + 1
            assert rank_error(np.sort(finite), boundaries, fractions) <= tolerance, (key, feature)


def test_all_nan_feature_in_slice(stats: AttributionStatistics, data: Data):
    row = feature_rows(stats.features)[("country", "FR", "y")]
    assert row["count"] == 0
    assert row["nan_count"] == int(np.sum(data.country == "FR")) > 0


def test_slice_statistics_match_numpy(stats: AttributionStatistics, data: Data):
    rows = slice_rows(stats.slices)
    for key, mask in data.masks().items():
        row = rows[key]
        assert row["examples"] == int(mask.sum())
        np.testing.assert_allclose(row["prediction_mean"], np.nanmean(data.prediction[mask]))
        abs_delta = np.abs(data.delta[mask])
        abs_delta = np.sort(abs_delta[~np.isnan(abs_delta)])
        assert row["abs_delta_max"] == abs_delta.max()
        tolerance = EPSILON * abs_delta.size + 1
        boundaries = np.array([row["abs_delta_p50"], row["abs_delta_p95"]])
        assert rank_error(abs_delta, boundaries, np.array([0.5, 0.95])) <= tolerance, key


def test_share_sums_to_one_and_ranks_are_permutation(stats: AttributionStatistics):
    table = stats.features.to_pylist()
    by_slice: dict[tuple[str, str], list[dict]] = {}
    for row in table:
        by_slice.setdefault((row["slice_name"], row["slice_value"]), []).append(row)
    for key, rows in by_slice.items():
        assert sorted(r["rank"] for r in rows) == list(range(1, len(FEATURES) + 1)), key
        assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows), "sorted by rank"
        shares = np.array([r["share"] for r in rows])
        np.testing.assert_allclose(np.nansum(shares), 1.0, rtol=1e-12)
        with_data = [r for r in rows if r["count"] > 0]
        mean_abs = np.array([r["mean_absolute_attributions"] for r in with_data])
        np.testing.assert_allclose(
            [r["share"] for r in with_data], mean_abs / mean_abs.sum(), rtol=1e-12
        )
        # Rank 1 = largest mean |attribution|.
        assert list(mean_abs) == sorted(mean_abs, reverse=True), key


def test_rows_sorted_by_slice(stats: AttributionStatistics):
    slice_keys = list(
        zip(
            *(stats.slices.column(c).to_pylist() for c in ("slice_name", "slice_value")),
            strict=True,
        )
    )
    names = list(dict.fromkeys(name for name, _ in slice_keys))
    assert names == ["all", "country", "country,device", "bucket", "target"]
    assert [v for n, v in slice_keys if n == "target"] == ["-1", "0", "2", "10"]
    feature_slices = list(
        dict.fromkeys(
            zip(
                stats.features.column("slice_name").to_pylist(),
                stats.features.column("slice_value").to_pylist(),
                strict=True,
            )
        )
    )
    assert feature_slices == slice_keys


def _accumulate(fn: AttributionStatsCombineFn, batches: list[pa.RecordBatch]):
    return [fn.add_input(fn.create_accumulator(), b) for b in batches]


def test_merge_invariance(data: Data):
    fn = AttributionStatsCombineFn(**CONFIG)
    # Grouping A: one accumulator per batch of a fine split, merged in shuffled order after a
    # pickling round trip (as across a shuffle), some compacted.
    accs_a = _accumulate(fn, data.batches([100, 101, 900, 1500, 2200, 2999]))
    accs_a = [
        pickle.loads(pickle.dumps(fn.compact(a) if i % 2 else a)) for i, a in enumerate(accs_a)
    ]
    order = np.random.default_rng(1).permutation(len(accs_a))
    merged_a = fn.merge_accumulators([accs_a[i] for i in order])
    # Grouping B: a coarse split, merged as a tree.
    accs_b = _accumulate(fn, data.batches([1234, 2000]))
    merged_b = fn.merge_accumulators(
        [fn.merge_accumulators([accs_b[2], accs_b[0]]), fn.merge_accumulators([accs_b[1]])]
    )
    # Grouping C: everything in one accumulator, no merge.
    single = fn.add_input(fn.create_accumulator(), data.batch(0, data.n))

    reference = fn.extract_output(single)
    ref_rows = feature_rows(reference.features)
    masks = data.masks()
    fractions = np.arange(QUANTILES + 1) / QUANTILES
    for merged in (merged_a, merged_b):
        out = fn.extract_output(merged)
        assert out.features.column("slice_name") == reference.features.column("slice_name")
        assert out.features.column("feature") == reference.features.column("feature")
        assert_tables_equal(
            out.features,
            reference.features,
            ["slice_name", "slice_value", "feature", "count", "nan_count", "min", "max", "rank"],
        )
        for c in ("total_attributions", "mean_absolute_attributions", "std", "share"):
            np.testing.assert_allclose(
                out.features.column(c).to_numpy(),
                reference.features.column(c).to_numpy(),
                rtol=1e-11,
                atol=1e-13,
                err_msg=c,
            )
        assert_tables_equal(out.slices, reference.slices, ["examples", "abs_delta_max"])
        for key, row in feature_rows(out.features).items():
            values = data.values(key[2])[masks[key[:2]]]
            finite = np.sort(values[~np.isnan(values)])
            if finite.size == 0:
                assert ref_rows[key]["count"] == 0
                continue
            tolerance = EPSILON * finite.size + 1
            assert rank_error(finite, np.array(row["quantiles"]), fractions) <= tolerance, key


def test_merge_does_not_mutate_other_accumulators(data: Data):
    fn = AttributionStatsCombineFn(**CONFIG)
    batch = data.batch(0, data.n)
    # Disjoint countries, so merging has to create slices `first` has never seen.
    us, de = (batch.filter(pa.array(data.country == c)) for c in ("US", "DE"))
    first, second = _accumulate(fn, [us, de])
    before = fn.extract_output(second)
    fn.merge_accumulators([first, second])
    fn.merge_accumulators([first, second])
    after = fn.extract_output(second)
    assert_tables_equal(after.features, before.features)
    assert_tables_equal(after.slices, before.slices)
    merged = slice_rows(fn.extract_output(first).slices)
    assert merged[("all", "")]["examples"] == us.num_rows + 2 * de.num_rows
    assert merged[("country", "DE")]["examples"] == 2 * de.num_rows


def test_pickle_round_trip_and_continue(data: Data):
    fn = AttributionStatsCombineFn(**CONFIG)
    batches = data.batches([1500])
    acc = fn.add_input(fn.create_accumulator(), batches[0])
    restored = pickle.loads(pickle.dumps(acc))
    assert_tables_equal(fn.extract_output(restored).features, fn.extract_output(acc).features)
    assert_tables_equal(fn.extract_output(restored).slices, fn.extract_output(acc).slices)
    # extract_output must not finalise the sketches: keep adding afterwards.
    restored = fn.add_input(restored, batches[1])
    expected = compute_statistics(batches, **CONFIG)
    out = fn.extract_output(restored)
    exact = ["slice_name", "slice_value", "feature", "count", "nan_count", "min", "max", "rank"]
    assert_tables_equal(out.features, expected.features, exact)
    assert_tables_equal(out.slices, expected.slices, ["examples", "abs_delta_max"])
    compacted = pickle.loads(pickle.dumps(fn.compact(restored)))
    assert_tables_equal(fn.extract_output(compacted).features, expected.features, exact)


def test_list_types_are_equivalent(data: Data):
    as_list = compute_statistics(data.batches([1000], "list"), **CONFIG)
    as_large = compute_statistics(data.batches([1000], "large_list"), **CONFIG)
    assert_tables_equal(as_list.features, as_large.features)
    assert_tables_equal(as_list.slices, as_large.slices)
    fixed = pa.record_batch(
        {
            "target": pa.array([1, 1], pa.int64()),
            "prediction": [0.5, 0.5],
            "delta": [0.0, 0.0],
            "attr_v": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, -4.0, 0.5]), 2),
        }
    )
    out = compute_statistics([fixed], features=["v"], slice_by_target=False)
    row = out.features.to_pylist()[0]
    assert (row["count"], row["total_attributions"], row["min"], row["max"]) == (2, -0.5, -3.5, 3.0)


def test_std_is_numerically_stable():
    rng = np.random.default_rng(3)
    values = 1e9 + rng.normal(scale=0.01, size=4000)
    batches = [
        pa.record_batch({"prediction": np.zeros(len(c)), "delta": np.zeros(len(c)), "attr_f": c})
        for c in np.array_split(values, 9)
    ]
    out = compute_statistics(batches, features=["f"], slice_by_target=False)
    np.testing.assert_allclose(out.features.column("std")[0].as_py(), values.std(), rtol=1e-6)


def test_zero_examples():
    fn = AttributionStatsCombineFn(**CONFIG)
    for out in (
        compute_statistics([], **CONFIG),
        fn.extract_output(fn.create_accumulator()),
        fn.extract_output(
            fn.merge_accumulators([fn.create_accumulator(), fn.create_accumulator()])
        ),
        compute_statistics([Data(5).batch(0, 0)], **CONFIG),
    ):
        assert out.features.num_rows == 0 and out.slices.num_rows == 0
        assert out.features.schema == FEATURE_STATS_SCHEMA
        assert out.slices.schema == SLICE_STATS_SCHEMA


def test_invalid_config_and_missing_columns(data: Data):
    with pytest.raises(ValueError, match="quantiles"):
        AttributionStatsCombineFn(features=["x"], quantiles=1)
    with pytest.raises(ValueError, match="feature"):
        AttributionStatsCombineFn(features=[])
    with pytest.raises(ValueError, match="attr_nope"):
        compute_statistics([data.batch(0, 10)], features=["nope"])
    with pytest.raises(ValueError, match="region"):
        compute_statistics([data.batch(0, 10)], features=["x"], slices=[["region"]])


def _matches(expected: AttributionStatistics):
    def check(actual):
        if len(actual) != 1:
            raise BeamAssertException(f"expected one result, got {len(actual)}")
        (result,) = actual
        if not isinstance(result, AttributionStatistics):
            raise BeamAssertException(f"unexpected type {type(result)}")
        try:
            assert_tables_equal(
                result.features,
                expected.features,
                ["slice_name", "slice_value", "feature", "count", "nan_count", "min", "max"],
            )
            assert_tables_equal(result.slices, expected.slices, ["slice_name", "examples"])
            np.testing.assert_allclose(
                column_values(result.features, "total_attributions"),
                column_values(expected.features, "total_attributions"),
                rtol=1e-11,
            )
        except AssertionError as error:
            raise BeamAssertException(str(error)) from error

    return check


def test_beam_pipeline(data: Data):
    batches = data.batches([500, 1200, 2500])
    expected = compute_statistics(batches, **CONFIG)
    empty = compute_statistics([], **CONFIG)
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:  # never Prism (a download)
        result = (
            p
            | "CreateBatches" >> beam.Create(batches)
            | "Stats" >> ComputeAttributionStatistics(**CONFIG)
        )
        assert_that(result, _matches(expected), label="CheckStats")
        empty_result = (
            p
            | "CreateNothing" >> beam.Create([]).with_output_types(pa.RecordBatch)
            | "EmptyStats" >> ComputeAttributionStatistics(**CONFIG)
        )
        assert_that(empty_result, _matches(empty), label="CheckEmptyStats")
    assert expected.slices.num_rows > 0 and empty.slices.num_rows == 0


def test_buffered_sketch_keeps_raw_values_then_promotes(raw_values_limit: int):
    rng = np.random.default_rng(3)
    values = rng.normal(size=3 * raw_values_limit)
    small = statistics._BufferedSketch(0.01, 1 << 32)
    small.AddValues(pa.array(values[:10]))
    assert small.sketch is None and small.count == 10
    exact = small.GetQuantiles(4).flatten().to_numpy()
    np.testing.assert_array_equal(exact[[0, -1]], [values[:10].min(), values[:10].max()])
    big = statistics._BufferedSketch(0.01, 1 << 32)
    big.AddValues(pa.array(values[: raw_values_limit + 1]))
    assert big.sketch is not None and big.values == []  # promoted past the limit
    before = pickle.dumps(small)
    big.Merge(small)  # a raw buffer merged into a sketch; `small` is left unchanged
    assert pickle.dumps(small) == before
    restored = pickle.loads(pickle.dumps(big))
    restored.Compact()
    merged = values[: raw_values_limit + 1].tolist() + values[:10].tolist()
    boundaries = restored.GetQuantiles(10).flatten().to_numpy()
    ranks = np.searchsorted(np.sort(merged), boundaries, side="right")
    expected = np.linspace(0, len(merged), 11)
    assert np.all(np.abs(ranks - expected) <= 0.01 * len(merged) + 2)  # + rank rounding


@pytest.mark.parametrize("with_nan", [False, True])
def test_raw_quantiles_are_exact(with_nan: bool, raw_values_limit: int):
    # Below the raw limit every quantile is numpy's inverted-CDF quantile of the slice's
    # values, whether the features are done together (equal counts: no NaN) or one by one.
    rng = np.random.default_rng(11)
    n = 30
    cols = {
        "prediction": rng.random(n),
        "delta": rng.normal(size=n) * 1e-4,
        "target": rng.integers(0, 3, n),
        "attr_a": rng.standard_cauchy(n),
        "attr_b": rng.normal(size=n),
    }
    if with_nan:
        cols["attr_b"][[3, 17]] = np.nan
    table = pa.table(cols)
    stats = compute_statistics(
        [table], features=["a", "b"], slice_by_target=True, quantiles=QUANTILES
    )
    probs = np.linspace(0.0, 1.0, QUANTILES + 1)
    for row in stats.features.to_pylist():
        rows = np.ones(n, bool)
        if row["slice_name"] == "target":
            rows = cols["target"] == int(row["slice_value"])
        values = cols["attr_" + row["feature"]][rows]
        values = values[~np.isnan(values)]
        expected = np.quantile(values, probs, method="inverted_cdf")
        if len(values) <= raw_values_limit:
            np.testing.assert_array_equal(row["quantiles"], expected, err_msg=str(row))
        else:
            assert row["quantiles"][0] == values.min() and row["quantiles"][-1] == values.max()
