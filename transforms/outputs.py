"""Writing a run's outputs: per-example results and dead letters in, the output layout out.

`WriteRunOutputs` is the one transform behind everything a run writes under `output.path`
(names in `transforms.constants`):

  attributions/part-*.parquet   per-example results, one file per block of up to
                                `row_group_rows` records (explicit schema: `attribution_schema`)
  statistics/*.parquet          per slice and feature, per slice, histograms, inputs, replicates
  duplicate_keys/part-*.parquet keys seen more than once (reported, never dropped)
  dead_letter/part-*.parquet    records not attributed, with stage, reason and raw bytes
  explanations/part-*.jsonl[.gz] with `output.format: vertex_jsonl`: the same results as Vertex
                                AI batch explanation lines (`transforms.vertex_jsonl`), per block
  counts.json                   the pipeline's own counts (as data) and worker processes

The launcher (`pipeline.job`) writes `schema.pbtxt`, `summary.json` and `_SUCCESS`.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import pickle
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import stages
from transforms.attribute import AttributedBlock, WorkerInfo
from transforms.constants import (
    ABOVE_TOLERANCE,
    ATTRIBUTIONS_DIR,
    COUNTS_FILE,
    DEAD_LETTER_DIR,
    DUPLICATE_KEYS_DIR,
    FEATURE_REPLICATES_FILE,
    FEATURE_STATISTICS_FILE,
    HISTOGRAMS_FILE,
    IMAGE_GRIDS_FILE,
    INPUT_STATISTICS_FILE,
    KEY_COLUMN,
    OUTPUT_RANK_COLUMN,
    SLICE_REPLICATES_FILE,
    SLICE_STATISTICS_FILE,
    STATISTICS_DIR,
    STEPS_COLUMN,
    STEPS_USED_PREFIX,
    WITHIN_TOLERANCE_COLUMN,
)
from transforms.dead_letters import DEAD_LETTER_SCHEMA, dead_letter_to_row
from transforms.statistics import AttributionStatistics, AttributionStatsCombineFn
from transforms.text_statistics import WriteTokenStatistics
from transforms.vertex_jsonl import (
    JsonlSettings,
    encode_lines,
    explanation_file_name,
    explanation_lines,
)

__all__ = [
    "DUPLICATE_KEYS_SCHEMA",
    "KEY_BUCKETS",
    "STATISTICS_FILES",
    "BlockResult",
    "RunTotals",
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


def write_parquet_file(path: str, table: pa.Table) -> None:
    """Writes `table` as one Parquet file at `path` (any Beam filesystem)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with FileSystems.create(path) as f:
        f.write(buffer.getvalue())


def _first_rows(table: pa.Table) -> pa.Table:
    """One row per example: with several explained outputs (`output_rank`), the rank-0 rows."""
    if OUTPUT_RANK_COLUMN not in table.column_names:
        return table
    return table.filter(pc.equal(table.column(OUTPUT_RANK_COLUMN), 0))


def _key_buckets(table: pa.Table) -> Iterator[tuple[int, list[str]]]:
    """(bucket, keys) per stable key-hash bucket: duplicates meet in one bucket.

    An example explained for several outputs counts once (its rank-0 row).
    """
    buckets: dict[int, list[str]] = {}
    for key in _first_rows(table).column(KEY_COLUMN).to_pylist():
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
    IMAGE_GRIDS_FILE: "image_grids",
}
"""Each file of `statistics/` and the `AttributionStatistics` table it holds."""


def write_statistics(directory: str, stats: AttributionStatistics) -> None:
    """Writes every table of `stats` into `directory` (`STATISTICS_FILES`)."""
    for name, table in STATISTICS_FILES.items():
        write_parquet_file(FileSystems.join(directory, name), getattr(stats, table))


class BlockResult(NamedTuple):
    """What writing one attributed block leaves: its counts and its statistics, as data.

    Attributes:
      counts: `Counts` of the block.
      statistics: The block's statistics accumulator (`AttributionStatsCombineFn`), pickled.
      key_buckets: (bucket, keys) for the duplicate-key check.
      worker: The process that attributed the block.
    """

    counts: dict[str, int]
    statistics: bytes
    key_buckets: list[tuple[int, list[str]]]
    worker: WorkerInfo
    group: int = 0


TOTAL_GROUPS = 16
"""On a runner without combiner lifting (Beam's DaskRunner) block results are merged in two
levels, `TOTAL_GROUPS` groups then one, so that no worker holds every block's statistics in one
list. Elsewhere in one level (`groups=1`): the lifted combine merges each bundle's blocks into one
accumulator as they come, and the merged accumulator crosses one shuffle, not two (each crossing
holds a few encoded copies of it at once: the end-of-run peak)."""


def _examples(batch: pa.RecordBatch) -> int:
    """Examples in a batch of results: rows, or rank-0 rows with several outputs per example."""
    if OUTPUT_RANK_COLUMN not in batch.schema.names:
        return batch.num_rows
    return int(pc.sum(pc.equal(batch.column(OUTPUT_RANK_COLUMN), 0)).as_py() or 0)


def _counts(block: AttributedBlock) -> dict[str, int]:
    counts = collections.Counter(
        {
            "records_read": block.records_read,
            "examples_attributed": sum(_examples(b) for b in block.results),
            "dead_letters": len(block.dead_letters),
            "files_read": int(block.last),
            "blocks": 1,
        }
    )
    for letter in block.dead_letters:
        counts["dead_letters_" + letter.stage] += 1
    for batch in block.results:  # adaptive steps (steps: auto): the steps used, per value
        if STEPS_COLUMN not in batch.schema.names:
            continue
        steps = batch.column(STEPS_COLUMN).to_numpy(zero_copy_only=False)
        for value, count in zip(*np.unique(steps, return_counts=True), strict=True):
            counts[f"{STEPS_USED_PREFIX}{int(value)}"] += int(count)
        within = batch.column(WITHIN_TOLERANCE_COLUMN).to_numpy(zero_copy_only=False)
        counts[ABOVE_TOLERANCE] += int(len(within) - within.sum())
    return dict(counts)


class _WriteBlockDoFn(beam.DoFn):
    """Writes one block's attributions and dead letters; yields its `BlockResult`.

    Files are named after the block (`part-<file>-<block>.parquet`), so a retried block
    rewrites its own files: no temporary files to rename, nothing emitted from `finish_bundle`.
    """

    def __init__(
        self,
        output_dir: str,
        output_schema: pa.Schema,
        statistics: AttributionStatsCombineFn,
        write_attributions: bool,
        groups: int = TOTAL_GROUPS,
        jsonl: JsonlSettings | None = None,
    ) -> None:
        super().__init__()
        self._jsonl = jsonl
        self._dir = output_dir
        self._groups = groups
        self._schema = output_schema
        self._statistics = statistics
        self._write_attributions = write_attributions

    def process(self, block: AttributedBlock) -> Iterator[BlockResult]:
        name = f"part-{block.file_index:05d}-{block.block_index:05d}.parquet"
        table = _results_table(block)
        with stages.timed("parquet"):
            if self._write_attributions and table.num_rows:
                write_parquet_file(
                    FileSystems.join(self._dir, ATTRIBUTIONS_DIR, name),
                    table.select(self._schema.names).cast(self._schema),
                )
            if self._jsonl is not None and table.num_rows:
                self._write_lines(block, table)
            if block.dead_letters:
                rows = [dead_letter_to_row(letter) for letter in block.dead_letters]
                write_parquet_file(
                    FileSystems.join(self._dir, DEAD_LETTER_DIR, name),
                    pa.Table.from_pylist(rows, schema=DEAD_LETTER_SCHEMA),
                )
        with stages.timed("statistics"):
            accumulator = self._statistics.create_accumulator()
            if table.num_rows:
                for batch in table.to_batches():
                    accumulator = self._statistics.add_input(accumulator, batch)
                accumulator = self._statistics.compact(accumulator)
            frozen = _freeze(accumulator)
        buckets = list(_key_buckets(table)) if table.num_rows else []
        group = zlib.crc32(f"{block.file_index}/{block.block_index}".encode()) % self._groups
        yield BlockResult(_counts(block), frozen, buckets, block.worker, group)

    def _write_lines(self, block: AttributedBlock, table: pa.Table) -> None:
        """The block's Vertex batch-explanation lines, one file named after the block."""
        settings = self._jsonl
        name = explanation_file_name(block.file_index, block.block_index, settings.compression)
        data = encode_lines(explanation_lines(table, settings), settings.compression)
        path = FileSystems.join(self._dir, name)
        # compressed here (mtime 0: a retried block writes the same bytes), not again by `.gz`
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)


def _freeze(statistics: Any) -> bytes:
    """A statistics accumulator as bytes, pickled once.

    Runners encode elements between steps and encode samples of them to estimate their sizes;
    an accumulator is thousands of objects, bytes are one buffer to copy.
    """
    return pickle.dumps(statistics, protocol=pickle.HIGHEST_PROTOCOL)


def _thaw(statistics: Any) -> Any:
    return pickle.loads(statistics) if isinstance(statistics, bytes) else statistics


def _results_table(block: AttributedBlock) -> pa.Table:
    if not block.results:
        return pa.table({KEY_COLUMN: pa.array([], pa.string())})
    return pa.Table.from_batches(block.results).combine_chunks()


class RunTotals(NamedTuple):
    """The whole run's counts, statistics and worker processes (`CombineRunTotals`)."""

    counts: dict[str, int]
    statistics: AttributionStatistics
    workers: list[WorkerInfo]


class _TotalsCombineFn(beam.CombineFn):
    """Sums block counts, merges block statistics and collects the worker processes."""

    def __init__(self, statistics: AttributionStatsCombineFn) -> None:
        super().__init__()
        self._statistics = statistics

    def create_accumulator(self) -> tuple[collections.Counter, Any, set]:
        return collections.Counter(), None, set()  # statistics: None until the first block

    def add_input(self, accumulator: tuple, result: BlockResult | _Partial) -> tuple:
        if isinstance(result, _Partial):  # a group's totals, not yet extracted
            return self.merge_accumulators([accumulator, result.accumulator])
        counts, stats, workers = accumulator
        counts.update(result.counts)
        stats = self._merge([stats, result.statistics])
        workers.add(result.worker)
        return counts, stats, workers

    def _merge(self, parts: list[Any]) -> Any:
        """Merges statistics accumulators (live, frozen or None) into the largest one.

        A single one is passed on as it is (still frozen: a group of one block costs nothing).
        Every accumulator here is this CombineFn's own (a combine's accumulator, or just thawed
        from bytes), so the largest can take the others in place: merging into an empty one
        would copy every sketch of the first.
        """
        parts = [p for p in parts if p is not None]
        if len(parts) <= 1:
            return parts[0] if parts else None
        with stages.timed("totals"):
            live = sorted((_thaw(p) for p in parts), key=lambda a: -len(a.slices))
            return self._statistics.merge_accumulators(live)

    def merge_accumulators(self, accumulators: Iterable[tuple]) -> tuple:
        accumulators = list(accumulators)
        counts = collections.Counter()
        workers: set = set()
        for c, _, w in accumulators:
            counts.update(c)
            workers |= w
        stats = self._merge([a[1] for a in accumulators])
        return counts, stats, workers

    def compact(self, accumulator: tuple) -> tuple:
        """Before the runner encodes it: statistics compacted and frozen into bytes."""
        counts, stats, workers = accumulator
        if stats is None or isinstance(stats, bytes):
            return accumulator
        with stages.timed("totals"):
            return counts, _freeze(self._statistics.compact(stats)), workers

    def extract_output(self, accumulator: tuple) -> RunTotals:
        counts, stats, workers = accumulator
        with stages.timed("totals"):
            live = self._statistics.create_accumulator() if stats is None else _thaw(stats)
            statistics = self._statistics.extract_output(live)
        return RunTotals(dict(counts), statistics, sorted(workers))


class _Partial(NamedTuple):
    """A group's merged totals, still an accumulator (the first of the two merge levels)."""

    accumulator: tuple


class _GroupTotalsCombineFn(_TotalsCombineFn):
    """The first merge level: block results of one group -> one compacted accumulator."""

    def extract_output(self, accumulator: tuple) -> _Partial:  # type: ignore[override]
        return _Partial(self.compact(accumulator))


class _WriteTotals(beam.DoFn):
    def __init__(self, output_dir: str) -> None:
        self._dir = output_dir

    def process(self, totals: RunTotals) -> Iterator[int]:
        with stages.timed("totals"):
            write_statistics(FileSystems.join(self._dir, STATISTICS_DIR), totals.statistics)
        record = {"counts": totals.counts, "workers": [w._asdict() for w in totals.workers]}
        with FileSystems.create(FileSystems.join(self._dir, COUNTS_FILE)) as f:
            f.write(json.dumps(record, sort_keys=True).encode())
        yield 1


class _WriteDuplicateKeys(beam.DoFn):
    def __init__(self, output_dir: str) -> None:
        self._dir = output_dir

    def process(self, rows: list[dict]) -> Iterator[int]:
        table = pa.Table.from_pylist(
            sorted(rows, key=lambda r: r["key"]), schema=DUPLICATE_KEYS_SCHEMA
        )
        write_parquet_file(
            FileSystems.join(self._dir, DUPLICATE_KEYS_DIR, "part-00000.parquet"), table
        )
        yield 1


class _WriteShard(beam.DoFn):
    """Writes one shard of the attributions (`output.shards` > 0): its tables, one file."""

    def __init__(self, output_dir: str, output_schema: pa.Schema, shards: int) -> None:
        self._dir = output_dir
        self._schema = output_schema
        self._shards = shards

    def process(self, shard_tables: tuple[int, Iterable[pa.Table]]) -> Iterator[int]:
        shard, tables = shard_tables
        name = f"part-{shard:05d}-of-{self._shards:05d}.parquet"
        buffer = io.BytesIO()
        rows = 0
        with pq.ParquetWriter(buffer, self._schema) as writer:
            for table in tables:
                writer.write_table(table)
                rows += table.num_rows
        with FileSystems.create(FileSystems.join(self._dir, ATTRIBUTIONS_DIR, name)) as f:
            f.write(buffer.getvalue())
        yield rows


def _shard_tables(block: AttributedBlock, schema: pa.Schema, shards: int) -> Iterator[tuple]:
    table = _results_table(block)
    if table.num_rows:
        shard = zlib.crc32(f"{block.file_index}/{block.block_index}".encode()) % shards
        yield shard, table.select(schema.names).cast(schema)


class WriteRunOutputs(beam.PTransform[beam.PCollection[AttributedBlock], beam.pvalue.PDone]):
    """Writes a run's attributions, statistics, duplicate keys, dead letters and counts.

    Every step has one output and emits nothing from `finish_bundle`, global combines inject no
    default (a side input the DaskRunner does not resolve there), and every branch ends in one
    last step (`Done`): the forms every runner executes (Beam's DaskRunner computes only the
    graph behind the last step). Counts travel as data (`counts.json`), so the accounting
    never depends on a runner's metrics.

    Args:
      output_dir: The run's `output.path`.
      output_schema: The explicit Arrow schema of the attributions written: a subset of the
        results' columns (the others, e.g. `in_<feature>` input values, only feed statistics).
      features: The attributed names (statistics read `attr_<name>`).
      slices: Slice specs of the statistics (lists of pass-through columns).
      shards: Attribution files; 0 writes one file per block (a row group of up to
        `output.row_group_rows` rows), N > 0 shuffles the blocks into N files.
      statistics: More keyword arguments of `AttributionStatsCombineFn` (replicates,
        histogram buckets, inputs to describe).
      groups: Groups of the first merge level (`TOTAL_GROUPS` for a runner without combiner
        lifting); 1 merges in one level.
      token_layers: Layers whose per-token scores mark padding (`transforms.text`): their
        per-position statistics go to `statistics/tokens.parquet`.
      jsonl: With `output.format: vertex_jsonl`: also write each block's results as Vertex AI
        batch-explanation lines (`explanations/part-<file>-<block>.jsonl[.gz]`).
    """

    def __init__(
        self,
        output_dir: str,
        output_schema: pa.Schema,
        *,
        features: Sequence[str],
        slices: Sequence[Sequence[str]] = (),
        shards: int = 0,
        statistics: Mapping[str, Any] | None = None,
        groups: int = TOTAL_GROUPS,
        token_layers: Sequence[str] = (),
        jsonl: JsonlSettings | None = None,
    ) -> None:
        super().__init__()
        self._dir = output_dir
        self._token_layers = list(token_layers)
        self._schema = output_schema
        self._shards = shards
        self._jsonl = jsonl
        self._groups = groups
        self._statistics = AttributionStatsCombineFn(
            features=list(features), slices=[list(s) for s in slices], **dict(statistics or {})
        )

    def expand(self, blocks: beam.PCollection[AttributedBlock]) -> beam.pvalue.PDone:
        results = blocks | "WriteBlocks" >> beam.ParDo(
            _WriteBlockDoFn(
                self._dir,
                self._schema,
                self._statistics,
                self._shards == 0,
                self._groups,
                self._jsonl,
            )
        )
        if self._groups == 1:  # combiner lifting: one level, the accumulator crosses one shuffle
            totals = (
                results
                | "CombineTotals"
                >> beam.CombineGlobally(_TotalsCombineFn(self._statistics)).without_defaults()
            )
        else:
            totals = (
                results
                | "KeyByGroup" >> beam.Map(lambda r: (r.group, r))
                | "CombineGroups" >> beam.CombinePerKey(_GroupTotalsCombineFn(self._statistics))
                | "DropGroupKeys" >> beam.Values()
                | "CombineTotals"
                >> beam.CombineGlobally(_TotalsCombineFn(self._statistics)).without_defaults()
            )
        done = [
            totals | "WriteTotals" >> beam.ParDo(_WriteTotals(self._dir)),
            results
            | "KeyBuckets" >> beam.FlatMap(lambda r: r.key_buckets)
            | "GroupKeyBuckets" >> beam.GroupByKey()
            | "FindDuplicateKeys" >> beam.FlatMap(_duplicates)
            | "CollectDuplicateKeys"
            >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
            | "WriteDuplicateKeys" >> beam.ParDo(_WriteDuplicateKeys(self._dir)),
        ]
        if self._token_layers:
            done.append(
                blocks | "TokenStatistics" >> WriteTokenStatistics(self._dir, self._token_layers)
            )
        if self._shards:
            done.append(
                blocks
                | "ShardAttributions" >> beam.FlatMap(_shard_tables, self._schema, self._shards)
                | "GroupShards" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(_WriteShard(self._dir, self._schema, self._shards))
            )
        _ = (
            tuple(done)
            | "FlattenDone" >> beam.Flatten()
            | "Done" >> beam.CombineGlobally(beam.combiners.CountCombineFn()).without_defaults()
        )  # the last step: after everything written
        return beam.pvalue.PDone(blocks.pipeline)
