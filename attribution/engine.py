"""The Integrated Gradients engine: compiled, chunked, batch-invariant. TensorFlow only, no Beam.

For attributed inputs x with baseline x', path points a_k and weights w_k (see `integration`):

    attr_i = (x_i - x'_i) * sum_k w_k dF_t/dx_i(x' + a_k (x - x'))
    delta  = sum_i attr_i - (F_t(x) - F_t(x'))           (completeness; ~0 for a good rule)

where F_t is the explained scalar of the model output (see `targets`). Gradients come from one
compiled `tf.function` with a fixed input signature (batch dimension `None`, so new batch sizes
never retrace) that evaluates `examples x steps` rows at once. The host loop feeds it chunks of at
most `max_rows_per_call` rows and accumulates the weighted gradient sums in float64, so memory is
bounded and the result does not depend on how examples are batched or chunked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from attribution.baselines import Baseline, BaselineMaker
from attribution.integration import DEFAULT_METHOD, DEFAULT_STEPS, integration_rule
from attribution.models import ModelAdapter
from attribution.targets import NO_CLASS, Target

DEFAULT_MAX_ROWS_PER_CALL = 16384


@dataclasses.dataclass
class Attribution:
    """Per-example results of `IntegratedGradients.attribute` for a batch of B examples.

    Attributes:
      attributions: name -> [B, *shape] float64, the same structure as the attributed inputs (a
        plain array for a single-input model; {layer_name: ...} for layer attribution).
      predictions: [B] F_t(x).
      baseline_predictions: [B] F_t(x'), averaged over the baselines of each example.
      deltas: [B] completeness delta, sum of attributions - (F_t(x) - F_t(x')).
      targets: [B] int64 explained class (-1 for scalar and callable targets).
      baselines: name -> [B, S, *shape], the S baselines used per example.
      layer_scores: for layer attribution, [B, *shape[:-1]]: attributions summed over the last
        (embedding) axis, one score per token/feature; None otherwise.
    """

    attributions: dict[str, np.ndarray] | np.ndarray
    predictions: np.ndarray
    baseline_predictions: np.ndarray
    deltas: np.ndarray
    targets: np.ndarray
    baselines: dict[str, np.ndarray]
    layer_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.predictions)


def rows_per_chunk(steps: int, max_rows: int) -> tuple[int, int]:
    """(examples per gradient call, path points per gradient call) for a row bound."""
    if steps <= max_rows:
        return max(1, max_rows // steps), steps
    return 1, max_rows


def _static_shape(t: tf.Tensor) -> list[int]:
    """The fixed per-example shape of an attributed tensor."""
    shape = t.shape[1:]
    if not shape.is_fully_defined():
        raise ValueError(f"attributed tensors need a fixed shape per example, got {shape}")
    return shape.as_list()


@dataclasses.dataclass(frozen=True)
class _Packing:
    """Attributed tensors packed into one [rows, D] array per dtype, features side by side.

    One packed tensor instead of one per feature keeps both the compiled graph (a split, not
    per-feature reshapes and their gradients) and the host's per-call work (one conversion,
    not one per feature) independent of the number of features. Works on tensors (in graphs)
    and on numpy arrays (on the host): `unpack` returns views there.
    """

    groups: dict[str, list[str]]  # dtype key -> attributed names, in order
    shapes: dict[str, tuple[int, ...]]  # name -> per-example shape
    dtypes: dict[str, tf.DType]  # dtype key -> dtype

    @classmethod
    def of(cls, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, tf.DType]) -> _Packing:
        groups: dict[str, list[str]] = {}
        by_key: dict[str, tf.DType] = {}
        for name in shapes:
            dtype = tf.as_dtype(dtypes[name])
            groups.setdefault(dtype.name, []).append(name)
            by_key[dtype.name] = dtype
        return cls(groups, {n: tuple(s) for n, s in shapes.items()}, by_key)

    def size(self, name: str) -> int:
        return math.prod(self.shapes[name])

    def width(self, key: str) -> int:
        return sum(self.size(m) for m in self.groups[key])

    def pack(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """name -> [rows, *shape] to dtype key -> [rows, D]."""
        packed = {}
        for key, names in self.groups.items():
            if isinstance(values[names[0]], np.ndarray):
                dtype = self.dtypes[key].as_numpy_dtype
                parts = [np.asarray(values[m], dtype).reshape(-1, self.size(m)) for m in names]
                packed[key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            else:
                parts = [tf.reshape(values[m], [-1, self.size(m)]) for m in names]
                packed[key] = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        return packed

    def unpack(self, packed: Mapping[str, Any]) -> dict[str, Any]:
        """dtype key -> [rows, D] to name -> [rows, *shape] (views for numpy arrays)."""
        out = {}
        for key, names in self.groups.items():
            whole = packed[key]
            host = isinstance(whole, np.ndarray)
            sizes = [self.size(m) for m in names]
            if len(names) == 1:
                parts = [whole]
            elif host:
                parts = np.split(whole, np.cumsum(sizes)[:-1], axis=1)
            else:
                parts = tf.split(whole, sizes, axis=1)
            for m, part in zip(names, parts, strict=True):
                if self.shapes[m] == (self.size(m),):
                    out[m] = part  # already [rows, size]
                elif host:
                    out[m] = part.reshape((-1, *self.shapes[m]))
                else:
                    out[m] = tf.reshape(part, [-1, *self.shapes[m]])
        return {m: out[m] for m in self.shapes}  # the attributed order, not the dtype grouping


class IntegratedGradients:
    """Integrated Gradients for a model with named inputs.

    Build once (it compiles its functions lazily on the first call), then call `attribute` on as
    many batches as needed. Heavy: create it in a Beam DoFn's `setup()`, never at construction.

    Args:
      model: A `ModelAdapter` (see `attribution.models.load_model`).
      features: The attributed input names (default: every model input). Other inputs are passed
        through unchanged at every path point. Must be floating point.
      layer: Attribute to the output of this Keras layer instead of the inputs (e.g. an
        `Embedding` for token ids). The completeness delta is still computed on the model output.
      output: The model output to explain (needed for multi-output models).
      method: Integration rule, one of `integration.METHODS`.
      steps: Number of path points.
      baseline: A `Baseline` (default zeros).
      target: A `Target` (default: the predicted class).
      max_rows_per_call: Upper bound on examples x steps evaluated per gradient call.

    Raises:
      ValueError: any bad argument, with a message naming it and the valid choices.
    """

    def __init__(
        self,
        model: ModelAdapter,
        *,
        features: Sequence[str] | None = None,
        layer: str | None = None,
        output: str | None = None,
        method: str = DEFAULT_METHOD,
        steps: int = DEFAULT_STEPS,
        baseline: Baseline | None = None,
        target: Target | None = None,
        max_rows_per_call: int = DEFAULT_MAX_ROWS_PER_CALL,
    ) -> None:
        self.model = model
        self.method, self.steps = method, steps
        alphas, weights = integration_rule(method, steps)
        self.alphas, self.weights = alphas, weights
        if isinstance(max_rows_per_call, bool) or not isinstance(max_rows_per_call, int):
            raise ValueError(f"max_rows_per_call must be an integer, got {max_rows_per_call!r}")
        if max_rows_per_call < 1:
            raise ValueError(f"max_rows_per_call must be >= 1, got {max_rows_per_call}")
        self.max_rows_per_call = max_rows_per_call
        self.target = target or Target()
        self.target.validate()
        self.output = self._resolve_output(output)
        self.input_specs = dict(model.input_specs)
        self.layer = layer
        if layer is not None:
            if features is not None:
                raise ValueError("give either features (input attribution) or layer, not both")
            front, head, h_spec = model.split_at_layer(layer)
            self._front, self._head = front, head
            self.attributed_specs = {layer: h_spec}
        else:
            self._front = None
            names = list(features) if features is not None else list(self.input_specs)
            self._check_features(names)
            self.attributed_specs = {n: self.input_specs[n] for n in names}
        if self.target.kind == "label" and self.target.feature in self.attributed_specs:
            raise ValueError(f"the label feature {self.target.feature!r} cannot be attributed")
        self.baseline = baseline or Baseline()
        self._baselines = BaselineMaker(self.baseline, self.attributed_specs)
        self._build_functions()

    # -------------------------------------------------------------------------- construction

    def _resolve_output(self, output: str | None) -> str:
        names = self.model.output_names
        if output is None:
            if len(names) != 1:
                raise ValueError(
                    f"the model has {len(names)} outputs ({', '.join(names)}); "
                    "choose one with output="
                )
            return names[0]
        if output not in names:
            raise ValueError(
                f"unknown output {output!r}; the model's outputs are {', '.join(names)}"
            )
        return output

    def _check_features(self, names: list[str]) -> None:
        if not names:
            raise ValueError("features is empty: name at least one input to attribute")
        if len(set(names)) != len(names):
            raise ValueError(f"features has duplicates: {names}")
        unknown = [n for n in names if n not in self.input_specs]
        if unknown:
            raise ValueError(
                f"unknown features {unknown}; the model's inputs are {', '.join(self.input_specs)}"
            )
        for name in names:
            dtype = self.input_specs[name].dtype
            if not dtype.is_floating:
                raise ValueError(
                    f"input {name!r} has dtype {dtype.name}: gradients of a discrete input are "
                    "meaningless; attribute to the layer that embeds it instead (layer='...', "
                    "e.g. its Embedding layer) and leave it out of features"
                )

    def _build_functions(self) -> None:
        inputs_sig = {n: s for n, s in self.input_specs.items()}
        self._embed_fn = tf.function(self.embed, input_signature=[inputs_sig], autograph=False)
        # The attributed tensors travel packed: one [rows, D] tensor per dtype (see `_layout`).
        # Built on the first call, when an attributed shape that is not fixed can be reported
        # as a ValueError of that call.
        self._chunk_fn: Any = None
        # Calling the concrete function skips the polymorphic function's per-call signature
        # matching, which costs milliseconds per call for models with many named inputs.
        self._chunk_concrete: Any = None
        self._packing: _Packing | None = None

    def _layout(self) -> _Packing:
        """How the attributed tensors pack into one [rows, D] array per dtype (fixed shapes)."""
        if self._packing is None:
            shapes = {}
            for name, spec in self.attributed_specs.items():
                shape = spec.shape[1:]
                if not shape.is_fully_defined():
                    raise ValueError(
                        f"attributed tensors need a fixed shape per example, got {shape} for "
                        f"{name!r}"
                    )
                shapes[name] = tuple(shape.as_list())
            dtypes = {name: spec.dtype for name, spec in self.attributed_specs.items()}
            self._packing = _Packing.of(shapes, dtypes)
        return self._packing

    def _chunk_function(self) -> Any:
        """The fused chunk function's concrete function (traced once, on the first call)."""
        if self._chunk_concrete is None:
            layout = self._layout()
            rest_sig = {n: s for n, s in self.input_specs.items() if n not in self.attributed_specs}
            packed_sig = {
                key: tf.TensorSpec([None, layout.width(key)], layout.dtypes[key], name=key)
                for key in layout.groups
            }
            rows = tf.TensorSpec([None], tf.int32)
            path = tf.TensorSpec([None], tf.float64)  # cast to each tensor's dtype
            self._chunk_fn = tf.function(
                self.attribute_chunk,
                input_signature=[rest_sig, packed_sig, packed_sig, rows, path, path],
                autograph=False,  # plain graph code: AutoGraph only adds tracing time
            )
            self._chunk_concrete = self._chunk_fn.get_concrete_function()
        return self._chunk_concrete

    # ------------------------------------------------------------------------ graph functions

    def embed(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The attributed tensors of an input batch (the inputs themselves, or the layer output)."""
        if self._front is not None:
            return {self.layer: self._front(inputs)}
        return {n: inputs[n] for n in self.attributed_specs}

    def selected_output(self, inputs: dict[str, tf.Tensor], attributed: dict) -> tf.Tensor:
        """The explained output as [N, C] from the inputs with the attributed tensors replaced."""
        if self._front is not None:
            outputs = self._head(inputs, attributed[self.layer])
        else:
            outputs = self.model({**inputs, **attributed})
        out = outputs[self.output]
        if self.target.kind == "callable":
            out = tf.reshape(self.target.fn(out), [-1, 1])
        out = tf.convert_to_tensor(out)
        return tf.reshape(out, [tf.shape(out)[0], -1])

    def grad_sum(
        self,
        inputs: dict,
        x: dict,
        base: dict,
        targets: tf.Tensor,
        alphas: tf.Tensor,
        weights: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """sum_k w_k dF_t/dz at z = base + a_k (x - base), for n examples and k points at once.

        `inputs` holds the model inputs (entries named like attributed tensors are ignored);
        `x` and `base` the attributed tensors, name -> [n, ...] with fixed shapes per example.
        """
        layout = _Packing.of({m: tuple(_static_shape(x[m])) for m in x}, {m: x[m].dtype for m in x})
        rest = {k: v for k, v in inputs.items() if k not in x}
        sums = self._packed_grad_sum(
            rest, layout.pack(x), layout.pack(base), targets, alphas, weights, layout
        )
        return layout.unpack(sums)

    def _packed_grad_sum(
        self,
        rest: dict,
        x: dict,
        base: dict,
        targets: tf.Tensor,
        alphas: tf.Tensor,
        weights: tf.Tensor,
        layout: _Packing,
    ) -> dict[str, tf.Tensor]:
        """`grad_sum` on packed tensors: dtype key -> [n, D] in, [n, D] out.

        The k path points of n examples are [k * n, D] rows (step-major), a handful of ops
        whatever the number of features: a 64-input model would otherwise build thousands of
        small per-feature ops and trace slowly. Each model input is one slice of one split.
        """
        n = tf.shape(targets)[0]
        k = tf.shape(alphas)[0]

        def tile(t: tf.Tensor) -> tf.Tensor:  # [n, ...] -> [k * n, ...], step-major
            reps = tf.concat([[k], tf.ones([tf.rank(t) - 1], tf.int32)], axis=0)
            return tf.tile(t, reps)

        keys = list(layout.groups)
        paths = []
        for key in keys:
            xg, bg = x[key], base[key]
            a = tf.cast(tf.reshape(alphas, [-1, 1, 1]), xg.dtype)
            z = bg[tf.newaxis] + a * (xg - bg)[tf.newaxis]  # [k, n, D]
            paths.append(tf.reshape(z, [k * n, layout.width(key)]))
        tiled = {name: tile(t) for name, t in rest.items()}
        with tf.GradientTape() as tape:
            tape.watch(paths)
            points = layout.unpack(dict(zip(keys, paths, strict=True)))
            out = self.selected_output(tiled, points)
            f = tf.gather(out, tile(targets), axis=1, batch_dims=1)
        grads = tape.gradient(f, paths, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        result = {}
        for key, g in zip(keys, grads, strict=True):
            w = tf.cast(tf.reshape(weights, [-1, 1, 1]), g.dtype)
            result[key] = tf.reduce_sum(w * tf.reshape(g, [k, n, layout.width(key)]), axis=0)
        return result

    def attribute_chunk(
        self,
        rest: dict,
        x: dict,
        base: dict,
        requested: tf.Tensor,
        alphas: tf.Tensor,
        weights: tf.Tensor,
    ) -> dict[str, Any]:
        """One fused call: F at x and at the baseline, the explained class, the path sum.

        Args:
          rest: n rows of the model inputs that are not attributed (every input for a layer).
          x, base: n rows of attributed values and baselines, packed (dtype key -> [n, D]).
          requested: [n] requested classes; < 0 means the arg-max of F(x).
          alphas, weights: k path points and weights.

        Returns:
          {"out_x": [n, C], "out_b": [n, C], "chosen": [n] (may be >= C: the host raises),
           "grads": dtype key -> [n, D] sum_k w_k dF/dz, packed like x}.
        """
        layout = self._layout()
        out_x = self.selected_output(rest, layout.unpack(x))
        out_b = self.selected_output(rest, layout.unpack(base))
        argmax = tf.argmax(out_x, axis=1, output_type=tf.int32)
        chosen = tf.where(requested < 0, argmax, requested)
        safe = tf.where(chosen < tf.shape(out_x)[1], chosen, tf.zeros_like(chosen))
        grads = self._packed_grad_sum(rest, x, base, safe, alphas, weights, layout)
        return {"out_x": out_x, "out_b": out_b, "chosen": chosen, "grads": grads}

    # ---------------------------------------------------------------------------- host side

    def _to_tensors(self, values: Mapping[str, Any], specs: Mapping[str, tf.TensorSpec]) -> dict:
        return {n: tf.convert_to_tensor(np.asarray(values[n]), dtype=specs[n].dtype) for n in specs}

    def _prepare_inputs(self, inputs: Any) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(inputs, Mapping):
            if len(self.input_specs) != 1:
                raise ValueError(
                    f"the model has inputs {', '.join(self.input_specs)}: pass a dict of arrays"
                )
            inputs = {next(iter(self.input_specs)): inputs}
        missing = [n for n in self.input_specs if n not in inputs]
        if missing:
            raise ValueError(f"inputs lack the model inputs {missing}")
        arrays = {n: np.asarray(v) for n, v in inputs.items()}
        sizes = {n: len(arrays[n]) for n in self.input_specs}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sizes}")
        for name, spec in self.input_specs.items():
            if not spec.shape[1:].is_compatible_with(arrays[name].shape[1:]):
                raise ValueError(
                    f"input {name!r} has shape {arrays[name].shape[1:]} per example; the model "
                    f"expects {tuple(spec.shape[1:])}"
                )
        return arrays, next(iter(sizes.values()))

    def _requested_targets(
        self, arrays: Mapping[str, np.ndarray], n: int, override: Any
    ) -> np.ndarray:
        """Host-side target indices [n]; -1 means the arg-max (predicted) class."""
        kind = self.target.kind
        if override is not None:
            t = np.asarray(override)
            if t.ndim == 0:
                t = np.full(n, t)
            if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
                raise ValueError(f"targets must be {n} integer class indices, got shape {t.shape}")
            if np.any(t < 0):
                raise ValueError(f"targets must be >= 0, got {int(t.min())}")
            return t.astype(np.int32)
        if kind == "index":
            return np.full(n, self.target.value, np.int32)
        if kind == "label":
            name = self.target.feature
            if name not in arrays:
                raise ValueError(f"target kind 'label' needs the label feature {name!r} in inputs")
            labels = np.asarray(arrays[name]).reshape(n, -1)
            if labels.shape[1] != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"label feature {name!r} must hold one integer class per example")
            if np.any(labels < 0):
                raise ValueError(f"label feature {name!r} has negative classes")
            return labels[:, 0].astype(np.int32)
        if kind in ("scalar", "callable"):
            return np.zeros(n, np.int32)
        return np.full(n, -1, np.int32)  # predicted

    def attribute(
        self,
        inputs: Mapping[str, Any] | Any,
        *,
        keys: Sequence[str] | np.ndarray | None = None,
        baselines: Mapping[str, Any] | Any | None = None,
        targets: Sequence[int] | np.ndarray | int | None = None,
    ) -> Attribution:
        """Attributes a batch of examples.

        Args:
          inputs: name -> [B, ...] arrays for every model input (a plain array for a single-input
            model). Extra entries (e.g. the label feature of a 'label' target) are allowed.
          keys: Example keys [B]; random_uniform baselines are a function of key and seed. Default:
            the row index within this call (then draws depend on the batch; pass keys in pipelines).
          baselines: Per-example baselines for baseline kind 'array' ([B, ...] or [B, S, ...]).
          targets: Per-example class indices [B] (or one int), overriding the target spec.

        Returns:
          An `Attribution`.

        Raises:
          ValueError: missing inputs, inconsistent shapes, out-of-range targets, bad baselines.
        """
        arrays, n = self._prepare_inputs(inputs)
        requested = self._requested_targets(arrays, n, targets)
        if keys is None:
            keys = np.array([str(i) for i in range(n)], dtype=object)
        keys = np.asarray(keys, dtype=object)
        if keys.shape != (n,):
            raise ValueError(f"keys must have one entry per example ({n}), got shape {keys.shape}")
        if baselines is not None and not isinstance(baselines, Mapping):
            baselines = {next(iter(self.attributed_specs)): baselines}
        if n == 0:
            return self._empty()
        model_inputs = {k: arrays[k] for k in self.input_specs}
        x = self._embedded(model_inputs, n)
        base = self._baselines(x, keys, baselines)
        samples = next(iter(base.values())).shape[1]
        layout = self._layout()

        # Rows are (example, sample) pairs: examples repeated S times, each with its own baseline.
        def rep(a: np.ndarray) -> np.ndarray:
            return a if samples == 1 else np.repeat(a, samples, axis=0)

        rest = {k: rep(v) for k, v in model_inputs.items() if k not in self.attributed_specs}
        r_x = {k: rep(v) for k, v in layout.pack(x).items()}
        r_base = layout.pack({k: v.reshape((n * samples, *v.shape[2:])) for k, v in base.items()})
        r_req = rep(requested)

        out, out_b, chosen, grads = self._run_chunks(rest, r_x, r_base, r_req)
        self._check_targets(out.shape[1], chosen)
        rows = np.arange(len(chosen))
        fx = out[rows, chosen].astype(np.float64)
        fb = out_b[rows, chosen].astype(np.float64)

        packed = {}
        for key in layout.groups:
            per_row = (r_x[key].astype(np.float64) - r_base[key].astype(np.float64)) * grads[key]
            packed[key] = per_row.reshape((n, samples, -1)).mean(axis=1)
        attributions = layout.unpack(packed)
        total = sum(a.sum(axis=1) for a in packed.values())
        predictions = fx.reshape(n, samples)[:, 0]
        baseline_predictions = fb.reshape(n, samples).mean(axis=1)
        deltas = total - (predictions - baseline_predictions)
        reported = chosen.reshape(n, samples)[:, 0].astype(np.int64)
        if self.target.kind == "callable" or (out.shape[1] == 1 and self.target.kind == "scalar"):
            reported = np.full(n, NO_CLASS, np.int64)
        layer_scores = None
        if self.layer is not None:
            layer_scores = attributions[self.layer].sum(axis=-1)
        result = attributions
        if self.model.single_input and self.layer is None:
            result = attributions[next(iter(attributions))]
        return Attribution(
            attributions=result,
            predictions=predictions,
            baseline_predictions=baseline_predictions,
            deltas=deltas,
            targets=reported,
            baselines=base,
            layer_scores=layer_scores,
        )

    def _empty(self) -> Attribution:
        def empty(spec: tf.TensorSpec, extra: tuple = ()) -> np.ndarray:
            shape = tuple(d or 0 for d in spec.shape[1:])
            return np.zeros((0, *extra, *shape), np.float64)

        attributions = {n: empty(s) for n, s in self.attributed_specs.items()}
        result = attributions
        if self.model.single_input and self.layer is None:
            result = attributions[next(iter(attributions))]
        nothing = np.zeros(0, np.float64)
        layer_scores = None
        if self.layer is not None:
            layer_scores = attributions[self.layer].sum(axis=-1)
        return Attribution(
            attributions=result,
            predictions=nothing,
            baseline_predictions=nothing.copy(),
            deltas=nothing.copy(),
            targets=np.zeros(0, np.int64),
            baselines={
                n: empty(s, (self.baseline.num_samples,)) for n, s in self.attributed_specs.items()
            },
            layer_scores=layer_scores,
        )

    def _check_targets(self, classes: int, requested: np.ndarray) -> None:
        if self.target.kind == "scalar" and classes != 1:
            raise ValueError(
                f"target kind 'scalar' needs an output of width 1; output {self.output!r} has "
                f"{classes}: use 'predicted', 'index' or 'label'"
            )
        if requested.size and int(requested.max()) >= classes:
            raise ValueError(
                f"target class {int(requested.max())} is out of range: output {self.output!r} has "
                f"{classes} classes (0..{classes - 1})"
            )

    def _chunks(self, n: int, rows_per_example: int) -> list[slice]:
        per = max(1, self.max_rows_per_call // rows_per_example)
        return [slice(i, min(n, i + per)) for i in range(0, n, per)]

    def _embedded(self, model_inputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        if self._front is None:
            return {k: np.asarray(model_inputs[k]) for k in self.attributed_specs}
        parts = [
            self._embed_fn(
                self._to_tensors({k: v[s] for k, v in model_inputs.items()}, self.input_specs)
            )
            for s in self._chunks(n, 1)
        ]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in self.attributed_specs}

    def _run_chunks(self, rest: dict, x: dict, base: dict, requested: np.ndarray) -> tuple:
        """Runs the fused chunk function over bounded chunks; returns host arrays.

        `rest` holds the non-attributed model inputs, `x` and `base` the packed attributed
        values and baselines (dtype key -> [N, D]).

        Returns:
          (out_x [N, C], out_b [N, C], chosen [N], grads dtype key -> [N, D] float64).
        """
        n = len(requested)
        examples, points = rows_per_chunk(self.steps, self.max_rows_per_call)
        fn = self._chunk_function()
        rest_specs = {k: self.input_specs[k] for k in rest}
        dtypes = self._layout().dtypes
        sums = {k: np.zeros(v.shape, np.float64) for k, v in x.items()}
        path = [
            (tf.constant(self.alphas[p : p + points]), tf.constant(self.weights[p : p + points]))
            for p in range(0, self.steps, points)
        ]
        outs, outs_b, chosen = [], [], []
        for start in range(0, n, examples):
            s = slice(start, min(n, start + examples))
            args = (
                self._to_tensors({k: v[s] for k, v in rest.items()}, rest_specs),
                {k: tf.convert_to_tensor(v[s], dtypes[k]) for k, v in x.items()},
                {k: tf.convert_to_tensor(v[s], dtypes[k]) for k, v in base.items()},
                tf.constant(requested[s], tf.int32),
            )
            for p, (alphas, weights) in enumerate(path):
                part = fn(*args, alphas, weights)
                if p == 0:
                    outs.append(part["out_x"].numpy())
                    outs_b.append(part["out_b"].numpy())
                    chosen.append(part["chosen"].numpy())
                for k, g in part["grads"].items():
                    sums[k][s] += g.numpy()
        return np.concatenate(outs), np.concatenate(outs_b), np.concatenate(chosen), sums

    def trace_counts(self) -> dict[str, int]:
        """How many times each compiled function was traced (1 each after any number of calls)."""
        return {
            "embed": self._embed_fn.experimental_get_tracing_count(),
            "attribute": (
                0 if self._chunk_fn is None else self._chunk_fn.experimental_get_tracing_count()
            ),
        }
