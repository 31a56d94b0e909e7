"""Attribution at several layers at once: one score per categorical feature in one run.

A tabular model usually embeds each categorical feature on its own (`StringLookup` or
`IntegerLookup` then `Embedding`) and reads numeric features directly. `attribution.layer` given
as a list of layer names splits the functional Keras model at all of them at once: `front(inputs)`
computes every listed layer's output, `head(inputs, {layer: h})` the model outputs from them and
the other inputs. Every listed layer's output is an attributed tensor, and so is every floating
point model input that does not feed any listed layer (a numeric feature): the integration path
moves them all together from their baselines, so completeness holds over all of them,
sum of attributions = F(x) - F(x'). The model inputs that feed a listed layer (the ids or strings)
and any other non-floating input are held at their values.

Each listed layer gets one output column `attr_<layer>`: the attributions summed over the last
(embedding) axis (float64 for a [B, D] output: one score per categorical feature; one score per
position for [B, T, D]); each attributed input keeps its `attr_<input>` column as in input
attribution.

Refused (a one-line `SettingsError` naming `attribution.layer`): a name that is not a layer, a
layer listed twice, a layer whose output depends on another listed layer (nested), a shared
layer (called more than once), and an `Embedding(mask_zero=True)` (padding is held for a single
layer only, see `attribution.text`). A single string keeps the one-layer behaviour unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attribution.errors import SettingsError
from attribution.fields import Check, Text, show

__all__ = ["LAYER_KEY", "LayerNames", "SplitModel", "layer_names", "split_at_layers"]

LAYER_KEY = "attribution.layer"
"""The config key named by the errors of this module (raised where the model is known)."""


class LayerNames(Check):
    """`attribution.layer`: a layer name, or a non-empty list of distinct layer names (a tuple)."""

    def __call__(self, value: Any, key: str, api: bool) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return Text()(value, key, api)
        if not isinstance(value, list | tuple) or not value:
            raise SettingsError(
                f"must be a layer name or a non-empty list of layer names, got {show(value)}", key
            )
        names = tuple(Text()(v, f"{key}[{i}]", api) for i, v in enumerate(value))
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SettingsError(f"layer {twice[0]!r} is listed twice", key)
        return names


def layer_names(layer: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """The attributed layers of an `attribution.layer` value: () / (name,) / the list."""
    if layer is None:
        return ()
    return (layer,) if isinstance(layer, str) else tuple(layer)


class SplitModel:
    """A functional Keras model split at several layers (see the module docstring).

    Attributes:
      layer_specs: Layer name -> its output's `tf.TensorSpec` [None, ...], in the listed order.
      direct: The floating point model inputs that feed no listed layer (attributed as inputs).
    """

    def __init__(
        self,
        front: Callable[[Mapping[str, Any]], dict[str, Any]],
        head: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]],
        layer_specs: dict[str, Any],
        direct: list[str],
    ) -> None:
        self.front = front
        self.head = head
        self.layer_specs = layer_specs
        self.direct = direct


def _producer(tensor: Any) -> tuple[Any, list[Any]]:
    """(the operation that made `tensor`, its input tensors); (None, []) for a model input."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, []
    operation, node_index = history[0], history[1]
    nodes = getattr(operation, "_inbound_nodes", None) or []
    if node_index >= len(nodes) or getattr(nodes[node_index], "is_input", False):
        return None, []
    return operation, list(nodes[node_index].input_tensors)


def _upstream(tensor: Any) -> tuple[set[int], set[int]]:
    """(ids of the operations, ids of the tensors) that `tensor` is computed from (itself too)."""
    operations: set[int] = set()
    tensors: set[int] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        if id(t) in tensors:
            continue
        tensors.add(id(t))
        operation, inputs = _producer(t)
        if operation is not None:
            operations.add(id(operation))
            stack.extend(inputs)
    return operations, tensors


def split_at_layers(adapter: Any, names: tuple[str, ...]) -> SplitModel:
    """Splits the adapter's functional Keras model at the outputs of the `names` layers.

    Args:
      adapter: An `attribution.models.ModelAdapter` with a Keras model.
      names: The listed layers (distinct).

    Raises:
      SettingsError (key `attribution.layer`): no Keras model, an unknown, shared, multi-output,
        nested or `mask_zero` layer.
    """
    import keras  # only layer attribution needs Keras graph surgery
    import tensorflow as tf

    model = adapter.keras_model
    if model is None:
        raise SettingsError(
            "layer attribution needs a Keras model (.keras file or in-memory)", LAYER_KEY
        )
    known = [lyr.name for lyr in model.layers]
    layers, outputs = {}, {}
    for name in names:
        if name not in known:
            raise SettingsError(
                f"model has no layer {name!r}; layers: {', '.join(known)}", LAYER_KEY
            )
        layer = model.get_layer(name)
        calls = len(getattr(layer, "_inbound_nodes", []) or [])
        if calls > 1:
            raise SettingsError(
                f"layer {name!r} is called {calls} times in the model (a shared layer): its output "
                "is not one tensor; give each input its own layer",
                LAYER_KEY,
            )
        try:
            tensor = layer.output
        except (AttributeError, ValueError) as err:
            raise SettingsError(
                f"layer {name!r} has no single output node: {' '.join(str(err).split())}",
                LAYER_KEY,
            ) from err
        if not isinstance(tensor, keras.KerasTensor):
            raise SettingsError(f"layer {name!r} has several outputs", LAYER_KEY)
        if isinstance(layer, keras.layers.Embedding) and getattr(layer, "mask_zero", False):
            raise SettingsError(
                f"layer {name!r} is an Embedding(mask_zero=True): padding is held for a single "
                "layer only; list it alone (a string) or drop mask_zero",
                LAYER_KEY,
            )
        layers[name], outputs[name] = layer, tensor
    upstream = {name: _upstream(outputs[name]) for name in names}
    for name in names:
        operations, _ = upstream[name]
        for other in names:
            if other != name and id(layers[other]) in operations:
                raise SettingsError(
                    f"layer {name!r} is computed from layer {other!r} (nested): list layers "
                    "that do not feed each other",
                    LAYER_KEY,
                )
    input_names = list(adapter.input_specs)
    input_tensors = list(model.inputs)
    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, Mapping):
        input_tensors = [structure[n] for n in input_names]
    behind: set[int] = set()
    for _, tensors in upstream.values():
        behind |= tensors
    direct = [
        n
        for n, t in zip(input_names, input_tensors, strict=True)
        if id(t) not in behind and adapter.input_specs[n].dtype.is_floating
    ]
    h_tensors = [outputs[n] for n in names]
    front_model = keras.Model(input_tensors, h_tensors)
    head_model = keras.Model([*h_tensors, *input_tensors], model.outputs)
    output_names = adapter.output_names

    def front(inputs: Mapping[str, Any]) -> dict[str, Any]:
        out = front_model([inputs[n] for n in input_names], training=False)
        out = out if isinstance(out, list | tuple) else [out]
        return dict(zip(names, out, strict=True))

    def head(inputs: Mapping[str, Any], hs: Mapping[str, Any]) -> dict[str, Any]:
        out = head_model(
            [*[hs[n] for n in names], *[inputs[n] for n in input_names]], training=False
        )
        if isinstance(out, Mapping):
            return dict(out)
        if isinstance(out, list | tuple):
            return dict(zip(output_names, out, strict=True))
        return {output_names[0]: out}

    specs = {
        n: tf.TensorSpec((None, *outputs[n].shape[1:]), tf.as_dtype(outputs[n].dtype), name=n)
        for n in names
    }
    return SplitModel(front, head, specs, direct)
