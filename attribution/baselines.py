"""Baselines (reference inputs) in graph code: one implementation for the engine and its export.

`make_baselines` builds, for n examples, S baselines per example and per attributed tensor,
[n, S, *shape], for every kind of `attribution.settings.Baseline`. The engine traces it into its
compiled function, and the SavedModel export traces the same function into its signature.

Random draws are `stateless_uniform` (Philox, so CPU and GPU agree) seeded by (seed, feature,
FarmHash of the example key): an example gets the same baseline whatever batch it lands in.
Expected-gradients draws pick reference record FarmHash(key, seed, sample) mod R, likewise a
function of the key and seed only.

`average` concatenates its members' baselines along the sample axis (S = the members' total
samples), so the engine's mean over samples is the mean over every listed baseline; each
member's baselines are exactly those it would have alone. `blur` is `attribution.blur`.
`reference` is `per_feature` with values resolved before the job (`pipeline.reference`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from attribution.blur import blur_tf
from attribution.packing import Packing
from attribution.settings import Baseline

__all__ = [
    "check_baseline",
    "expected_gradient_baselines",
    "make_baselines",
    "random_uniform_tf",
    "reference_indices",
]


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
    _check_kind(spec, specs, "baseline")


def _check_kind(spec: Baseline, specs: Mapping[str, tf.TensorSpec], where: str) -> None:
    if spec.kind == "average":
        for i, member in enumerate(spec.baselines):
            _check_kind(member, specs, f"{where}.baselines[{i}]")
        return
    if spec.kind == "reference" and spec.values is None:
        raise ValueError(
            f"{where}: kind 'reference' has no resolved values; `igbeam run` computes them from "
            "pattern/run first (pipeline.reference.resolve_baseline does it from Python)"
        )
    if spec.kind == "expected_gradients":
        if spec.references is None:
            raise ValueError(
                f"{where}: kind 'expected_gradients' has no reference records loaded; `igbeam "
                "run` loads them from pattern first (pipeline.reference.resolve_baseline)"
            )
        counts = set()
        for name, fspec in specs.items():
            if name not in spec.references:
                raise ValueError(f"{where}: the reference records lack {name!r}")
            ref = np.asarray(spec.references[name])
            size = (
                int(np.prod(fspec.shape[1:].as_list()))
                if fspec.shape[1:].is_fully_defined()
                else -1
            )
            if ref.ndim < 1 or int(np.prod(ref.shape[1:])) != size:
                raise ValueError(
                    f"{where}: reference records of {name!r} have shape {ref.shape[1:]}, not "
                    f"{tuple(fspec.shape[1:].as_list())}"
                )
            counts.add(ref.shape[0])
        if len(counts) != 1:
            raise ValueError(f"{where}: the features have different numbers of reference records")
    for name, fspec in specs.items():
        shape = fspec.shape[1:]
        if spec.kind == "blur" and (shape.rank is None or shape.rank < 2):
            raise ValueError(
                f"{where}: kind 'blur' blurs the two spatial axes of [H, W] or [H, W, C] "
                f"features; {name!r} has shape {tuple(shape.as_list()) if shape.rank else shape}"
            )
        if spec.kind == "blur" and not shape.is_fully_defined():
            raise ValueError(f"{where}: kind 'blur' needs a fixed shape for {name!r}")
        if spec.kind in ("per_feature", "reference"):
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
    if spec.kind == "average":
        parts = [make_baselines(m, specs, layout, x, keys, provided) for m in spec.baselines]
        return {k: tf.concat([p[k] for p in parts], axis=1) for k in x}
    if spec.kind == "blur":
        features = layout.unpack(x)
        blurred = {name: blur_tf(features[name], spec.sigma) for name in specs}
        return {k: v[:, tf.newaxis] for k, v in layout.pack(blurred).items()}
    if spec.kind == "expected_gradients":
        return expected_gradient_baselines(spec, specs, layout, keys)
    if spec.kind in ("per_feature", "reference"):
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


EXPECTED_GRADIENTS_SALT = "\x1fexpected_gradients"


def reference_indices(keys: tf.Tensor, seed: int, samples: int, count: int) -> tf.Tensor:
    """int64 [n, samples]: reference record j of each example, FarmHash(key, seed, j) mod count.

    A function of the key and seed only (no batch, worker or run dependence); graph code.
    """
    columns = [
        tf.strings.to_hash_bucket_fast(
            tf.strings.join([keys, tf.constant(f"{EXPECTED_GRADIENTS_SALT}:{int(seed)}:{j}")]),
            count,
        )
        for j in range(samples)
    ]
    return tf.stack(columns, axis=1)


def expected_gradient_baselines(
    spec: Baseline, specs: Mapping[str, tf.TensorSpec], layout: Packing, keys: tf.Tensor
) -> dict[str, tf.Tensor]:
    """[n, samples, D] baselines drawn from the loaded reference records (graph code)."""
    count = int(next(iter(spec.references.values())).shape[0])
    rows = {
        name: np.asarray(spec.references[name], fspec.dtype.as_numpy_dtype).reshape(count, -1)
        for name, fspec in specs.items()
    }
    index = reference_indices(keys, spec.seed, spec.samples, count)
    return {k: tf.gather(tf.constant(v), index) for k, v in layout.pack(rows).items()}
