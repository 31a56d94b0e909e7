"""Vertex AI batch-explanation output: one JSON line per example (`output.format: vertex_jsonl`).

Vertex AI's batch prediction with explanations writes, per instance, one JSON object per line:

    {"instance": {...} | "key": ..., "prediction": ...,
     "explanation": {"attributions": [{"featureAttributions": {...},
                                       "baselineOutputValue": ..., "instanceOutputValue": ...,
                                       "approximationError": ..., "outputIndex": [...],
                                       "outputDisplayName": ..., "outputName": ...}, ...]}}

`explanation_lines` turns a block of igbeam's per-example results (the `attribution_schema`
table) into those lines, so that a job migrated from Vertex (`igbeam import-vertex`) keeps
its consumers. The lines are valid newline-delimited JSON that BigQuery loads as is: floats are
finite (NaN and infinities become null) and `bigquery_name_problems` lists the names BigQuery
would refuse as column names.

Pure Python over pyarrow and numpy: no Beam, no TensorFlow. `transforms.outputs` writes one file
per block (`explanations/part-<file>-<block>.jsonl[.gz]`), next to the Parquet attributions.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from transforms.constants import (
    APPROXIMATION_ERROR_COLUMN,
    ATTRIBUTION_PREFIX,
    EXPLANATIONS_DIR,
    INPUT_PREFIX,
    KEY_COLUMN,
)

__all__ = [
    "ATTRIBUTION_FIELDS",
    "LINE_FIELDS",
    "OUTPUT_NAME_COLUMN",
    "OUTPUT_RANK_COLUMN",
    "JsonlSettings",
    "bigquery_name_problems",
    "check_vertex_names",
    "encode_lines",
    "explanation_file_name",
    "explanation_lines",
    "instance_columns",
]

OUTPUT_RANK_COLUMN = "output_rank"
"""int32, with several explained outputs per example: 0 = first explained (the OUTPUTS
contract); the rows of an example are consecutive."""

OUTPUT_NAME_COLUMN = "output_name"
"""string, the explained output's display name when `attribution.display_names` is set."""

LINE_FIELDS = ("prediction", "explanation")
"""Fields of every line after `instance` (or `key`)."""

ATTRIBUTION_FIELDS = (
    "featureAttributions",
    "baselineOutputValue",
    "instanceOutputValue",
    "approximationError",
    "outputIndex",
    "outputDisplayName",
    "outputName",
)
"""Fields of every `explanation.attributions[]` entry (Vertex's `Attribution` message)."""

_BIGQUERY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}")


def bigquery_name_problems(names: Iterable[str]) -> list[str]:
    """The names BigQuery would not take as column names (letters, digits, underscores, not
    starting with a digit, at most 300 characters), in order."""
    return [n for n in names if not _BIGQUERY_NAME.fullmatch(n)]


@dataclasses.dataclass(frozen=True)
class JsonlSettings:
    """What the lines of a run need besides the results table.

    Attributes:
      attributed: Attributed names (`attr_<name>` columns), in order.
      shapes: Per-example shape of each attributed name (featureAttributions are shaped like
        the input); a name without one, or whose size differs, is written flat.
      key_feature: `input.key`: when set, lines carry `key` instead of `instance`.
      instance_columns: (name, column) pairs of the instance: attributed features' input values
        (`in_<name>`) and pass-through features.
      output_name: `outputName` of every attribution.
      feature_names: {attributed name: featureAttributions key}.
      index_feature_mapping: {attributed name: element names}: one entry per element.
      groups: {group: attributed names}: one entry, the sum of the features' attributions.
      compression: `none` or `gzip`.
    """

    attributed: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    key_feature: str | None = None
    instance_columns: tuple[tuple[str, str], ...] = ()
    output_name: str = ""
    feature_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    index_feature_mapping: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    groups: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    compression: str = "none"

    def attribution_keys(self) -> list[str]:
        """Every key of a line's featureAttributions, in order."""
        grouped = {f: g for g, features in self.groups.items() for f in features}
        keys: list[str] = []
        for name in self.attributed:
            if name in grouped:
                if grouped[name] not in keys:
                    keys.append(grouped[name])
            elif name in self.index_feature_mapping:
                keys.extend(self.index_feature_mapping[name])
            else:
                keys.append(self.feature_names.get(name, name))
        return keys


def check_vertex_names(settings: JsonlSettings, sizes: Mapping[str, int]) -> None:
    """Checks the Vertex naming maps against the attributed names and their sizes.

    Raises:
      ValueError: `"output.vertex.<map>.<name>: ..."`: a map names a feature that is not
        attributed, a feature is in two groups or also mapped, an index mapping's length is not
        the feature's size, or two featureAttributions keys coincide.
    """
    attributed = set(settings.attributed)
    seen: dict[str, str] = {}
    for group, features in settings.groups.items():
        for name in features:
            where = f"output.vertex.groups.{group}"
            if name not in attributed:
                raise ValueError(f"{where}: {name!r} is not an attributed feature")
            if name in seen:
                raise ValueError(f"{where}: {name!r} is also in group {seen[name]!r}")
            seen[name] = group
    for name, names in settings.index_feature_mapping.items():
        where = f"output.vertex.index_feature_mapping.{name}"
        if name not in attributed:
            raise ValueError(f"{where}: not an attributed feature")
        if name in seen:
            raise ValueError(f"{where}: also in group {seen[name]!r}")
        if len(names) != sizes.get(name, 1):
            raise ValueError(
                f"{where}: {len(names)} names for a feature of {sizes.get(name, 1)} values"
            )
    for name in settings.feature_names:
        if name not in attributed:
            raise ValueError(f"output.vertex.feature_names.{name}: not an attributed feature")
    keys = settings.attribution_keys()
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"output.vertex: featureAttributions keys {duplicates} appear twice")


def explanation_file_name(file_index: int, block_index: int, compression: str) -> str:
    """`explanations/part-<file>-<block>.jsonl[.gz]`, relative to the run's output path."""
    suffix = ".jsonl.gz" if compression == "gzip" else ".jsonl"
    return f"{EXPLANATIONS_DIR}/part-{file_index:05d}-{block_index:05d}{suffix}"


def encode_lines(lines: Sequence[str], compression: str) -> bytes:
    """The lines as a file's bytes: UTF-8, one per line, gzip-compressed (mtime 0) if asked."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    return gzip.compress(data, compresslevel=6, mtime=0) if compression == "gzip" else data


def _plain(value: Any) -> Any:
    """A pass-through value (Arrow to Python) with non-finite floats as None."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _matrix(table: pa.Table, name: str) -> np.ndarray:
    """An attribution column as [rows, values] float64 (a scalar column as [rows, 1])."""
    column = _column(table, name)
    n = len(column)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        return flat.reshape(n, -1) if n else flat.reshape(0, 0)
    return column.to_numpy(zero_copy_only=False).astype(np.float64).reshape(n, 1)


def _examples(keys: Sequence[str], ranks: Sequence[int] | None) -> Iterator[tuple[int, int]]:
    """[start, stop) row ranges of the examples: with `ranks` (`output_rank`), consecutive rows
    of one key whose rank goes up (a repeated key starts again at rank 0: another example)."""
    n = len(keys)
    if ranks is None:
        yield from ((i, i + 1) for i in range(n))
        return
    start = 0
    for i in range(1, n + 1):
        if i == n or keys[i] != keys[i - 1] or ranks[i] <= ranks[i - 1]:
            yield start, i
            start = i


def explanation_lines(table: pa.Table, settings: JsonlSettings) -> list[str]:
    """The Vertex batch-explanation JSON lines of a block of results, one per example.

    Columns are converted to Python values once (vectorised, non-finite numbers to None); the
    loop over examples only assembles dicts.

    Args:
      table: Per-example results (`attribution_schema` columns; with several explained
        outputs per example, one row per output with `output_rank`, rows of an example
        consecutive).
      settings: Names, shapes and the instance's columns.

    Returns:
      One JSON object per example (no newline), fields `instance` (or `key`), `prediction`,
      `explanation`; `prediction` is the explained output's value (a list of the explained
      outputs' values, in attributions order, when there are several).
    """
    n = table.num_rows
    if n == 0:
        return []
    keys = _column(table, KEY_COLUMN).to_pylist()
    targets = _column(table, "target").to_numpy(zero_copy_only=False).tolist()
    predictions = _rows(_column(table, "prediction").to_numpy(zero_copy_only=False))
    baselines = _rows(_column(table, "baseline_prediction").to_numpy(zero_copy_only=False))
    errors = _rows(_column(table, APPROXIMATION_ERROR_COLUMN).to_numpy(zero_copy_only=False))
    names = table.schema.names
    ranks = None
    if OUTPUT_RANK_COLUMN in names:
        ranks = _column(table, OUTPUT_RANK_COLUMN).to_numpy(zero_copy_only=False).tolist()
    display = [""] * n
    if OUTPUT_NAME_COLUMN in names:
        display = [v or "" for v in _column(table, OUTPUT_NAME_COLUMN).to_pylist()]
    # featureAttributions: (key, per-row values) in order, each column converted once
    entries_by_key: list[tuple[str, list]] = []
    group_sums: dict[str, np.ndarray] = {}
    grouped = {f: g for g, features in settings.groups.items() for f in features}
    for name in settings.attributed:
        matrix = _matrix(table, ATTRIBUTION_PREFIX + name)
        if name in grouped:
            group = grouped[name]
            if group not in group_sums:
                group_sums[group] = np.zeros(n)
                entries_by_key.append((group, []))  # filled below, in first-member order
            group_sums[group] = group_sums[group] + matrix.sum(axis=1)
        elif name in settings.index_feature_mapping:
            for j, element in enumerate(settings.index_feature_mapping[name]):
                entries_by_key.append((element, _rows(matrix[:, j])))
        else:
            shape = settings.shapes.get(name)
            if matrix.shape[1] == 1:
                values = _rows(matrix[:, 0])
            elif shape and int(np.prod(shape)) == matrix.shape[1]:
                values = _rows(matrix.reshape(n, *shape))
            else:
                values = _rows(matrix)
            entries_by_key.append((settings.feature_names.get(name, name), values))
    entries_by_key = [
        (key, _rows(group_sums[key]) if key in group_sums else values)
        for key, values in entries_by_key
    ]
    instance = []
    if settings.key_feature is None:
        instance = [
            (name, _instance_values(table, name, column, settings.shapes.get(name)))
            for name, column in settings.instance_columns
        ]
    output_name = settings.output_name
    lines = []
    for start, stop in _examples(keys, ranks):
        head: dict[str, Any]
        if settings.key_feature is not None:
            head = {"key": keys[start]}
        else:
            head = {"instance": {name: values[start] for name, values in instance}}
        entries = [
            {
                "featureAttributions": {key: values[row] for key, values in entries_by_key},
                "baselineOutputValue": baselines[row],
                "instanceOutputValue": predictions[row],
                "approximationError": errors[row],
                # a scalar output (target -1) has no index, as in Vertex
                "outputIndex": [targets[row]] if targets[row] >= 0 else [],
                "outputDisplayName": display[row],
                "outputName": output_name,
            }
            for row in range(start, stop)
        ]
        line = {
            **head,
            "prediction": predictions[start] if stop - start == 1 else predictions[start:stop],
            "explanation": {"attributions": entries},
        }
        lines.append(json.dumps(line, allow_nan=False, separators=(",", ":")))
    return lines


def _rows(values: np.ndarray) -> list:
    """[n, ...] numbers as n Python values (nested lists), non-finite ones as None."""
    a = np.asarray(values, np.float64)
    finite = np.isfinite(a)
    if finite.all():
        return a.tolist()
    out = a.astype(object)
    out[~finite] = None
    return out.tolist()


def _instance_values(
    table: pa.Table, name: str, column: str, shape: tuple[int, ...] | None
) -> list:
    """One instance field per row: numbers (shaped like the input) or pass-through values."""
    array = _column(table, column)
    value_type = array.type
    listed = pa.types.is_list(value_type) or pa.types.is_large_list(value_type)
    if listed:
        value_type = value_type.value_type
    numeric = pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
    if not numeric or array.null_count:
        return [_plain(v) for v in array.to_pylist()]
    if not listed:
        flat = array.to_numpy(zero_copy_only=False)
        return flat.tolist() if pa.types.is_integer(value_type) else _rows(flat)
    sizes = np.diff(array.offsets.to_numpy())
    if len(sizes) and (sizes == sizes[0]).all():
        flat = array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1)
        if shape and int(np.prod(shape)) == flat.shape[1]:
            flat = flat.reshape(len(array), *shape)
        return flat.tolist() if pa.types.is_integer(value_type) else _rows(flat)
    return [_plain(v) for v in array.to_pylist()]


def instance_columns(
    input_features: Sequence[str], passthrough: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """(name, column) of an instance: attributed features' input values, then pass-throughs."""
    pairs = [(n, INPUT_PREFIX + n) for n in input_features]
    pairs += [(n, n) for n in passthrough if n not in input_features]
    return tuple(pairs)
