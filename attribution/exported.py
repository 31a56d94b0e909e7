"""Running attributions from an exported SavedModel's `integrated_gradients` signature.

`ExportedAttributor` loads a SavedModel written by `attribution.export` and calls its
`integrated_gradients` signature: every engine setting is baked into the graph, so nothing but
TensorFlow is needed. Results come back as the engine's `Attribution`, so the pipeline treats an
export and a live engine alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from attribution.engine import Attribution
from attribution.models import ModelLoadError

SIGNATURE = "integrated_gradients"
EXAMPLES_INPUT = "examples"
KEYS_INPUT = "keys"
_FIXED_OUTPUTS = {"prediction", "baseline_prediction", "delta", "target"}


class ExportedAttributor:
    """The `integrated_gradients` signature of an igbeam export, callable on numpy batches.

    Attributes:
      feature_specs: Signature inputs fed from example features (everything but `examples` and
        `keys`), name -> TensorSpec.
      takes_examples: The signature takes serialized tf.Examples (`examples`).
      takes_keys: The signature takes example keys (random baselines).
      attributed_names: Attributed feature (or layer) names.
      layer: The layer name for layer attribution, else None.
    """

    def __init__(self, path: str, signature: str = SIGNATURE) -> None:
        try:
            self._loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ModelLoadError(f"cannot load SavedModel {path!r}: {err}") from err
        signatures = getattr(self._loaded, "signatures", {})
        if signature not in signatures:
            raise ModelLoadError(
                f"SavedModel {path!r} has no signature {signature!r} (export it with "
                f"`igbeam export`); it has: {', '.join(sorted(signatures)) or 'none'}"
            )
        self._fn = signatures[signature]
        _, inputs = self._fn.structured_input_signature
        outputs = self._fn.structured_outputs
        self.takes_examples = EXAMPLES_INPUT in inputs
        self.takes_keys = KEYS_INPUT in inputs
        self.feature_specs = {
            k: v for k, v in inputs.items() if k not in (EXAMPLES_INPUT, KEYS_INPUT)
        }
        prefixes = {k.split("/", 1)[0] for k in outputs if "/" in k}
        prefixes -= {"baseline", "layer_scores"}
        if len(prefixes) != 1 or not set(outputs) >= _FIXED_OUTPUTS:
            raise ModelLoadError(
                f"signature {signature!r} of {path!r} is not an igbeam integrated_gradients "
                f"signature (outputs: {', '.join(sorted(outputs))})"
            )
        self._prefix = prefixes.pop()
        self.attributed_names = sorted(
            k.split("/", 1)[1] for k in outputs if k.startswith(self._prefix + "/")
        )
        layers = [k.split("/", 1)[1] for k in outputs if k.startswith("layer_scores/")]
        self.layer = layers[0] if layers else None
        self._output_specs = dict(outputs)

    def output_shape(self, name: str) -> tf.TensorShape:
        """Per-example shape of the attributions (per-token scores for a layer) of `name`."""
        key = f"layer_scores/{name}" if self.layer else f"{self._prefix}/{name}"
        return self._output_specs[key].shape[1:]

    def attribute(
        self,
        inputs: Mapping[str, Any],
        *,
        keys: Any = None,
        examples: Any = None,
    ) -> Attribution:
        """Calls the signature on a batch; see `IntegratedGradients.attribute` for the result."""
        feeds = {
            name: tf.convert_to_tensor(
                np.asarray(inputs[name]).reshape((-1, *spec.shape[1:].as_list())), spec.dtype
            )
            for name, spec in self.feature_specs.items()
        }
        if self.takes_examples:
            feeds[EXAMPLES_INPUT] = tf.constant(list(examples), tf.string)
        if self.takes_keys:
            feeds[KEYS_INPUT] = tf.constant([str(k) for k in keys], tf.string)
        out = {k: v.numpy() for k, v in self._fn(**feeds).items()}
        attributions = {n: out[f"{self._prefix}/{n}"] for n in self.attributed_names}
        layer_scores = out[f"layer_scores/{self.layer}"] if self.layer else None
        return Attribution(
            attributions=attributions,
            predictions=out["prediction"],
            baseline_predictions=out["baseline_prediction"],
            deltas=out["delta"],
            targets=out["target"],
            baselines={k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("baseline/")},
            layer_scores=layer_scores,
        )
