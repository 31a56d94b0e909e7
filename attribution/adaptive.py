"""Adaptive steps (`steps: auto`): per example, only as many path points as its accuracy needs.

The completeness delta of IG, sum_i attr_i - (F(x) - F(x')), is zero for the exact integral, so
its size relative to F(x) - F(x') measures how well the path integral was approximated:

    relative error = |delta| / max(|F(x) - F(x')|, 1e-6 * max(|F(x)|, |F(x')|), 1e-30)

(the floor keeps an example whose prediction barely moves from its baseline's from chasing
float32 rounding noise). `AdaptiveIntegratedGradients` attributes a batch with `min_steps`
Gauss-Legendre points, then recomputes only the examples above `tolerance` with twice the points
(8, 16, 32, ... and `max_steps` last), until every example is within tolerance or has had
`max_steps` points. Gauss-Legendre rules are not nested, so a refined example is recomputed at
the new level from scratch (its earlier points are not reused); the cost is at most one level
below the last, i.e. under 2x that of the steps it ends with.

Examples still above tolerance at `max_steps` keep that last result (with its delta) and are
reported (`within_tolerance` False), never dropped. Each level is one `IntegratedGradients`
engine (its compiled function traced once), built on first use and reused.

Determinism: random baselines are a function of each example's key, and the engine's results do
not depend on batch composition beyond float32 rounding (~1e-7 relative: batched matrix products
round differently). So that rounding never changes a decision, an example whose error lies
within a rounding margin of the tolerance (`BORDERLINE_NOISE`) is recomputed alone at that level
and decided on that. The steps each example uses therefore depend only on the example, its key
and the settings, never on the other examples of its batch; its values are those of the engine
at those steps (equal to rounding).

TensorFlow only through the engine; no Beam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attribution.engine import Attribution, IntegratedGradients
from attribution.fields import validated
from attribution.models import ModelAdapter
from attribution.settings import AttributionConfig

__all__ = [
    "AdaptiveAttribution",
    "AdaptiveIntegratedGradients",
    "relative_errors",
    "step_levels",
]

RELATIVE_FLOOR = 1e-6
"""The denominator of the relative error is at least this fraction of max(|F(x)|, |F(x')|)."""

BORDERLINE_NOISE = 1e-6
"""An example whose |delta| is within this fraction of |F(x)| + |F(x')| + sum |attributions| of
the tolerance is decided on a computation of it alone (see `attribute`): the delta of a float32
model differs between batch compositions by up to ~1e-7 of those magnitudes (measured on the
test and benchmark MLPs), which could otherwise tip it to either side."""


@dataclasses.dataclass
class AdaptiveAttribution(Attribution):
    """An `Attribution` with the steps each example used.

    Attributes:
      steps_used: [B] int32, the Gauss-Legendre points of each example's result.
      within_tolerance: [B] bool, whether its relative completeness error is within tolerance
        (False only for examples that reached `max_steps`).
      relative_errors: [B] float64, `relative_errors` of the result.
    """

    steps_used: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    within_tolerance: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
    relative_errors: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))


def step_levels(min_steps: int, max_steps: int) -> list[int]:
    """The steps tried in turn: min_steps doubled while below max_steps, then max_steps."""
    levels = [min_steps]
    while levels[-1] < max_steps:
        levels.append(min(2 * levels[-1], max_steps))
    return levels


def relative_errors(
    deltas: np.ndarray, predictions: np.ndarray, baseline_predictions: np.ndarray
) -> np.ndarray:
    """|delta| / max(|F(x) - F(x')|, 1e-6 * max(|F(x)|, |F(x')|), 1e-30), per example."""
    fx = np.asarray(predictions, np.float64)
    fb = np.asarray(baseline_predictions, np.float64)
    scale = RELATIVE_FLOOR * np.maximum(np.abs(fx), np.abs(fb))
    denominator = np.maximum(np.maximum(np.abs(fx - fb), scale), 1e-30)
    return np.abs(np.asarray(deltas, np.float64)) / denominator


def _take(value: Any, index: np.ndarray) -> Any:
    """Rows `index` of an array, or of every array of a mapping."""
    if isinstance(value, Mapping):
        return {k: np.asarray(v)[index] for k, v in value.items()}
    return np.asarray(value)[index]


def _put(target: Any, index: np.ndarray, value: Any) -> None:
    """Writes rows `index` of `target` (an array or a mapping of arrays) in place."""
    if isinstance(target, Mapping):
        for k in target:
            target[k][index] = value[k]
    else:
        target[index] = value


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: np.array(v) for k, v in value.items()}
    return None if value is None else np.array(value)


class AdaptiveIntegratedGradients:
    """Integrated Gradients with the steps chosen per example (`steps: auto`).

    Arguments as `IntegratedGradients`'s, with `settings.steps == "auto"` (the engine's field
    arguments `method=`, `steps=`, ... are not taken: give `settings`). The engine of the first
    level is built here (so bad settings, features or layers fail now); the others on first use.

    Raises:
      ValueError: as `IntegratedGradients`, or settings whose steps are not `auto`.
    """

    def __init__(
        self,
        model: ModelAdapter,
        *,
        settings: AttributionConfig,
        features: Sequence[str] | None = None,
        max_rows_per_call: int | str | None = None,
        memory_budget: int | str | None = None,
        jit_compile: bool | None = None,
    ) -> None:
        settings = validated(settings)
        if not settings.adaptive:
            raise ValueError(f"steps: AdaptiveIntegratedGradients needs auto, got {settings.steps}")
        self.settings = settings
        self.model = model
        self.tolerance = settings.tolerance
        self.levels = step_levels(settings.min_steps, settings.max_steps)
        self._features = features
        self._max_rows_per_call = max_rows_per_call
        self._memory_budget = memory_budget
        self._jit_compile = jit_compile
        self._engines: dict[int, IntegratedGradients] = {}
        self.first = self.engine(self.levels[0])

    def engine(self, steps: int) -> IntegratedGradients:
        """The fixed-steps engine of one level (built once, then reused)."""
        if steps not in self._engines:
            self._engines[steps] = IntegratedGradients(
                self.model,
                features=self._features,
                max_rows_per_call=self._max_rows_per_call,
                memory_budget=self._memory_budget,
                jit_compile=self._jit_compile,
                settings=self.settings.with_steps(steps),
            )
        return self._engines[steps]

    # What the pipeline reads of an engine: the first level's (the same at every level).
    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def steps(self) -> str:
        return self.settings.steps

    @property
    def layer(self) -> str | tuple[str, ...] | None:
        return self.first.layer

    @property
    def layers(self) -> tuple[str, ...]:
        return self.first.layers

    @property
    def baseline(self) -> Any:
        return self.first.baseline

    @property
    def target(self) -> Any:
        return self.first.target

    @property
    def output(self) -> str:
        return self.first.output

    @property
    def input_specs(self) -> dict[str, Any]:
        return self.first.input_specs

    @property
    def attributed_specs(self) -> dict[str, Any]:
        return self.first.attributed_specs

    @property
    def max_rows_per_call(self) -> int:
        return self.first.max_rows_per_call

    @property
    def batch_plan(self) -> Any:
        """The first level's `BatchPlan` (rows per call are the same at every level)."""
        return self.first.batch_plan

    def attribute(
        self,
        inputs: Mapping[str, Any] | Any,
        *,
        keys: Sequence[str] | np.ndarray | None = None,
        baselines: Mapping[str, Any] | Any | None = None,
        targets: Sequence[int] | np.ndarray | int | None = None,
    ) -> AdaptiveAttribution:
        """Attributes a batch, refining the examples above tolerance (see the module docstring).

        Arguments as `IntegratedGradients.attribute`'s. Keys default to the row index in this
        call, as there; pass keys for results that do not depend on the batch (random baselines).

        Returns:
          An `AdaptiveAttribution`.
        """
        first = self.first
        if keys is None:
            n = len(next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs)
            keys = np.array([str(i) for i in range(n)], dtype=object)
        keys = np.asarray(keys, dtype=object)
        result = first.attribute(inputs, keys=keys, baselines=baselines, targets=targets)
        n = len(result)
        if n == 0:
            return AdaptiveAttribution(**vars(result), steps_used=np.zeros(0, np.int32))
        out = AdaptiveAttribution(
            attributions=_copy(result.attributions),
            predictions=np.array(result.predictions),
            baseline_predictions=np.array(result.baseline_predictions),
            deltas=np.array(result.deltas),
            targets=np.array(result.targets),
            baselines=_copy(result.baselines),
            layer_scores=_copy(result.layer_scores),
            scores=_copy(result.scores),
            padding=result.padding,
            steps_used=np.full(n, self.levels[0], np.int32),
        )
        per_example_targets = targets is not None and np.ndim(targets) > 0

        def run(steps: int, rows: np.ndarray) -> Attribution:
            return self.engine(steps).attribute(
                _take(inputs, rows),
                keys=keys[rows],
                baselines=None if baselines is None else _take(baselines, rows),
                targets=np.asarray(targets)[rows] if per_example_targets else targets,
            )

        def store(steps: int, rows: np.ndarray, part: Attribution) -> None:
            _put(out.attributions, rows, part.attributions)
            _put(out.baselines, rows, part.baselines)
            if out.layer_scores is not None:
                out.layer_scores[rows] = part.layer_scores
            if out.scores is not None:
                _put(out.scores, rows, part.scores)
            for name in ("predictions", "baseline_predictions", "deltas", "targets"):
                getattr(out, name)[rows] = getattr(part, name)
            out.steps_used[rows] = steps

        errors = np.zeros(n)
        rows, steps = np.arange(n), self.levels[0]
        for level, steps in enumerate(self.levels):
            if level:
                store(steps, rows, run(steps, rows))
            # A batch's floating-point sums differ from one example's in the last bits, so an
            # error within rounding noise of the tolerance is decided on the example alone.
            for row in rows[self._borderline(out, rows)]:
                store(steps, np.array([row]), run(steps, np.array([row])))
            errors[rows] = relative_errors(
                out.deltas[rows], out.predictions[rows], out.baseline_predictions[rows]
            )
            rows = rows[~(errors[rows] <= self.tolerance)]
            if len(rows) == 0:
                break
        out.relative_errors = errors
        out.within_tolerance = errors <= self.tolerance
        return out

    def _borderline(self, out: AdaptiveAttribution, rows: np.ndarray) -> np.ndarray:
        """Whether each of `rows` is within rounding noise of the tolerance (a mask)."""
        fx, fb = out.predictions[rows], out.baseline_predictions[rows]
        denominator = np.maximum(
            np.maximum(np.abs(fx - fb), RELATIVE_FLOOR * np.maximum(np.abs(fx), np.abs(fb))),
            1e-30,
        )
        attributions = out.attributions
        arrays = attributions.values() if isinstance(attributions, Mapping) else [attributions]
        magnitude = np.abs(fx) + np.abs(fb)
        for values in arrays:
            magnitude = magnitude + np.abs(values[rows]).reshape(len(rows), -1).sum(axis=1)
        gap = np.abs(np.abs(out.deltas[rows]) - self.tolerance * denominator)
        return gap <= BORDERLINE_NOISE * magnitude

    def trace_counts(self) -> dict[str, int]:
        """Traces of each level's compiled function ("attribute_<steps>"): 1 each once used."""
        return {
            f"attribute_{steps}": engine.trace_counts()["attribute"]
            for steps, engine in sorted(self._engines.items())
        }
