"""Text and categorical inputs: padding of token features attributed at an embedding layer.

Token ids (or string categories looked up inside the model) are discrete: IG attributes them at
the output of the layer that embeds them (`attribution.layer`), one score per token position
(the attribution summed over the embedding axis). A sequence padded to a fixed length T has
positions that hold no token. `TextConfig` (`attribution.text`) says which model input holds the
tokens, which value is padding and which example feature holds the token strings to write beside
the scores; a Keras `Embedding(mask_zero=True)` marks id 0 as padding by itself.

Padding positions are *held*: their baseline is their own embedding, so they do not move along
the path and get an attribution of exactly 0. The model's output at the baseline then sees the
padding it was trained with (a zero vector at a padding position would move mean-pooled models
by an amount that no reported position would account for), and completeness holds over the
reported (non-padding) positions alone: sum of reported scores = F(x) - F(x') + delta. The
pipeline reports padding positions as null scores (`Padding.mask` gives the positions).

TensorFlow only, no Beam. The padding is applied inside the engine's graph function
(`IntegratedGradients.attribute_packed`), so a SavedModel export holds padding the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from attribution.errors import SettingsError
from attribution.fields import show
from attribution.text_settings import TextConfig

__all__ = ["Padding", "TextConfig", "padding_for_layer"]

TensorDict = dict[str, tf.Tensor]


class Padding:
    """Which positions of an attributed layer's output are padding, in graph code.

    Attributes:
      feature: The model input whose values mark padding (None: only `mask_zero`).
      value: Its padding value (an id or a string).
      tokens: The example feature holding the token strings (None: none).
      shape: The per-example shape of the scores (the layer output's shape without its last,
        embedding, axis).
    """

    def __init__(
        self,
        feature: str | None,
        value: int | str | None,
        tokens: str | None,
        shape: tuple[int, ...],
        width: int,
        masked_ids: Callable[[TensorDict], tf.Tensor] | None = None,
    ) -> None:
        self.feature = feature
        self.value = value
        self.tokens = tokens
        self.shape = shape
        self._width = width  # the embedding axis
        self._masked_ids = masked_ids

    def mask(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """bool [n, *shape]: True at padding positions (graph code; `inputs` are model inputs)."""
        masks = []
        if self.feature is not None:
            values = inputs[self.feature]
            masks.append(tf.equal(values, tf.constant(self.value, values.dtype)))
        if self._masked_ids is not None:  # Keras mask_zero: id 0 at the Embedding's input
            masks.append(tf.equal(self._masked_ids(dict(inputs)), 0))
        out = masks[0]
        for extra in masks[1:]:
            out = tf.logical_or(out, extra)
        n = tf.shape(out)[0]
        return tf.reshape(out, [n, *self.shape])

    def hold(
        self, base: Mapping[str, tf.Tensor], x: Mapping[str, tf.Tensor], inputs: TensorDict
    ) -> dict[str, tf.Tensor]:
        """Baselines [n, S, D] (packed) with padding positions set to the input x [n, D].

        The layer is the only attributed tensor, so its packed row is the layer output flattened
        row-major: each position's `width` embedding values are contiguous.
        """
        (key,) = list(x)
        n = tf.shape(x[key])[0]
        flat = tf.reshape(self.mask(inputs), [n, -1])
        held = tf.repeat(flat, self._width, axis=1)[:, tf.newaxis, :]
        return {key: tf.where(held, x[key][:, tf.newaxis, :], base[key])}


def _model_input_feeding(model: Any, layer: Any, names_by_id: Mapping[int, str]) -> str | None:
    """The model input reached from `layer`'s input through single-input layers, or None."""
    tensor = getattr(layer, "input", None)
    for _ in range(len(model.layers) + 1):
        if isinstance(tensor, list | tuple):
            return None
        if id(tensor) in names_by_id:
            return names_by_id[id(tensor)]
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        producer = history[0]
        try:
            tensor = producer.input
        except (AttributeError, ValueError):
            return None
    return None


def padding_for_layer(
    adapter: Any, layer_name: str, layer_spec: tf.TensorSpec, text: TextConfig | None
) -> Padding | None:
    """The padding of a layer-attribution run, or None when nothing marks padding.

    Padding is marked by `text` (`attribution.text`) and, with or without it, by a Keras
    `Embedding(mask_zero=True)` as the attributed layer (id 0 at its input is padding).

    Args:
      adapter: The `ModelAdapter` (its Keras model).
      layer_name: The attributed layer.
      layer_spec: The layer output's spec [None, *positions, embedding].
      text: The text settings, or None.

    Raises:
      SettingsError: a text feature that is not a model input, cannot be found, does not have the
        scores' shape, or a padding value of the wrong type (the key is named).
    """
    import keras  # only layer attribution needs Keras graph surgery

    model = adapter.keras_model
    layer = model.get_layer(layer_name) if model is not None else None
    shape = tuple(layer_spec.shape[1:-1].as_list())
    width = int(layer_spec.shape[-1])
    inputs = dict(adapter.input_specs)
    masked_ids = None
    if isinstance(layer, keras.layers.Embedding) and getattr(layer, "mask_zero", False):
        names = list(inputs)
        tensors = list(model.inputs)
        structure = getattr(model, "_inputs_struct", None)
        if isinstance(structure, Mapping):
            tensors = [structure[n] for n in names]
        ids_model = keras.Model(tensors, layer.input)

        def masked_ids(values: TensorDict) -> tf.Tensor:
            return ids_model([values[n] for n in names], training=False)

    if text is None:
        if masked_ids is None:
            return None
        return Padding(None, None, None, shape, width, masked_ids)
    feature = text.feature
    if feature is None:
        found = None
        if model is not None:
            tensors = list(model.inputs)
            structure = getattr(model, "_inputs_struct", None)
            if isinstance(structure, Mapping):
                by_id = {id(t): n for n, t in structure.items()}
            else:
                by_id = {id(t): n for n, t in zip(inputs, tensors, strict=True)}
            found = _model_input_feeding(model, layer, by_id)
        if found is None:
            raise SettingsError(
                f"cannot tell which model input feeds layer {layer_name!r}; name it "
                f"(model inputs: {', '.join(inputs)})",
                "text.feature",
            )
        feature = found
    if feature not in inputs:
        raise SettingsError(
            f"{feature!r} is not a model input (model inputs: {', '.join(inputs)})",
            "text.feature",
        )
    spec = inputs[feature]
    feature_shape = tuple(spec.shape[1:].as_list())
    if feature_shape != shape:
        raise SettingsError(
            f"input {feature!r} has shape {feature_shape} per example but layer {layer_name!r} "
            f"scores have shape {shape}: one token per score position is needed",
            "text.feature",
        )
    is_string = spec.dtype == tf.string
    if not is_string and not spec.dtype.is_integer:
        raise SettingsError(
            f"input {feature!r} has dtype {spec.dtype.name}; token features are integer ids "
            "or strings",
            "text.feature",
        )
    value = text.padding
    if value is None:
        value = "" if is_string else 0
    if is_string != isinstance(value, str):
        wanted = "a string" if is_string else "an integer id"
        raise SettingsError(
            f"input {feature!r} holds {'strings' if is_string else 'ids'}: padding must be "
            f"{wanted}, got {show(value)}",
            "text.padding",
        )
    tokens = text.tokens if text.tokens is not None else (feature if is_string else None)
    return Padding(feature, value, tokens, shape, width, masked_ids)
