"""Baselines (reference inputs) for Integrated Gradients.

Kinds:
  zeros          x' = 0 (the default).
  constant       x' = `value` everywhere.
  per_feature    x' = `values[feature]`, a number or an array broadcastable to the feature's shape.
  array          per-example baselines passed to `attribute(..., baselines=...)`.
  random_uniform random counterfactuals (TF-GNN's `random_counterfactual`) drawn uniformly from
                 [low, high] per feature; `samples` baselines per example whose attributions are
                 averaged (Vertex AI's convention). Draws are deterministic per example: they are a
                 function of the example's key and `seed` only, so an example gets the same baseline
                 whatever batch it lands in, on any machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

BASELINE_KINDS = ("zeros", "constant", "per_feature", "array", "random_uniform")

Bound = float | Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """How to build the baseline of each example. See the module docstring for the kinds."""

    kind: str = "zeros"
    value: float = 0.0
    values: Mapping[str, Any] | None = None
    low: Bound | None = None
    high: Bound | None = None
    seed: int = 0
    samples: int = 1

    @property
    def num_samples(self) -> int:
        """Baselines per example (only random_uniform draws more than one)."""
        return self.samples if self.kind == "random_uniform" else 1

    def validate(self, features: list[str]) -> None:
        """Checks the spec against the attributed feature names.

        Raises:
          ValueError: unknown kind, missing or unknown per-feature entries, bad ranges or samples.
        """
        if self.kind not in BASELINE_KINDS:
            raise ValueError(
                f"unknown baseline kind {self.kind!r}; choose one of {', '.join(BASELINE_KINDS)}"
            )
        if self.kind == "per_feature":
            values = dict(self.values or {})
            missing = [f for f in features if f not in values]
            unknown = [f for f in values if f not in features]
            if missing or unknown:
                raise ValueError(
                    f"per_feature baseline: missing values for {missing}, "
                    f"unknown features {unknown}"
                )
        if self.kind == "random_uniform":
            if isinstance(self.samples, bool) or not isinstance(self.samples, int):
                raise ValueError(f"baseline samples must be an integer, got {self.samples!r}")
            if self.samples < 1:
                raise ValueError(f"baseline samples must be >= 1, got {self.samples}")
            for f in features:
                lo, hi = self.bounds(f)
                if not np.all(np.asarray(lo) <= np.asarray(hi)):
                    raise ValueError(f"random_uniform baseline for {f!r}: low > high")

    def bounds(self, feature: str) -> tuple[Any, Any]:
        """The [low, high] range of a random_uniform baseline for one feature."""

        def pick(bound: Bound | None, which: str) -> Any:
            if bound is None:
                raise ValueError(f"random_uniform baseline needs {which!r}")
            if isinstance(bound, Mapping):
                if feature not in bound:
                    raise ValueError(
                        f"random_uniform baseline: no {which!r} for feature {feature!r}"
                    )
                return bound[feature]
            return bound

        return pick(self.low, "low"), pick(self.high, "high")


def key_seeds(keys: tf.Tensor, seed: int, feature_index: int) -> tf.Tensor:
    """Per-example stateless seeds [B, 2] from key fingerprints (FarmHash), seed and feature."""
    hashed = tf.strings.to_hash_bucket_fast(keys, 2**62)
    salt = tf.constant(int(seed) * 1_000_003 + int(feature_index), tf.int64)
    return tf.stack([tf.fill(tf.shape(hashed), salt), hashed], axis=1)


def random_uniform_tf(
    keys: tf.Tensor,
    shape: tuple[int, ...],
    low: Any,
    high: Any,
    seed: int,
    samples: int,
    feature_index: int,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Draws [B, samples, *shape] uniform baselines, deterministic per key (graph-compatible).

    The draw uses Philox explicitly so that CPU and GPU give the same numbers.
    """
    seeds = key_seeds(keys, seed, feature_index)
    draw_shape = [samples, *shape]

    def one(example_seed: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_uniform(draw_shape, seed=example_seed, dtype=dtype, alg="philox")

    unit = tf.map_fn(one, seeds, fn_output_signature=tf.TensorSpec(draw_shape, dtype))
    low_t = tf.cast(low, dtype)
    return low_t + unit * (tf.cast(high, dtype) - low_t)


class BaselineMaker:
    """Builds [B, S, *shape] baselines for the attributed tensors; random draws compile once."""

    def __init__(self, spec: Baseline, feature_specs: Mapping[str, tf.TensorSpec]) -> None:
        spec.validate(list(feature_specs))
        self.spec = spec
        self._specs = dict(feature_specs)
        self._random: dict[str, Any] = {}
        if spec.kind == "random_uniform":
            for index, (name, fspec) in enumerate(self._specs.items()):
                shape = tuple(fspec.shape[1:])
                if any(d is None for d in shape):
                    raise ValueError(f"random_uniform baseline needs a fixed shape for {name!r}")
                low, high = spec.bounds(name)
                self._random[name] = tf.function(
                    lambda keys, s=shape, lo=low, hi=high, i=index, dt=fspec.dtype: (
                        random_uniform_tf(keys, s, lo, hi, spec.seed, spec.samples, i, dt)
                    ),
                    input_signature=[tf.TensorSpec([None], tf.string)],
                )

    def __call__(
        self,
        x: Mapping[str, np.ndarray],
        keys: np.ndarray | None,
        provided: Mapping[str, Any] | None,
    ) -> dict[str, np.ndarray]:
        """Returns name -> baselines of shape [B, S, *feature_shape].

        Args:
          x: The attributed values, [B, *shape] each.
          keys: Example keys [B] (strings), used by random_uniform.
          provided: Per-example baselines for kind 'array': [B, *shape] or [B, S, *shape].
        """
        kind = self.spec.kind
        out = {}
        if kind == "array" and provided is None:
            raise ValueError("baseline kind 'array' needs baselines=... passed to attribute()")
        if kind != "array" and provided is not None:
            raise ValueError(f"baselines=... given but the baseline kind is {kind!r}, not 'array'")
        for name, value in x.items():
            value = np.asarray(value)
            dtype = self._specs[name].dtype.as_numpy_dtype
            if kind == "zeros":
                base = np.zeros_like(value, dtype=dtype)[:, None]
            elif kind == "constant":
                base = np.full(value.shape, self.spec.value, dtype=dtype)[:, None]
            elif kind == "per_feature":
                const = np.asarray(self.spec.values[name], dtype=dtype)
                try:
                    base = np.broadcast_to(const, value.shape).astype(dtype)[:, None]
                except ValueError as err:
                    raise ValueError(
                        f"per_feature baseline for {name!r} has shape {const.shape}, not "
                        f"broadcastable to {value.shape[1:]}"
                    ) from err
            elif kind == "array":
                if name not in provided:
                    raise ValueError(f"baselines=... has no entry for {name!r}")
                base = np.asarray(provided[name], dtype=dtype)
                if base.shape == value.shape:
                    base = base[:, None]
                elif base.ndim != value.ndim + 1 or base.shape[:1] + base.shape[2:] != value.shape:
                    raise ValueError(
                        f"baselines[{name!r}] has shape {base.shape}; expected {value.shape} or "
                        f"[{value.shape[0]}, S, ...]"
                    )
            else:
                base = self._random[name](tf.constant(keys, tf.string)).numpy()
            out[name] = base
        sizes = {b.shape[1] for b in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"baselines disagree on the number of samples per example: {sizes}")
        return out
