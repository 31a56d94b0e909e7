"""Per-position statistics of per-token scores: `statistics/tokens.parquet`.

For each layer whose scores mark padding as nulls (`transforms.text`), and each token position
p: over all attributed examples, `count` examples with a token at p, `padding` examples with
padding at p, and the mean signed and mean absolute score at p over the `count` examples with a
token (padding left out; NaN when `count` is 0). One row per (feature, position), all examples
(no slices): a few numbers per position, whatever the number of examples.

The accumulator is a sum per position (float64), merged in any order; it is combined from the
attributed blocks in a branch of its own and written once, as the other statistics are.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.constants import ATTRIBUTION_PREFIX, STATISTICS_DIR

__all__ = [
    "TOKEN_STATISTICS_FILE",
    "TOKEN_STATISTICS_SCHEMA",
    "TokenPositionsCombineFn",
    "WriteTokenStatistics",
    "position_sums",
    "token_statistics_table",
]

TOKEN_STATISTICS_FILE = "tokens.parquet"
"""In `statistics/`: per (feature, position) statistics of per-token scores."""

TOKEN_STATISTICS_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("padding", pa.int64(), nullable=False),
        pa.field("mean_attributions", pa.float64(), nullable=False),
        pa.field("mean_absolute_attributions", pa.float64(), nullable=False),
    ]
)

Sums = dict[str, np.ndarray]
"""feature -> [4, positions] float64: count, padding, sum, sum of |score|."""


def position_sums(batches: Iterable[pa.RecordBatch], features: Sequence[str]) -> Sums:
    """The per-position sums of `attr_<feature>` (list<float64>, nulls at padding) of batches."""
    out: Sums = {}
    for batch in batches:
        for name in features:
            column = batch.column(batch.schema.get_field_index(ATTRIBUTION_PREFIX + name))
            if len(column) == 0:
                continue
            flat = pc.list_flatten(column)
            scores = pc.fill_null(flat, 0.0).to_numpy(zero_copy_only=False)
            padding = flat.is_null().to_numpy(zero_copy_only=False)
            n = len(column)
            scores, padding = scores.reshape(n, -1), padding.reshape(n, -1)
            sums = np.stack(
                [
                    (~padding).sum(axis=0),
                    padding.sum(axis=0),
                    scores.sum(axis=0),
                    np.abs(scores).sum(axis=0),
                ]
            ).astype(np.float64)
            out[name] = out[name] + sums if name in out else sums
    return out


class TokenPositionsCombineFn(beam.CombineFn):
    """Sums (`position_sums`) -> merged sums; `extract_output` gives the statistics table."""

    def create_accumulator(self) -> Sums:
        return {}

    def add_input(self, accumulator: Sums, sums: Sums) -> Sums:
        return self.merge_accumulators([accumulator, sums])

    def merge_accumulators(self, accumulators: Iterable[Sums]) -> Sums:
        out: Sums = {}
        for acc in accumulators:
            for name, sums in acc.items():
                out[name] = out[name] + sums if name in out else sums.copy()
        return out

    def extract_output(self, accumulator: Sums) -> pa.Table:
        return token_statistics_table(accumulator)


def token_statistics_table(sums: Sums) -> pa.Table:
    """The `TOKEN_STATISTICS_SCHEMA` table of merged sums (features sorted, positions in order)."""
    columns: dict[str, list[Any]] = {f.name: [] for f in TOKEN_STATISTICS_SCHEMA}
    for name in sorted(sums):
        count, padding, total, total_abs = sums[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
            mean_abs = np.where(count > 0, total_abs / count, np.nan)
        positions = len(count)
        columns["feature"] += [name] * positions
        columns["position"] += list(range(positions))
        columns["count"] += count.astype(np.int64).tolist()
        columns["padding"] += padding.astype(np.int64).tolist()
        columns["mean_attributions"] += mean.tolist()
        columns["mean_absolute_attributions"] += mean_abs.tolist()
    return pa.Table.from_pydict(columns, schema=TOKEN_STATISTICS_SCHEMA)


class _WriteTable(beam.DoFn):
    def __init__(self, output_dir: str) -> None:
        self._dir = output_dir

    def process(self, table: pa.Table) -> Iterator[int]:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = FileSystems.join(self._dir, STATISTICS_DIR, TOKEN_STATISTICS_FILE)
        with FileSystems.create(path) as f:
            f.write(buffer.getvalue())
        yield 1


class WriteTokenStatistics(beam.PTransform):
    """Attributed blocks -> `statistics/tokens.parquet` (one element, 1, once written).

    Args:
      output_dir: The run's `output.path`.
      features: The layers whose `attr_<layer>` scores mark padding with nulls.
    """

    def __init__(self, output_dir: str, features: Sequence[str]) -> None:
        super().__init__()
        self._dir = output_dir
        self._features = list(features)

    def expand(self, blocks: beam.PCollection) -> beam.PCollection[int]:
        features = self._features
        return (
            blocks
            | "TokenPositionSums" >> beam.Map(lambda b: position_sums(b.results, features))
            | "CombineTokenPositions"
            >> beam.CombineGlobally(TokenPositionsCombineFn()).without_defaults()
            | "WriteTokenPositions" >> beam.ParDo(_WriteTable(self._dir))
        )
