"""SmoothGrad noise on IG's inputs, in graph code (`attribution.smoothgrad` settings).

For N = `samples` noisy copies x_j = x + eps_j of each example, the engine attributes every
x_j against the example's baseline(s) and averages:

    attr = mean_j (x_j - x') * sum_k w_k dF_t/dz(x' + a_k (x_j - x'))        (j = 1..N)

so completeness holds on the average: sum_i attr_i = mean_j F_t(x_j) - F_t(x') up to the
integration error, and the engine's delta with SmoothGrad is
sum_i attr_i - (mean_j F_t(x_j) - F_t(x')). The reported prediction stays F_t(x) of the clean
input, and the explained class (target `predicted`) is the arg-max of the clean F(x), the same
for every noisy copy. This is captum's NoiseTunnel(IntegratedGradients, "smoothgrad"); Vertex
AI's documentation says only that "the gradients are approximated by averaging the gradients
from noisy samples in the vicinity of the inputs" (SmoothGradConfig).

eps_j ~ Normal(0, sigma_f) element-wise, drawn with `stateless_normal` (Philox) seeded by
(seed, feature position, FarmHash of the example key), salted apart from random_uniform's
draws: the same noise for an example in any batch, worker or run.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from attribution.baselines import key_seeds
from attribution.packing import Packing
from attribution.settings import SmoothGrad

__all__ = ["NOISE_SALT", "smoothgrad_noise"]

NOISE_SALT = 500_000
"""Added to the feature position in the Philox seed, so noise never reuses a baseline's seed."""


def smoothgrad_noise(
    spec: SmoothGrad,
    specs: Mapping[str, tf.TensorSpec],
    layout: Packing,
    keys: tf.Tensor,
) -> dict[str, tf.Tensor]:
    """The noise of n examples, packed: dtype key -> [n, samples, D] (graph code)."""
    n = tf.shape(keys)[0]
    draws = {}
    for index, (name, fspec) in enumerate(specs.items()):
        shape = [spec.samples, *fspec.shape[1:].as_list()]
        sigma = spec.sigma_of(name)
        if sigma == 0:
            draws[name] = tf.zeros([n, *shape], fspec.dtype)
            continue
        seeds = key_seeds(keys, spec.seed, NOISE_SALT + index)

        def one(example_seed: tf.Tensor, shape: list = shape, dtype: tf.DType = fspec.dtype):
            return tf.random.stateless_normal(shape, seed=example_seed, dtype=dtype, alg="philox")

        unit = tf.map_fn(one, seeds, fn_output_signature=tf.TensorSpec(shape, fspec.dtype))
        draws[name] = unit * tf.constant(sigma, fspec.dtype)
    packed = layout.pack(draws)
    return {k: tf.reshape(v, [n, spec.samples, layout.width(k)]) for k, v in packed.items()}
