"""Baselines (reference inputs) in graph code: one implementation for the engine and its export.

`make_baselines` builds, for n examples, S baselines per example and per attributed tensor,
[n, S, *shape], for every kind of `attribution.settings.Baseline`. The engine traces it into its
compiled function, and the SavedModel export traces the same function into its signature.

Random draws are `stateless_uniform` (Philox, so CPU and GPU agree) seeded by (seed, feature,
FarmHash of the example key): an example gets the same baseline whatever batch it lands in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from attribution.packing import Packing
from attribution.settings import Baseline

__all__ = ["check_baseline", "make_baselines", "random_uniform_tf"]


def check_baseline(spec: Baseline, specs: Mapping[str, tf.TensorSpec]) -> None:
    """Checks a baseline against the attributed tensors, before anything is traced.

    Args:
      spec: A validated `Baseline`.
      specs: Attributed name -> `tf.TensorSpec` (batch dimension first).

    Raises:
      SettingsError: a per-feature map that does not name exactly the attributed tensors.
      ValueError: a per_feature value that does not broadcast to its tensor's shape, or a
        random_uniform baseline for a tensor without a fixed shape.
    """
    spec.check_features(list(specs), "baseline")
    for name, fspec in specs.items():
        shape = fspec.shape[1:]
        if spec.kind == "per_feature":
            const = np.asarray(spec.values[name])
            try:
                np.broadcast_to(const, shape.as_list())
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"per_feature baseline for {name!r} has shape {const.shape}, not "
                    f"broadcastable to {tuple(shape.as_list())}"
                ) from err
        if spec.kind == "random_uniform" and not shape.is_fully_defined():
            raise ValueError(f"random_uniform baseline needs a fixed shape for {name!r}")


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
    """Draws [B, samples, *shape] uniform baselines, deterministic per key (graph-compatible)."""
    seeds = key_seeds(keys, seed, feature_index)
    draw_shape = [samples, *shape]

    def one(example_seed: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_uniform(draw_shape, seed=example_seed, dtype=dtype, alg="philox")

    unit = tf.map_fn(one, seeds, fn_output_signature=tf.TensorSpec(draw_shape, dtype))
    low_t = tf.cast(low, dtype)
    return low_t + unit * (tf.cast(high, dtype) - low_t)


def make_baselines(
    spec: Baseline,
    specs: Mapping[str, tf.TensorSpec],
    layout: Packing,
    x: Mapping[str, tf.Tensor],
    keys: tf.Tensor,
    provided: Mapping[str, tf.Tensor],
) -> dict[str, tf.Tensor]:
    """The baselines of n examples, packed like `x`: dtype key -> [n, S, D] (graph code).

    Zeros, constants and per-feature values are built on the packed tensors directly (a few ops
    whatever the number of features); only random draws are made per feature.

    Args:
      spec: The baseline settings (checked by `check_baseline`).
      specs: Attributed name -> `tf.TensorSpec`, in the attributed order (a random draw is
        salted with the tensor's position in it).
      layout: How the attributed tensors are packed.
      x: The attributed values, packed: dtype key -> [n, D].
      keys: tf.string [n] example keys (random_uniform draws are a function of key and seed).
      provided: For kind 'array': per-example baselines, packed: dtype key -> [n, S, D].

    Returns:
      dtype key -> [n, S, D]; S is `spec.num_samples`, or the provided arrays' second dimension.
    """
    if spec.kind == "zeros":
        return {k: tf.zeros_like(v)[:, tf.newaxis] for k, v in x.items()}
    if spec.kind == "constant":
        return {
            k: tf.fill(tf.shape(v), tf.constant(spec.value, v.dtype))[:, tf.newaxis]
            for k, v in x.items()
        }
    if spec.kind == "per_feature":
        rows = {
            name: np.broadcast_to(
                np.asarray(spec.values[name], fspec.dtype.as_numpy_dtype), (1, *fspec.shape[1:])
            )
            for name, fspec in specs.items()
        }
        return {
            k: tf.broadcast_to(tf.constant(row), tf.shape(x[k]))[:, tf.newaxis]
            for k, row in layout.pack(rows).items()
        }
    if spec.kind == "array":
        out = {}
        for k, v in x.items():
            base = tf.convert_to_tensor(provided[k], v.dtype)
            check = tf.debugging.assert_equal(
                tf.shape(base)[0], tf.shape(v)[0], message="baselines: one per example"
            )
            with tf.control_dependencies([check]):
                out[k] = tf.identity(base)
        return out
    draws = {}  # random_uniform
    for index, (name, fspec) in enumerate(specs.items()):
        low, high = spec.bounds(name)
        shape = tuple(fspec.shape[1:].as_list())
        draws[name] = random_uniform_tf(
            keys, shape, low, high, spec.seed, spec.samples, index, fspec.dtype
        )
    n = tf.shape(keys)[0]
    return {
        k: tf.reshape(v, [n, spec.samples, layout.width(k)]) for k, v in layout.pack(draws).items()
    }
