"""Targets in graph code: which class each example explains, and the explained scalar.

The kinds are `attribution.settings.Target`'s. These functions are traced into the engine's
compiled function and into the SavedModel export's signature alike. A requested class of -1 means
"the arg-max of F(x)" (kind 'predicted'); more generally -(r + 1) means "the class of rank r in
F(x)" (rank 0 the highest score; ties go to the lower index), which kind 'top_k' requests for
ranks 0..k-1 (see `attribution.multi_output`).
"""

from __future__ import annotations

import tensorflow as tf

from attribution.settings import Target

__all__ = [
    "NO_CLASS",
    "check_classes",
    "reported_targets",
    "requested_classes",
    "select_classes",
]

NO_CLASS = -1
"""The reported target of scalar and callable targets (no class was chosen)."""


def requested_classes(
    target: Target, n: tf.Tensor, label: tf.Tensor | None = None, classes: int | None = None
) -> tf.Tensor:
    """The class each of n examples asks for, int32 [n]; -1 means the arg-max of F(x).

    Args:
      target: The target settings.
      n: The number of examples (a scalar tensor).
      label: For kind 'label': the label feature, one integer class per example ([n] or [n, 1]).
      classes: The output's width when known: labels are checked against it in-graph.

    Raises:
      ValueError: kind 'label' without a label tensor, or with a non-integer one.
    """
    if target.kind == "index":
        return tf.fill([n], tf.constant(target.value, tf.int32))
    if target.kind in ("scalar", "callable"):
        return tf.zeros([n], tf.int32)
    if target.kind == "predicted":
        return tf.fill([n], tf.constant(-1, tf.int32))
    name = target.feature
    if label is None:
        raise ValueError(f"target kind 'label' needs the label feature {name!r}")
    label = tf.convert_to_tensor(label)
    if not label.dtype.is_integer:
        raise ValueError(
            f"label feature {name!r} must hold integer classes, not {label.dtype.name}"
        )
    label = tf.reshape(label, [n])  # fails unless one class per example
    checks = [tf.debugging.assert_non_negative(label, message=f"label {name!r} is negative")]
    if classes is not None:
        checks.append(
            tf.debugging.assert_less(
                label, tf.cast(classes, label.dtype), message=f"label {name!r} is out of range"
            )
        )
    with tf.control_dependencies(checks):
        return tf.cast(label, tf.int32)


def select_classes(
    out: tf.Tensor, requested: tf.Tensor, ranked: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """(chosen, safe): the explained class per row of `out` [n, C], int32 [n] each.

    `chosen` is the request, or the arg-max where it is -1; with `ranked` (kind 'top_k'), the
    class of rank r where the request is -(r + 1) (descending scores, ties to the lower index,
    as the arg-max; a rank >= C gives C + r). It may be >= C (the caller reports that). `safe`
    is `chosen` with out-of-range classes replaced by 0, for gathering.
    """
    if ranked:
        width = tf.shape(out)[1]
        rank = -requested - 1
        # A stable descending sort keeps equal scores in index order (tf.math.top_k's order).
        order = tf.argsort(out, axis=1, direction="DESCENDING", stable=True)
        order = tf.cast(order, tf.int32)
        picked = tf.gather(order, tf.clip_by_value(rank, 0, width - 1), axis=1, batch_dims=1)
        by_rank = tf.where(rank < width, picked, width + rank)
        chosen = tf.where(requested < 0, by_rank, requested)
    else:
        argmax = tf.argmax(out, axis=1, output_type=tf.int32)
        chosen = tf.where(requested < 0, argmax, requested)
    safe = tf.where(chosen < tf.shape(out)[1], chosen, tf.zeros_like(chosen))
    return chosen, safe


def reported_targets(target: Target, chosen: tf.Tensor) -> tf.Tensor:
    """The target written per example, int64: the class, or `NO_CLASS` for scalar/callable."""
    if target.kind in ("scalar", "callable"):
        return tf.fill(tf.shape(chosen), tf.constant(NO_CLASS, tf.int64))
    return tf.cast(chosen, tf.int64)


def check_classes(target: Target, output: str, classes: int, largest: int | None = None) -> None:
    """Checks the explained output's width against the target: a clear error instead of a gather.

    Args:
      target: The target settings.
      output: The explained output's name (for the message).
      classes: The output's width C.
      largest: The largest class about to be explained, when known.

    Raises:
      ValueError: a scalar target on an output wider than 1, or a class >= C.
    """
    if target.kind == "scalar" and classes != 1:
        raise ValueError(
            f"target kind 'scalar' needs an output of width 1; output {output!r} has "
            f"{classes}: use 'predicted', 'index' or 'label'"
        )
    if target.kind == "top_k" and target.k > classes:
        raise ValueError(
            f"target.k: must be <= the {classes} classes of output {output!r}, got {target.k}"
        )
    if target.kind == "indices" and max(target.values) >= classes:
        raise ValueError(
            f"target.values: class {max(target.values)} is out of range: output {output!r} has "
            f"{classes} classes (0..{classes - 1})"
        )
    if largest is not None and largest >= classes:
        raise ValueError(
            f"target class {largest} is out of range: output {output!r} has {classes} classes "
            f"(0..{classes - 1})"
        )
