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
                dtype = self.dtypes[key].as_numpy_dtype
                parts = [np.asarray(values[m], dtype).reshape(-1, self.size(m)) for m in names]
                packed[key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            else:
                parts = [tf.reshape(values[m], [-1, self.size(m)]) for m in names]
                packed[key] = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        return packed

    def unpack(self, packed: Mapping[str, Any]) -> dict[str, Any]:
        """dtype key -> [rows, D] to name -> [rows, *shape] (views for numpy arrays)."""
        out = {}
        for key, names in self.groups.items():
            whole = packed[key]
            host = isinstance(whole, np.ndarray)
            sizes = [self.size(m) for m in names]
            if len(names) == 1:
                parts = [whole]
            elif host:
                parts = np.split(whole, np.cumsum(sizes)[:-1], axis=1)
            else:
                parts = tf.split(whole, sizes, axis=1)
            for m, part in zip(names, parts, strict=True):
                if self.shapes[m] == (self.size(m),):
                    out[m] = part  # already [rows, size]
                elif host:
                    out[m] = part.reshape((-1, *self.shapes[m]))
                else:
                    out[m] = tf.reshape(part, [-1, *self.shapes[m]])
        return {m: out[m] for m in self.shapes}  # the attributed order, not the dtype grouping
