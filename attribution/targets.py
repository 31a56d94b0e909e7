"""Targets: which scalar of the model's output is explained.

Kinds:
  predicted  the arg-max class of F(x) (a scalar-output model explains its single output).
  index      a fixed class index `value`.
  label      the class given per example by the input feature `feature` (e.g. the label).
  scalar     the model's single output (regression, sigmoid); the output must have width 1.
  callable   `fn(output) -> [N]`, a TensorFlow function of the selected output tensor [N, C]
             evaluated at every point on the path (captum's "forward_func" wrapping).
A per-example index array passed as `attribute(..., targets=...)` overrides the spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

TARGET_KINDS = ("predicted", "index", "label", "scalar", "callable")
NO_CLASS = -1  # reported target for scalar and callable targets


@dataclasses.dataclass(frozen=True)
class Target:
    """Which output scalar to explain. See the module docstring for the kinds."""

    kind: str = "predicted"
    value: int | None = None
    feature: str | None = None
    fn: Callable[[Any], Any] | None = None

    def validate(self) -> None:
        """Raises ValueError for an unknown kind or a missing/ill-typed field."""
        if self.kind not in TARGET_KINDS:
            raise ValueError(
                f"unknown target kind {self.kind!r}; choose one of {', '.join(TARGET_KINDS)}"
            )
        if self.kind == "index" and (
            isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 0
        ):
            raise ValueError(f"target kind 'index' needs an integer value >= 0, got {self.value!r}")
        if self.kind == "label" and not self.feature:
            raise ValueError("target kind 'label' needs the label feature's name")
        if self.kind == "callable" and not callable(self.fn):
            raise ValueError("target kind 'callable' needs fn, a function of the output tensor")
