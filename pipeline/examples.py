"""Writing `tf.train.Example`s: one feature dict to one Example, numpy columns to TFRecord shards.

The demo (`pipeline.demo`), the throughput benchmark and the tests build their inputs here, so
every one of them writes examples the same way: float values as a `FloatList`, integers and
booleans as an `Int64List`, `str` (UTF-8 encoded) and `bytes` as a `BytesList`, features in the
order given. TensorFlow is imported inside the functions: importing this module does not import
it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["SCHEMA_FILE", "shard_path", "to_example", "write_tfrecord_shards"]

SCHEMA_FILE = "schema.pbtxt"
"""The TFMD schema's file name next to the shards (what `write_tfrecord_shards` writes)."""

_SUFFIXES = {"GZIP": ".tfrecord.gz", "ZLIB": ".tfrecord.zz", "": ".tfrecord"}

# The kind of a feature's values: which `tf.train.Feature` list holds them.
_FLOAT, _INT, _BYTES = "float", "int64", "bytes"


def _kind_of_dtype(dtype: np.dtype) -> str | None:
    """The list kind for a numpy dtype; None for object arrays (decided by their values)."""
    if dtype.kind == "f":
        return _FLOAT
    if dtype.kind in "iub":
        return _INT
    if dtype.kind in "US":
        return _BYTES
    if dtype.kind == "O":
        return None
    raise TypeError(f"cannot write values of dtype {dtype} to a tf.train.Example")


def _kind_of_values(values: list[Any], name: str) -> str:
    """The list kind for Python values: all str/bytes, all int/bool, else numbers as floats."""
    if not values:
        return _FLOAT
    if all(isinstance(v, str | bytes) for v in values):
        return _BYTES
    if any(isinstance(v, str | bytes) for v in values):
        raise TypeError(f"feature {name!r} mixes strings and numbers: {values[:5]!r}")
    if all(isinstance(v, int | bool | np.integer | np.bool_) for v in values):
        return _INT
    return _FLOAT


def _as_list(value: Any) -> tuple[list[Any], str | None]:
    """A feature value as a flat list of Python values, and its kind when its dtype says it."""
    if isinstance(value, str | bytes):
        return [value], None
    if isinstance(value, np.ndarray | np.generic):
        return np.ravel(value).tolist(), _kind_of_dtype(value.dtype)
    if isinstance(value, Iterable):
        return list(value), None
    return [value], None


def _row(value: Any) -> Any:
    """One row of an object column or a sequence: a scalar as it is, anything else as a list."""
    values, _ = _as_list(value)
    return values[0] if len(values) == 1 and not isinstance(value, Iterable) else values


def _feature_maker(kind: str) -> Callable[[Any], tf.train.Feature]:
    """A function from one row (a scalar or a flat list of values of `kind`) to its Feature."""
    import tensorflow as tf

    feature = tf.train.Feature
    if kind == _BYTES:
        bytes_list = tf.train.BytesList

        def make_bytes(row: Any) -> tf.train.Feature:
            values = row if isinstance(row, list) else [row]
            encoded = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
            return feature(bytes_list=bytes_list(value=encoded))

        return make_bytes
    if kind == _INT:
        int64_list = tf.train.Int64List

        def make_int64(row: Any) -> tf.train.Feature:
            values = row if isinstance(row, list) else [row]
            return feature(int64_list=int64_list(value=[int(v) for v in values]))

        return make_int64
    float_list = tf.train.FloatList

    def make_float(row: Any) -> tf.train.Feature:
        return feature(float_list=float_list(value=row if isinstance(row, list) else [row]))

    return make_float


def to_example(features: Mapping[str, Any]) -> tf.train.Example:
    """Builds one `tf.train.Example`, its features in the order of `features`.

    Args:
      features: Feature name -> value. A value is a scalar, a sequence or a numpy array (flattened;
        its dtype decides the list: floating -> `FloatList`, integer or bool -> `Int64List`,
        str or bytes -> `BytesList`), or a ready `tf.train.Feature` (used as it is). For Python
        values: all `str`/`bytes` -> `BytesList` (`str` UTF-8 encoded), all int/bool ->
        `Int64List`, else `FloatList`. An empty sequence becomes an empty `FloatList`.

    Returns:
      The example.

    Raises:
      TypeError: A value mixes strings and numbers, or has a dtype no list can hold.
    """
    import tensorflow as tf

    feature = {}
    for name, value in features.items():
        if isinstance(value, tf.train.Feature):
            feature[name] = value
            continue
        values, kind = _as_list(value)
        feature[name] = _feature_maker(kind or _kind_of_values(values, name))(values)
    return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_path(
    directory: str, shard: int, *, prefix: str = "part", compression: str = "GZIP"
) -> str:
    """The path of shard `shard` as `write_tfrecord_shards` names it (`part-03.tfrecord.gz`)."""
    return os.path.join(directory, f"{prefix}-{shard:02d}{_SUFFIXES[compression]}")


def write_tfrecord_shards(
    directory: str,
    columns: Mapping[str, np.ndarray],
    *,
    shards: int,
    prefix: str = "part",
    compression: str = "GZIP",
    schema_text: str | None = None,
) -> list[str]:
    """Writes one `tf.train.Example` per row of `columns` as TFRecord shards.

    Example i goes to shard i % shards; shard s is `{prefix}-{s:02d}.tfrecord.gz` (`.tfrecord`
    without compression, `.tfrecord.zz` for ZLIB). Each column's kind (float, int64 or bytes) is
    decided once from its dtype (for object columns, from its values) as in `to_example`.

    Args:
      directory: Where to write (created if missing).
      columns: Feature name -> array (or sequence) with one row per example ([n] for one value
        per example, [n, k] for k values), in the order the features are to appear in each
        example.
      shards: The number of files (>= 1; a shard may be empty when there are fewer examples).
      prefix: The file name prefix.
      compression: "GZIP", "ZLIB" or "" (none).
      schema_text: When given, also written to `directory/schema.pbtxt` (a TFMD text proto).

    Returns:
      The shard paths, in shard order.

    Raises:
      ValueError: No columns, columns of different lengths, shards < 1 or an unknown
        compression.
    """
    import tensorflow as tf

    if not columns:
        raise ValueError("no columns to write")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if compression not in _SUFFIXES:
        raise ValueError(f"compression must be one of {sorted(_SUFFIXES)}, got {compression!r}")
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns of different lengths: {lengths}")
    n = next(iter(lengths.values()))
    # Per column, decided once: the function making a row's Feature, and the rows as Python
    # values (a scalar or a flat list each; not one list per scalar row: that many long-lived
    # objects would keep the garbage collector busy).
    prepared = []
    for name, column in columns.items():
        kind = None
        if isinstance(column, np.ndarray):
            kind = _kind_of_dtype(column.dtype)
            rows = column.tolist() if column.ndim <= 1 else [r.ravel().tolist() for r in column]
        else:  # no numpy conversion of a sequence: it would strip trailing NUL bytes
            rows = list(column)
        if kind is None:  # object arrays and sequences: the values decide
            rows = [r if isinstance(r, list | str | bytes) else _row(r) for r in rows]
            values = [v for row in rows for v in (row if isinstance(row, list) else [row])]
            kind = _kind_of_values(values, name)
        prepared.append((name, _feature_maker(kind), rows))

    os.makedirs(directory, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type=compression)
    paths = []
    for shard in range(shards):
        path = shard_path(directory, shard, prefix=prefix, compression=compression)
        with tf.io.TFRecordWriter(path, options) as writer:
            for i in range(shard, n, shards):
                feature = {name: make(rows[i]) for name, make, rows in prepared}
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
        paths.append(path)
    if schema_text is not None:
        with open(os.path.join(directory, SCHEMA_FILE), "w") as f:
            f.write(schema_text)
    return paths
