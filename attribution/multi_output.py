"""Several explained outputs per example (target kinds `top_k` and `indices`), and display names.

Layout: an example explained for K outputs becomes K consecutive result rows, in rank order
(`output_rank` 0..K-1: the highest score first for `top_k`, list order for `indices`). The
engine computes them by expanding rows: each example is repeated K times, with its key (so
random baselines are the same draws as a single-output run of that example), and each copy
requests one output, so all K paths go through the existing chunked gradient machinery in one
call, and each row equals a run with that output as a fixed target (`index`). A `top_k` row
requests "the class of rank r" (-(r + 1), see `attribution.targets.select_classes`), chosen in
graph code from F(x) of the same call: no extra forward pass. Where the K rows of an example
share one path (one baseline sample, no XLA padding), the engine's gradient call takes the
example once and computes its K outputs' gradients from one forward pass
(`IntegratedGradients.shared_paths`, `_shared_grad_sums`): the same results, about 1.3-1.5x
faster at K = 2, 3 on the benchmark MLP (`benchmarks/bench_multi_output.py`).

Display names (`attribution.display_names`) map an output index to a name (the `output_name`
column); scalar and callable targets (reported target -1) take the first name.

NumPy and the settings only; no Beam.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attribution.errors import SettingsError
from attribution.settings import Target

__all__ = [
    "DISPLAY_NAMES_KEY",
    "check_display_names",
    "display_names_of",
    "repeat_rows",
    "requested_rows",
]

DISPLAY_NAMES_KEY = "attribution.display_names"
"""The config key named by display-name errors."""


def requested_rows(target: Target, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(requested, ranks), int32 [n * K] each, for n examples of a multi-output target.

    `requested` is the class each row asks for: the fixed index for kind 'indices', and
    -(r + 1) ("the class of rank r") for kind 'top_k'; `ranks` is r, 0..K-1 per example.

    Raises:
      ValueError: the target is not of a multi-output kind.
    """
    if not target.multi:
        raise ValueError(f"target kind {target.kind!r} explains one output per example")
    k = target.outputs_per_example
    ranks = np.tile(np.arange(k, dtype=np.int32), n)
    if target.kind == "top_k":
        return -(ranks + 1), ranks
    return np.tile(np.asarray(target.values, np.int32), n), ranks


def repeat_rows(value: Any, k: int) -> Any:
    """Every row (first axis) of an array, or of each array of a mapping, repeated k times."""
    if isinstance(value, Mapping):
        return {name: repeat_rows(v, k) for name, v in value.items()}
    return np.repeat(np.asarray(value), k, axis=0)


def check_display_names(names: Sequence[str] | None, classes: int | None, output: str) -> None:
    """One display name per class of the explained output, when its width is known.

    Raises:
      SettingsError: (key `attribution.display_names`) fewer or more names than classes.
    """
    if names is None or classes is None or len(names) == classes:
        return
    raise SettingsError(
        f"has {len(names)} names but output {output!r} has {classes} classes (one name per "
        "output index)",
        DISPLAY_NAMES_KEY,
    )


def display_names_of(names: Sequence[str], targets: np.ndarray) -> list[str]:
    """The display name of each row's output index (-1, a scalar/callable target: the first).

    Raises:
      SettingsError: (key `attribution.display_names`) an index without a name.
    """
    index = np.where(np.asarray(targets) < 0, 0, np.asarray(targets))
    if index.size and int(index.max()) >= len(names):
        raise SettingsError(
            f"output index {int(index.max())} is out of range: {len(names)} names given",
            DISPLAY_NAMES_KEY,
        )
    table = np.asarray(list(names), dtype=object)
    return table[index.astype(np.int64)].tolist()
