"""Batch sizes from a memory budget: rows per gradient call and examples per model call.

The engine evaluates `rows` = examples x path points per gradient call. What one row costs in
memory is estimated from the model: every layer's per-example output (float32 or its dtype),
times `BACKWARD_FACTOR` for the activations kept for the backward pass, their gradients and
temporaries. Rows per call = budget / bytes per row (within [1, `MAX_ROWS`]); examples per call
= rows / (steps x baseline samples). The budget (`batching.memory_budget`) is a size, or `auto`:
`GPU_FRACTION` of the first GPU's total memory when TensorFlow sees one (read with
`nvidia-smi`; `GPU_FALLBACK_BYTES` when it cannot be read), else `CPU_BUDGET_BYTES`, a size at
which a CPU engine is as fast as with larger calls (`benchmarks/RESULTS.md`).

No Beam here; TensorFlow only to ask for GPUs. The numbers are estimates: the budget bounds the
engine's working set to within a small factor, it is not an allocator limit.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
from typing import Any

__all__ = [
    "AUTO",
    "BatchPlan",
    "bytes_per_row",
    "device_budget",
    "parse_size",
    "plan_batches",
]

AUTO = "auto"
CPU_BUDGET_BYTES = 128 << 20
GPU_FRACTION = 0.4
GPU_FALLBACK_BYTES = 4 << 30
BACKWARD_FACTOR = 3
MAX_ROWS = 1 << 20
DEFAULT_ROWS = 16384
"""Rows per call when the model's size per row cannot be estimated (no Keras layers)."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int | None:
    """Bytes of an int (bytes) or a string like "512MiB", "2GB", "1.5GiB"; None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        return None
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    return size if size > 0 else None


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The batch sizes a worker chose, as `summary.json` reports them.

    Attributes:
      rows_per_call: Examples x path points per gradient call.
      examples_per_call: Examples per model call (>= 1).
      memory_budget: The budget in bytes (0 when sizes were given, not derived).
      bytes_per_row: Estimated bytes per row (0: unknown).
      device: "GPU" or "CPU".
      source: How the sizes were chosen ("budget", "given", "default").
    """

    rows_per_call: int
    examples_per_call: int
    memory_budget: int
    bytes_per_row: int
    device: str
    source: str


def _gpu_total_bytes() -> int | None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        out = subprocess.run(
            [tool, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0])) << 20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def device_budget(budget: Any = AUTO) -> tuple[int, str]:
    """(bytes, device) for a `memory_budget` setting: the size given, or the `auto` default."""
    import tensorflow as tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    if budget != AUTO:
        size = parse_size(budget)
        if size is None:
            raise ValueError(f"memory_budget must be a size like 512MiB or auto, got {budget!r}")
        return size, device
    if device == "GPU":
        total = _gpu_total_bytes()
        return (int(total * GPU_FRACTION) if total else GPU_FALLBACK_BYTES), device
    return CPU_BUDGET_BYTES, device


def bytes_per_row(keras_model: Any) -> int | None:
    """Estimated working-set bytes of one row (one example at one path point), or None.

    Sums every layer's per-example output elements (nested models' layers included) times its
    dtype's size, times `BACKWARD_FACTOR`. None without Keras layers (a SavedModel).
    """
    if keras_model is None or not hasattr(keras_model, "layers"):
        return None
    total = 0

    def outputs(layer: Any) -> list[Any]:
        try:
            out = layer.output
        except (AttributeError, ValueError):  # a layer never called symbolically
            return []
        return list(out) if isinstance(out, list | tuple) else [out]

    def visit(model: Any) -> None:
        nonlocal total
        for layer in model.layers:
            if hasattr(layer, "layers") and layer.layers:
                visit(layer)
                continue
            for out in outputs(layer):
                shape = getattr(out, "shape", None)
                if shape is None or len(shape) == 0:
                    continue
                dims = [d for d in tuple(shape)[1:]]
                if any(d is None for d in dims):
                    continue
                size = getattr(getattr(out, "dtype", None), "itemsize", None) or _itemsize(out)
                total += math.prod(dims) * size

    visit(keras_model)
    return total * BACKWARD_FACTOR if total else None


def _itemsize(tensor: Any) -> int:
    import numpy as np

    try:
        return np.dtype(str(tensor.dtype)).itemsize
    except TypeError:
        return 4


def plan_batches(
    *,
    steps: int,
    samples: int,
    row_bytes: int | None,
    budget: Any = AUTO,
    max_rows_per_call: Any = AUTO,
    batch_size: Any = AUTO,
) -> BatchPlan:
    """The sizes for one engine: given ones kept, `auto` ones derived from the budget.

    Args:
      steps: Path points per example (the most an example can use, for adaptive steps).
      samples: Baseline samples per example (rows per example per path point).
      row_bytes: `bytes_per_row` of the model (None: unknown, `DEFAULT_ROWS` is used).
      budget, max_rows_per_call, batch_size: The `batching` settings.
    """
    given_rows = max_rows_per_call != AUTO
    budget_bytes, device = (0, "") if given_rows else device_budget(budget)
    if given_rows:
        rows, source = int(max_rows_per_call), "given"
    elif row_bytes:
        rows, source = max(1, min(MAX_ROWS, budget_bytes // row_bytes)), "budget"
    else:
        rows, source = DEFAULT_ROWS, "default"
    if not device:
        import tensorflow as tf

        device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    if batch_size != AUTO:
        examples = int(batch_size)
    else:
        examples = max(1, rows // max(1, steps * max(1, samples)))
    return BatchPlan(rows, examples, budget_bytes, int(row_bytes or 0), device, source)
