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
    Check,
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
    parse,
    setting,
    show,
    validated,
)
from attribution.layers import LayerNames
from attribution.text_settings import TextConfig

__all__ = [
    "ADAPTIVE_METHODS",
    "AUTO_STEPS",
    "BASELINE_KINDS",
    "FEATURES",
    "KEYED_BASELINE_KINDS",
    "METHODS",
    "MULTI_TARGET_KINDS",
    "REFERENCE_STATISTICS",
    "TARGET_KINDS",
    "AttributionConfig",
    "Baseline",
    "BatchingConfig",
    "ModelConfig",
    "SmoothGrad",
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

BASELINE_KINDS = (
    "zeros",
    "constant",
    "per_feature",
    "array",
    "random_uniform",
    "blur",
    "average",
    "reference",
    "expected_gradients",
)
"""Baseline kinds; `array` (per-example arrays passed to `attribute`) is Python-only."""

KEYED_BASELINE_KINDS = ("random_uniform", "expected_gradients")
"""Baseline kinds whose values depend on each example's key (a SavedModel export of them takes
a `keys` input)."""

TARGET_KINDS = ("predicted", "index", "label", "scalar", "top_k", "indices", "callable")
"""Target kinds; `callable` (a TensorFlow function of the output) is Python-only."""

MULTI_TARGET_KINDS = ("top_k", "indices")
"""Target kinds that explain several outputs per example (one result row per explained output,
see `attribution.multi_output`)."""

FEATURES = Names(nullable=True, allow_empty=False, hint=" (use null for every model input)")
"""The check of an attributed-features list (None means every model input)."""

REFERENCE_STATISTICS = ("median", "mean", "min", "max", "mode")
"""Per-feature statistics a `reference` baseline takes from reference data."""

SMOOTHGRAD_MAX_SAMPLES = 50
"""Vertex AI's valid range of `SmoothGradConfig.noisySampleCount` is [1, 50]."""

Bound = float | Mapping[str, float]
"""A random_uniform `low`/`high`: one number for every feature, or a {feature: number} map."""


class _BaselineList(Check):
    """A non-empty list of baseline mappings (`Baseline` instances from Python): the members of
    an `average` baseline; any kind but average, array, reference and expected_gradients."""

    excluded = ("average", "array", "reference", "expected_gradients")

    def __call__(self, value: Any, key: str, api: bool) -> tuple[Baseline, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise SettingsError(
                f"must be a non-empty list of baseline mappings, got {show(value)}", key
            )
        out = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if api and isinstance(item, Baseline):
                member = validated(item, where)
            elif isinstance(item, Mapping):
                member = parse(Baseline, item, where)
            else:
                raise SettingsError(f"must be a baseline mapping, got {show(item)}", where)
            if member.kind in self.excluded:
                raise SettingsError(
                    f"baseline kind {member.kind!r} cannot be averaged; use one of "
                    + ", ".join(k for k in BASELINE_KINDS if k not in self.excluded),
                    f"{where}.kind",
                )
            out.append(member)
        return tuple(out)


class ArrayMap(dict):
    """{name: array} compared by shape, dtype and contents (not by numpy's element-wise ==), so
    settings holding reference records compare and round-trip like other settings."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping) or set(self) != set(other):
            return False
        return all(_same_array(self[k], other[k]) for k in self)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]


def _same_array(a: Any, b: Any) -> bool:
    return (
        getattr(a, "shape", None) == getattr(b, "shape", None)
        and getattr(a, "dtype", None) == getattr(b, "dtype", None)
        and a.tobytes() == b.tobytes()
    )


class _Arrays(Check):
    """(Python) {name: numpy array}: reference records loaded for expected_gradients."""

    def __call__(self, value: Any, key: str, api: bool) -> Mapping[str, Any]:
        if not isinstance(value, Mapping) or not value:
            raise SettingsError("must be a non-empty {feature: array} map", key)
        for name, v in value.items():
            if not (hasattr(v, "shape") and hasattr(v, "dtype")) or len(v.shape) < 1:
                raise SettingsError(f"must be an array [records, ...], got {show(v)}", key)
            if v.shape[0] < 1:
                raise SettingsError("must hold at least one reference record", f"{key}.{name}")
        return ArrayMap(value)


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
      blur            x' = a Gaussian blur (std `sigma` pixels) of x over its first two axes
                      (H, W of [H, W] or [H, W, C] features): Vertex AI's blurBaselineConfig
                      with maxBlurSigma, a straight path from the maximally blurred image
                      (see `attribution.blur`).
      average         every baseline of `baselines` (and each one's samples): attributions and
                      F(x') averaged over all of them (Vertex AI's list of inputBaselines).
      reference       per-feature `statistic` (median, mean, min, max, mode) of reference data:
                      TFRecords (`pattern`) or an earlier igbeam run (`run`); resolved into
                      `values` before the job (`attribution.reference`), then like per_feature.
      expected_gradients  `samples` baselines per example drawn from reference records
                      (`pattern`, at most `max_reference` of them), chosen by key and `seed`;
                      the records are loaded into `references` before the job.
    """

    kind: str = setting("zeros", check=Choice(BASELINE_KINDS, "baseline kind", api_only=("array",)))
    value: float = setting(0.0, check=Number(), kinds={"constant": REQUIRED_FOR_KIND})
    values: Mapping[str, Any] | None = setting(
        None,
        check=NumberOrNumbersMap(),
        kinds={"per_feature": REQUIRED_FOR_KIND, "reference": OPTIONAL_FOR_KIND},
    )
    low: Bound | None = setting(
        None, check=NumberOrMap(), kinds={"random_uniform": REQUIRED_FOR_KIND}
    )
    high: Bound | None = setting(
        None, check=NumberOrMap(), kinds={"random_uniform": REQUIRED_FOR_KIND}
    )
    seed: int = setting(
        0,
        check=Integer(0),
        kinds={"random_uniform": OPTIONAL_FOR_KIND, "expected_gradients": OPTIONAL_FOR_KIND},
    )
    samples: int = setting(
        1,
        check=Integer(1),
        kinds={"random_uniform": OPTIONAL_FOR_KIND, "expected_gradients": OPTIONAL_FOR_KIND},
    )
    sigma: float | None = setting(None, check=Positive(), kinds={"blur": REQUIRED_FOR_KIND})
    baselines: tuple[Baseline, ...] | None = setting(
        None, check=_BaselineList(), kinds={"average": REQUIRED_FOR_KIND}
    )
    statistic: str | None = setting(
        None,
        check=Choice(REFERENCE_STATISTICS, "statistic"),
        kinds={"reference": REQUIRED_FOR_KIND},
    )
    pattern: str | None = setting(
        None,
        check=Text(split=True),
        path=True,
        kinds={"reference": OPTIONAL_FOR_KIND, "expected_gradients": REQUIRED_FOR_KIND},
    )
    run: str | None = setting(None, check=Text(), path=True, kinds={"reference": OPTIONAL_FOR_KIND})
    max_reference: int = setting(
        10_000, check=Integer(1), kinds={"expected_gradients": OPTIONAL_FOR_KIND}
    )
    references: Mapping[str, Any] | None = setting(
        None, check=_Arrays(), kinds={"expected_gradients": OPTIONAL_FOR_KIND}, config=False
    )

    @property
    def uses_keys(self) -> bool:
        """Whether the baselines depend on each example's key (`KEYED_BASELINE_KINDS`)."""
        if self.kind == "average":
            return any(b.uses_keys for b in self.baselines)
        return self.kind in KEYED_BASELINE_KINDS

    @property
    def num_samples(self) -> int:
        """Baselines per example: random draws' `samples`; the members' total for average."""
        if self.kind == "average":
            return sum(b.num_samples for b in self.baselines)
        return self.samples if self.kind in ("random_uniform", "expected_gradients") else 1

    def bounds(self, feature: str) -> tuple[Any, Any]:
        """The [low, high] range of a random_uniform baseline for one feature."""
        low = self.low[feature] if isinstance(self.low, Mapping) else self.low
        high = self.high[feature] if isinstance(self.high, Mapping) else self.high
        return low, high

    def cross_check(self, prefix: str) -> None:
        """low <= high wherever both are known; two bound maps name the same features.

        Also: reference takes exactly one of pattern and run.
        """
        if self.kind == "reference" and (self.pattern is None) == (self.run is None):
            where = f"{prefix}.pattern" if prefix else "pattern"
            raise SettingsError(
                "give exactly one of pattern (reference TFRecords) and run (an earlier igbeam "
                "run's output path) for baseline kind 'reference'",
                where,
            )
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
        if self.kind == "average":
            for i, member in enumerate(self.baselines):
                where = f"{prefix}.baselines[{i}]" if prefix else f"baselines[{i}]"
                member.check_features(features, where)
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
class SmoothGrad:
    """SmoothGrad on Integrated Gradients: IG of `samples` noisy copies of each input, averaged.

    x_j = x + eps_j, eps_j ~ Normal(0, sigma_f) per element of feature f (j = 1..samples), and
    attr = mean_j IG(x_j, x'). Noise is a function of the example's key and `seed` only. Vertex
    AI's smoothGradConfig: noisySampleCount (valid range [1, 50], default 3), noiseSigma
    (default 0.1) or featureNoiseSigma (features not listed get no noise); the two are exclusive.

    Attributes:
      samples: Noisy copies per example, in [1, 50].
      sigma: Noise std for every attributed feature, in input units (> 0); default 0.1 when
        `feature_sigma` is not given.
      feature_sigma: {feature: std >= 0} instead of `sigma`; unlisted features get no noise.
      seed: Seed of the noise (>= 0).
    """

    samples: int = setting(3, check=Integer(1))
    sigma: float | None = setting(None, check=Positive())
    feature_sigma: Mapping[str, float] | None = setting(None, check=NumberOrMap())
    seed: int = setting(0, check=Integer(0))

    def sigma_of(self, feature: str) -> float:
        """The noise std of one attributed feature (0: no noise)."""
        if self.feature_sigma is not None:
            return float(self.feature_sigma.get(feature, 0.0))
        return 0.1 if self.sigma is None else self.sigma

    def cross_check(self, prefix: str) -> None:
        """samples within Vertex's range; sigma and feature_sigma exclusive; stds >= 0."""

        def key(name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        if self.samples > SMOOTHGRAD_MAX_SAMPLES:
            raise SettingsError(
                f"must be an integer in [1, {SMOOTHGRAD_MAX_SAMPLES}] (Vertex AI's "
                f"noisySampleCount range), got {self.samples}",
                key("samples"),
            )
        if self.sigma is not None and self.feature_sigma is not None:
            raise SettingsError("give sigma or feature_sigma, not both", key("feature_sigma"))
        if self.feature_sigma is not None and not isinstance(self.feature_sigma, Mapping):
            raise SettingsError(
                "must be a {feature: std} map (use sigma for one std)", key("feature_sigma")
            )
        for name, value in (self.feature_sigma or {}).items():
            if value < 0:
                raise SettingsError(f"must be >= 0, got {value}", f"{key('feature_sigma')}.{name}")

    def check_features(self, features: Iterable[str], prefix: str = "") -> None:
        """Checks that `feature_sigma` names only attributed features."""
        features = tuple(features)
        where = f"{prefix}.feature_sigma" if prefix else "feature_sigma"
        for entry in self.feature_sigma or {}:
            if entry not in features:
                raise SettingsError(
                    f"not an attributed feature (features: {', '.join(features)})",
                    f"{where}.{entry}",
                )


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
      layer: Attribute to the output of this named layer instead of the model inputs; or a list
        of layers (a tuple) attributed together, with the numeric inputs that feed none of them
        (`attribution.layers`).
      output: Name of the model output to explain (multi-output models).
      baseline: The baseline.
      target: The explained output scalar.
      smoothgrad: SmoothGrad on IG (`SmoothGrad`), or None (plain IG).
      text: Token features at `layer` (`attribution.text_settings.TextConfig`): padding
        positions held at their input (attribution exactly 0) and the token strings written
        beside the scores; None: no padding (unless the layer is an `Embedding(mask_zero=True)`).
      display_names: Optional display name per output index (`output_name` column).
    """

    method: str = setting("gausslegendre", check=Choice(METHODS, "method"))
    steps: int | str = setting(50, check=IntegerOrWord(1, AUTO_STEPS))
    tolerance: float = setting(0.01, check=Positive(), when=("steps", AUTO_STEPS))
    min_steps: int = setting(8, check=Integer(1), when=("steps", AUTO_STEPS))
    max_steps: int = setting(256, check=Integer(1), when=("steps", AUTO_STEPS))
    layer: str | tuple[str, ...] | None = setting(None, check=LayerNames())
    output: str | None = setting(None, check=Text())
    baseline: Baseline = setting(Baseline(), check=Section(Baseline))
    target: Target = setting(Target(), check=Section(Target))
    smoothgrad: SmoothGrad | None = setting(None, check=Section(SmoothGrad))

    @property
    def noise_samples(self) -> int:
        """Noisy copies of each input (1 without SmoothGrad)."""
        return 1 if self.smoothgrad is None else self.smoothgrad.samples

    text: TextConfig | None = setting(None, check=Section(TextConfig))
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

        if self.text is not None and self.layer is None:
            raise SettingsError(
                "token features are attributed at the layer that embeds them: set layer",
                key("text"),
            )
        if self.text is not None and not isinstance(self.layer, str):
            raise SettingsError(
                "token padding is supported for a single layer; give layer as one name, not a list",
                key("text"),
            )
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
