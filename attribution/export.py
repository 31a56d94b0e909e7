"""Export a model and its Integrated Gradients as one SavedModel with two signatures.

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
  keys                   tf.string [None], example keys, only for baseline kind 'random_uniform'
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
the signature). Per-call `targets=` overrides of `engine.attribute` have no counterpart.

Memory bound: like the engine, no model evaluation inside `integrated_gradients` sees more than
`max_rows_per_call` rows (the preprocess model, and `serving_default`, take the whole batch).
The batch dimension is dynamic, so the graph chunks it with `tf.while_loop`s run one iteration
at a time (parallel_iterations=1): forward passes take `max_rows_per_call` rows (example x
baseline pairs) at a time, and gradients take the engine's (rows, path points) blocks: all
`steps` points for `max(1, max_rows_per_call // steps)` rows, or, when steps >
max_rows_per_call, one row and `max_rows_per_call` points at a time, the path-point chunks
accumulated in float64 exactly as the engine's host loop does.

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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from attribution.baselines import random_uniform_tf
from attribution.engine import IntegratedGradients, rows_per_chunk
from attribution.models import ModelAdapter
from attribution.targets import NO_CLASS

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
        self.engine = engine
        self.preprocess = preprocess
        self.baseline = engine.baseline
        self.target = engine.target
        self.random = self.baseline.kind == "random_uniform"
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
        kind, classes = self.target.kind, self.classes
        if kind == "scalar" and classes is not None and classes != 1:
            raise ValueError(
                f"target kind 'scalar' needs an output of width 1; output {self.engine.output!r} "
                f"has {classes}: use 'predicted', 'index' or 'label'"
            )
        if kind == "index" and classes is not None and self.target.value >= classes:
            raise ValueError(
                f"target class {self.target.value} is out of range: output "
                f"{self.engine.output!r} has {classes} classes (0..{classes - 1})"
            )
        if kind == "label" and self.preprocess is not None:
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

    def _requested(self, available: TensorDict, n: tf.Tensor) -> tf.Tensor:
        """Target indices [n] int32; -1 means the arg-max (predicted) class."""
        kind = self.target.kind
        if kind == "index":
            return tf.fill([n], tf.constant(self.target.value, tf.int32))
        if kind in ("scalar", "callable"):
            return tf.zeros([n], tf.int32)
        if kind == "predicted":
            return tf.fill([n], tf.constant(-1, tf.int32))
        name = self.target.feature
        if name not in available:
            raise ValueError(f"target kind 'label': no label feature {name!r} to read")
        label = tf.convert_to_tensor(available[name])
        if not label.dtype.is_integer:
            raise ValueError(
                f"label feature {name!r} must hold integer classes, not {label.dtype.name}"
            )
        label = tf.reshape(label, [n])  # fails unless one class per example
        checks = [
            tf.debugging.assert_non_negative(label, message=f"label {name!r} has negative classes")
        ]
        if self.classes is not None:
            checks.append(
                tf.debugging.assert_less(
                    label,
                    tf.cast(self.classes, label.dtype),
                    message=f"label {name!r} is out of range for output {self.engine.output!r}",
                )
            )
        with tf.control_dependencies(checks):
            return tf.cast(label, tf.int32)

    def _baselines(
        self, x: TensorDict, available: TensorDict, n: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """name -> [n, S, *shape] in the attributed tensor's dtype."""
        spec = self.baseline
        out = {}
        keys = self._keys(available, n) if self.random else None
        for index, (name, fspec) in enumerate(self.engine.attributed_specs.items()):
            value, dtype = x[name], fspec.dtype
            if spec.kind == "zeros":
                base = tf.zeros_like(value)
            elif spec.kind == "constant":
                base = tf.fill(tf.shape(value), tf.constant(spec.value, dtype))
            elif spec.kind == "per_feature":
                const = tf.constant(np.asarray(spec.values[name], dtype=dtype.as_numpy_dtype))
                base = tf.broadcast_to(const, tf.shape(value))
            elif spec.kind == "array":
                base = available[BASELINE_INPUT_PREFIX + name]
                check = tf.debugging.assert_equal(
                    tf.shape(base), tf.shape(value), message=f"baseline_{name} shape mismatch"
                )
                with tf.control_dependencies([check]):
                    base = tf.identity(base)
            else:
                low, high = spec.bounds(name)
                shape = tuple(fspec.shape[1:])
                out[name] = random_uniform_tf(
                    keys, shape, low, high, spec.seed, spec.samples, index, dtype
                )
                continue
            out[name] = base[:, tf.newaxis]
        return out

    # ------------------------------------------------------------------------ signatures

    def serve(self, **kw: tf.Tensor) -> TensorDict:
        inputs, _ = self._model_inputs(kw)
        return dict(self.engine.model(inputs))

    def integrated_gradients(self, **kw: tf.Tensor) -> TensorDict:
        engine = self.engine
        max_rows = engine.max_rows_per_call
        inputs, available = self._model_inputs(kw)
        n = tf.shape(next(iter(inputs.values())))[0]
        requested = self._requested(available, n)

        if engine.layer is None:
            x = {name: inputs[name] for name in engine.attributed_specs}
        else:
            x = _map_chunks(
                lambda s, t: engine.embed(_slice(inputs, s, t)),
                n,
                max_rows,
                engine.attributed_specs,
            )
        base = self._baselines(x, available, n)
        samples = self.baseline.num_samples

        r_inputs = {k: tf.repeat(v, samples, axis=0) for k, v in inputs.items()}
        r_x = {k: tf.repeat(v, samples, axis=0) for k, v in x.items()}
        r_base = {
            k: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], axis=0)) for k, v in base.items()
        }
        r_req = tf.repeat(requested, samples, axis=0)
        rows = n * samples

        out_spec = {"out": tf.TensorSpec([None, self.classes], self.out_dtype)}

        def forward(attributed: TensorDict) -> tf.Tensor:
            return _map_chunks(
                lambda s, t: {
                    "out": engine.selected_output(_slice(r_inputs, s, t), _slice(attributed, s, t))
                },
                rows,
                max_rows,
                out_spec,
                unknown_dim=1,  # no rows: an [0, 1] output keeps argmax well defined
            )["out"]

        out = forward(r_x)
        if self.target.kind == "scalar" and self.classes is None:
            with tf.control_dependencies(
                [tf.debugging.assert_equal(tf.shape(out)[1], 1, message="scalar needs width 1")]
            ):
                out = tf.identity(out)
        argmax = tf.argmax(out, axis=1, output_type=tf.int32)
        chosen = tf.where(r_req < 0, argmax, r_req)
        fx = tf.cast(tf.gather(out, chosen, axis=1, batch_dims=1), tf.float64)
        fb_out = forward(r_base)
        fb = tf.cast(tf.gather(fb_out, chosen, axis=1, batch_dims=1), tf.float64)
        grads = self._gradient_rows(r_inputs, r_x, r_base, chosen, rows)

        result: TensorDict = {}
        attributions = {}
        total = tf.zeros([n], tf.float64)
        for name in x:
            diff = tf.cast(r_x[name], tf.float64) - tf.cast(r_base[name], tf.float64)
            per_row = diff * grads[name]
            shape = tf.concat([[n, samples], tf.shape(per_row)[1:]], axis=0)
            attr = tf.reduce_mean(tf.reshape(per_row, shape), axis=1)
            attributions[name] = attr
            total += tf.reduce_sum(tf.reshape(attr, [n, -1]), axis=1)
            result[f"{self.output_name}/{name}"] = attr
        predictions = tf.reshape(fx, [n, samples])[:, 0]
        baseline_predictions = tf.reduce_mean(tf.reshape(fb, [n, samples]), axis=1)
        result["prediction"] = predictions
        result["baseline_prediction"] = baseline_predictions
        result["delta"] = total - (predictions - baseline_predictions)
        if self.target.kind in ("callable", "scalar"):
            result["target"] = tf.fill([n], tf.constant(NO_CLASS, tf.int64))
        else:
            result["target"] = tf.cast(tf.reshape(chosen, [n, samples])[:, 0], tf.int64)
        if engine.layer is not None:
            result[f"layer_scores/{engine.layer}"] = tf.reduce_sum(
                attributions[engine.layer], axis=-1
            )
        for name, b in base.items():
            result[f"baseline/{name}"] = b
        return result

    def _gradient_rows(
        self,
        r_inputs: TensorDict,
        r_x: TensorDict,
        r_base: TensorDict,
        chosen: tf.Tensor,
        rows: tf.Tensor,
    ) -> TensorDict:
        """sum_k w_k dF_t/dz per row in float64, in the engine's (rows, points) blocks."""
        engine = self.engine
        examples, points = rows_per_chunk(engine.steps, engine.max_rows_per_call)
        alphas = tf.constant(engine.alphas, tf.float64)
        weights = tf.constant(engine.weights, tf.float64)
        n_chunks = -(-engine.steps // points)
        specs = {k: tf.TensorSpec(s.shape, tf.float64) for k, s in engine.attributed_specs.items()}

        def block(s: tf.Tensor, t: tf.Tensor) -> TensorDict:
            ins, xs, bs = _slice(r_inputs, s, t), _slice(r_x, s, t), _slice(r_base, s, t)
            tg = chosen[s:t]

            def part(j: Any) -> TensorDict:
                a, w = alphas[j * points : (j + 1) * points], weights[j * points : (j + 1) * points]
                g = engine.grad_sum(ins, xs, bs, tg, a, w)
                return {k: tf.cast(v, tf.float64) for k, v in g.items()}

            if n_chunks == 1:
                return part(0)
            init = {k: tf.zeros(tf.shape(v), tf.float64) for k, v in xs.items()}

            def body(j: tf.Tensor, acc: TensorDict) -> tuple[tf.Tensor, TensorDict]:
                p = part(j)
                return j + 1, {k: acc[k] + p[k] for k in acc}

            _, acc = tf.while_loop(
                lambda j, _: j < n_chunks,
                body,
                [tf.constant(0), init],
                shape_invariants=[tf.TensorShape([]), {k: specs[k].shape for k in init}],
                parallel_iterations=1,
            )
            return acc

        return _map_chunks(block, rows, examples, specs)


def _slice(tensors: Mapping[str, tf.Tensor], start: tf.Tensor, stop: tf.Tensor) -> TensorDict:
    return {k: v[start:stop] for k, v in tensors.items()}


def _map_chunks(
    fn: Callable[[tf.Tensor, tf.Tensor], Mapping[str, tf.Tensor]],
    n: tf.Tensor,
    size: int,
    specs: Mapping[str, tf.TensorSpec],
    unknown_dim: int = 0,
) -> TensorDict:
    """Concatenates fn(start, stop) over [0, n) in chunks of `size` rows, one chunk at a time.

    With n == 0 the result has 0 rows and `unknown_dim` for the dimensions `specs` leaves open.
    """
    count = (n + size - 1) // size
    arrays = {
        k: tf.TensorArray(
            s.dtype,
            size=count,
            infer_shape=False,
            element_shape=tf.TensorShape([None]).concatenate(s.shape[1:]),
        )
        for k, s in specs.items()
    }

    def body(i: tf.Tensor, arrays: dict) -> tuple[tf.Tensor, dict]:
        start = i * size
        out = fn(start, tf.minimum(n, start + size))
        return i + 1, {k: arrays[k].write(i, out[k]) for k in arrays}

    _, arrays = tf.while_loop(
        lambda i, _: i < count, body, [tf.constant(0), arrays], parallel_iterations=1
    )

    def empty(spec: tf.TensorSpec) -> tf.Tensor:  # concat of no chunks needs static shapes
        return tf.zeros([0, *(unknown_dim if d is None else d for d in spec.shape[1:])], spec.dtype)

    return {k: tf.cond(count > 0, arrays[k].concat, lambda k=k: empty(specs[k])) for k in arrays}
