"""Data-derived baselines, resolved in the launcher before the job: `reference` and
`expected_gradients` (`attribution.baseline`).

* `reference`: one value per attributed feature, the `statistic` (median, mean, min, max, mode)
  of all values of that feature (every position of a list feature) in reference TFRecords
  (`pattern`, a first pass decoded with the job's schema) or in an earlier igbeam run's input
  statistics (`run`: `statistics/inputs.parquet` and `histograms.parquet`, slice `all`). The
  values are written into the baseline's `values`, so `summary.json` records them and a rerun
  of its config uses them without the pass.
* `expected_gradients`: at most `max_reference` reference records decoded into
  {feature: [R, size]} arrays (`Baseline.references`): all when there are fewer, else those with
  the smallest SHA-256 of (seed, record bytes), in that order, so the set depends on the
  records' contents and the seed only. The engine draws each example's baselines from them by
  key (`attribution.baselines.reference_indices`).

Memory is bounded: mean/min/max are running sums and extremes (exact); the median is exact from
the raw values up to `EXACT_MEDIAN_VALUES` values per feature, then from a KLL sketch
(`transforms.sketches`, epsilon `MEDIAN_EPSILON`); the mode counts distinct values exactly and
refuses more than `MODE_MAX_DISTINCT`; expected gradients keep `max_reference` records.

No Beam pipeline: a plain loop over the files in the launcher (Beam's filesystems read them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from attribution.settings import Baseline
from transforms.constants import HISTOGRAMS_FILE, INPUT_STATISTICS_FILE, STATISTICS_DIR
from transforms.decode import ExampleDecoder
from transforms.records import Record, match_files, read_tfrecord_file
from transforms.sketches import KllSketch, k_for

__all__ = [
    "EXACT_MEDIAN_VALUES",
    "MODE_MAX_DISTINCT",
    "ReferenceDataError",
    "load_references",
    "reference_statistics",
    "resolve_baseline",
    "run_statistics",
]

EXACT_MEDIAN_VALUES = 1_000_000
"""Per feature, the median is exact (numpy's) up to this many values, then from a KLL sketch."""
MEDIAN_EPSILON = 0.001
"""Rank error target of the median's KLL sketch beyond `EXACT_MEDIAN_VALUES` values."""
MODE_MAX_DISTINCT = 100_000
"""More distinct values than this is an error for `mode` (it is for discrete features)."""
READ_BATCH = 1024
"""Records decoded per tfx-bsl call."""
KEY = "attribution.baseline"


class ReferenceDataError(ValueError):
    """The reference data cannot give the baseline; the message starts with the dotted key."""


# ------------------------------------------------------------------------------ reading


@dataclasses.dataclass
class _Tally:
    records: int = 0
    skipped: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)


def _batches(
    pattern: str, schema: Any, tally: _Tally, key: str
) -> Iterator[tuple[pa.RecordBatch, list[bytes]]]:
    """Decoded batches of the reference records (and their bytes), in file order."""
    try:
        files = list(match_files(pattern))
    except ValueError as err:
        raise ReferenceDataError(f"{key}.pattern: {err}") from err
    decoder = ExampleDecoder(schema)
    pending: list[bytes] = []

    def flush() -> Iterator[tuple[pa.RecordBatch, list[bytes]]]:
        batch, good, reasons = decoder.decode(pending)
        for reason in reasons:
            if reason:
                tally.skipped += 1
                tally.reasons["not a valid tf.train.Example for the schema"] += 1
        yield batch, [pending[i] for i in good]
        pending.clear()

    for path in files:
        for item in read_tfrecord_file(path):
            if not isinstance(item, Record):
                tally.skipped += 1
                tally.reasons["corrupt record"] += 1
                continue
            tally.records += 1
            pending.append(item.data)
            if len(pending) >= READ_BATCH:
                yield from flush()
    if pending:
        yield from flush()


def _column(batch: pa.RecordBatch, name: str, key: str) -> pa.Array:
    if name not in batch.schema.names:
        raise ReferenceDataError(
            f"{key}.pattern: the schema has no feature {name!r} to read from the reference records"
        )
    return batch.column(name)


def _all_values(column: pa.Array) -> np.ndarray:
    """Every non-NaN value of a list column (missing rows contribute none), float64."""
    values = (
        pc.list_flatten(column)
        if pa.types.is_large_list(column.type) or pa.types.is_list(column.type)
        else column
    )
    out = np.asarray(values.to_numpy(zero_copy_only=False), np.float64)
    return out[~np.isnan(out)]


# ----------------------------------------------------------------------------- reference


class _Statistic:
    """One feature's running statistic over batches of values, in bounded memory."""

    def __init__(self, statistic: str, feature: str, key: str) -> None:
        self.statistic, self.feature, self.key = statistic, feature, key
        self.count = 0
        self.total = 0.0
        self.low, self.high = np.inf, -np.inf
        self.raw: list[np.ndarray] | None = []
        self.sketch: KllSketch | None = None
        self.counts: Counter = Counter()

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        self.count += len(values)
        if self.statistic == "mean":
            self.total += float(np.sum(values, dtype=np.float64))
        elif self.statistic == "min":
            self.low = min(self.low, float(values.min()))
        elif self.statistic == "max":
            self.high = max(self.high, float(values.max()))
        elif self.statistic == "median":
            if self.raw is not None:
                self.raw.append(values)
                if self.count > EXACT_MEDIAN_VALUES:  # too many to keep: into a sketch
                    self.sketch = KllSketch(k_for(MEDIAN_EPSILON))
                    self.sketch.add_array(np.concatenate(self.raw))
                    self.raw = None
            else:
                self.sketch.add_array(values)
        else:  # mode
            unique, counts = np.unique(values, return_counts=True)
            self.counts.update(dict(zip(unique.tolist(), counts.tolist(), strict=True)))
            if len(self.counts) > MODE_MAX_DISTINCT:
                raise ReferenceDataError(
                    f"{self.key}.statistic: mode needs a discrete feature; {self.feature!r} has "
                    f"more than {MODE_MAX_DISTINCT} distinct values in the reference records"
                )

    def result(self) -> tuple[float, bool]:
        """(value, exact)."""
        if not self.count:
            raise ReferenceDataError(
                f"{self.key}.pattern: no values of feature {self.feature!r} in the reference "
                "records"
            )
        if self.statistic == "mean":
            return self.total / self.count, True
        if self.statistic == "min":
            return self.low, True
        if self.statistic == "max":
            return self.high, True
        if self.statistic == "median":
            if self.raw is not None:
                return float(np.median(np.concatenate(self.raw))), True
            return float(self.sketch.quantiles(2)[1]), False
        best = max(self.counts.values())
        return float(min(v for v, c in self.counts.items() if c == best)), True


def reference_statistics(
    pattern: str, features: Sequence[str], schema: Any, statistic: str, key: str = KEY
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-feature `statistic` of every value in the reference records (a first pass).

    Returns:
      ({feature: value}, details for summary.json: records read and skipped, exactness).

    Raises:
      ReferenceDataError: no file, a feature not in the schema or without values, mode of a
        continuous feature.
    """
    tally = _Tally()
    stats = {name: _Statistic(statistic, name, key) for name in features}
    for batch, _ in _batches(pattern, schema, tally, key):
        for name, stat in stats.items():
            stat.add(_all_values(_column(batch, name, key)))
    values, exact = {}, {}
    for name, stat in stats.items():
        values[name], exact[name] = stat.result()
    details = {
        "source": "pattern",
        "records_read": tally.records,
        "records_skipped": tally.skipped,
        "values_per_feature": {n: s.count for n, s in stats.items()},
        "exact": all(exact.values()),
    }
    if tally.reasons:
        details["skipped_reasons"] = dict(tally.reasons)
    return values, details


def run_statistics(
    run: str, features: Sequence[str], statistic: str, key: str = KEY
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-feature `statistic` from an earlier igbeam run's input statistics (slice `all`).

    Raises:
      ReferenceDataError: the run has no statistics, lacks a feature, or cannot give the statistic.
    """
    directory = FileSystems.join(run, STATISTICS_DIR)
    name = INPUT_STATISTICS_FILE if statistic != "median" else HISTOGRAMS_FILE
    path = FileSystems.join(directory, name)
    if not FileSystems.exists(path):
        raise ReferenceDataError(
            f"{key}.run: no {STATISTICS_DIR}/{name} in {run!r} (an igbeam run?)"
        )
    with FileSystems.open(path) as f:
        table = pq.read_table(f).to_pandas()
    rows = table[
        (table["replicate"] == -1) & (table["slice_name"] == "all") & (table["slice_value"] == "")
    ]
    if statistic == "median":
        rows = rows[rows["source"] == "input"]
    values = {}
    for feature in features:
        row = rows[rows["feature"] == feature]
        if row.empty:
            raise ReferenceDataError(
                f"{key}.run: the run has no input statistics of feature {feature!r} (its "
                "attributed input features are described; run it with that feature attributed)"
            )
        row = row.iloc[0]
        if statistic == "median":
            bounds = np.asarray(row["boundaries"], np.float64)
            if len(bounds) % 2 == 0 or not len(bounds):
                raise ReferenceDataError(
                    f"{key}.run: the run's histogram of {feature!r} has {len(bounds)} boundaries; "
                    "the median needs an even number of buckets (statistics.histogram_buckets)"
                )
            values[feature] = float(bounds[len(bounds) // 2])
        elif statistic == "mode":
            if row["kind"] != "categorical" or not len(row["top_values"]):
                raise ReferenceDataError(
                    f"{key}.statistic: the run records no mode of numeric feature {feature!r}; "
                    "use pattern to compute it from the records"
                )
            values[feature] = float(row["top_values"][0]["value"])
        else:
            values[feature] = float(row[statistic])
        if not np.isfinite(values[feature]):
            raise ReferenceDataError(f"{key}.run: the run has no finite {statistic} of {feature!r}")
    return values, {"source": "run", "run": run}


# ---------------------------------------------------------------------- expected gradients


def load_references(
    pattern: str, features: Sequence[str], schema: Any, limit: int, seed: int, key: str = KEY
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """At most `limit` reference records as {feature: float32 [R, size]} (see the module doc).

    A record lacking a feature, or with a length that differs from the other records', is
    skipped and counted.
    """
    tally = _Tally()
    salt = f"igbeam-expected-gradients:{int(seed)}:".encode()
    kept: list[tuple[bytes, tuple[np.ndarray, ...]]] = []  # a max-heap on the hash (negated)
    sizes: dict[str, int] = {}
    for batch, records in _batches(pattern, schema, tally, key):
        columns = [_column(batch, name, key) for name in features]
        for row, data in enumerate(records):
            values = []
            for name, column in zip(features, columns, strict=True):
                cell = column[row].values
                if cell is None or len(cell) == 0:
                    values = None
                    break
                v = np.asarray(cell.to_numpy(zero_copy_only=False), np.float32)
                if sizes.setdefault(name, len(v)) != len(v):
                    values = None
                    break
                values.append(v)
            if values is None:
                tally.skipped += 1
                tally.reasons["missing feature or a different length"] += 1
                continue
            digest = hashlib.sha256(salt + data).digest()
            item = (bytes(255 - b for b in digest), tuple(values))  # smallest hashes on top
            if len(kept) < limit:
                heapq.heappush(kept, item)
            elif item[0] > kept[0][0]:
                heapq.heapreplace(kept, item)
    if not kept:
        raise ReferenceDataError(f"{key}.pattern: no usable reference records")
    ordered = [values for _, values in sorted(kept, reverse=True)]  # ascending hash
    references = {
        name: np.stack([values[i] for values in ordered]) for i, name in enumerate(features)
    }
    digest = hashlib.sha256()
    for name in features:
        digest.update(name.encode() + b"\0" + references[name].tobytes())
    details = {
        "source": "pattern",
        "records_read": tally.records,
        "records_skipped": tally.skipped,
        "records_kept": len(ordered),
        "sha256": digest.hexdigest(),
    }
    if tally.reasons:
        details["skipped_reasons"] = dict(tally.reasons)
    return references, details


# ------------------------------------------------------------------------------- resolving


def resolve_baseline(
    baseline: Baseline, features: Sequence[str], schema: Any, key: str = KEY
) -> tuple[Baseline, dict[str, Any] | None]:
    """The baseline with data-derived values filled in, and what summary.json records of it.

    Kinds other than `reference` and `expected_gradients`, and a `reference` whose `values`
    are given, come back unchanged with None.

    Raises:
      ReferenceDataError: see `reference_statistics`, `run_statistics`, `load_references`.
    """
    if baseline.kind == "reference" and baseline.values is None:
        if baseline.pattern is not None:
            values, details = reference_statistics(
                baseline.pattern, features, schema, baseline.statistic, key
            )
        else:
            values, details = run_statistics(baseline.run, features, baseline.statistic, key)
        details = {"kind": "reference", "statistic": baseline.statistic, **details}
        details["values"] = dict(values)
        return dataclasses.replace(baseline, values=values), details
    if baseline.kind == "expected_gradients" and baseline.references is None:
        references, details = load_references(
            baseline.pattern, features, schema, baseline.max_reference, baseline.seed, key
        )
        details = {"kind": "expected_gradients", **details}
        return dataclasses.replace(baseline, references=references), details
    return baseline, None
