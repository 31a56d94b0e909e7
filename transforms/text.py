"""Per-token output columns of a text run: scores with padding as nulls, token strings beside.

For layer attribution at an embedding (`attribution.layer`) with padding known to the engine
(`attribution.text`, or an `Embedding(mask_zero=True)`; see `attribution.text`):

* `attr_<layer>` list<float64>: one score per position; padding positions are null (their
  attribution is exactly 0: they are held at their input);
* `tokens_<layer>` list<string>: the example's token strings, position by position, when the
  examples carry them (`attribution.text.tokens`, or the string feature itself). A token list
  shorter than the positions (tokens written without their padding) is filled with nulls; a
  missing token feature gives a null list (the scores are still written); a token list longer
  than the positions cannot be aligned with the scores and its record is dead-lettered.

Pure numpy/pyarrow, no Beam and no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "TOKENS_PREFIX",
    "scores_column",
    "token_column",
    "token_fields",
    "token_reasons",
]

TOKENS_PREFIX = "tokens_"
"""`tokens_<layer>`: the token strings beside the per-token scores `attr_<layer>`."""


def token_fields(layers: Sequence[str]) -> list[pa.Field]:
    """The `tokens_<layer>` fields (list<string>, the list null when the example has none)."""
    return [pa.field(TOKENS_PREFIX + name, pa.list_(pa.string()), nullable=True) for name in layers]


def scores_column(scores: np.ndarray, padding: np.ndarray | None) -> pa.Array:
    """[n, *positions] scores as list<float64>, one list per row, null at padding positions."""
    n = len(scores)
    flat = np.asarray(scores, np.float64).reshape(n, -1)
    size = flat.shape[1]
    mask = None if padding is None else np.asarray(padding, bool).reshape(-1)
    values = pa.array(flat.reshape(-1), pa.float64(), mask=mask)
    offsets = pa.array(np.arange(0, (n + 1) * size, size, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def _lengths(column: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)


def token_reasons(column: pa.Array, positions: int, feature: str, layer: str) -> list[str]:
    """One reason per row whose token list is longer than the scores ("" when usable)."""
    lengths = _lengths(column)
    return [
        f"token feature {feature!r} has {int(k)} values, more than the {positions} positions of "
        f"layer {layer!r}"
        if k > positions
        else ""
        for k in lengths.tolist()
    ]


def token_column(column: pa.Array, positions: int) -> pa.Array:
    """A (large_)list<binary|string> column as list<string> of `positions` per row.

    Shorter lists are filled with nulls; missing lists stay null; longer lists must have been
    dead-lettered (`token_reasons`). Bytes that are not UTF-8 are replaced (U+FFFD).
    """
    n = len(column)
    lengths = _lengths(column)
    if np.any(lengths > positions):
        raise ValueError(f"token lists longer than {positions} positions")
    flat = pc.list_flatten(column)
    try:
        strings = flat.cast(pa.large_string()).cast(pa.string())
    except pa.ArrowInvalid:
        strings = pa.array(
            [None if v is None else v.decode("utf-8", "replace") for v in flat.to_pylist()],
            pa.string(),
        )
    # Row i's k_i tokens go to slots [i * positions, i * positions + k_i); the rest are null.
    starts = np.arange(n, dtype=np.int64) * positions
    slots = np.repeat(starts, lengths) + (
        np.arange(int(lengths.sum()), dtype=np.int64)
        - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    out = np.full(n * positions, None, dtype=object)
    out[slots] = np.asarray(strings.to_pylist(), dtype=object)
    offsets = pa.array(np.arange(0, (n + 1) * positions, positions, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(out, pa.string()), mask=column.is_null())
