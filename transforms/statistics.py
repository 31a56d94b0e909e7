"""Mergeable per-slice, per-feature statistics of Integrated Gradients attributions.

The input is a stream of `pyarrow.RecordBatch` values of per-example attribution results with
(at least) these columns:

* ``key`` (string), ``target`` (int64; -1 when the target is not a class index),
* ``prediction`` (float64, F(x) of the target), ``baseline_prediction`` (float64),
* ``delta`` (float64, the completeness delta),
* ``attr_<feature>`` for every attributed feature: float64 for a scalar feature, or
  ``list<float64>`` / ``large_list<float64>`` / ``fixed_size_list<float64>`` for a vector
  feature,
* pass-through columns (strings, ints, floats, bools; possibly null) used as slice keys.

`AttributionStatsCombineFn` folds such batches into an accumulator that can be merged in any
order and grouping (sums, counts, min/max and a Chan-style merge of the sum of squared
deviations; quantiles from `tfx_bsl.sketches.QuantilesSketch`), and finally renders two Arrow
tables, one row per (slice, feature) and one row per slice (`AttributionStatistics`).

Slices. Every example belongs to the overall slice ``("all", "")``; to one slice per configured
slice spec (a list of pass-through column names, e.g. ``["country", "device"]`` gives
``("country,device", "DE,mobile")``); and, with ``slice_by_target``, to ``("target", "3")``.
Null slice values become ``"<null>"``; other values are rendered with Python's ``str`` (bytes
are decoded as UTF-8). Values containing ``","`` make multi-column slice values ambiguous to read
back but are still kept apart.

Vector features. The statistic of a vector (e.g. per-token) feature is over the per-example SUM
of its attributions across the vector (an empty vector sums to 0). A per-example value that is
NaN (or null, or a vector with any NaN/null element) is excluded from every statistic of that
feature and counted in ``nan_count`` instead.

Everything in `add_input` is vectorised with numpy/pyarrow: rows are grouped per slice by
sorting integer slice codes and reducing with ``ufunc.reduceat``; the only Python loops run over
slices, features and distinct slice values, never over examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tfx_bsl.sketches import QuantilesSketch

from transforms.constants import ATTRIBUTION_PREFIX

__all__ = [
    "ALL_SLICE",
    "DEFAULT_EPSILON",
    "FEATURE_STATS_SCHEMA",
    "NULL_SLICE_VALUE",
    "SLICE_STATS_SCHEMA",
    "TARGET_SLICE_NAME",
    "AttributionStatistics",
    "AttributionStatsCombineFn",
    "ComputeAttributionStatistics",
    "compute_statistics",
]

DEFAULT_EPSILON = 0.01
"""Rank error of the quantile sketches, as a fraction of the count (TFDV's default)."""

ALL_SLICE: tuple[str, str] = ("all", "")
TARGET_SLICE_NAME = "target"
NULL_SLICE_VALUE = "<null>"

# Number of |delta| quantile buckets: boundaries at multiples of 5%, so p50 is boundary 10 and
# p95 boundary 19.
_DELTA_BUCKETS = 20
_DELTA_P50_INDEX = 10
_DELTA_P95_INDEX = 19

FEATURE_STATS_SCHEMA = pa.schema(
    [
        pa.field("slice_name", pa.string(), nullable=False),
        pa.field("slice_value", pa.string(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("nan_count", pa.int64(), nullable=False),
        pa.field("mean_attributions", pa.float64(), nullable=False),
        pa.field("mean_absolute_attributions", pa.float64(), nullable=False),
        pa.field("total_attributions", pa.float64(), nullable=False),
        pa.field("std", pa.float64(), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("quantiles", pa.list_(pa.float64()), nullable=False),
        pa.field("share", pa.float64(), nullable=False),
        pa.field("rank", pa.int64(), nullable=False),
    ]
)
"""Schema of `AttributionStatistics.features`: one row per (slice, feature).

Statistics of a feature with ``count == 0`` in a slice (all values NaN) are NaN, its quantiles
are ``quantiles + 1`` NaNs, its share is NaN and it ranks after every feature with data.
"""

SLICE_STATS_SCHEMA = pa.schema(
    [
        pa.field("slice_name", pa.string(), nullable=False),
        pa.field("slice_value", pa.string(), nullable=False),
        pa.field("examples", pa.int64(), nullable=False),
        pa.field("prediction_mean", pa.float64(), nullable=False),
        pa.field("abs_delta_p50", pa.float64(), nullable=False),
        pa.field("abs_delta_p95", pa.float64(), nullable=False),
        pa.field("abs_delta_max", pa.float64(), nullable=False),
    ]
)
"""Schema of `AttributionStatistics.slices`: one row per slice.

``prediction_mean`` and the ``|delta|`` statistics ignore NaN values (NaN when none is left);
``abs_delta_max`` is exact, p50/p95 come from a quantile sketch.
"""


class AttributionStatistics(NamedTuple):
    """The result of `AttributionStatsCombineFn`.

    Attributes:
      features: One row per (slice, feature), schema `FEATURE_STATS_SCHEMA`, sorted by slice and
        then by rank.
      slices: One row per slice, schema `SLICE_STATS_SCHEMA`, in the same slice order.
    """

    features: pa.Table
    slices: pa.Table


# A quantile sketch stores ~32 bytes per value until it holds a few thousand values (then it is
# bounded, ~180 KB at epsilon 0.01). Below this many values the raw values (8 bytes each) are
# kept instead and their quantiles are exact; above it they move into a real sketch.
RAW_VALUES_LIMIT = 16384


class _BufferedSketch:
    """A `QuantilesSketch` that keeps raw float64 values until there are `RAW_VALUES_LIMIT`.

    The same interface as the parts of `QuantilesSketch` used here (`AddValues`, `Merge`,
    `Compact`, `GetQuantiles`), mergeable and picklable; `Merge` leaves `other` unchanged.
    """

    __slots__ = ("count", "epsilon", "max_num_elements", "sketch", "values")

    def __init__(self, epsilon: float, max_num_elements: int) -> None:
        self.epsilon = epsilon
        self.max_num_elements = max_num_elements
        self.values: list[np.ndarray] = []
        self.count = 0
        self.sketch: QuantilesSketch | None = None

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _promote(self) -> QuantilesSketch:
        if self.sketch is None:
            self.sketch = QuantilesSketch(self.epsilon, self.max_num_elements, 1)
            for values in self.values:
                self.sketch.AddValues(pa.array(values))
            self.values, self.count = [], 0
        return self.sketch

    def AddValues(self, values: pa.Array) -> None:  # noqa: N802 - QuantilesSketch's interface
        if self.sketch is not None:
            self.sketch.AddValues(values)
            return
        self.values.append(values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))
        self.count += len(values)
        if self.count > RAW_VALUES_LIMIT:
            self._promote()

    def Merge(self, other: _BufferedSketch) -> None:  # noqa: N802
        if other.sketch is not None:
            self._promote().Merge(other.sketch)
        for values in other.values:
            self.AddValues(pa.array(values))

    def Compact(self) -> None:  # noqa: N802
        if self.sketch is not None:
            self.sketch.Compact()
        elif len(self.values) > 1:
            self.values = [np.concatenate(self.values)]

    def raw_values(self) -> np.ndarray | None:
        """The values when still raw (exact quantiles), else None (a sketch holds them)."""
        if self.sketch is not None:
            return None
        if len(self.values) > 1:
            self.values = [np.concatenate(self.values)]
        return self.values[0] if self.values else np.zeros(0, np.float64)

    def GetQuantiles(self, buckets: int) -> pa.Array:  # noqa: N802
        """`buckets + 1` boundaries as a one-row list array (exact below the raw limit)."""
        if self.sketch is not None:
            return self.sketch.GetQuantiles(buckets)
        if not self.count:
            return pa.array([], pa.list_(pa.float64()))
        values = np.concatenate(self.values)
        bounds = np.quantile(values, np.linspace(0.0, 1.0, buckets + 1), method="inverted_cdf")
        return pa.array([bounds.tolist()], pa.list_(pa.float64()))


class _SliceAccumulator:
    """Mergeable statistics of one slice; per-feature arrays are indexed like `features`."""

    __slots__ = (
        "abs_delta_max",
        "abs_delta_sketch",
        "count",
        "examples",
        "m2",
        "max",
        "min",
        "nan_count",
        "prediction_count",
        "prediction_sum",
        "sketches",
        "total",
        "total_abs",
    )

    def __init__(self, num_features: int, make_sketch: Callable[[], QuantilesSketch]) -> None:
        self.examples = 0
        self.prediction_sum = 0.0
        self.prediction_count = 0
        self.abs_delta_max = -math.inf
        self.abs_delta_sketch: QuantilesSketch = make_sketch()
        self.count = np.zeros(num_features, dtype=np.int64)
        self.nan_count = np.zeros(num_features, dtype=np.int64)
        self.total = np.zeros(num_features, dtype=np.float64)
        self.total_abs = np.zeros(num_features, dtype=np.float64)
        # Sum of squared deviations from the mean (Welford / Chan et al.).
        self.m2 = np.zeros(num_features, dtype=np.float64)
        self.min = np.full(num_features, np.inf, dtype=np.float64)
        self.max = np.full(num_features, -np.inf, dtype=np.float64)
        self.sketches: list[QuantilesSketch] = [make_sketch() for _ in range(num_features)]

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def merge_moments(self, count: np.ndarray, total: np.ndarray, m2: np.ndarray) -> None:
        """Merges per-feature (count, sum, M2) of disjoint data into this slice (Chan et al.)."""
        n_a, n_b = self.count, count
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_a = np.where(n_a > 0, self.total / np.maximum(n_a, 1), 0.0)
            mean_b = np.where(n_b > 0, total / np.maximum(n_b, 1), 0.0)
            weight = np.where(n > 0, (n_a * n_b) / np.maximum(n, 1), 0.0)
        delta = mean_b - mean_a
        self.m2 = self.m2 + m2 + delta * delta * weight
        self.total = self.total + total
        self.count = n

    def merge(self, other: _SliceAccumulator) -> None:
        """Merges `other` (left unchanged) into this slice accumulator."""
        self.examples += other.examples
        self.prediction_sum += other.prediction_sum
        self.prediction_count += other.prediction_count
        self.abs_delta_max = max(self.abs_delta_max, other.abs_delta_max)
        self.abs_delta_sketch.Merge(other.abs_delta_sketch)
        self.merge_moments(other.count, other.total, other.m2)
        self.nan_count = self.nan_count + other.nan_count
        self.total_abs = self.total_abs + other.total_abs
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        for mine, theirs in zip(self.sketches, other.sketches, strict=True):
            mine.Merge(theirs)

    def compact(self) -> None:
        """Compacts every sketch of the slice."""
        self.abs_delta_sketch.Compact()
        for sketch in self.sketches:
            sketch.Compact()


class _Accumulator:
    """The accumulator of `AttributionStatsCombineFn`: slice key -> `_SliceAccumulator`."""

    __slots__ = ("slices",)

    def __init__(self) -> None:
        self.slices: dict[tuple[str, str], _SliceAccumulator] = {}

    def __getstate__(self) -> dict:
        return {"slices": self.slices}

    def __setstate__(self, state: dict) -> None:
        self.slices = state["slices"]


class _Grouping(NamedTuple):
    """Rows of one batch grouped by the values of one slice spec."""

    name: str
    codes: np.ndarray  # int64 group code per row, 0..len(values)-1.
    values: list[str]  # slice value per group code.


def _value_to_str(value: object) -> str:
    if value is None:
        return NULL_SLICE_VALUE
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _column_codes(column: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Returns an int64 code per row and the string value of each code; nulls get their own."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    encoded = column.dictionary_encode(null_encoding="mask")
    dictionary = encoded.dictionary.to_pylist()
    values = [_value_to_str(v) for v in dictionary]
    indices = encoded.indices
    codes = pc.fill_null(indices, len(values)).to_numpy(zero_copy_only=False).astype(np.int64)
    if indices.null_count:
        values.append(NULL_SLICE_VALUE)
    return codes, values


def _attribution_values(column: pa.Array, num_rows: int) -> np.ndarray:
    """Returns per-example float64 attributions (vector features summed); null/NaN -> NaN."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column_type = column.type
    if (
        pa.types.is_list(column_type)
        or pa.types.is_large_list(column_type)
        or pa.types.is_fixed_size_list(column_type)
    ):
        flat = pc.list_flatten(column).cast(pa.float64())
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        flat_values = flat.to_numpy(zero_copy_only=False)  # nulls -> NaN
        values = np.bincount(parents, weights=flat_values, minlength=num_rows).astype(np.float64)
    else:
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    if column.null_count:
        values = np.where(column.is_null().to_numpy(zero_copy_only=False), np.nan, values)
    return values


def _float_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    column = batch.column(name)
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _require_column(batch: pa.RecordBatch, name: str) -> None:
    if batch.schema.get_field_index(name) < 0:
        raise ValueError(
            f"Attribution statistics need column {name!r}; batch has {batch.schema.names}"
        )


def _slice_name_rank(name: str, spec_names: Sequence[str]) -> int:
    if name == ALL_SLICE[0]:
        return 0
    if name in spec_names:
        return 1 + list(spec_names).index(name)
    return 1 + len(spec_names)


def _slice_value_key(name: str, value: str) -> tuple:
    if name == TARGET_SLICE_NAME:
        try:
            return (0, int(value), value)
        except ValueError:
            return (1, 0, value)
    return (0, 0, value)


class AttributionStatsCombineFn(beam.CombineFn):
    """Combines record batches of per-example attributions into `AttributionStatistics`.

    The accumulator holds, per slice, exact counts, sums, |sums|, min/max and M2 (merged with
    Chan et al.'s parallel update, so `std` is numerically stable), plus one
    `QuantilesSketch` per feature and one for |delta|. Accumulators are picklable and merge in
    any order; `compact` compacts the sketches before they are shuffled.
    """

    def __init__(
        self,
        *,
        features: Sequence[str],
        slices: Sequence[Sequence[str]] = (),
        slice_by_target: bool = True,
        quantiles: int = 10,
        epsilon: float = DEFAULT_EPSILON,
        max_num_elements: int = 1 << 32,
    ) -> None:
        """Initialises the combine fn.

        Args:
          features: Attributed feature names; their attributions are read from ``attr_<f>``.
          slices: Slice specs, each a non-empty list of pass-through column names; a slice value
            is the tuple of their values, joined with ``","`` (as is the slice name).
          slice_by_target: Whether to add one slice per value of the ``target`` column.
          quantiles: Number of quantile buckets (>= 2); ``quantiles + 1`` boundaries are output.
          epsilon: Rank error bound of the quantile sketches, as a fraction of the count.
          max_num_elements: Capacity hint of each `QuantilesSketch`.

        Raises:
          ValueError: On an invalid configuration.
        """
        super().__init__()
        features = list(features)
        if not features:
            raise ValueError("At least one feature is needed")
        if len(set(features)) != len(features):
            raise ValueError(f"Duplicate features: {features}")
        if quantiles < 2:
            raise ValueError(f"quantiles must be >= 2, got {quantiles}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        specs: list[tuple[str, ...]] = []
        for spec in slices:
            if isinstance(spec, str):
                spec = [spec]
            spec = tuple(spec)
            if not spec:
                raise ValueError("A slice spec needs at least one column")
            if ",".join(spec) == ALL_SLICE[0]:
                raise ValueError(f"Slice name {ALL_SLICE[0]!r} is reserved")
            if spec in specs:
                continue
            if slice_by_target and spec == (TARGET_SLICE_NAME,):
                continue  # Same slices as slice_by_target.
            specs.append(spec)
        self._features = features
        self._specs = specs
        self._slice_by_target = slice_by_target
        self._quantiles = int(quantiles)
        self._epsilon = float(epsilon)
        self._max_num_elements = int(max_num_elements)
        self._spec_names = [",".join(spec) for spec in specs]
        if slice_by_target:
            self._spec_names.append(TARGET_SLICE_NAME)

    @property
    def features(self) -> list[str]:
        """The attributed feature names."""
        return list(self._features)

    def _make_sketch(self) -> _BufferedSketch:
        return _BufferedSketch(self._epsilon, self._max_num_elements)

    def _new_slice(self) -> _SliceAccumulator:
        return _SliceAccumulator(len(self._features), self._make_sketch)

    def create_accumulator(self) -> _Accumulator:
        """Returns an empty accumulator."""
        return _Accumulator()

    def _groupings(self, batch: pa.RecordBatch) -> list[_Grouping]:
        num_rows = batch.num_rows
        groupings = [_Grouping(ALL_SLICE[0], np.zeros(num_rows, np.int64), [ALL_SLICE[1]])]
        for spec in self._specs:
            per_column = []
            for name in spec:
                _require_column(batch, name)
                per_column.append(_column_codes(batch.column(name)))
            if len(per_column) == 1:
                codes, values = per_column[0]
            else:
                stacked = np.stack([codes for codes, _ in per_column], axis=1)
                combos, codes = np.unique(stacked, axis=0, return_inverse=True)
                codes = codes.reshape(-1).astype(np.int64)
                values = [
                    ",".join(per_column[i][1][code] for i, code in enumerate(combo))
                    for combo in combos
                ]
            groupings.append(_Grouping(",".join(spec), codes, values))
        if self._slice_by_target:
            _require_column(batch, TARGET_SLICE_NAME)
            codes, values = _column_codes(batch.column(TARGET_SLICE_NAME))
            groupings.append(_Grouping(TARGET_SLICE_NAME, codes, values))
        return groupings

    def add_input(self, accumulator: _Accumulator, batch: pa.RecordBatch) -> _Accumulator:
        """Adds one record batch of per-example attributions to `accumulator`.

        Args:
          accumulator: The accumulator to update (mutated and returned).
          batch: A record batch with ``prediction``, ``delta``, ``target`` (when slicing by
            target), every ``attr_<feature>`` and every slice column.

        Returns:
          The updated accumulator.

        Raises:
          ValueError: If a needed column is missing.
        """
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
        if batch is None or batch.num_rows == 0:
            return accumulator
        num_rows = batch.num_rows
        for name in ("prediction", "delta"):
            _require_column(batch, name)
        attributions = np.empty((num_rows, len(self._features)), dtype=np.float64)
        for j, feature in enumerate(self._features):
            column_name = ATTRIBUTION_PREFIX + feature
            _require_column(batch, column_name)
            attributions[:, j] = _attribution_values(batch.column(column_name), num_rows)
        prediction = _float_column(batch, "prediction")
        abs_delta = np.abs(_float_column(batch, "delta"))

        for grouping in self._groupings(batch):
            self._add_grouping(accumulator, grouping, attributions, prediction, abs_delta)
        return accumulator

    def _add_grouping(
        self,
        accumulator: _Accumulator,
        grouping: _Grouping,
        attributions: np.ndarray,
        prediction: np.ndarray,
        abs_delta: np.ndarray,
    ) -> None:
        """Adds the rows of one batch, grouped by `grouping`, to their slices."""
        order = np.argsort(grouping.codes, kind="stable")
        sorted_codes = grouping.codes[order]
        present, starts = np.unique(sorted_codes, return_index=True)
        ends = np.append(starts[1:], len(sorted_codes))
        sizes = ends - starts

        values = attributions[order]  # (N, F)
        valid = ~np.isnan(values)
        clean = np.where(valid, values, 0.0)
        count = np.add.reduceat(valid, starts, axis=0).astype(np.int64)
        total = np.add.reduceat(clean, starts, axis=0)
        total_abs = np.add.reduceat(np.abs(clean), starts, axis=0)
        mins = np.minimum.reduceat(np.where(valid, values, np.inf), starts, axis=0)
        maxs = np.maximum.reduceat(np.where(valid, values, -np.inf), starts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        deviation = np.where(valid, values - np.repeat(means, sizes, axis=0), 0.0)
        m2 = np.add.reduceat(deviation * deviation, starts, axis=0)
        # Feature-major, contiguous copy so each (group, feature) run is one slice.
        values_by_feature = np.ascontiguousarray(values.T)
        valid_by_feature = np.ascontiguousarray(valid.T)

        sorted_prediction = prediction[order]
        prediction_valid = ~np.isnan(sorted_prediction)
        prediction_sum = np.add.reduceat(np.where(prediction_valid, sorted_prediction, 0.0), starts)
        prediction_count = np.add.reduceat(prediction_valid.astype(np.int64), starts)
        sorted_delta = abs_delta[order]
        delta_valid = ~np.isnan(sorted_delta)
        delta_max = np.maximum.reduceat(np.where(delta_valid, sorted_delta, -np.inf), starts)

        for g, code in enumerate(present):
            key = (grouping.name, grouping.values[code])
            state = accumulator.slices.get(key)
            if state is None:
                state = accumulator.slices[key] = self._new_slice()
            start, end = starts[g], ends[g]
            state.examples += int(sizes[g])
            state.prediction_sum += float(prediction_sum[g])
            state.prediction_count += int(prediction_count[g])
            state.abs_delta_max = max(state.abs_delta_max, float(delta_max[g]))
            group_delta = sorted_delta[start:end][delta_valid[start:end]]
            if group_delta.size:
                state.abs_delta_sketch.AddValues(pa.array(group_delta))
            state.nan_count += sizes[g] - count[g]
            state.total_abs += total_abs[g]
            state.min = np.minimum(state.min, mins[g])
            state.max = np.maximum(state.max, maxs[g])
            state.merge_moments(count[g], total[g], m2[g])
            for j, sketch in enumerate(state.sketches):
                if count[g, j]:
                    run = values_by_feature[j, start:end][valid_by_feature[j, start:end]]
                    sketch.AddValues(pa.array(run))

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
        """Merges accumulators; only the first one is mutated (and returned)."""
        iterator = iter(accumulators)
        merged = next(iterator, None)
        if merged is None:
            return self.create_accumulator()
        for other in iterator:
            for key, theirs in other.slices.items():
                mine = merged.slices.get(key)
                if mine is None:
                    # Never share state with `other`: merge into a fresh slice instead.
                    mine = merged.slices[key] = self._new_slice()
                mine.merge(theirs)
        return merged

    def compact(self, accumulator: _Accumulator) -> _Accumulator:
        """Compacts every quantile sketch of `accumulator` (e.g. before a shuffle)."""
        for state in accumulator.slices.values():
            state.compact()
        return accumulator

    def _final_quantiles(self, sketch: QuantilesSketch, buckets: int) -> np.ndarray:
        """Returns the ``buckets + 1`` boundaries of a copy of `sketch` (NaNs when empty).

        `GetQuantiles` finalises a sketch, so it runs on a copy to keep `sketch` usable.
        """
        raw = sketch.raw_values() if isinstance(sketch, _BufferedSketch) else None
        if raw is not None:
            return _exact_quantiles(raw[np.newaxis], buckets)[0]
        copy = self._make_sketch()
        copy.Merge(sketch)
        result = copy.GetQuantiles(buckets)
        if len(result) == 0:
            return np.full(buckets + 1, np.nan)
        return result.flatten().to_numpy(zero_copy_only=False).astype(np.float64)

    def _feature_quantiles(self, state: _SliceAccumulator) -> list[np.ndarray]:
        """The quantile boundaries of every feature of a slice.

        Features whose values are still raw and equally many (the usual case: no NaNs) are
        done in one vectorised call; the others one by one.
        """
        raws = [sketch.raw_values() for sketch in state.sketches]
        sizes = {len(r) for r in raws if r is not None}
        if raws and all(r is not None for r in raws) and len(sizes) == 1:
            return list(_exact_quantiles(np.stack(raws), self._quantiles))
        return [self._final_quantiles(sketch, self._quantiles) for sketch in state.sketches]

    def extract_output(self, accumulator: _Accumulator) -> AttributionStatistics:
        """Renders the accumulator as `AttributionStatistics` (empty tables when empty)."""
        keys = sorted(
            accumulator.slices,
            key=lambda k: (
                _slice_name_rank(k[0], self._spec_names),
                k[0],
                _slice_value_key(k[0], k[1]),
            ),
        )
        num_features = len(self._features)
        feature_columns: dict[str, list] = {name: [] for name in FEATURE_STATS_SCHEMA.names}
        slice_columns: dict[str, list] = {name: [] for name in SLICE_STATS_SCHEMA.names}
        for key in keys:
            state = accumulator.slices[key]
            quantiles = self._feature_quantiles(state)
            count = state.count
            has_data = count > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                denominator = np.where(has_data, count, 1)
                mean = np.where(has_data, state.total / denominator, np.nan)
                mean_abs = np.where(has_data, state.total_abs / denominator, np.nan)
                std = np.where(has_data, np.sqrt(np.maximum(state.m2, 0.0) / denominator), np.nan)
                abs_sum = float(np.nansum(mean_abs))
                share = mean_abs / abs_sum if abs_sum > 0 else np.full(num_features, np.nan)
            mins = np.where(has_data, state.min, np.nan)
            maxs = np.where(has_data, state.max, np.nan)
            # Rank 1 = largest mean |attribution|; ties by feature order; no data ranks last.
            sort_key = np.where(has_data, -np.nan_to_num(mean_abs, nan=0.0), np.inf)
            order = np.argsort(sort_key, kind="stable")
            ranks = np.empty(num_features, dtype=np.int64)
            ranks[order] = np.arange(1, num_features + 1)
            for j in order:
                feature_columns["slice_name"].append(key[0])
                feature_columns["slice_value"].append(key[1])
                feature_columns["feature"].append(self._features[j])
                feature_columns["count"].append(int(count[j]))
                feature_columns["nan_count"].append(int(state.nan_count[j]))
                feature_columns["mean_attributions"].append(float(mean[j]))
                feature_columns["mean_absolute_attributions"].append(float(mean_abs[j]))
                feature_columns["total_attributions"].append(float(state.total[j]))
                feature_columns["std"].append(float(std[j]))
                feature_columns["min"].append(float(mins[j]))
                feature_columns["max"].append(float(maxs[j]))
                feature_columns["quantiles"].append(quantiles[j].tolist())
                feature_columns["share"].append(float(share[j]))
                feature_columns["rank"].append(int(ranks[j]))
            delta_quantiles = self._final_quantiles(state.abs_delta_sketch, _DELTA_BUCKETS)
            slice_columns["slice_name"].append(key[0])
            slice_columns["slice_value"].append(key[1])
            slice_columns["examples"].append(int(state.examples))
            slice_columns["prediction_mean"].append(
                state.prediction_sum / state.prediction_count
                if state.prediction_count
                else math.nan
            )
            slice_columns["abs_delta_p50"].append(float(delta_quantiles[_DELTA_P50_INDEX]))
            slice_columns["abs_delta_p95"].append(float(delta_quantiles[_DELTA_P95_INDEX]))
            slice_columns["abs_delta_max"].append(
                state.abs_delta_max if math.isfinite(state.abs_delta_max) else math.nan
            )
        return AttributionStatistics(
            features=pa.Table.from_pydict(feature_columns, schema=FEATURE_STATS_SCHEMA),
            slices=pa.Table.from_pydict(slice_columns, schema=SLICE_STATS_SCHEMA),
        )


def _exact_quantiles(values: np.ndarray, buckets: int) -> np.ndarray:
    """[F, buckets + 1] inverted-CDF quantile boundaries of each row of `values` [F, n].

    NaN rows when n == 0. The same values as `np.quantile(..., method="inverted_cdf")`.
    """
    if values.shape[1] == 0:
        return np.full((values.shape[0], buckets + 1), np.nan)
    return np.quantile(values, np.linspace(0.0, 1.0, buckets + 1), axis=1, method="inverted_cdf").T


class ComputeAttributionStatistics(
    beam.PTransform[beam.PCollection[pa.RecordBatch], beam.PCollection[AttributionStatistics]]
):
    """PCollection[pa.RecordBatch] -> PCollection with exactly one `AttributionStatistics`.

    An empty input gives one result with empty tables. Configuration is forwarded to
    `AttributionStatsCombineFn`.
    """

    def __init__(self, **config) -> None:
        """Initialises the transform.

        Args:
          **config: Keyword arguments of `AttributionStatsCombineFn` (``features``, ``slices``,
            ``slice_by_target``, ``quantiles``, ``epsilon``, ``max_num_elements``).
        """
        super().__init__()
        self._combine_fn = AttributionStatsCombineFn(**config)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        """Combines all batches globally into one `AttributionStatistics`."""
        return batches | "CombineStatistics" >> beam.CombineGlobally(self._combine_fn)


def compute_statistics(batches: Iterable[pa.RecordBatch], **config) -> AttributionStatistics:
    """Runs `AttributionStatsCombineFn` over `batches` in-process, without Beam.

    Args:
      batches: Record batches of per-example attributions.
      **config: Keyword arguments of `AttributionStatsCombineFn`.

    Returns:
      The statistics of all batches.
    """
    combine_fn = AttributionStatsCombineFn(**config)
    accumulator = combine_fn.create_accumulator()
    for batch in batches:
        accumulator = combine_fn.add_input(accumulator, batch)
    accumulator = combine_fn.compact(accumulator)
    return combine_fn.extract_output(accumulator)
