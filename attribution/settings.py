"""The engine's settings, defined once: choices, defaults and validation. No TensorFlow.

These frozen dataclasses are what the engine (`IntegratedGradients`) is configured with and what
the job config embeds (`pipeline.config.JobConfig` has `model`, `attribution` and `batching`
sections of these types). Their fields are declared with `attribution.fields.setting`, so the
YAML schema, `to_dict`, parsing and error messages are all derived from the declarations below:

    Baseline          how each example's baseline is built (kinds: BASELINE_KINDS)
    Target            which output scalar is explained (kinds: TARGET_KINDS)
    AttributionConfig method, steps (or auto: tolerance, min_steps, max_steps), layer, output,
                      baseline, target
    BatchingConfig    examples per model call, rows per gradient call
    ModelConfig       the model to load

Adding a baseline kind: add it to `BASELINE_KINDS`, give its fields `kinds=` entries here, build
it in `attribution.baselines.make_baselines`, test it, and document it in configs/README.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attribution.errors import SettingsError
from attribution.fields import (
    OPTIONAL_FOR_KIND,
    REQUIRED_FOR_KIND,
    Boolean,
    Choice,
    Function,
    Indices,
    Integer,
    IntegerOrWord,
    Names,
    Number,
    NumberOrMap,
    NumberOrNumbersMap,
    Positive,
    Section,
    SizeOrWord,
    Strings,
    Text,
    default_of,
    setting,
)

__all__ = [
    "ADAPTIVE_METHODS",
    "AUTO_STEPS",
    "BASELINE_KINDS",
    "FEATURES",
    "KEYED_BASELINE_KINDS",
    "METHODS",
    "MULTI_TARGET_KINDS",
    "TARGET_KINDS",
    "AttributionConfig",
    "Baseline",
    "BatchingConfig",
    "ModelConfig",
    "Target",
]

METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)
"""Integration rules (see `attribution.integration`)."""

AUTO_STEPS = "auto"
AUTO_SIZE = "auto"
"""`batching` sizes chosen from the memory budget (`attribution.budget`)."""
"""`steps: auto`: adaptive steps per example (`attribution.adaptive`)."""

ADAPTIVE_METHODS = ("gausslegendre",)
"""The rules `steps: auto` refines (the rule whose error falls fastest with the steps)."""

BASELINE_KINDS = ("zeros", "constant", "per_feature", "array", "random_uniform")
"""Baseline kinds; `array` (per-example arrays passed to `attribute`) is Python-only."""

KEYED_BASELINE_KINDS = ("random_uniform",)
"""Baseline kinds whose values depend on each example's key (a SavedModel export of them takes
a `keys` input)."""

TARGET_KINDS = ("predicted", "index", "label", "scalar", "top_k", "indices", "callable")
"""Target kinds; `callable` (a TensorFlow function of the output) is Python-only."""

MULTI_TARGET_KINDS = ("top_k", "indices")
"""Target kinds that explain several outputs per example (one result row per explained output,
see `attribution.multi_output`)."""

FEATURES = Names(nullable=True, allow_empty=False, hint=" (use null for every model input)")
"""The check of an attributed-features list (None means every model input)."""

Bound = float | Mapping[str, float]
"""A random_uniform `low`/`high`: one number for every feature, or a {feature: number} map."""


@dataclasses.dataclass(frozen=True)
class Baseline:
    """How to build the baseline (reference input) of each example.

    Kinds (each takes exactly the fields listed):
      zeros           x' = 0 (the default).
      constant        x' = `value` everywhere.
      per_feature     x' = `values[feature]`: a number, a flat list, or (Python) an array
                      broadcastable to the feature's shape.
      array           per-example baselines passed to `attribute(..., baselines=...)` (Python).
      random_uniform  random counterfactuals (TF-GNN's `random_counterfactual`) drawn uniformly
                      from [`low`, `high`] per feature (a number, or a {feature: number} map),
                      `samples` per example, attributions averaged (Vertex AI's convention).
                      Draws are a function of the example's key and `seed` only, so an example
                      gets the same baseline in any batch, process or machine.
    """

    kind: str = setting("zeros", check=Choice(BASELINE_KINDS, "baseline kind", api_only=("array",)))
    value: float = setting(0.0, check=Number(), kinds={"constant": REQUIRED_FOR_KIND})
    values: Mapping[str, Any] | None = setting(
        None, check=NumberOrNumbersMap(), kinds={"per_feature": REQUIRED_FOR_KIND}
    )
    low: Bound | None = setting(
        None, check=NumberOrMap(), kinds={"random_uniform": REQUIRED_FOR_KIND}
    )
    high: Bound | None = setting(
        None, check=NumberOrMap(), kinds={"random_uniform": REQUIRED_FOR_KIND}
    )
    seed: int = setting(0, check=Integer(0), kinds={"random_uniform": OPTIONAL_FOR_KIND})
    samples: int = setting(1, check=Integer(1), kinds={"random_uniform": OPTIONAL_FOR_KIND})

    @property
    def uses_keys(self) -> bool:
        """Whether the baselines depend on each example's key (`KEYED_BASELINE_KINDS`)."""
        return self.kind in KEYED_BASELINE_KINDS

    @property
    def num_samples(self) -> int:
        """Baselines per example (only random_uniform draws more than one)."""
        return self.samples if self.kind == "random_uniform" else 1

    def bounds(self, feature: str) -> tuple[Any, Any]:
        """The [low, high] range of a random_uniform baseline for one feature."""
        low = self.low[feature] if isinstance(self.low, Mapping) else self.low
        high = self.high[feature] if isinstance(self.high, Mapping) else self.high
        return low, high

    def cross_check(self, prefix: str) -> None:
        """low <= high wherever both are known; two bound maps name the same features."""
        if self.kind != "random_uniform":
            return
        low, high = self.low, self.high
        where = f"{prefix}.high" if prefix else "high"
        if isinstance(low, Mapping) and isinstance(high, Mapping) and set(low) != set(high):
            diff = sorted(set(low) ^ set(high))
            raise SettingsError(
                f"low and high maps must name the same features; differ on {diff}", where
            )
        per_feature = low if isinstance(low, Mapping) else high
        names = list(per_feature) if isinstance(per_feature, Mapping) else [None]
        for name in names:
            lo, hi = self.bounds(name) if name is not None else (low, high)
            if lo > hi:
                key = f"{where}.{name}" if isinstance(high, Mapping) else where
                raise SettingsError(f"must be >= low ({lo}), got {hi}", key)

    def check_features(self, features: Iterable[str], prefix: str = "") -> None:
        """Checks that every {feature: ...} map of this baseline names exactly `features`.

        Raises:
          SettingsError: a map names a feature that is not attributed, or misses one.
        """
        features = tuple(features)
        for name in ("values", "low", "high"):
            entries = getattr(self, name)
            if not isinstance(entries, Mapping):
                continue
            key = f"{prefix}.{name}" if prefix else name
            for entry in entries:
                if entry not in features:
                    raise SettingsError(
                        f"not an attributed feature (features: {', '.join(features)})",
                        f"{key}.{entry}",
                    )
            missing = [f for f in features if f not in entries]
            if missing:
                raise SettingsError(f"missing entries for features {missing}", key)


@dataclasses.dataclass(frozen=True)
class Target:
    """Which scalar of the model's output is explained.

    Kinds:
      predicted  the arg-max class of F(x) (a scalar-output model explains its single output).
      index      a fixed class index `value`.
      label      the class given per example by the input feature `feature` (e.g. the label).
      scalar     the model's single output (regression, sigmoid); the output must have width 1.
      top_k      the `k` highest-scoring classes of F(x), highest first (ties: lower index
                 first); one result row per (example, class).
      indices    the fixed classes `values` (distinct), in list order; one result row per
                 (example, class).
      callable   (Python) `fn(output) -> [N]`, a TensorFlow function of the selected output
                 tensor [N, C] evaluated at every point on the path.
    """

    kind: str = setting(
        "predicted", check=Choice(TARGET_KINDS, "target kind", api_only=("callable",))
    )
    value: int | None = setting(None, check=Integer(0), kinds={"index": REQUIRED_FOR_KIND})
    feature: str | None = setting(None, check=Text(), kinds={"label": REQUIRED_FOR_KIND})
    k: int | None = setting(None, check=Integer(1), kinds={"top_k": REQUIRED_FOR_KIND})
    values: tuple[int, ...] | None = setting(
        None, check=Indices(), kinds={"indices": REQUIRED_FOR_KIND}
    )
    fn: Callable[[Any], Any] | None = setting(
        None, check=Function(), kinds={"callable": REQUIRED_FOR_KIND}, config=False
    )

    @property
    def outputs_per_example(self) -> int:
        """Outputs explained per example: `k`, the number of `values`, or 1."""
        if self.kind == "top_k":
            return int(self.k)
        if self.kind == "indices":
            return len(self.values)
        return 1

    @property
    def multi(self) -> bool:
        """Whether results have one row per (example, explained output) (`MULTI_TARGET_KINDS`)."""
        return self.kind in MULTI_TARGET_KINDS


@dataclasses.dataclass(frozen=True)
class AttributionConfig:
    """How attributions are computed.

    Attributes:
      method: One of `METHODS`.
      steps: Points on the integration path (>= 1; >= 2 for `riemann_trapezoid`), or `auto`
        (`AUTO_STEPS`, gausslegendre only): per example, `min_steps` points first, doubled
        until the relative completeness error is within `tolerance` or `max_steps` is reached
        (see `attribution.adaptive`).
      tolerance: With `auto`: the relative completeness error to reach,
        |delta| / max(|F(x) - F(x')|, tiny) (> 0).
      min_steps: With `auto`: the points of the first try (>= 1).
      max_steps: With `auto`: the most points per example (>= min_steps).
      layer: Attribute to the output of this named layer instead of the model inputs.
      output: Name of the model output to explain (multi-output models).
      baseline: The baseline.
      target: The explained output scalar.
      display_names: Optional display name per output index (`output_name` column).
    """

    method: str = setting("gausslegendre", check=Choice(METHODS, "method"))
    steps: int | str = setting(50, check=IntegerOrWord(1, AUTO_STEPS))
    tolerance: float = setting(0.01, check=Positive(), when=("steps", AUTO_STEPS))
    min_steps: int = setting(8, check=Integer(1), when=("steps", AUTO_STEPS))
    max_steps: int = setting(256, check=Integer(1), when=("steps", AUTO_STEPS))
    layer: str | None = setting(None, check=Text())
    output: str | None = setting(None, check=Text())
    baseline: Baseline = setting(Baseline(), check=Section(Baseline))
    target: Target = setting(Target(), check=Section(Target))
    display_names: tuple[str, ...] | None = setting(None, check=Strings())

    @property
    def adaptive(self) -> bool:
        """Whether the steps are chosen per example (`steps: auto`)."""
        return self.steps == AUTO_STEPS

    def with_steps(self, steps: int) -> AttributionConfig:
        """These settings with a fixed number of steps (the adaptive settings at defaults)."""
        return dataclasses.replace(
            self,
            steps=steps,
            **{name: default_of(AttributionConfig, name) for name in _ADAPTIVE_FIELDS},
        )

    def cross_check(self, prefix: str) -> None:
        """The trapezoid rule needs two points; `auto` needs gausslegendre and a valid range."""

        def key(name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        if self.adaptive:
            if self.target.multi:
                raise SettingsError(
                    f"auto is not supported with target kind {self.target.kind} (several "
                    "outputs per example); give an integer",
                    key("steps"),
                )
            if self.method not in ADAPTIVE_METHODS:
                raise SettingsError(
                    f"auto needs method {' or '.join(ADAPTIVE_METHODS)}, not {self.method}; "
                    "give an integer",
                    key("steps"),
                )
            if self.max_steps < self.min_steps:
                raise SettingsError(
                    f"must be >= min_steps ({self.min_steps}), got {self.max_steps}",
                    key("max_steps"),
                )
            return
        if self.method == "riemann_trapezoid" and self.steps < 2:
            raise SettingsError(
                f"must be an integer >= 2 for method riemann_trapezoid, got {self.steps}",
                key("steps"),
            )


_ADAPTIVE_FIELDS = ("tolerance", "min_steps", "max_steps")


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Batch sizes: given, or chosen from a memory budget (`attribution.budget`).

    Attributes:
      batch_size: Examples per model call, or `auto`: as many as fit `max_rows_per_call` rows
        (rows / (steps x baseline samples); with `steps: auto`, `max_steps`).
      max_rows_per_call: Upper bound on rows (path points x examples) per gradient call (below
        `steps`, one example's path is split over several calls), or `auto`: `memory_budget`
        divided by the model's estimated bytes per row.
      memory_budget: The engine's working set per worker process, a size ("512MiB", "2GB",
        bytes), or `auto`: 40% of the GPU's memory when there is one, else 128 MiB. Only used
        when `max_rows_per_call` is `auto`.
      jit_compile: Compile the gradient computation with XLA (`tf.function(jit_compile=True)`;
        each call padded to a power of two examples). Faster where XLA supports every op of
        the model.
    """

    batch_size: int | str = setting(AUTO_SIZE, check=IntegerOrWord(1, AUTO_SIZE))
    max_rows_per_call: int | str = setting(AUTO_SIZE, check=IntegerOrWord(1, AUTO_SIZE))
    memory_budget: int | str = setting(AUTO_SIZE, check=SizeOrWord(AUTO_SIZE))
    jit_compile: bool = setting(False, check=Boolean())


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model to explain.

    Attributes:
      path: A `.keras` file or a SavedModel directory.
      preprocess_path: Optional SavedModel/`.keras` mapping serialized `tf.Example` strings to
        model inputs; when None, features are parsed from the examples by name.
      signature: SavedModel signature to call (`integrated_gradients`: an igbeam export).
      safe_mode: Keras `safe_mode` when loading a `.keras` file.
    """

    path: str = setting(check=Text(), path=True)
    preprocess_path: str | None = setting(None, check=Text(), path=True)
    signature: str = setting("serving_default", check=Text())
    safe_mode: bool = setting(True, check=Boolean())
