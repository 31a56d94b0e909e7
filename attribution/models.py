"""Models as the IG engine sees them: named inputs with a `None` batch dimension to named outputs.

`ModelAdapter` hides the differences between a Keras 3 model (`.keras` file or in-memory), a
SavedModel signature and a plain TensorFlow function, so the engine can (1) build a fixed
`tf.function` input signature, (2) call the model on a dict of tensors and (3) split a functional
Keras model at a named layer for layer attribution. No Beam here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from attribution.errors import ModelLoadError, one_line

__all__ = ["ModelAdapter", "ModelLoadError", "load_model"]

TensorDict = dict[str, tf.Tensor]


def _normalise_outputs(outputs: Any, names: list[str]) -> TensorDict:
    if isinstance(outputs, Mapping):
        return dict(outputs)
    if isinstance(outputs, list | tuple):
        return dict(zip(names, outputs, strict=True))
    return {names[0]: outputs}


class ModelAdapter:
    """A callable model with named inputs and named outputs.

    Attributes:
      input_specs: Input name to `tf.TensorSpec`, batch dimension `None`.
      output_names: Names of the outputs, in order.
      single_input: True when the underlying model takes one tensor rather than a dict.
      keras_model: The Keras model when there is one (layer attribution needs it), else None.
    """

    def __init__(
        self,
        call: Callable[[TensorDict], Any],
        input_specs: Mapping[str, tf.TensorSpec],
        output_names: list[str],
        *,
        single_input: bool = False,
        keras_model: Any = None,
        owner: Any = None,
    ) -> None:
        if not input_specs:
            raise ModelLoadError("the model has no inputs")
        self._call = call
        self.input_specs = dict(input_specs)
        self.output_names = list(output_names)
        self.single_input = single_input
        self.keras_model = keras_model
        self._owner = owner  # keeps a restored SavedModel's variables alive

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> TensorDict:
        """Runs the model (inference mode) and returns its outputs by name."""
        return _normalise_outputs(self._call(dict(inputs)), self.output_names)

    # ----------------------------------------------------------------------------- constructors

    @classmethod
    def from_keras(cls, model: Any) -> ModelAdapter:
        """Wraps a built Keras 3 model (functional, sequential or subclassed with known inputs)."""
        try:
            keras_inputs = list(model.inputs)
        except (AttributeError, ValueError) as err:
            raise ModelLoadError(
                f"Keras model {model.name!r} has no defined inputs: {err}"
            ) from err
        structure = getattr(model, "_inputs_struct", None)
        specs = {}
        for tensor in keras_inputs:
            specs[tensor.name] = tf.TensorSpec(
                (None, *tensor.shape[1:]), tf.as_dtype(tensor.dtype), name=tensor.name
            )
        if isinstance(structure, Mapping):
            names_by_id = {id(t): k for k, t in structure.items()}
            specs = {names_by_id[id(t)]: specs[t.name] for t in keras_inputs}

            def call(inputs: TensorDict) -> Any:
                return model(inputs, training=False)

            single = False
        elif len(keras_inputs) == 1:
            name = keras_inputs[0].name

            def call(inputs: TensorDict) -> Any:
                return model(inputs[name], training=False)

            single = True
        else:
            order = [t.name for t in keras_inputs]

            def call(inputs: TensorDict) -> Any:
                return model([inputs[n] for n in order], training=False)

            single = False
        output_names = list(getattr(model, "output_names", None) or [])
        n_outputs = len(model.outputs) if getattr(model, "outputs", None) else 1
        if len(output_names) != n_outputs:
            output_names = [f"output_{i}" for i in range(n_outputs)]
        return cls(call, specs, output_names, single_input=single, keras_model=model)

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        input_specs: Mapping[str, tf.TensorSpec],
        output_names: list[str] | None = None,
    ) -> ModelAdapter:
        """Wraps a TensorFlow-traceable function of a dict of inputs (or of one tensor)."""
        specs = {
            name: tf.TensorSpec((None, *spec.shape[1:]), spec.dtype, name=name)
            for name, spec in input_specs.items()
        }
        single = len(specs) == 1
        only = next(iter(specs))

        def call(inputs: TensorDict) -> Any:
            return fn(inputs[only]) if single else fn(inputs)

        return cls(call, specs, output_names or ["output_0"], single_input=single)

    @classmethod
    def from_saved_model(cls, path: str, signature: str = "serving_default") -> ModelAdapter:
        """Loads a SavedModel directory and wraps one of its signatures."""
        try:
            loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ModelLoadError(
                f"cannot load SavedModel {path!r}: {one_line(err, with_type=False)}"
            ) from err
        signatures = getattr(loaded, "signatures", {})
        if signature not in signatures:
            raise ModelLoadError(
                f"SavedModel {path!r} has no signature {signature!r}; "
                f"it has: {', '.join(sorted(signatures)) or 'none'}"
            )
        fn = signatures[signature]
        _, kwargs = fn.structured_input_signature
        if not kwargs:
            raise ModelLoadError(f"signature {signature!r} of {path!r} takes no named inputs")
        output_names = sorted(fn.structured_outputs)

        def call(inputs: TensorDict) -> Any:
            return fn(**inputs)

        return cls(call, dict(kwargs), output_names, owner=loaded)

    # ------------------------------------------------------------------------- layer attribution

    def split_at_layer(self, layer_name: str) -> tuple[Callable, Callable, tf.TensorSpec]:
        """Splits a functional Keras model at the output of `layer_name`.

        Returns:
          (front, head, spec): `front(inputs) -> h` computes the layer's output, `head(inputs, h)`
          computes the model outputs (by name) from the layer output and the other inputs, and
          `spec` is h's `tf.TensorSpec`.

        Raises:
          ValueError: no Keras model, no such layer, or a layer that is not a single-output node.
        """
        import keras  # imported here: only layer attribution needs Keras graph surgery

        model = self.keras_model
        if model is None:
            raise ValueError("layer attribution needs a Keras model (.keras file or in-memory)")
        try:
            layer = model.get_layer(layer_name)
        except ValueError as err:
            names = ", ".join(lyr.name for lyr in model.layers)
            raise ValueError(f"model has no layer {layer_name!r}; layers: {names}") from err
        calls = len(getattr(layer, "_inbound_nodes", []) or [])
        if calls > 1:  # e.g. one Embedding shared by two token inputs: no single output
            raise ValueError(
                f"layer {layer_name!r} is called {calls} times in the model (a shared layer): its "
                "output is not one tensor; attribute at a layer after it, or give each input its "
                "own layer"
            )
        try:
            h_tensor = layer.output
        except (AttributeError, ValueError) as err:
            raise ValueError(
                f"layer {layer_name!r} has no single output node (shared or subclassed model): "
                f"{err}"
            ) from err
        if not isinstance(h_tensor, keras.KerasTensor):
            raise ValueError(
                f"layer {layer_name!r} has several outputs; pick a single-output layer"
            )
        input_names = list(self.input_specs)
        input_tensors = list(model.inputs)
        structure = getattr(model, "_inputs_struct", None)
        if isinstance(structure, Mapping):
            input_tensors = [structure[n] for n in input_names]
        front_model = keras.Model(input_tensors, h_tensor)
        head_model = keras.Model([h_tensor, *input_tensors], model.outputs)
        names = self.output_names

        def front(inputs: TensorDict) -> tf.Tensor:
            return front_model([inputs[n] for n in input_names], training=False)

        def head(inputs: TensorDict, h: tf.Tensor) -> TensorDict:
            out = head_model([h, *[inputs[n] for n in input_names]], training=False)
            return _normalise_outputs(out, names)

        spec = tf.TensorSpec(
            (None, *h_tensor.shape[1:]), tf.as_dtype(h_tensor.dtype), name=layer_name
        )
        return front, head, spec


def load_model(
    path: str, *, signature: str = "serving_default", safe_mode: bool = True
) -> ModelAdapter:
    """Loads a Keras 3 `.keras` file or a SavedModel directory.

    Args:
      path: A `.keras` file or a SavedModel directory (local or any path TensorFlow can read).
      signature: The SavedModel signature to call.
      safe_mode: Keras `safe_mode` (refuses arbitrary code in lambda layers) for `.keras` files.

    Returns:
      A `ModelAdapter`.

    Raises:
      ModelLoadError: the path does not exist, is not a model, or has no usable signature.
    """
    if path.endswith(".keras") or path.endswith(".h5"):
        if "://" not in path and not os.path.exists(path):
            raise ModelLoadError(f"model file {path!r} does not exist")
        import keras

        try:
            model = keras.saving.load_model(path, safe_mode=safe_mode)
        except Exception as err:  # Keras raises many types; all mean "not loadable"
            raise ModelLoadError(
                f"cannot load Keras model {path!r}: {one_line(err, with_type=False)}"
            ) from err
        return ModelAdapter.from_keras(model)
    if "://" not in path and not os.path.isdir(path):
        raise ModelLoadError(
            f"model path {path!r} is neither a .keras file nor a SavedModel directory"
        )
    return ModelAdapter.from_saved_model(path, signature)
