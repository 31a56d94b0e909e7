"""Attributed tensors packed into one [rows, D] array per dtype: the engine's data layout.

One packed tensor per dtype instead of one tensor per feature keeps the compiled graph (a split,
not per-feature reshapes and their gradients), its tracing time and the host's per-call work
independent of the number of attributed features. The same `Packing` works on tensors (in
graphs) and on numpy arrays (on the host, where `unpack` returns views).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["Packing"]


@dataclasses.dataclass(frozen=True)
class Packing:
    """Attributed tensors packed into one [rows, D] array per dtype, features side by side.

    One packed tensor instead of one per feature keeps both the compiled graph (a split, not
    per-feature reshapes and their gradients) and the host's per-call work (one conversion,
    not one per feature) independent of the number of features. Works on tensors (in graphs)
    and on numpy arrays (on the host): `unpack` returns views there.
    """

    groups: dict[str, list[str]]  # dtype key -> attributed names, in order
    shapes: dict[str, tuple[int, ...]]  # name -> per-example shape
    dtypes: dict[str, tf.DType]  # dtype key -> dtype

    def __post_init__(self) -> None:
        # Per-name (dtype key, start, stop) column ranges: the host's pack and unpack are slice
        # assignments and views, with no per-call arithmetic (np.split of 64 parts costs more
        # than the copies themselves).
        columns: dict[str, tuple[str, int, int]] = {}
        for key, names in self.groups.items():
            start = 0
            for m in names:
                stop = start + math.prod(self.shapes[m])
                columns[m] = (key, start, stop)
                start = stop
        object.__setattr__(self, "_columns", columns)

    @classmethod
    def of(cls, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, tf.DType]) -> Packing:
        groups: dict[str, list[str]] = {}
        by_key: dict[str, tf.DType] = {}
        for name in shapes:
            dtype = tf.as_dtype(dtypes[name])
            groups.setdefault(dtype.name, []).append(name)
            by_key[dtype.name] = dtype
        return cls(groups, {n: tuple(s) for n, s in shapes.items()}, by_key)

    def size(self, name: str) -> int:
        return math.prod(self.shapes[name])

    def width(self, key: str) -> int:
        return sum(self.size(m) for m in self.groups[key])

    def pack(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """name -> [rows, *shape] to dtype key -> [rows, D]."""
        packed = {}
        for key, names in self.groups.items():
            if isinstance(values[names[0]], np.ndarray):
                packed[key] = self._pack_host(values, key, names)
            else:
                parts = [tf.reshape(values[m], [-1, self.size(m)]) for m in names]
                packed[key] = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        return packed

    def _pack_host(self, values: Mapping[str, Any], key: str, names: list[str]) -> np.ndarray:
        dtype = np.dtype(self.dtypes[key].as_numpy_dtype)
        parts = []
        for m in names:
            v = values[m]
            _, start, stop = self._columns[m]  # type: ignore[attr-defined]
            if not (  # [rows, size] of the right dtype (the usual case) is passed as it is
                isinstance(v, np.ndarray) and v.dtype == dtype and v.shape[1:] == (stop - start,)
            ):
                v = np.asarray(v, dtype).reshape(-1, stop - start)
            parts.append(v)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def unpack(self, packed: Mapping[str, Any]) -> dict[str, Any]:
        """dtype key -> [rows, D] to name -> [rows, *shape] (views for numpy arrays)."""
        if any(isinstance(v, np.ndarray) for v in packed.values()):
            return self._unpack_host(packed)
        out = {}
        for key, names in self.groups.items():
            whole = packed[key]
            sizes = [self.size(m) for m in names]
            parts = [whole] if len(names) == 1 else tf.split(whole, sizes, axis=1)
            for m, part in zip(names, parts, strict=True):
                if self.shapes[m] == (self.size(m),):
                    out[m] = part  # already [rows, size]
                else:
                    out[m] = tf.reshape(part, [-1, *self.shapes[m]])
        return {m: out[m] for m in self.shapes}  # the attributed order, not the dtype grouping

    def _unpack_host(self, packed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for m, shape in self.shapes.items():  # the attributed order, not the dtype grouping
            key, start, stop = self._columns[m]  # type: ignore[attr-defined]
            whole = np.asarray(packed[key])
            part = whole if len(self.groups[key]) == 1 else whole[:, start:stop]
            out[m] = part if shape == (stop - start,) else part.reshape((-1, *shape))
        return out
