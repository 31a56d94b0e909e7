"""Mergeable per-slice statistics of a run: attributions, inputs, and key-hash replicates.

The input is a stream of `pyarrow.RecordBatch` values of per-example attribution results with
(at least) these columns:

* ``key`` (string), ``target`` (int64; -1 when the target is not a class index),
* ``prediction`` (float64, F(x) of the target), ``baseline_prediction`` (float64),
* ``delta`` (float64, the completeness delta),
* ``attr_<feature>`` for every attributed feature: float64 for a scalar feature, or
  ``list<float64>`` / ``large_list<float64>`` / ``fixed_size_list<float64>`` for a vector
  feature,
* pass-through columns (strings, ints, floats, bools; possibly null) used as slice keys,
* input value columns to describe (the job adds ``in_<feature>`` for attributed features).

`AttributionStatsCombineFn` folds such batches into an accumulator that can be merged in any
order and grouping (sums, counts, min/max and a Chan-style merge of the sum of squared
deviations; quantiles exact from raw values up to `RAW_VALUES_LIMIT` per column, then from a
KLL sketch (`transforms.sketches`, <= 12 KB each); top values from
`MisraGriesSketch`, distinct counts from `KmvSketch`) and renders `AttributionStatistics`:

* ``features``: one row per (slice, feature) of attributions; ``slices``: one row per slice;
* ``histograms``: per (slice, feature) and source (attribution or input), the boundaries of
  `histogram_buckets` equal-mass buckets of the values, from the same quantile sketches as the
  ``quantiles`` column (so two runs compare without their rows: `pipeline.drift` re-buckets two
  such histograms onto the union of their boundaries, as TFDV does);
* ``inputs``: per (slice, input feature) value statistics, numeric (count, missing, NaN, mean,
  std, min, max) or categorical (top values with approximate counts, a distinct estimate);
* ``image_grids`` (with ``image_grids``): per (slice, image feature) the mean of each cell of
  the examples' ``grid_<feature>`` summary grids (`transforms.images`);
* with ``replicates`` R > 0, the same statistics for R deterministic sub-samples of every slice
  (example in replicate ``crc32("replicate:" + key) % R``): ``feature_replicates``,
  ``slice_replicates`` and rows of ``histograms``/``inputs`` with ``replicate`` >= 0 (``-1`` is
  all examples). A comparison measures how much a score moves between replicates of one run:
  its noise floor. Replicates cost little: examples are accumulated per replicate only, and the
  whole slice is the merge of its replicates, made once when the output is extracted.

Slices. Every example belongs to the overall slice ``("all", "")``; to one slice per configured
slice spec (a list of pass-through column names, e.g. ``["country", "device"]`` gives
``("country,device", "DE,mobile")``); and, with ``slice_by_target``, to ``("target", "3")``.
With several explained outputs per example (target kinds ``top_k`` and ``indices``: K rows per
example and an ``output_rank`` column), the overall slice and the configured slices take each
example's rank-0 row only (so they count examples once, and hold what a single-output run of
the first explained output holds), while each row counts in the ``target`` slice of its own
output (an example is in the slice of every class it was explained for, once each).
Null slice values become ``"<null>"``; other values are rendered with Python's ``str`` (bytes
are decoded as UTF-8). Values containing ``","`` make multi-column slice values ambiguous to read
back but are still kept apart.

Vector features. The statistic of a vector (e.g. per-token) attribution is over the per-example
SUM of its attributions across the vector (an empty vector sums to 0). A per-example value that
is NaN (or null, or a vector with any NaN element) is excluded from every statistic of that
feature and counted in ``nan_count`` instead. A null element of a vector is a padding position of
a text feature (see `transforms.text`), not a score: it is left out of the sum. Vector inputs
are described over all their values.

Everything in `add_input` is vectorised with numpy/pyarrow: rows are grouped per slice by
sorting integer slice codes and reducing with ``ufunc.reduceat``; the only Python loops run over
slices, features and distinct slice values, never over examples.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tfx_bsl.sketches import KmvSketch, MisraGriesSketch

from attribution.fields import default_of
from transforms.constants import ATTRIBUTION_PREFIX, GRID_PREFIX, OUTPUT_RANK_COLUMN
from transforms.settings import StatisticsConfig
from transforms.sketches import KllSketch, k_for

__all__ = [
    "ALL_DATA",
    "ALL_SLICE",
    "DEFAULT_EPSILON",
    "DEFAULT_HISTOGRAM_BUCKETS",
    "DEFAULT_TOP_VALUES",
    "FEATURE_REPLICATES_SCHEMA",
    "FEATURE_STATS_SCHEMA",
    "HISTOGRAM_SCHEMA",
    "IMAGE_GRIDS_SCHEMA",
    "INPUT_STATS_SCHEMA",
    "KIND_CATEGORICAL",
    "KIND_NUMERIC",
    "NULL_SLICE_VALUE",
    "SLICE_REPLICATES_SCHEMA",
    "SLICE_STATS_SCHEMA",
    "SOURCE_ATTRIBUTION",
    "SOURCE_INPUT",
    "TARGET_SLICE_NAME",
    "AttributionStatistics",
    "AttributionStatsCombineFn",
    "ComputeAttributionStatistics",
    "compute_statistics",
]

DEFAULT_EPSILON = 0.01
"""Rank error of the quantile sketches, as a fraction of the count (TFDV's default)."""
DEFAULT_HISTOGRAM_BUCKETS: int = default_of(StatisticsConfig, "histogram_buckets")
"""Equal-mass buckets of the histograms two runs are compared on (`StatisticsConfig`)."""
DEFAULT_TOP_VALUES: int = default_of(StatisticsConfig, "top_values")
"""Top values kept per categorical input (`StatisticsConfig`)."""

ALL_SLICE: tuple[str, str] = ("all", "")
TARGET_SLICE_NAME = "target"
NULL_SLICE_VALUE = "<null>"
ALL_DATA = -1
"""The ``replicate`` of rows that describe all examples of a slice."""
SOURCE_ATTRIBUTION = "attribution"
SOURCE_INPUT = "input"
KIND_NUMERIC = "numeric"
KIND_CATEGORICAL = "categorical"

_REPLICATE_SALT = b"replicate:"
_KMV_BUCKETS = 1024  # distinct estimate within a few percent

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


_REPLICATE_FIELD = pa.field("replicate", pa.int64(), nullable=False)
FEATURE_REPLICATES_SCHEMA = FEATURE_STATS_SCHEMA.insert(0, _REPLICATE_FIELD)
"""Schema of `AttributionStatistics.feature_replicates`: `FEATURE_STATS_SCHEMA` per replicate."""
SLICE_REPLICATES_SCHEMA = SLICE_STATS_SCHEMA.insert(0, _REPLICATE_FIELD)
"""Schema of `AttributionStatistics.slice_replicates`: `SLICE_STATS_SCHEMA` per replicate."""

IMAGE_GRIDS_SCHEMA = pa.schema(
    [
        pa.field("slice_name", pa.string(), nullable=False),
        pa.field("slice_value", pa.string(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("grid_height", pa.int32(), nullable=False),
        pa.field("grid_width", pa.int32(), nullable=False),
        pa.field("mean_abs", pa.list_(pa.float64()), nullable=False),
    ]
)
"""Schema of `AttributionStatistics.image_grids`: per (slice, image feature), the mean over the
slice's examples of each cell of their ``grid_<feature>`` (|attribution| summed per cell),
row-major, GH*GW values (`transforms.images`)."""

HISTOGRAM_SCHEMA = pa.schema(
    [
        _REPLICATE_FIELD,
        pa.field("slice_name", pa.string(), nullable=False),
        pa.field("slice_value", pa.string(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("nan_count", pa.int64(), nullable=False),
        pa.field("boundaries", pa.list_(pa.float64()), nullable=False),
    ]
)
"""Schema of `AttributionStatistics.histograms`: one row per (replicate, slice, feature, source).

``boundaries`` are ``histogram_buckets + 1`` quantile boundaries of the ``count`` finite values
(``source`` ``attribution``: per-example attributions; ``input``: numeric input values), so
every bucket holds ``count / histogram_buckets`` values; equal boundaries are a point mass. Empty
when ``count`` is 0. NaN values are counted apart in ``nan_count``.
"""

INPUT_STATS_SCHEMA = pa.schema(
    [
        _REPLICATE_FIELD,
        pa.field("slice_name", pa.string(), nullable=False),
        pa.field("slice_value", pa.string(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("examples", pa.int64(), nullable=False),
        pa.field("missing", pa.int64(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("nan_count", pa.int64(), nullable=False),
        pa.field("mean", pa.float64(), nullable=False),
        pa.field("std", pa.float64(), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("unique", pa.int64(), nullable=True),
        pa.field(
            "top_values",
            pa.list_(
                pa.struct(
                    [
                        pa.field("value", pa.string(), nullable=False),
                        pa.field("count", pa.int64(), nullable=False),
                    ]
                )
            ),
            nullable=False,
        ),
    ]
)
"""Schema of `AttributionStatistics.inputs`: one row per (replicate, slice, input feature).

``examples`` in the slice, ``missing`` examples without a value, ``count`` values (all values of
a list feature), ``nan_count`` NaN values. Numeric (``kind`` ``numeric``): ``mean``, ``std``,
``min``, ``max`` of the finite values (histogram in ``histograms``, source ``input``).
Categorical: ``top_values`` (value, approximate count; Misra-Gries, most frequent first) and
``unique``, a distinct-value estimate (KMV); the numeric fields are NaN.
"""


def _empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


class AttributionStatistics(NamedTuple):
    """The result of `AttributionStatsCombineFn` (see the module docstring).

    Attributes:
      features: One row per (slice, feature), schema `FEATURE_STATS_SCHEMA`, sorted by slice and
        then by rank.
      slices: One row per slice, schema `SLICE_STATS_SCHEMA`, in the same slice order.
      histograms: `HISTOGRAM_SCHEMA`, all examples (replicate -1) and every replicate.
      inputs: `INPUT_STATS_SCHEMA`, likewise.
      feature_replicates: `FEATURE_REPLICATES_SCHEMA`, every replicate of every slice.
      slice_replicates: `SLICE_REPLICATES_SCHEMA`, likewise.
      image_grids: `IMAGE_GRIDS_SCHEMA`, per slice and image feature (all examples).
    """

    features: pa.Table
    slices: pa.Table
    histograms: pa.Table = _empty(HISTOGRAM_SCHEMA)
    inputs: pa.Table = _empty(INPUT_STATS_SCHEMA)
    feature_replicates: pa.Table = _empty(FEATURE_REPLICATES_SCHEMA)
    slice_replicates: pa.Table = _empty(SLICE_REPLICATES_SCHEMA)
    image_grids: pa.Table = _empty(IMAGE_GRIDS_SCHEMA)


# Below this many values per column the raw values (8 bytes each, 4 KB at the limit) are kept
# and their quantiles are exact; above it they move into a KLL sketch of at most ~12 KB at
# epsilon 0.01 (3-5 KB typically): a column costs about the same raw or sketched, so no column
# holds more than ~12 KB whatever the count. (4,096 raw values, 32 KB, made raw columns the
# largest part of a run's accumulator and of its end-of-run peak.)
RAW_VALUES_LIMIT = 512

_WHOLE_SLICE = threading.local()
"""While `extract_output` merges a slice's replicates (`_merged`): how many, so that a whole slice
whose replicates all kept raw values keeps them too (exact quantiles, whatever the merge order
of the blocks; at most replicates x the limit per column, only while the slice is rendered)."""


def _raw_values_limit() -> int:
    return RAW_VALUES_LIMIT * getattr(_WHOLE_SLICE, "parts", 1)


class _BufferedSketch:
    """A quantile sketch that keeps raw float64 values until there are `RAW_VALUES_LIMIT`.

    Past the limit the values go to a `KllSketch` (tfx-bsl's `QuantilesSketch` was ~180 KB per
    column whatever the count; a run holds thousands). The interface of the parts of
    `QuantilesSketch` used here (`AddValues`, `Merge`,
    `Compact`, `GetQuantiles`), mergeable and picklable; `Merge` leaves `other` unchanged.
    """

    __slots__ = ("count", "epsilon", "max_num_elements", "sketch", "values")

    def __init__(self, epsilon: float, max_num_elements: int) -> None:
        self.epsilon = epsilon
        self.max_num_elements = max_num_elements
        self.values: list[np.ndarray] = []
        self.count = 0
        self.sketch: KllSketch | None = None

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _promote(self) -> KllSketch:
        if self.sketch is None:
            self.sketch = KllSketch(k_for(self.epsilon))
            for values in self.values:
                self.sketch.add_array(values)
            self.values, self.count = [], 0
        return self.sketch

    def AddValues(self, values: pa.Array) -> None:  # noqa: N802 - QuantilesSketch's interface
        self.add_array(values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))

    def add_array(self, values: np.ndarray) -> None:
        """`AddValues` for a float64 numpy array, without an Arrow round trip.

        The array is kept, not copied: callers pass arrays they never modify.
        """
        if self.sketch is not None:
            self.sketch.add_array(values)
            return
        self.values.append(values)
        self.count += len(values)
        if self.count > _raw_values_limit():
            self._promote()

    def Merge(self, other: _BufferedSketch) -> None:  # noqa: N802
        if other.sketch is not None:
            self._promote().Merge(other.sketch)
        for values in other.values:  # raw arrays are never modified in place: safe to share
            self.add_array(values)

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
        bounds = _exact_quantiles(np.concatenate(self.values)[np.newaxis], buckets)[0]
        return pa.array([bounds.tolist()], pa.list_(pa.float64()))


class _PackedSketches(NamedTuple):
    """The sketches of a `_Moments` as pickled: raw values in one array, not one per column.

    An accumulator holds a sketch per (slice, replicate, column): thousands of small objects,
    which made pickling it (runners encode it between steps, and sample its size) the largest
    cost of a run. Packed, it pickles as a few buffers.
    """

    epsilon: float
    max_num_elements: int
    lengths: np.ndarray  # raw values per column (int64)
    values: np.ndarray  # every column's raw values, concatenated (float64)
    promoted: dict[int, Any]  # column -> its KllSketch, for columns past the raw limit


def _pack_sketches(sketches: list[_BufferedSketch]) -> _PackedSketches | list[_BufferedSketch]:
    if not sketches:
        return sketches
    raws: list[np.ndarray] = []
    promoted: dict[int, Any] = {}
    for j, sketch in enumerate(sketches):
        if sketch.sketch is not None:
            promoted[j] = sketch.sketch
            raws.append(np.zeros(0, np.float64))
        else:
            raws.append(sketch.raw_values())
    lengths = np.array([len(r) for r in raws], dtype=np.int64)
    values = np.concatenate(raws) if raws else np.zeros(0, np.float64)
    first = sketches[0]
    return _PackedSketches(first.epsilon, first.max_num_elements, lengths, values, promoted)


def _unpack_sketches(packed: _PackedSketches) -> list[_BufferedSketch]:
    sketches = []
    ends = np.cumsum(packed.lengths)
    for j, (end, length) in enumerate(zip(ends.tolist(), packed.lengths.tolist(), strict=True)):
        sketch = _BufferedSketch(packed.epsilon, packed.max_num_elements)
        if j in packed.promoted:
            sketch.sketch = packed.promoted[j]
        elif length:
            sketch.values = [packed.values[end - length : end]]  # read-only views: never mutated
            sketch.count = length
        sketches.append(sketch)
    return sketches


class _Moments:
    """Mergeable moments and quantile sketches of `width` value columns (one per feature).

    Counts, sums, |sums|, min/max and M2, the sum of squared deviations merged with Chan et
    al.'s parallel update (so the standard deviation is numerically stable), plus one quantile
    sketch per column.
    """

    __slots__ = (
        "count",
        "m2",
        "max",
        "min",
        "missing",
        "nan_count",
        "sketches",
        "total",
        "total_abs",
    )

    def __init__(self, width: int, make_sketch: Callable[[], _BufferedSketch]) -> None:
        self.count = np.zeros(width, dtype=np.int64)
        self.nan_count = np.zeros(width, dtype=np.int64)
        self.missing = np.zeros(width, dtype=np.int64)  # rows without a value (inputs)
        self.total = np.zeros(width, dtype=np.float64)
        self.total_abs = np.zeros(width, dtype=np.float64)
        self.m2 = np.zeros(width, dtype=np.float64)
        self.min = np.full(width, np.inf, dtype=np.float64)
        self.max = np.full(width, -np.inf, dtype=np.float64)
        self.sketches: list[_BufferedSketch] = [make_sketch() for _ in range(width)]

    def __getstate__(self) -> dict:
        state = {name: getattr(self, name) for name in self.__slots__ if name != "sketches"}
        state["sketches"] = _pack_sketches(self.sketches)
        return state

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        if isinstance(self.sketches, _PackedSketches):
            self.sketches = _unpack_sketches(self.sketches)

    def merge_moments(self, count: np.ndarray, total: np.ndarray, m2: np.ndarray) -> None:
        """Merges per-column (count, sum, M2) of disjoint data (Chan et al.)."""
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

    def add(self, group: _GroupMoments, g: int) -> None:
        """Adds group `g` of a batch's `_GroupMoments`."""
        self.nan_count += group.nan_count[g]
        self.missing += group.missing[g]
        self.total_abs += group.total_abs[g]
        self.min = np.minimum(self.min, group.mins[g])
        self.max = np.maximum(self.max, group.maxs[g])
        self.merge_moments(group.count[g], group.total[g], group.m2[g])
        start, end = group.starts[g], group.ends[g]
        for j, sketch in enumerate(self.sketches):
            if group.count[g, j]:
                run = group.values_by_column[j, start:end][group.valid_by_column[j, start:end]]
                sketch.add_array(run)

    def merge(self, other: _Moments) -> None:
        """Merges `other` (left unchanged) into these moments."""
        self.merge_moments(other.count, other.total, other.m2)
        self.nan_count = self.nan_count + other.nan_count
        self.missing = self.missing + other.missing
        self.total_abs = self.total_abs + other.total_abs
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        for mine, theirs in zip(self.sketches, other.sketches, strict=True):
            mine.Merge(theirs)

    def compact(self) -> None:
        for sketch in self.sketches:
            sketch.Compact()


class _GroupMoments(NamedTuple):
    """Per-group reductions of a [rows, columns] value matrix whose rows are sorted by group."""

    count: np.ndarray  # [groups, columns] finite values
    nan_count: np.ndarray  # [groups, columns] NaN values that are not missing
    total: np.ndarray
    total_abs: np.ndarray
    m2: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    missing: np.ndarray  # [groups, columns] rows without a value
    values_by_column: np.ndarray  # [columns, rows], column-major copy of the sorted values
    valid_by_column: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def _group_moments(
    values: np.ndarray, missing: np.ndarray | None, starts: np.ndarray, ends: np.ndarray
) -> _GroupMoments:
    """Reduces `values` [rows, columns] (sorted by group; NaN excluded) per group at `starts`.

    Works on a column-major copy: `ufunc.reduceat` along contiguous rows is an order of
    magnitude faster than along axis 0, and the sketches want the columns contiguous anyway.
    """
    sizes = ends - starts
    values_t = np.ascontiguousarray(values.T)  # [columns, rows]
    valid_t = ~np.isnan(values_t)
    clean_t = np.where(valid_t, values_t, 0.0)
    count = np.add.reduceat(valid_t, starts, axis=1, dtype=np.int64).T
    total = np.add.reduceat(clean_t, starts, axis=1).T
    total_abs = np.add.reduceat(np.abs(clean_t), starts, axis=1).T
    mins = np.minimum.reduceat(np.where(valid_t, values_t, np.inf), starts, axis=1).T
    maxs = np.maximum.reduceat(np.where(valid_t, values_t, -np.inf), starts, axis=1).T
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    deviation = np.where(valid_t, values_t - np.repeat(means.T, sizes, axis=1), 0.0)
    m2 = np.add.reduceat(deviation * deviation, starts, axis=1).T
    if missing is None:
        absent = np.zeros_like(count)
    else:
        absent = np.add.reduceat(np.ascontiguousarray(missing.T), starts, axis=1, dtype=np.int64).T
    nan_count = sizes[:, None] - count - absent
    return _GroupMoments(
        count, nan_count, total, total_abs, m2, mins, maxs, absent, values_t, valid_t, starts, ends
    )


class _Categories:
    """Mergeable value counts of one categorical input: top values and a distinct estimate."""

    __slots__ = ("count", "missing", "top", "unique")

    def __init__(self, top_values: int) -> None:
        self.count = 0
        self.missing = 0
        self.top = MisraGriesSketch(max(top_values, 1) * 4)
        self.unique = KmvSketch(_KMV_BUCKETS)

    def __getstate__(self) -> dict:
        return {
            "count": self.count,
            "missing": self.missing,
            "top": self.top.Serialize(),
            "unique": self.unique.Serialize(),
        }

    def __setstate__(self, state: dict) -> None:
        self.count = state["count"]
        self.missing = state["missing"]
        self.top = MisraGriesSketch.Deserialize(state["top"])
        self.unique = KmvSketch.Deserialize(state["unique"])

    def merge(self, other: _Categories) -> None:
        self.count += other.count
        self.missing += other.missing
        self.top.Merge(other.top)
        self.unique.Merge(other.unique)


class _SliceAccumulator:
    """Mergeable statistics of one slice (or one replicate of a slice)."""

    __slots__ = (
        "abs_delta_max",
        "abs_delta_sketch",
        "attributions",
        "categories",
        "examples",
        "grids",
        "inputs",
        "prediction_count",
        "prediction_sum",
        "vectors",
    )

    def __init__(self, fn: AttributionStatsCombineFn) -> None:
        self.examples = 0
        self.prediction_sum = 0.0
        self.prediction_count = 0
        self.abs_delta_max = -math.inf
        self.abs_delta_sketch = fn._make_sketch()
        self.attributions = _Moments(len(fn._features), fn._make_sketch)
        self.inputs = _Moments(len(fn._numeric), fn._make_sketch)
        self.vectors = [_Moments(1, fn._make_sketch) for _ in fn._vectors]
        self.categories = [_Categories(fn._top_values) for _ in fn._categorical]
        self.grids = [np.zeros(cells) for cells in fn._grid_cells]  # sums of grid_<f> cells

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def merge(self, other: _SliceAccumulator) -> None:
        """Merges `other` (left unchanged) into this slice accumulator."""
        self.examples += other.examples
        self.prediction_sum += other.prediction_sum
        self.prediction_count += other.prediction_count
        self.abs_delta_max = max(self.abs_delta_max, other.abs_delta_max)
        self.abs_delta_sketch.Merge(other.abs_delta_sketch)
        self.attributions.merge(other.attributions)
        self.inputs.merge(other.inputs)
        for mine, theirs in zip(self.vectors, other.vectors, strict=True):
            mine.merge(theirs)
        for mine, theirs in zip(self.categories, other.categories, strict=True):
            mine.merge(theirs)
        self.grids = [mine + theirs for mine, theirs in zip(self.grids, other.grids, strict=True)]

    def compact(self) -> None:
        """Compacts every quantile sketch of the slice."""
        self.abs_delta_sketch.Compact()
        self.attributions.compact()
        self.inputs.compact()
        for vector in self.vectors:
            vector.compact()


SliceKey = tuple[str, str, int]  # (slice name, slice value, replicate or ALL_DATA)


class _Accumulator:
    """The accumulator of `AttributionStatsCombineFn`: slice key -> `_SliceAccumulator`.

    Keys are (slice name, slice value, replicate). With replicates, every example lands in the
    replicate its key hashes to, and the whole slice is the merge of its replicates (made when
    the output is extracted); without, the replicate is `ALL_DATA`.
    """

    __slots__ = ("slices",)

    def __init__(self) -> None:
        self.slices: dict[SliceKey, _SliceAccumulator] = {}

    def __getstate__(self) -> dict:
        return {"slices": self.slices}

    def __setstate__(self, state: dict) -> None:
        self.slices = state["slices"]


class _Grouping(NamedTuple):
    """Rows of one batch grouped by the values of one slice spec (and replicate)."""

    name: str
    codes: np.ndarray  # int64 group code per row, 0..len(values) * replicates - 1.
    values: list[str]  # slice value per code // replicates.
    replicates: int  # 1 without replicates: code == value code.


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
        # A null element is a padding position of a text feature (`transforms.text`): not a
        # score, left out of the sum (its attribution is 0). A NaN element poisons its example.
        flat_values = pc.fill_null(flat, 0.0).to_numpy(zero_copy_only=False)
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


class _FlatInput(NamedTuple):
    """The values of one input column, flattened: values, their row, and rows without any."""

    values: pa.Array | np.ndarray  # numeric: float64 numpy; categorical: a pyarrow array
    parents: np.ndarray  # int64 row of each value
    missing: np.ndarray  # bool per row: null or empty


class _BatchData(NamedTuple):
    """The columns of one batch that the statistics read, as arrays."""

    attributions: np.ndarray  # [rows, features] per-example attributions (NaN: excluded)
    prediction: np.ndarray
    abs_delta: np.ndarray
    numeric: np.ndarray  # [rows, numeric inputs]
    numeric_missing: np.ndarray  # [rows, numeric inputs] bool
    vectors: list[_FlatInput]
    categorical: list[_FlatInput]
    grids: Sequence[np.ndarray] = ()  # [rows, cells] per image feature


class _VectorGroups(NamedTuple):
    index: dict[int, int]  # code -> group of `moments`
    moments: _GroupMoments


def _numeric_values(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A scalar numeric column as float64 values (null -> NaN) and its null mask."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if _is_list(column.type):  # one value per example, stored as a list
        column = pc.list_element(column, 0) if len(column) else pa.array([], pa.float64())
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    missing = column.is_null().to_numpy(zero_copy_only=False)
    return values, missing


def _is_list(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
    )


def _flat_values(column: pa.Array) -> _FlatInput:
    """Every value of a (list or scalar) column, with its row; rows without any value."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if _is_list(column.type):
        flat = pc.list_flatten(column)
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        missing = lengths == 0
    else:
        flat = column
        parents = np.arange(n, dtype=np.int64)
        missing = column.is_null().to_numpy(zero_copy_only=False)
    valid = flat.is_valid().to_numpy(zero_copy_only=False)
    if not valid.all():  # a null element of a list: not a value
        keep = np.flatnonzero(valid)
        flat, parents = flat.take(pa.array(keep)), parents[keep]
    if pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type):
        values: pa.Array | np.ndarray = (
            flat.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        )
    else:
        values = flat
    return _FlatInput(values, parents, missing)


def _missing_per_code(flat: _FlatInput, codes: np.ndarray, n_codes: int) -> np.ndarray:
    return np.bincount(codes, weights=flat.missing, minlength=n_codes).astype(np.int64)


def _vector_groups(
    flat: _FlatInput, codes: np.ndarray, n_codes: int
) -> tuple[_VectorGroups, np.ndarray]:
    """The values of a list-valued numeric input grouped by the code of their row."""
    value_codes = codes[flat.parents]
    order = np.argsort(value_codes, kind="stable")
    sorted_codes = value_codes[order]
    present, starts = np.unique(sorted_codes, return_index=True)
    ends = np.append(starts[1:], len(sorted_codes))
    values = np.asarray(flat.values)[order][:, np.newaxis]
    moments = _group_moments(values, None, starts, ends)
    index = {int(code): g for g, code in enumerate(present)}
    return _VectorGroups(index, moments), _missing_per_code(flat, codes, n_codes)


def _category_groups(
    flat: _FlatInput, codes: np.ndarray, n_codes: int
) -> tuple[dict[int, pa.Array], np.ndarray]:
    """The values of a categorical input grouped by the code of their row."""
    value_codes = codes[flat.parents]
    order = np.argsort(value_codes, kind="stable")
    sorted_codes = value_codes[order]
    present, starts = np.unique(sorted_codes, return_index=True)
    ends = np.append(starts[1:], len(sorted_codes))
    values = flat.values
    groups = {
        int(code): values.take(pa.array(order[start:end]))
        for code, start, end in zip(present, starts, ends, strict=True)
    }
    return groups, _missing_per_code(flat, codes, n_codes)


def _text(value: object) -> str:
    return (
        value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)
    )


class _Tables:
    """Columns of the output tables, filled slice by slice."""

    def __init__(self) -> None:
        self.features: dict[str, list] = {n: [] for n in FEATURE_STATS_SCHEMA.names}
        self.slices: dict[str, list] = {n: [] for n in SLICE_STATS_SCHEMA.names}
        self.feature_replicates: dict[str, list] = {n: [] for n in FEATURE_REPLICATES_SCHEMA.names}
        self.slice_replicates: dict[str, list] = {n: [] for n in SLICE_REPLICATES_SCHEMA.names}
        self.histogram_rows: list[dict] = []
        self.input_rows: list[dict] = []
        self.image_grid_rows: list[dict] = []

    def add_histogram(
        self, replicate: int, key: tuple[str, str], feature: str, **values: object
    ) -> None:
        """Adds one histogram row."""
        self.histogram_rows.append(
            {
                "replicate": replicate,
                "slice_name": key[0],
                "slice_value": key[1],
                "feature": feature,
                **values,
            }
        )

    def _input_row(
        self, replicate: int, key: tuple[str, str], feature: str, kind: str, examples: int
    ) -> dict:
        row = {
            "replicate": replicate,
            "slice_name": key[0],
            "slice_value": key[1],
            "feature": feature,
            "kind": kind,
            "examples": int(examples),
            "mean": math.nan,
            "std": math.nan,
            "min": math.nan,
            "max": math.nan,
            "unique": None,
            "top_values": [],
        }
        self.input_rows.append(row)
        return row

    def add_numeric_input(
        self,
        replicate: int,
        key: tuple[str, str],
        feature: str,
        examples: int,
        block: _Moments,
        j: int,
    ) -> None:
        row = self._input_row(replicate, key, feature, KIND_NUMERIC, examples)
        count = int(block.count[j])
        row.update(missing=int(block.missing[j]), count=count, nan_count=int(block.nan_count[j]))
        if count:
            row.update(
                mean=float(block.total[j] / count),
                std=float(math.sqrt(max(block.m2[j], 0.0) / count)),
                min=float(block.min[j]),
                max=float(block.max[j]),
            )

    def add_categorical_input(
        self,
        replicate: int,
        key: tuple[str, str],
        feature: str,
        examples: int,
        counts: _Categories,
        top_values: int,
    ) -> None:
        row = self._input_row(replicate, key, feature, KIND_CATEGORICAL, examples)
        row.update(missing=counts.missing, count=counts.count, nan_count=0)
        if counts.count:
            estimate = counts.top.Estimate()
            pairs = zip(estimate.field(0).to_pylist(), estimate.field(1).to_pylist(), strict=True)
            top = sorted(((_text(v), round(c)) for v, c in pairs), key=lambda p: (-p[1], p[0]))
            row["top_values"] = [{"value": v, "count": c} for v, c in top[:top_values]]
            row["unique"] = int(counts.unique.Estimate())

    def statistics(self) -> AttributionStatistics:
        return AttributionStatistics(
            features=pa.Table.from_pydict(self.features, schema=FEATURE_STATS_SCHEMA),
            slices=pa.Table.from_pydict(self.slices, schema=SLICE_STATS_SCHEMA),
            histograms=pa.Table.from_pylist(self.histogram_rows, schema=HISTOGRAM_SCHEMA),
            inputs=pa.Table.from_pylist(self.input_rows, schema=INPUT_STATS_SCHEMA),
            feature_replicates=pa.Table.from_pydict(
                self.feature_replicates, schema=FEATURE_REPLICATES_SCHEMA
            ),
            slice_replicates=pa.Table.from_pydict(
                self.slice_replicates, schema=SLICE_REPLICATES_SCHEMA
            ),
            image_grids=pa.Table.from_pylist(self.image_grid_rows, schema=IMAGE_GRIDS_SCHEMA),
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
    """Combines record batches of per-example results into `AttributionStatistics`.

    Per slice it keeps exact counts, sums, |sums|, min/max and M2 of every attribution (and, when
    configured, of every numeric input), quantile sketches, and the top values and a distinct
    count of every categorical input. Accumulators are picklable and merge in any order;
    `compact` compacts the sketches before they are shuffled.
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
        replicates: int = 0,
        histogram_buckets: int = DEFAULT_HISTOGRAM_BUCKETS,
        numeric_inputs: Sequence[tuple[str, str]] = (),
        vector_inputs: Sequence[tuple[str, str]] = (),
        categorical_inputs: Sequence[tuple[str, str]] = (),
        top_values: int = DEFAULT_TOP_VALUES,
        image_grids: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """Initialises the combine fn.

        Args:
          features: Attributed feature names; their attributions are read from ``attr_<f>``.
          slices: Slice specs, each a non-empty list of pass-through column names; a slice value
            is the tuple of their values, joined with ``","`` (as is the slice name).
          slice_by_target: Whether to add one slice per value of the ``target`` column.
          quantiles: Number of quantile buckets (>= 2); ``quantiles + 1`` boundaries are output.
          epsilon: Rank error bound of the quantile sketches, as a fraction of the count.
          max_num_elements: Kept for compatibility; unused (the KLL sketches need no capacity
            hint).
          replicates: Number of key-hash replicates (0: none). Each example also counts in the
            replicate ``crc32("replicate:" + key) % replicates``, and every statistic is kept
            per replicate too (the ``key`` column is needed).
          histogram_buckets: Equal-mass buckets of the histograms (`HISTOGRAM_SCHEMA`).
          numeric_inputs: (feature, column) of scalar numeric inputs to describe.
          vector_inputs: (feature, column) of list-valued numeric inputs (statistics over every
            value of the lists).
          categorical_inputs: (feature, column) of string (or integer id) inputs: top values
            and a distinct estimate.
          top_values: Top values kept per categorical input.
          image_grids: Image feature -> (GH, GW): the mean of each cell of ``grid_<f>`` per
            slice (`IMAGE_GRIDS_SCHEMA`).

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
        if histogram_buckets < 2:
            raise ValueError(f"histogram_buckets must be >= 2, got {histogram_buckets}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if replicates < 0 or replicates == 1:
            raise ValueError(f"replicates must be 0 (none) or >= 2, got {replicates}")
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
        self._replicates = int(replicates)
        self._histogram_buckets = int(histogram_buckets)
        self._numeric = [tuple(i) for i in numeric_inputs]
        self._vectors = [tuple(i) for i in vector_inputs]
        self._categorical = [tuple(i) for i in categorical_inputs]
        self._top_values = int(top_values)
        self._image_grids = {name: tuple(grid) for name, grid in (image_grids or {}).items()}
        self._grid_cells = [gh * gw for gh, gw in self._image_grids.values()]
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
        return _SliceAccumulator(self)

    def create_accumulator(self) -> _Accumulator:
        """Returns an empty accumulator."""
        return _Accumulator()

    def _replicate_of_rows(self, batch: pa.RecordBatch) -> np.ndarray | None:
        if not self._replicates:
            return None
        _require_column(batch, "key")
        keys = batch.column("key").to_pylist()
        hashes = np.fromiter(
            (zlib.crc32(_REPLICATE_SALT + str(k).encode()) for k in keys),
            dtype=np.int64,
            count=len(keys),
        )
        return hashes % self._replicates

    def _groupings(
        self, batch: pa.RecordBatch, overall: bool = True, target: bool = True
    ) -> list[_Grouping]:
        num_rows = batch.num_rows
        raw = [(ALL_SLICE[0], np.zeros(num_rows, np.int64), [ALL_SLICE[1]])] if overall else []
        for spec in self._specs if overall else ():
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
            raw.append((",".join(spec), codes, values))
        if self._slice_by_target and target:
            _require_column(batch, TARGET_SLICE_NAME)
            codes, values = _column_codes(batch.column(TARGET_SLICE_NAME))
            raw.append((TARGET_SLICE_NAME, codes, values))
        replicate = self._replicate_of_rows(batch)
        if replicate is None:
            return [_Grouping(name, codes, values, 1) for name, codes, values in raw]
        r = self._replicates
        return [_Grouping(name, codes * r + replicate, values, r) for name, codes, values in raw]

    def add_input(self, accumulator: _Accumulator, batch: pa.RecordBatch) -> _Accumulator:
        """Adds one record batch of per-example results to `accumulator`.

        Args:
          accumulator: The accumulator to update (mutated and returned).
          batch: A record batch with ``prediction``, ``delta``, ``target`` (when slicing by
            target), ``key`` (with replicates), every ``attr_<feature>``, every slice column and
            every configured input column.

        Returns:
          The updated accumulator.

        Raises:
          ValueError: If a needed column is missing.
        """
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
        if batch is None or batch.num_rows == 0:
            return accumulator
        if OUTPUT_RANK_COLUMN in batch.schema.names:
            ranks = batch.column(OUTPUT_RANK_COLUMN).to_numpy(zero_copy_only=False)
            if (ranks != 0).any():  # several outputs per example: see the module docstring
                first = batch.filter(pa.array(ranks == 0))
                self._add_batch(accumulator, first, target=False)
                if self._slice_by_target:
                    self._add_batch(accumulator, batch, overall=False)
                return accumulator
        return self._add_batch(accumulator, batch)

    def _add_batch(
        self,
        accumulator: _Accumulator,
        batch: pa.RecordBatch,
        overall: bool = True,
        target: bool = True,
    ) -> _Accumulator:
        """Adds `batch` to the overall and configured slices (`overall`) and to its target
        slices (`target`)."""
        if batch.num_rows == 0:
            return accumulator
        num_rows = batch.num_rows
        for name in ("prediction", "delta"):
            _require_column(batch, name)
        attributions = np.empty((num_rows, len(self._features)), dtype=np.float64)
        for j, feature in enumerate(self._features):
            column_name = ATTRIBUTION_PREFIX + feature
            _require_column(batch, column_name)
            attributions[:, j] = _attribution_values(batch.column(column_name), num_rows)
        numeric = np.empty((num_rows, len(self._numeric)), dtype=np.float64)
        numeric_missing = np.zeros((num_rows, len(self._numeric)), dtype=bool)
        for j, (_, column_name) in enumerate(self._numeric):
            _require_column(batch, column_name)
            numeric[:, j], numeric_missing[:, j] = _numeric_values(batch.column(column_name))
        vectors = [self._flat_input(batch, column_name) for _, column_name in self._vectors]
        categorical = [self._flat_input(batch, column_name) for _, column_name in self._categorical]
        batch_data = _BatchData(
            attributions,
            _float_column(batch, "prediction"),
            np.abs(_float_column(batch, "delta")),
            numeric,
            numeric_missing,
            vectors,
            categorical,
            [self._grid_values(batch, name, cells) for name, cells in self._grid_columns()],
        )
        for grouping in self._groupings(batch, overall, target):
            self._add_grouping(accumulator, grouping, batch_data)
        return accumulator

    def _grid_columns(self) -> list[tuple[str, int]]:
        return [(name, gh * gw) for name, (gh, gw) in self._image_grids.items()]

    @staticmethod
    def _grid_values(batch: pa.RecordBatch, name: str, cells: int) -> np.ndarray:
        column_name = GRID_PREFIX + name
        _require_column(batch, column_name)
        flat = pc.list_flatten(batch.column(column_name)).to_numpy(zero_copy_only=False)
        return flat.astype(np.float64).reshape(batch.num_rows, cells)

    @staticmethod
    def _flat_input(batch: pa.RecordBatch, column_name: str) -> _FlatInput:
        _require_column(batch, column_name)
        return _flat_values(batch.column(column_name))

    def _slice_state(self, accumulator: _Accumulator, key: SliceKey) -> _SliceAccumulator:
        state = accumulator.slices.get(key)
        if state is None:
            state = accumulator.slices[key] = self._new_slice()
        return state

    def _add_grouping(
        self, accumulator: _Accumulator, grouping: _Grouping, data: _BatchData
    ) -> None:
        """Adds the rows of one batch, grouped by `grouping`, to their slices."""
        codes = grouping.codes
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        present, starts = np.unique(sorted_codes, return_index=True)
        ends = np.append(starts[1:], len(sorted_codes))
        sizes = ends - starts

        attribution = _group_moments(data.attributions[order], None, starts, ends)
        numeric = None
        if data.numeric.shape[1]:
            numeric = _group_moments(data.numeric[order], data.numeric_missing[order], starts, ends)
        sorted_prediction = data.prediction[order]
        prediction_valid = ~np.isnan(sorted_prediction)
        prediction_sum = np.add.reduceat(np.where(prediction_valid, sorted_prediction, 0.0), starts)
        prediction_count = np.add.reduceat(prediction_valid.astype(np.int64), starts)
        sorted_delta = data.abs_delta[order]
        delta_valid = ~np.isnan(sorted_delta)
        delta_max = np.maximum.reduceat(np.where(delta_valid, sorted_delta, -np.inf), starts)
        n_codes = int(codes.max()) + 1
        vectors = [_vector_groups(v, codes, n_codes) for v in data.vectors]
        grids = [np.add.reduceat(g[order], starts, axis=0) for g in data.grids]
        categorical = [_category_groups(c, codes, n_codes) for c in data.categorical]

        replicates = grouping.replicates
        for g, code in enumerate(present):
            replicate = int(code % replicates) if self._replicates else ALL_DATA
            key = (grouping.name, grouping.values[code // replicates], replicate)
            state = self._slice_state(accumulator, key)
            start, end = starts[g], ends[g]
            state.examples += int(sizes[g])
            state.prediction_sum += float(prediction_sum[g])
            state.prediction_count += int(prediction_count[g])
            state.abs_delta_max = max(state.abs_delta_max, float(delta_max[g]))
            group_delta = sorted_delta[start:end][delta_valid[start:end]]
            if group_delta.size:
                state.abs_delta_sketch.add_array(group_delta)
            state.attributions.add(attribution, g)
            for j, sums in enumerate(grids):
                state.grids[j] += sums[g]
            if numeric is not None:
                state.inputs.add(numeric, g)
            for moments, (groups, missing) in zip(state.vectors, vectors, strict=True):
                moments.missing += missing[code]
                if code in groups.index:
                    moments.add(groups.moments, groups.index[code])
            for counts, (groups, missing) in zip(state.categories, categorical, strict=True):
                counts.missing += int(missing[code])
                values = groups.get(code)
                if values is not None and len(values):
                    counts.count += len(values)
                    counts.top.AddValues(values)
                    counts.unique.AddValues(values)

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

    def _final_quantiles(self, sketch: _BufferedSketch, buckets: int) -> np.ndarray:
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

    def _quantiles_of(self, moments: _Moments, *bucket_counts: int) -> dict[int, list[np.ndarray]]:
        """The quantile boundaries of every column of `moments`, for each bucket count.

        One quantile computation at the least common multiple of the counts serves them all
        (the boundaries of ``b`` buckets are every ``L/b``-th of ``L``). Columns whose values
        are still raw and equally many (the usual case: no NaNs) are done in one vectorised
        call; the others one by one.
        """
        common = math.lcm(*bucket_counts)
        raws = [sketch.raw_values() for sketch in moments.sketches]
        sizes = {len(r) for r in raws if r is not None}
        if raws and all(r is not None for r in raws) and len(sizes) == 1:
            table = list(_exact_quantiles(np.stack(raws), common))
        else:
            table = [self._final_quantiles(sketch, common) for sketch in moments.sketches]
        return {b: [q[:: common // b] for q in table] for b in bucket_counts}

    def _merged(self, states: Sequence[_SliceAccumulator]) -> _SliceAccumulator:
        if len(states) == 1:
            return states[0]
        merged = self._new_slice()
        _WHOLE_SLICE.parts = len(states)
        try:
            for state in states:
                merged.merge(state)
        finally:
            _WHOLE_SLICE.parts = 1
        return merged

    def extract_output(self, accumulator: _Accumulator) -> AttributionStatistics:
        """Renders the accumulator as `AttributionStatistics` (empty tables when empty)."""
        by_slice: dict[tuple[str, str], list[tuple[int, _SliceAccumulator]]] = {}
        for (name, value, replicate), state in accumulator.slices.items():
            by_slice.setdefault((name, value), []).append((replicate, state))
        keys = sorted(
            by_slice,
            key=lambda k: (
                _slice_name_rank(k[0], self._spec_names),
                k[0],
                _slice_value_key(k[0], k[1]),
            ),
        )
        tables = _Tables()
        for key in keys:
            parts = sorted(by_slice[key], key=lambda p: p[0])
            whole = self._merged([state for _, state in parts])
            self._render(tables, key, ALL_DATA, whole)
            if self._replicates:
                for replicate, state in parts:
                    self._render(tables, key, replicate, state)
        return tables.statistics()

    def _render(
        self, tables: _Tables, key: tuple[str, str], replicate: int, state: _SliceAccumulator
    ) -> None:
        """Adds the rows of one slice (or one replicate of it) to `tables`."""
        whole = replicate == ALL_DATA
        features = tables.features if whole else tables.feature_replicates
        slices = tables.slices if whole else tables.slice_replicates
        moments = state.attributions
        quantile_sets = self._quantiles_of(moments, self._quantiles, self._histogram_buckets)
        quantiles = quantile_sets[self._quantiles]
        count = moments.count
        has_data = count > 0
        num_features = len(self._features)
        with np.errstate(invalid="ignore", divide="ignore"):
            denominator = np.where(has_data, count, 1)
            mean = np.where(has_data, moments.total / denominator, np.nan)
            mean_abs = np.where(has_data, moments.total_abs / denominator, np.nan)
            std = np.where(has_data, np.sqrt(np.maximum(moments.m2, 0.0) / denominator), np.nan)
            abs_sum = float(np.nansum(mean_abs))
            share = mean_abs / abs_sum if abs_sum > 0 else np.full(num_features, np.nan)
        mins = np.where(has_data, moments.min, np.nan)
        maxs = np.where(has_data, moments.max, np.nan)
        # Rank 1 = largest mean |attribution|; ties by feature order; no data ranks last.
        sort_key = np.where(has_data, -np.nan_to_num(mean_abs, nan=0.0), np.inf)
        order = np.argsort(sort_key, kind="stable")
        ranks = np.empty(num_features, dtype=np.int64)
        ranks[order] = np.arange(1, num_features + 1)
        for j in order:
            if not whole:
                features["replicate"].append(replicate)
            features["slice_name"].append(key[0])
            features["slice_value"].append(key[1])
            features["feature"].append(self._features[j])
            features["count"].append(int(count[j]))
            features["nan_count"].append(int(moments.nan_count[j]))
            features["mean_attributions"].append(float(mean[j]))
            features["mean_absolute_attributions"].append(float(mean_abs[j]))
            features["total_attributions"].append(float(moments.total[j]))
            features["std"].append(float(std[j]))
            features["min"].append(float(mins[j]))
            features["max"].append(float(maxs[j]))
            features["quantiles"].append(quantiles[j].tolist())
            features["share"].append(float(share[j]))
            features["rank"].append(int(ranks[j]))
        delta_quantiles = self._final_quantiles(state.abs_delta_sketch, _DELTA_BUCKETS)
        if not whole:
            slices["replicate"].append(replicate)
        slices["slice_name"].append(key[0])
        slices["slice_value"].append(key[1])
        slices["examples"].append(int(state.examples))
        slices["prediction_mean"].append(
            state.prediction_sum / state.prediction_count if state.prediction_count else math.nan
        )
        slices["abs_delta_p50"].append(float(delta_quantiles[_DELTA_P50_INDEX]))
        slices["abs_delta_p95"].append(float(delta_quantiles[_DELTA_P95_INDEX]))
        slices["abs_delta_max"].append(
            state.abs_delta_max if math.isfinite(state.abs_delta_max) else math.nan
        )
        buckets = self._histogram_buckets
        sources = [
            (SOURCE_ATTRIBUTION, self._features, moments, quantile_sets[buckets]),
            (SOURCE_INPUT, [f for f, _ in self._numeric], state.inputs, None),
        ]
        for (feature, _), vector in zip(self._vectors, state.vectors, strict=True):
            sources.append((SOURCE_INPUT, [feature], vector, None))
        for source, names, block, known in sources:
            boundaries = known
            if boundaries is None:
                boundaries = self._quantiles_of(block, buckets)[buckets] if names else []
            for j, feature in enumerate(names):
                has = block.count[j] > 0
                tables.add_histogram(
                    replicate,
                    key,
                    feature,
                    source=source,
                    count=int(block.count[j]),
                    nan_count=int(block.nan_count[j]),
                    boundaries=boundaries[j].tolist() if has else [],
                )
                if source == SOURCE_INPUT:
                    tables.add_numeric_input(replicate, key, feature, state.examples, block, j)
        for (feature, _), counts in zip(self._categorical, state.categories, strict=True):
            tables.add_categorical_input(
                replicate, key, feature, state.examples, counts, self._top_values
            )
        if whole:
            for (feature, (gh, gw)), sums in zip(
                self._image_grids.items(), state.grids, strict=True
            ):
                mean = sums / state.examples if state.examples else np.full(gh * gw, np.nan)
                tables.image_grid_rows.append(
                    {
                        "slice_name": key[0],
                        "slice_value": key[1],
                        "feature": feature,
                        "count": int(state.examples),
                        "grid_height": gh,
                        "grid_width": gw,
                        "mean_abs": mean.tolist(),
                    }
                )


def _exact_quantiles(values: np.ndarray, buckets: int) -> np.ndarray:
    """[F, buckets + 1] inverted-CDF quantile boundaries of each row of `values` [F, n].

    NaN rows when n == 0. The same values as `np.quantile(..., method="inverted_cdf")` (the
    boundary at probability p is the ``ceil(n * p)``-th smallest value, computed in floating
    point exactly as numpy does), found by one sort per row: several times faster than numpy's
    partitioning for many probabilities.
    """
    n = values.shape[1]
    if n == 0:
        return np.full((values.shape[0], buckets + 1), np.nan)
    probabilities = np.linspace(0.0, 1.0, buckets + 1)
    positions = np.clip(np.ceil(n * probabilities).astype(np.int64) - 1, 0, n - 1)
    return np.sort(values, axis=1)[:, positions]


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
