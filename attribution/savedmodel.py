"""A model and its Integrated Gradients as one SavedModel: writing it, and running from it.

`export_integrated_gradients(engine, export_dir)` writes a SavedModel that serves, in plain
TensorFlow (no igbeam import needed to load or call it):

  serving_default        the model's outputs, by output name. With a `preprocess` model the
                         preprocess output is chained into the model (TF-GNN's "stacking").
  integrated_gradients   the engine's attributions, computed in-graph with every engine setting
                         baked in (method, steps, baseline, target, output, layer,
                         max_rows_per_call). The outputs equal `engine.attribute(...)` on the same
                         inputs and keys up to float round-off.

Both signatures take the same inputs:

  <model input names>    the model's named inputs (batch dimension None), without `preprocess`;
  examples               tf.string [None], serialized examples, with `preprocess` (instead);
  keys                   tf.string [None], example keys, only for baselines drawn per key
                         (`Baseline.uses_keys`: random_uniform, expected_gradients, an average
                         with one of them) or SmoothGrad noise (`engine.uses_keys`)
                         (its draws are a function of key and seed, exactly as in the engine), and
                         not when `key_feature` names a preprocess output holding the keys;
  <label feature>        int64 [None], only for target kind 'label' without `preprocess` when the
                         label is not a model input itself (with `preprocess`, the preprocess model
                         must output the label feature);
  baseline_<feature>     [None, *feature shape] in the feature's dtype, only for baseline kind
                         'array': one baseline per example (for layer attribution, in the layer's
                         output space: `baseline_<layer>`).

Signature input names must be Python identifiers (TensorFlow rewrites other names); export raises
ValueError otherwise, and when two inputs would share a name.

Outputs of `integrated_gradients` (B examples; S baselines per example, S > 1 only for
random_uniform with samples > 1). Output keys contain '/', which SignatureDef keys allow:

  <output_name>/<feature>  float64 [B, *shape]: the attributions of each attributed feature
                           (`<output_name>/<layer>` for layer attribution: the layer output's
                           attributions), averaged over the S baselines.
  layer_scores/<layer>     float64 [B, *shape[:-1]], layer attribution only: attributions summed
                           over the last (embedding) axis, one score per token.
  prediction               float64 [B]: F_t(x).
  baseline_prediction      float64 [B]: F_t(x') averaged over the S baselines.
  delta                    float64 [B]: completeness, sum of attributions - (F_t(x) - F_t(x')).
  target                   int64 [B]: the explained class; -1 for scalar and callable targets.
  baseline/<feature>       [B, S, *shape] in the feature's dtype: the baselines used.

Supported engine settings: every integration method and step count (the path points and weights
are graph constants); targets 'predicted', 'index', 'scalar', 'callable' (the function is traced
into the graph, so it must be TensorFlow-traceable, as the engine already requires) and 'label'
(see the inputs); every baseline kind; input and layer attribution (the Keras model is saved with
the signature). Per-call `targets=` overrides of `engine.attribute` have no counterpart. Several
layers at once (`attribution.layer` as a list, `attribution.layers`) are refused: a
`SettingsError` naming `attribution.layer`.

One implementation: the signature calls the engine's own graph function,
`IntegratedGradients.attribute_packed` (baselines, class choice, chunked path sums, the average
over baseline samples, the delta), the very function the engine's host loop calls. Only what a
signature needs on top lives here: the preprocess model, keys and labels read from signature
inputs, named outputs, and the loop over example chunks that the host does in Python.

Memory bound: like the engine, no model evaluation inside `integrated_gradients` sees more than
`max_rows_per_call` rows (the preprocess model, and `serving_default`, take the whole batch).
The batch dimension is dynamic, so the graph calls `attribute_packed` on chunks of
`engine.examples_per_call` examples in a `tf.while_loop` run one iteration at a time.

`ExportedAttributor` (below) loads such a SavedModel and calls its `integrated_gradients`
signature on numpy batches, returning the engine's `Attribution`, so the pipeline treats an
export and a live engine alike.

How this differs from TF-GNN's `runner.IntegratedGradientsExporter`: TF-GNN's signature returns
the raw sum over its `steps` interpolation points of the gradients of the model's compiled *loss*
(so it needs labels), without the 1/steps weights and without the (x - baseline) factor, i.e. not
the attributions themselves, and its random counterfactual (`tf.random.uniform` over each
feature's min..max, stateful, not reproducible per example) is dropped rather than returned.
igbeam exports true IG of the selected output: attr = (x - x') * sum_k w_k grad F_t(x' + a_k (x -
x')) with weights summing to 1, so the attributions add up to F_t(x) - F_t(x') (`delta` says how
closely), deterministic per-example random baselines, and the baselines and predictions used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from attribution.engine import Attribution, IntegratedGradients, map_chunks
from attribution.errors import ModelLoadError, SettingsError, one_line
from attribution.models import ModelAdapter
from attribution.targets import check_classes, requested_classes

__all__ = [
    "BASELINE_INPUT_PREFIX",
    "EXAMPLES_INPUT",
    "FIXED_OUTPUTS",
    "IG_SIGNATURE",
    "KEYS_INPUT",
    "SERVING_SIGNATURE",
    "ExportedAttributor",
    "export_integrated_gradients",
]

SERVING_SIGNATURE = "serving_default"
IG_SIGNATURE = "integrated_gradients"
EXAMPLES_INPUT = "examples"
KEYS_INPUT = "keys"
BASELINE_INPUT_PREFIX = "baseline_"
FIXED_OUTPUTS = ("prediction", "baseline_prediction", "delta", "target")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

TensorDict = dict[str, tf.Tensor]


def export_integrated_gradients(
    engine: IntegratedGradients,
    export_dir: str,
    *,
    preprocess: ModelAdapter | None = None,
    key_feature: str | None = None,
    output_name: str = "attributions",
    options: tf.saved_model.SaveOptions | None = None,
) -> str:
    """Writes a SavedModel with `serving_default` and `integrated_gradients` signatures.

    See the module docstring for the signatures' inputs and outputs.

    Args:
      engine: The configured engine; its settings are baked into the graph.
      export_dir: Destination directory (any path `tf.saved_model.save` can write).
      preprocess: A model of one tf.string [None] input (serialized examples) whose outputs are
        the model inputs by name (or one output for a single-input model). When given, both
        signatures take `examples` instead of the model's inputs.
      key_feature: With `preprocess` and a random_uniform baseline: the preprocess output (string
        or integer, [B] or [B, 1]) that holds each example's key; the signatures then take no
        `keys` input. Ignored for other baseline kinds.
      output_name: The attributions' output prefix: `<output_name>/<feature>`.
      options: `tf.saved_model.SaveOptions`.

    Returns:
      export_dir.

    Raises:
      ValueError: a setting the graph cannot hold (an unusable preprocess model or key feature, a
        label target the signature cannot receive, a target out of the output's range, clashing
        or invalid input names, a bad output_name).
    """
    builder = _SignatureBuilder(engine, preprocess, key_feature, output_name)
    serving = tf.function(builder.serve).get_concrete_function(**builder.input_specs)
    ig = tf.function(builder.integrated_gradients).get_concrete_function(**builder.input_specs)
    root = tf.Module()
    tracked: list[Any] = []
    for adapter in (engine.model, preprocess):
        if adapter is not None:
            owners = (adapter.keras_model, getattr(adapter, "_owner", None))
            tracked += [o for o in owners if o is not None]
    root.models = tracked
    # Variables the traced functions capture that are not reachable from the models above (e.g. a
    # tf.function model closing over tf.Variables) must be tracked to be saved.
    root.captured_variables = list({id(v): v for v in (*serving.variables, *ig.variables)}.values())
    tf.saved_model.save(
        root,
        export_dir,
        signatures={SERVING_SIGNATURE: serving, IG_SIGNATURE: ig},
        options=options,
    )
    return os.fspath(export_dir)


class _SignatureBuilder:
    """Holds the static decisions of an export and the two traced signature bodies."""

    def __init__(
        self,
        engine: IntegratedGradients,
        preprocess: ModelAdapter | None,
        key_feature: str | None,
        output_name: str,
    ) -> None:
        if engine.layer is not None and not isinstance(engine.layer, str):
            raise SettingsError(
                "an export attributes at one layer; several layers are not exported yet (export "
                "with one layer, or run the pipeline on the .keras model)",
                "attribution.layer",
            )
        self.engine = engine
        self.preprocess = preprocess
        self.baseline = engine.baseline
        self.target = engine.target
        self.random = engine.uses_keys
        if not isinstance(output_name, str) or not output_name or "/" in output_name:
            raise ValueError(
                f"output_name must be a non-empty name without '/', got {output_name!r}"
            )
        if output_name in ("baseline", "layer_scores", *FIXED_OUTPUTS):
            raise ValueError(f"output_name {output_name!r} clashes with another output")
        self.output_name = output_name
        self.key_feature = key_feature if self.random else None
        if self.key_feature is not None and preprocess is None:
            raise ValueError(
                "key_feature names a preprocess output; without a preprocess model the "
                "random_uniform keys come from the 'keys' input"
            )
        self.classes, self.out_dtype = self._probe_output()
        self._check_target()

        specs: dict[str, tf.TensorSpec] = {}
        if preprocess is None:
            specs.update(engine.input_specs)
        else:
            if len(preprocess.input_specs) != 1:
                raise ValueError(
                    "the preprocess model must take one input (serialized examples); it takes "
                    f"{', '.join(preprocess.input_specs)}"
                )
            (pre_spec,) = preprocess.input_specs.values()
            if pre_spec.dtype != tf.string:
                raise ValueError(
                    f"the preprocess model's input must be tf.string, not {pre_spec.dtype.name}"
                )
            specs[EXAMPLES_INPUT] = tf.TensorSpec([None], tf.string)
        extra: list[tuple[str, tf.TensorSpec]] = []
        if self.random and self.key_feature is None:
            extra.append((KEYS_INPUT, tf.TensorSpec([None], tf.string)))
        label = self.target.feature
        if self.target.kind == "label" and preprocess is None and label not in engine.input_specs:
            extra.append((label, tf.TensorSpec([None], tf.int64)))
        if self.baseline.kind == "array":
            for name, spec in engine.attributed_specs.items():
                extra.append((BASELINE_INPUT_PREFIX + name, spec))
        for name, spec in extra:
            if name in specs:
                raise ValueError(
                    f"signature input {name!r} clashes with a model input of the same name"
                )
            specs[name] = spec
        for name in specs:
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(
                    f"signature input name {name!r} is not an identifier (letters, digits, '_'); "
                    "TensorFlow would rename it: rename the model input"
                )
        self.input_specs = {
            n: tf.TensorSpec([None, *s.shape[1:]], s.dtype, name=n) for n, s in specs.items()
        }

    # ---------------------------------------------------------------------- static checks

    def _probe_output(self) -> tuple[int | None, tf.DType]:
        """The explained output's static width C (None if only known at run time) and dtype."""
        engine = self.engine

        def probe(inputs: TensorDict, attributed: TensorDict) -> tuple[tf.Tensor, tf.Tensor]:
            raw = tf.convert_to_tensor(engine.model(inputs)[engine.output])
            return engine.selected_output(inputs, attributed), raw

        concrete = tf.function(probe).get_concrete_function(
            dict(engine.input_specs), dict(engine.attributed_specs)
        )
        selected, raw = concrete.structured_outputs
        if self.target.kind == "callable":
            return 1, selected.dtype
        inner = raw.shape[1:]
        return (inner.num_elements() if inner.is_fully_defined() else None), selected.dtype

    def _check_target(self) -> None:
        if self.target.multi:
            raise ValueError(
                f"attribution.target.kind: {self.target.kind} cannot be exported (the "
                "integrated_gradients signature returns one row per example); export with kind "
                "predicted or index"
            )
        if self.classes is not None:
            fixed = self.target.value if self.target.kind == "index" else None
            check_classes(self.target, self.engine.output, self.classes, fixed)
        if self.target.kind == "label" and self.preprocess is not None:
            names = self.preprocess.output_names
            if self.target.feature not in names:
                raise ValueError(
                    f"target kind 'label' with a preprocess model needs the preprocess model to "
                    f"output the label feature {self.target.feature!r}; its outputs are "
                    f"{', '.join(names)} (or export without preprocess: the label becomes an "
                    "input of the signatures)"
                )

    # --------------------------------------------------------------------------- inputs

    def _model_inputs(self, kw: Mapping[str, tf.Tensor]) -> tuple[TensorDict, TensorDict]:
        """(model inputs, every named tensor available: inputs plus preprocess outputs)."""
        specs = self.engine.input_specs
        if self.preprocess is None:
            return {n: kw[n] for n in specs}, dict(kw)
        (pre_name,) = self.preprocess.input_specs
        outputs = self.preprocess({pre_name: kw[EXAMPLES_INPUT]})
        if all(n in outputs for n in specs):
            chosen = {n: outputs[n] for n in specs}
        elif len(specs) == 1 and len(outputs) == 1:
            chosen = {next(iter(specs)): next(iter(outputs.values()))}
        else:
            raise ValueError(
                f"the preprocess model outputs {', '.join(outputs)}; the model needs "
                f"{', '.join(specs)}"
            )
        inputs = {}
        for name, spec in specs.items():
            t = tf.convert_to_tensor(chosen[name])
            if t.dtype != spec.dtype:
                if t.dtype == tf.string or spec.dtype == tf.string:
                    raise ValueError(
                        f"preprocess output {name!r} is {t.dtype.name}; the model expects "
                        f"{spec.dtype.name}"
                    )
                t = tf.cast(t, spec.dtype)
            if not t.shape.is_compatible_with(spec.shape):
                raise ValueError(
                    f"preprocess output {name!r} has shape {t.shape}; the model expects "
                    f"{spec.shape}"
                )
            inputs[name] = tf.ensure_shape(t, spec.shape)
        return inputs, {**outputs, **kw}

    def _keys(self, available: TensorDict, n: tf.Tensor) -> tf.Tensor:
        if self.key_feature is None:
            keys = available[KEYS_INPUT]
        else:
            if self.key_feature not in available:
                raise ValueError(
                    f"key_feature {self.key_feature!r} is not an output of the preprocess model"
                )
            keys = tf.reshape(available[self.key_feature], [-1])
            if keys.dtype.is_integer:
                keys = tf.strings.as_string(keys)
            elif keys.dtype != tf.string:
                raise ValueError(
                    f"key_feature {self.key_feature!r} must be a string or integer feature, "
                    f"not {keys.dtype.name}"
                )
        with tf.control_dependencies(
            [tf.debugging.assert_equal(tf.size(keys), n, message="keys must have one per example")]
        ):
            return tf.identity(keys)

    # ------------------------------------------------------------------------ signatures

    def serve(self, **kw: tf.Tensor) -> TensorDict:
        inputs, _ = self._model_inputs(kw)
        return dict(self.engine.model(inputs))

    def integrated_gradients(self, **kw: tf.Tensor) -> TensorDict:
        engine = self.engine
        layout = engine.layout()
        inputs, available = self._model_inputs(kw)
        n = tf.shape(next(iter(inputs.values())))[0]
        label = None
        if self.target.kind == "label":
            label = available.get(self.target.feature)
            if label is None:
                raise ValueError(f"target kind 'label': no label feature {self.target.feature!r}")
        requested = requested_classes(self.target, n, label, self.classes)
        if engine.layer is None:
            x = {name: inputs[name] for name in engine.attributed_specs}
        else:
            x = map_chunks(
                lambda s, t: engine.embed(_rows(inputs, s, t)),
                n,
                engine.max_rows_per_call,
                engine.attributed_specs,
            )
        rest = {k: v for k, v in inputs.items() if k not in engine.attributed_specs}
        keys = self._keys(available, n) if self.random else tf.fill([n], tf.constant("", tf.string))
        provided = {}
        if self.baseline.kind == "array":
            given = {}
            for name in engine.attributed_specs:
                base = available[BASELINE_INPUT_PREFIX + name]
                check = tf.debugging.assert_equal(
                    tf.shape(base), tf.shape(x[name]), message=f"baseline_{name} shape mismatch"
                )
                with tf.control_dependencies([check]):
                    given[name] = tf.identity(base)
            provided = {k: v[:, tf.newaxis] for k, v in layout.pack(given).items()}
        packed = layout.pack(x)

        def chunk(s: tf.Tensor, t: tf.Tensor) -> TensorDict:
            return engine.attribute_packed(
                _rows(rest, s, t),
                _rows(packed, s, t),
                keys[s:t],
                _rows(provided, s, t),
                requested[s:t],
            )

        if engine.examples_per_call is None:  # the graph chunks rows itself
            out = chunk(tf.constant(0), n)
        else:
            out = map_chunks(chunk, n, engine.examples_per_call, engine.output_specs(), 1)
        checks = [
            tf.debugging.assert_less(
                out["chosen"],
                out["classes"],
                message=f"target class out of range for {engine.output!r}",
            )
        ]
        if self.target.kind == "scalar":
            checks.append(
                tf.debugging.assert_equal(out["classes"], 1, message="scalar needs width 1")
            )
        with tf.control_dependencies(checks):
            result: TensorDict = {name: tf.identity(out[name]) for name in FIXED_OUTPUTS}
        attributions = layout.unpack({k: out["attributions/" + k] for k in layout.groups})
        for name, attr in attributions.items():
            result[f"{self.output_name}/{name}"] = attr
        if engine.layer is not None:
            result[f"layer_scores/{engine.layer}"] = tf.reduce_sum(
                attributions[engine.layer], axis=-1
            )
        first = out["baselines/" + next(iter(layout.groups))]
        samples = tf.shape(first)[1]
        flat = layout.unpack(
            {k: tf.reshape(out["baselines/" + k], [-1, layout.width(k)]) for k in layout.groups}
        )
        for name, base in flat.items():
            shape = engine.attributed_specs[name].shape[1:].as_list()
            result[f"baseline/{name}"] = tf.reshape(base, [n, samples, *shape])
        return result


def _rows(tensors: Mapping[str, tf.Tensor], start: tf.Tensor, stop: tf.Tensor) -> TensorDict:
    return {k: v[start:stop] for k, v in tensors.items()}


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

    def __init__(self, path: str, signature: str = IG_SIGNATURE) -> None:
        try:
            self._loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ModelLoadError(f"cannot load SavedModel {path!r}: {one_line(err)}") from err
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
        if len(prefixes) != 1 or not set(outputs) >= set(FIXED_OUTPUTS):
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
