"""Writing a run's outputs: per-example results and dead letters in, the output layout out.

`WriteRunOutputs` is the one transform behind everything a run writes under `output.path`
(names in `transforms.constants`):

  attributions/part-*.parquet   per-example results, merged into row groups of about
                                `row_group_rows` rows (explicit schema: `attribution_schema`)
  statistics/features.parquet   per slice and feature (`transforms.statistics`)
  statistics/slices.parquet     per slice
  duplicate_keys/part-*.parquet keys seen more than once (reported, never dropped)
  dead_letter/part-*.parquet    records not attributed, with stage, reason and raw bytes

The launcher (`pipeline.job`) writes `schema.pbtxt`, `summary.json` and `_SUCCESS`.
"""

from __future__ import annotations

import collections
import io
import itertools
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from transforms.constants import (
    ATTRIBUTIONS_DIR,
    DEAD_LETTER_DIR,
    DUPLICATE_KEYS_DIR,
    FEATURE_REPLICATES_FILE,
    FEATURE_STATISTICS_FILE,
    HISTOGRAMS_FILE,
    INPUT_STATISTICS_FILE,
    KEY_COLUMN,
    SLICE_REPLICATES_FILE,
    SLICE_STATISTICS_FILE,
    STATISTICS_DIR,
)
from transforms.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter, dead_letter_to_row
from transforms.statistics import AttributionStatistics, ComputeAttributionStatistics

__all__ = [
    "DUPLICATE_KEYS_SCHEMA",
    "KEY_BUCKETS",
    "STATISTICS_FILES",
    "RunOutputs",
    "WriteRunOutputs",
    "write_parquet_file",
    "write_statistics",
]

DUPLICATE_KEYS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)

KEY_BUCKETS = 1024
"""Keys are checked for duplicates per stable hash bucket (a few lists per table, not a key per
element in the shuffle)."""


class RunOutputs(NamedTuple):
    """What a run writes, as PCollections.

    Attributes:
      results: `pa.RecordBatch`es of per-example results (the output schema).
      dead_letters: `DeadLetter`s of every stage.
    """

    results: beam.PCollection[pa.RecordBatch]
    dead_letters: beam.PCollection[DeadLetter]


def write_parquet_file(path: str, table: pa.Table) -> None:
    """Writes `table` as one Parquet file at `path` (any Beam filesystem)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with FileSystems.create(path) as f:
        f.write(buffer.getvalue())


class _MergeTables(beam.DoFn):
    """Merges small RecordBatches into tables of about `rows` rows (one Parquet row group each)."""

    def __init__(self, rows: int) -> None:
        self._rows = rows

    def start_bundle(self) -> None:
        self._pending: list[pa.RecordBatch] = []
        self._count = 0

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.Table]:
        self._pending.append(batch)
        self._count += batch.num_rows
        if self._count >= self._rows:
            yield self._flush()

    def _flush(self) -> pa.Table:
        table = pa.Table.from_batches(self._pending).combine_chunks()
        self._pending, self._count = [], 0
        return table

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._pending:
            yield WindowedValue(
                self._flush(), window.GlobalWindow().max_timestamp(), [window.GlobalWindow()]
            )


def _key_buckets(table: pa.Table) -> Iterator[tuple[int, list[str]]]:
    """(bucket, keys) per stable key-hash bucket: duplicates meet in one bucket."""
    buckets: dict[int, list[str]] = {}
    for key in table.column(KEY_COLUMN).to_pylist():
        buckets.setdefault(zlib.crc32(key.encode()) % KEY_BUCKETS, []).append(key)
    return iter(buckets.items())


def _duplicates(bucket_keys: tuple[int, Sequence[list[str]]]) -> Iterator[dict]:
    counts = collections.Counter(itertools.chain.from_iterable(bucket_keys[1]))
    return ({"key": k, "count": c} for k, c in sorted(counts.items()) if c > 1)


STATISTICS_FILES = {
    FEATURE_STATISTICS_FILE: "features",
    SLICE_STATISTICS_FILE: "slices",
    HISTOGRAMS_FILE: "histograms",
    INPUT_STATISTICS_FILE: "inputs",
    FEATURE_REPLICATES_FILE: "feature_replicates",
    SLICE_REPLICATES_FILE: "slice_replicates",
}
"""Each file of `statistics/` and the `AttributionStatistics` table it holds."""


def write_statistics(directory: str, stats: AttributionStatistics) -> None:
    """Writes every table of `stats` into `directory` (`STATISTICS_FILES`)."""
    for name, table in STATISTICS_FILES.items():
        write_parquet_file(FileSystems.join(directory, name), getattr(stats, table))


class _WriteStatistics(beam.DoFn):
    def __init__(self, directory: str) -> None:
        self._dir = directory

    def process(self, stats: AttributionStatistics) -> Iterator[int]:
        write_statistics(self._dir, stats)
        yield stats.slices.num_rows


class WriteRunOutputs(beam.PTransform[RunOutputs, beam.pvalue.PDone]):
    """Writes a run's attributions, statistics, duplicate keys and dead letters.

    Args:
      output_dir: The run's `output.path`.
      output_schema: The explicit Arrow schema of the attributions written: a subset of the
        results' columns (the others, e.g. `in_<feature>` input values, only feed statistics).
      features: The attributed names (statistics read `attr_<name>`).
      slices: Slice specs of the statistics (lists of pass-through columns).
      row_group_rows: Rows per Parquet row group of the attributions.
      shards: Attribution files; 0 lets the runner decide.
      statistics: More keyword arguments of `AttributionStatsCombineFn` (replicates,
        histogram buckets, inputs to describe).
    """

    def __init__(
        self,
        output_dir: str,
        output_schema: pa.Schema,
        *,
        features: Sequence[str],
        slices: Sequence[Sequence[str]] = (),
        row_group_rows: int = 65536,
        shards: int = 0,
        statistics: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._dir = output_dir
        self._schema = output_schema
        self._features = list(features)
        self._slices = [list(s) for s in slices]
        self._row_group_rows = row_group_rows
        self._shards = shards
        self._statistics = dict(statistics or {})

    def _path(self, *parts: str) -> str:
        return FileSystems.join(self._dir, *parts)

    def expand(self, outputs: RunOutputs) -> beam.pvalue.PDone:
        # Large tables feed the writer (one row group each), the statistics and the key check,
        # so those steps see a few large elements rather than one per model batch.
        tables = outputs.results | "MergeRowGroups" >> beam.ParDo(
            _MergeTables(self._row_group_rows)
        )
        written = tables | "SelectWrittenColumns" >> beam.Map(
            lambda table, names: table.select(names), self._schema.names
        )  # zero-copy; drops the columns that only feed statistics
        _ = written | "WriteAttributions" >> beam.io.WriteToParquetBatched(
            self._path(ATTRIBUTIONS_DIR, "part"),
            self._schema,
            num_shards=self._shards,
            file_name_suffix=".parquet",
        )
        _ = (
            tables
            | "ComputeStatistics"
            >> ComputeAttributionStatistics(
                features=self._features, slices=self._slices, **self._statistics
            )
            | "WriteStatistics" >> beam.ParDo(_WriteStatistics(self._path(STATISTICS_DIR)))
        )
        _ = (
            tables
            | "BucketKeys" >> beam.FlatMap(_key_buckets)
            | "GroupKeyBuckets" >> beam.GroupByKey()
            | "FindDuplicateKeys" >> beam.FlatMap(_duplicates)
            | "WriteDuplicateKeys"
            >> self._rows_to_parquet(DUPLICATE_KEYS_DIR, DUPLICATE_KEYS_SCHEMA)
        )
        _ = (
            outputs.dead_letters
            | "DeadLetterRows" >> beam.Map(dead_letter_to_row)
            | "WriteDeadLetters" >> self._rows_to_parquet(DEAD_LETTER_DIR, DEAD_LETTER_SCHEMA)
        )
        return beam.pvalue.PDone(outputs.results.pipeline)

    def _rows_to_parquet(self, directory: str, schema: pa.Schema) -> beam.PTransform:
        """Writes dict rows as `directory/part-*.parquet` with an explicit schema."""
        return beam.io.WriteToParquet(
            self._path(directory, "part"), schema, file_name_suffix=".parquet"
        )
