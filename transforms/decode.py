"""Decoding serialized tf.Examples with tfx-bsl against a TFMD schema, and Arrow <-> model inputs.

`ExampleDecoder` turns a list of serialized records into one Arrow RecordBatch with a stable schema
(`ExamplesToRecordBatchDecoder` with the TFMD schema, as TFDV does) and isolates the records that do
not parse. `dense_column` turns a `large_list` column into the dense array a model input expects
and says, per row, why a row cannot be used (missing, wrong length, NaN/Inf). Nothing here raises
for bad data: callers turn the reasons into dead letters.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder

_TYPE_TO_ARROW = {
    schema_pb2.FLOAT: pa.float32(),
    schema_pb2.INT: pa.int64(),
    schema_pb2.BYTES: pa.large_binary(),
}


def load_schema(path: str) -> schema_pb2.Schema:
    """Reads a TFMD schema text proto (`schema.pbtxt`, as TFDV writes it).

    Raises:
      ValueError: the file cannot be read or parsed.
    """
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path) as f:
            text = f.read().decode("utf-8")
        return text_format.Parse(text, schema_pb2.Schema())
    except (OSError, text_format.ParseError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read schema {path!r}: {err}") from err


def schema_to_text(schema: schema_pb2.Schema) -> str:
    """The schema as a text proto."""
    return text_format.MessageToString(schema)


def infer_schema(records: Sequence[bytes]) -> schema_pb2.Schema:
    """Infers a TFMD schema from sample records: types, presence and value counts (TFDV-style).

    A feature present in every sample with the same number of values gets a fixed `shape`.
    Records that do not parse are ignored.

    Raises:
      ValueError: no sample record parses.
    """
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    batches = []
    for record in records:
        try:
            batches.append(decoder.DecodeBatch([record]))
        except RuntimeError:
            decoder = example_coder.ExamplesToRecordBatchDecoder()  # a failure breaks it
            continue
    if not batches:
        raise ValueError("cannot infer a schema: none of the sample records is a tf.train.Example")
    types: dict[str, pa.DataType] = {}
    lengths: dict[str, set[int]] = {}
    present: dict[str, int] = {}
    for batch in batches:
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            value_type = column.type.value_type
            if pa.types.is_null(value_type):
                continue
            types.setdefault(name, value_type)
            if column.null_count == 0:
                present[name] = present.get(name, 0) + 1
                lengths.setdefault(name, set()).add(len(column[0].values))
    schema = schema_pb2.Schema()
    for name in sorted(types):
        feature = schema.feature.add(name=name)
        value_type = types[name]
        if pa.types.is_floating(value_type):
            feature.type = schema_pb2.FLOAT
        elif pa.types.is_integer(value_type):
            feature.type = schema_pb2.INT
        else:
            feature.type = schema_pb2.BYTES
        count = present.get(name, 0)
        feature.presence.min_count = 1
        feature.presence.min_fraction = 1.0 if count == len(batches) else 0.0
        seen = lengths.get(name, set())
        if count == len(batches) and len(seen) == 1:
            feature.shape.dim.add(size=next(iter(seen)))
        elif seen:
            feature.value_count.min = min(seen)
            feature.value_count.max = max(seen)
    return schema


def fixed_length(schema: schema_pb2.Schema, name: str) -> int | None:
    """The fixed number of values of a feature per example, when the schema says it has one."""
    for feature in schema.feature:
        if feature.name == name:
            if feature.HasField("shape"):
                return int(np.prod([d.size for d in feature.shape.dim]))
            vc = feature.value_count
            if feature.HasField("value_count") and vc.min == vc.max and vc.min > 0:
                return int(vc.min)
            return None
    return None


def feature_names(schema: schema_pb2.Schema) -> list[str]:
    """The feature names of a schema, in order."""
    return [f.name for f in schema.feature]


class ExampleDecoder:
    """Decodes serialized tf.Examples into Arrow against a TFMD schema; isolates unparsable ones.

    Cheap to build (the tfx-bsl decoder is created on first use), picklable.
    """

    def __init__(self, schema: schema_pb2.Schema) -> None:
        self._schema_bytes = schema.SerializeToString()
        self._decoder = None

    def __getstate__(self) -> dict:
        return {"_schema_bytes": self._schema_bytes, "_decoder": None}

    @property
    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema of every decoded batch."""
        return self._get().ArrowSchema()

    def _get(self) -> example_coder.ExamplesToRecordBatchDecoder:
        if self._decoder is None:
            self._decoder = example_coder.ExamplesToRecordBatchDecoder(self._schema_bytes)
        return self._decoder

    def decode(self, records: Sequence[bytes]) -> tuple[pa.RecordBatch, list[int], list[str]]:
        """Decodes records.

        Returns:
          (batch, good, reasons): `batch` holds the records that parsed, in order; `good` are their
          indices in `records`; `reasons[i]` is "" for a good record, else why it did not parse.
        """
        try:
            return self._decode(list(records)), list(range(len(records))), [""] * len(records)
        except RuntimeError:
            pass
        good, reasons = [], []
        for i, record in enumerate(records):
            try:
                self._decode([record])
                good.append(i)
                reasons.append("")
            except RuntimeError as err:
                reasons.append(f"not a valid tf.train.Example for the schema: {err}")
        return self._decode([records[i] for i in good]), good, reasons

    def _decode(self, records: list[bytes]) -> pa.RecordBatch:
        # A failed DecodeBatch (e.g. a feature of the wrong type) leaves the tfx-bsl decoder in a
        # broken state ("FinishFeature() must be called before DecodeFeature()"): replace it.
        try:
            return self._get().DecodeBatch(records)
        except RuntimeError:
            self._decoder = None
            raise


@functools.lru_cache(maxsize=64)
def _regular_offsets(n: int, per_example: int, offset_type: pa.DataType) -> pa.Array:
    """The offsets of a list column with exactly `per_example` values in each of `n` rows."""
    return pa.array(np.arange(0, (n + 1) * per_example, per_example), offset_type)


def dense_column(
    column: pa.Array, per_example: int, dtype: np.dtype, name: str
) -> tuple[np.ndarray, list[str] | None]:
    """Turns a list column into a dense [B, per_example] array.

    Args:
      column: A (large_)list column, one row per example.
      per_example: The number of values each example must have.
      dtype: The numpy dtype wanted.
      name: The feature name, for reasons.

    Returns:
      (values, reasons): values [B, per_example] (unusable rows are zero-filled), and None when
      every row is usable, else one reason per row ("" when the row is usable): missing, wrong
      length, NaN or Inf.
    """
    n = len(column)
    if n == 0:
        return np.zeros((0, per_example), dtype=dtype), None
    if column.null_count == 0 and column.offsets.equals(
        _regular_offsets(n, per_example, column.offsets.type)
    ):  # the common, fast path: every row has exactly `per_example` values, from offset 0
        flat = column.values.slice(0, n * per_example)
        out = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, per_example)
        if not np.issubdtype(out.dtype, np.floating) or np.isfinite(out).all():
            return out, None
    offsets = column.offsets.to_numpy()
    lengths = np.diff(offsets)
    if column.null_count == 0 and np.all(lengths == per_example):
        flat = column.values.slice(offsets[0], offsets[-1] - offsets[0])
        out = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, per_example)
        if not np.issubdtype(out.dtype, np.floating) or np.isfinite(out).all():
            return out, None
        ok = np.ones(n, bool)
    else:
        out = np.zeros((n, per_example), dtype=dtype)
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        ok = (~nulls) & (lengths == per_example)
        idx = np.flatnonzero(ok)
        if len(idx):
            taken = column.take(pa.array(idx)).flatten().to_numpy(zero_copy_only=False)
            out[idx] = taken.reshape(len(idx), per_example)
    reasons = [""] * n
    for i in np.flatnonzero(~ok):
        reasons[i] = (
            f"feature {name!r} is missing"
            if column[int(i)].as_py() is None
            else f"feature {name!r} has {int(lengths[i])} values, expected {per_example}"
        )
    if np.issubdtype(out.dtype, np.floating):
        for i in np.flatnonzero(~np.isfinite(out).all(axis=1) & ok):
            reasons[i] = f"feature {name!r} has NaN or Inf values"
    return out, reasons


def scalar_or_list(column: pa.Array, single: bool) -> pa.Array:
    """A pass-through column for the output: the one value when `single`, else the list."""
    if not single:
        return column
    lengths = pc.list_value_length(column)
    first = pc.list_element(column, 0) if len(column) else pa.array([], column.type.value_type)
    keep = pc.equal(lengths, 1)
    return pc.if_else(keep, first, pa.nulls(len(column), first.type))
