"""Gaussian blur over the two spatial axes, in graph code: the `blur` baseline.

`blur_tf(x, sigma)` blurs each example of x [n, H, W, ...] over H and W with a Gaussian of
standard deviation `sigma` pixels (the same for both axes, as Vertex AI's blurBaselineConfig
maxBlurSigma). The blur is separable: one 1-D convolution along H, then one along W, each with
the kernel truncated at `TRUNCATE` standard deviations (radius int(4 sigma + 0.5), scipy's
`gaussian_filter` default) and normalised to sum 1. Borders use *reflect* padding, the
half-sample symmetric mirror (d c b a | a b c d | d c b a: the edge pixel is repeated), scipy's
`mode="reflect"` and numpy's `pad(mode="symmetric")`, repeated as often as a kernel wider than
the image needs. Because the per-example shape is fixed, each 1-D convolution is written as a
banded [H, H] (resp. [W, W]) matrix built once in numpy, with the reflected taps folded in, and
applied with one `einsum`: plain graph ops that also trace into the SavedModel export, with no
padding op whose width could exceed the image.

Blurring preserves constants exactly (each row of the matrix sums to 1).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["TRUNCATE", "blur_matrix", "blur_tf", "gaussian_kernel"]

TRUNCATE = 4.0
"""The kernel is cut at this many standard deviations (scipy.ndimage's default)."""


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian taps, offsets -r..r with r = int(TRUNCATE * sigma + 0.5)."""
    radius = int(TRUNCATE * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return taps / taps.sum()


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """Half-sample symmetric reflection of indices into [0, size) (period 2 * size)."""
    index = np.mod(index, 2 * size)
    return np.where(index < size, index, 2 * size - 1 - index)


def blur_matrix(size: int, sigma: float) -> np.ndarray:
    """[size, size] float64 M with (M v)[i] = sum_o k[o] v[reflect(i + o)]: a 1-D blur of v."""
    taps = gaussian_kernel(sigma)
    radius = len(taps) // 2
    matrix = np.zeros((size, size), np.float64)
    rows = np.arange(size)
    for offset, weight in zip(range(-radius, radius + 1), taps, strict=True):
        np.add.at(matrix, (rows, _reflect(rows + offset, size)), weight)
    return matrix


def blur_tf(x: tf.Tensor, sigma: float) -> tf.Tensor:
    """x [n, H, W, ...] (static H, W and trailing dims) blurred over H and W (graph code).

    Raises:
      ValueError: x has fewer than two axes per example, or a non-static shape.
    """
    shape = x.shape[1:]
    if shape.rank is None or shape.rank < 2 or not shape.is_fully_defined():
        raise ValueError(f"blur needs a fixed [H, W, ...] shape per example, got {shape}")
    height, width = shape[0], shape[1]
    rest = int(np.prod(shape[2:].as_list())) if shape.rank > 2 else 1
    m_h = tf.constant(blur_matrix(height, sigma), x.dtype)
    m_w = tf.constant(blur_matrix(width, sigma), x.dtype)
    v = tf.reshape(x, [-1, height, width, rest])
    v = tf.einsum("hi,niwr->nhwr", m_h, v)
    v = tf.einsum("wj,nhjr->nhwr", m_w, v)
    return tf.reshape(v, tf.shape(x))
