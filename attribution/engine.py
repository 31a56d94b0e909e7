"""The Integrated Gradients engine: compiled, chunked, batch-invariant. TensorFlow only, no Beam.

For attributed inputs x with baseline x', path points a_k and weights w_k (see `integration`):

    attr_i = (x_i - x'_i) * sum_k w_k dF_t/dx_i(x' + a_k (x - x'))
    delta  = sum_i attr_i - (F_t(x) - F_t(x'))           (completeness; ~0 for a good rule)

where F_t is the explained scalar of the model output (see `targets`).

One implementation: `IntegratedGradients.attribute_packed` is the whole computation in graph code
(baselines, class choice, the chunked path sums, the average over baseline samples, the delta).
The host traces it once into a concrete function with a fixed input signature (batch dimension
`None`, so new batch sizes never retrace) and calls it once per batch; the SavedModel export
(`attribution.savedmodel`) traces the very same method into its `integrated_gradients` signature.
Inside, examples are processed in chunks of at most `max_rows_per_call` rows (examples x path
points; the path itself is split when `steps` exceeds it), one chunk at a time, and weighted
gradient sums are accumulated in float64, so memory is bounded and results do not depend on how
examples are batched or chunked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from attribution.baselines import check_baseline, make_baselines
from attribution.budget import AUTO, bytes_per_row, plan_batches
from attribution.fields import check_value, default_of, validated
from attribution.integration import integration_rule
from attribution.layers import layer_names, split_at_layers
from attribution.models import ModelAdapter
from attribution.multi_output import check_display_names, repeat_rows, requested_rows
from attribution.packing import Packing
from attribution.settings import FEATURES, AttributionConfig, Baseline, BatchingConfig, Target
from attribution.smoothgrad import smoothgrad_noise
from attribution.targets import (
    check_classes,
    reported_targets,
    select_classes,
)
from attribution.text import Padding, padding_for_layer

__all__ = ["Attribution", "IntegratedGradients", "map_chunks", "rows_per_chunk"]

TensorDict = dict[str, tf.Tensor]

# Baseline kinds that give every example the same baseline (one sample): with no inputs besides
# the attributed ones, F(x') is the same for every row and is computed once per chunk.
SHARED_BASELINE_KINDS = ("zeros", "constant", "per_feature")

ATTRIBUTIONS = "attributions/"
BASELINES = "baselines/"


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
      padding: for layer attribution with padding (`attribution.text`, or an Embedding with
        mask_zero), bool [B, *shape[:-1]], True at padding positions (held at their input:
        their scores are exactly 0); None otherwise.
      output_ranks: for target kinds top_k and indices, [B * K] int32: the rank of each row's
        output among the example's K explained outputs (every other field then has B * K rows,
        the K rows of an example consecutive, see `attribution.multi_output`); None otherwise.
      scores: for several layers (`attribution.layers`), name -> [B, ...] float64, one output
        column each: every layer's attributions summed over its last (embedding) axis, the
        attributed inputs' attributions as they are; None otherwise.
    """

    attributions: dict[str, np.ndarray] | np.ndarray
    predictions: np.ndarray
    baseline_predictions: np.ndarray
    deltas: np.ndarray
    targets: np.ndarray
    baselines: dict[str, np.ndarray]
    layer_scores: np.ndarray | None = None
    padding: np.ndarray | None = None
    output_ranks: np.ndarray | None = None
    scores: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.predictions)


def rows_per_chunk(steps: int, max_rows: int) -> tuple[int, int]:
    """(examples per gradient call, path points per gradient call) for a row bound."""
    if steps <= max_rows:
        return max(1, max_rows // steps), steps
    return 1, max_rows


def map_chunks(
    fn: Callable[[tf.Tensor, tf.Tensor], Mapping[str, tf.Tensor]],
    n: tf.Tensor,
    size: int,
    specs: Mapping[str, tf.TensorSpec],
    unknown_dim: int = 0,
) -> TensorDict:
    """Concatenates fn(start, stop) over rows [0, n) in chunks of `size`, one chunk at a time.

    Graph code: a `tf.while_loop` with `parallel_iterations=1`, so at most one chunk's
    intermediate tensors are alive at a time. With n == 0 the result has 0 rows and
    `unknown_dim` for the dimensions `specs` leaves open.
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


def _rows(tensors: Mapping[str, tf.Tensor], start: tf.Tensor, stop: tf.Tensor) -> TensorDict:
    return {k: v[start:stop] for k, v in tensors.items()}


def _path_rows(
    layout: Packing, x: TensorDict, base: TensorDict, alphas: tf.Tensor, rest: TensorDict
) -> tuple[list[str], list[tf.Tensor], TensorDict, Callable[[tf.Tensor], tf.Tensor]]:
    """The k path points z = x' + a (x - x') of n examples, as [k * n, D] rows per dtype key of
    `layout` (step-major), the other model inputs tiled to match, and the tiling function."""
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
        paths.append(tf.reshape(z, [-1, layout.width(key)]))
    return keys, paths, {name: tile(t) for name, t in rest.items()}, tile


def _averaged_attributions(
    layout: Packing,
    r_x: TensorDict,
    flat_base: TensorDict,
    base: TensorDict,
    sums: TensorDict,
    n: tf.Tensor,
    per_example: tf.Tensor,
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """(x - x') * path-gradient sums per row, averaged over each example's `per_example` rows
    (baseline samples, noisy copies), per dtype key; with the baselines, and the [n] totals."""
    out: dict[str, tf.Tensor] = {}
    total = tf.zeros([n], tf.float64)
    for key in layout.groups:
        diff = tf.cast(r_x[key], tf.float64) - tf.cast(flat_base[key], tf.float64)
        per_row = tf.reshape(diff * sums["grads/" + key], [n, per_example, layout.width(key)])
        out[ATTRIBUTIONS + key] = tf.reduce_mean(per_row, axis=1)
        out[BASELINES + key] = base[key]
        total += tf.reduce_sum(out[ATTRIBUTIONS + key], axis=1)
    return out, total


class IntegratedGradients:
    """Integrated Gradients for a model with named inputs.

    Build once (it compiles its function lazily on the first call), then call `attribute` on as
    many batches as needed. Heavy: create it in a Beam DoFn's `setup()`, never at construction.

    The settings are an `attribution.settings.AttributionConfig` (`settings=`), or its fields one
    by one (`method=`, `steps=`, ...), which override `settings`; unset ones take the defaults
    declared there. They are validated by the settings' own checks (errors name the setting,
    e.g. ``steps: must be an integer >= 1, got 0``).

    Args:
      model: A `ModelAdapter` (see `attribution.models.load_model`).
      features: The attributed input names (default: every model input). Other inputs are passed
        through unchanged at every path point. Must be floating point.
      layer: Attribute to the output of this Keras layer instead of the inputs (e.g. an
        `Embedding` for token ids). The completeness delta is still computed on the model output.
        A list (tuple) of layers: all of them, with the float inputs that feed none of them
        (`attribution.layers`; results in `Attribution.scores`).
      output: The model output to explain (needed for multi-output models).
      method: Integration rule, one of `attribution.settings.METHODS`.
      steps: Number of path points.
      baseline: A `Baseline` (default zeros).
      target: A `Target` (default: the predicted class).
      max_rows_per_call: Upper bound on examples x steps evaluated per gradient call, or `auto`
        (the default): `memory_budget` over the model's estimated bytes per row
        (`attribution.budget`; the choice is in `batch_plan`).
      memory_budget: The working-set budget for `auto` rows: a size ("512MiB", bytes) or
        `auto` (40% of the GPU's memory, else 128 MiB).
      jit_compile: Compile the gradient computation with XLA (the host pads each call to the
        next power of two examples, at most `examples_per_call`, so XLA compiles few shapes).
      settings: All of the above but `features` and the `batching` ones.

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
        method: str | None = None,
        steps: int | None = None,
        baseline: Baseline | None = None,
        target: Target | None = None,
        max_rows_per_call: int | str | None = None,
        memory_budget: int | str | None = None,
        jit_compile: bool | None = None,
        settings: AttributionConfig | None = None,
    ) -> None:
        given = {
            "layer": layer,
            "output": output,
            "method": method,
            "steps": steps,
            "baseline": baseline,
            "target": target,
        }
        chosen = {k: v for k, v in given.items() if v is not None}
        self.settings = validated(dataclasses.replace(settings or AttributionConfig(), **chosen))
        if max_rows_per_call is None:
            max_rows_per_call = default_of(BatchingConfig, "max_rows_per_call")
        max_rows_per_call = check_value(BatchingConfig, "max_rows_per_call", max_rows_per_call)
        if jit_compile is None:
            jit_compile = default_of(BatchingConfig, "jit_compile")
        self.jit_compile = check_value(BatchingConfig, "jit_compile", jit_compile)
        self._grad_fn: Callable[..., TensorDict] | None = None
        if memory_budget is None:
            memory_budget = default_of(BatchingConfig, "memory_budget")
        memory_budget = check_value(BatchingConfig, "memory_budget", memory_budget)
        if features is not None:
            features = FEATURES(features, "features", True)
        self.model = model
        self.alphas, self.weights = integration_rule(self.method, self.steps)
        self.output = self._resolve_output(self.settings.output)
        self.input_specs = dict(model.input_specs)
        self._split = None  # several layers: `attribution.layers.SplitModel`
        if self.layer is not None and not isinstance(self.layer, str):
            if features is not None:
                raise ValueError("give either features (input attribution) or layer, not both")
            self._split = split_at_layers(model, self.layers)
            self._front = self._split.front
            self.padding = None
            self.attributed_specs = {
                **self._split.layer_specs,
                **{n: self.input_specs[n] for n in self._split.direct},
            }
        elif self.layer is not None:
            if features is not None:
                raise ValueError("give either features (input attribution) or layer, not both")
            front, head, h_spec = model.split_at_layer(self.layer)
            self._front, self._head = front, head
            self.attributed_specs = {self.layer: h_spec}
            self.padding = padding_for_layer(model, self.layer, h_spec, self.settings.text)
        else:
            self._front = None
            self.padding: Padding | None = None
            names = list(features) if features is not None else list(self.input_specs)
            self._check_features(names)
            self.attributed_specs = {n: self.input_specs[n] for n in names}
        if self.target.kind == "label" and self.target.feature in self.attributed_specs:
            raise ValueError(f"the label feature {self.target.feature!r} cannot be attributed")
        check_baseline(self.baseline, self.attributed_specs)
        if self.settings.smoothgrad is not None:
            self.settings.smoothgrad.check_features(self.attributed_specs, "smoothgrad")
        if self.target.multi or self.settings.display_names is not None:
            # Checked now that the model is known (its output width, when static).
            width = self.output_width()
            if width is not None:
                check_classes(self.target, self.output, width)
            if self.target.kind not in ("scalar", "callable"):
                check_display_names(self.settings.display_names, width, self.output)
        rows_per_example = (
            None
            if self.baseline.kind == "array"
            else self.baseline.num_samples * self.settings.noise_samples
        )
        # Rows per gradient call: given, or the memory budget over the model's bytes per row.
        self.batch_plan = plan_batches(
            steps=self.steps,
            samples=rows_per_example or 1,
            row_bytes=bytes_per_row(model.keras_model) if max_rows_per_call == AUTO else None,
            budget=memory_budget,
            max_rows_per_call=max_rows_per_call,
        )
        self.max_rows_per_call = self.batch_plan.rows_per_call
        examples, _ = rows_per_chunk(self.steps, self.max_rows_per_call)
        # Examples per call of `attribute_packed` when whole examples fit a chunk (usual), so
        # that its graph needs no loop over rows; None: the graph chunks rows itself.
        self.examples_per_call = (
            examples // rows_per_example
            if rows_per_example is not None and rows_per_example <= examples
            else None
        )
        # Target kinds top_k/indices: calls hold whole examples (K rows each). Where every row
        # of an example has the same path (one baseline sample, no padding), the K outputs'
        # gradients share one forward pass over it (`_shared_grad_sums`).
        per = self.target.outputs_per_example
        if self.target.multi and self.examples_per_call is not None:
            self.examples_per_call = max(per, self.examples_per_call // per * per)
        self.shared_paths = (
            self.target.multi
            and per > 1
            and self.baseline.kind != "array"
            and self.baseline.num_samples == 1
            and self.examples_per_call is not None
            and not self.jit_compile
        )
        # Per-example input shapes (None: any size), checked on every call without building
        # TensorShapes (64 inputs: ~1 ms a call otherwise).
        self._example_shapes = {
            n: None if s.shape.rank is None else tuple(s.shape[1:].as_list())
            for n, s in self.input_specs.items()
        }
        inputs_sig = dict(self.input_specs)
        self._embed_fn = tf.function(self.embed, input_signature=[inputs_sig], autograph=False)
        self._padding_fn = None
        if self.padding is not None:
            self._padding_fn = tf.function(
                self.padding.mask, input_signature=[inputs_sig], autograph=False
            )
        # Traced on the first call, when an attributed shape that is not fixed can be reported as
        # a ValueError of that call. Calling the concrete function skips the polymorphic
        # function's per-call signature matching (milliseconds for models with many inputs).
        self._attribute_fn: Any = None
        self._attribute_concrete: Any = None
        self._packing: Packing | None = None

    # --------------------------------------------------------------------------- settings

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def steps(self) -> int:
        return self.settings.steps

    @property
    def layer(self) -> str | tuple[str, ...] | None:
        return self.settings.layer

    @property
    def layers(self) -> tuple[str, ...]:
        """The attributed layers: () for input attribution, else one or several names."""
        return layer_names(self.settings.layer)

    @property
    def baseline(self) -> Baseline:
        return self.settings.baseline

    @property
    def target(self) -> Target:
        return self.settings.target

    @property
    def uses_keys(self) -> bool:
        """Whether results depend on each example's key (random baselines or SmoothGrad)."""
        return self.baseline.uses_keys or self.settings.smoothgrad is not None

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

    def output_width(self) -> int | None:
        """The explained output's static width C (classes), or None when known only at run time.

        Traces the model once (symbolically); used to check multi-output targets and display
        names at construction.
        """

        def probe(inputs: TensorDict) -> tf.Tensor:
            return tf.convert_to_tensor(self.model(inputs)[self.output])

        concrete = tf.function(probe, autograph=False).get_concrete_function(dict(self.input_specs))
        inner = concrete.structured_outputs.shape[1:]
        return inner.num_elements() if inner.is_fully_defined() else None

    def layout(self) -> Packing:
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
            self._packing = Packing.of(shapes, dtypes)
        return self._packing

    def _compiled(self) -> Any:
        """The concrete function of `attribute_packed` (traced once, on the first call)."""
        if self._attribute_concrete is None:
            layout = self.layout()
            rest_sig = {n: s for n, s in self.input_specs.items() if n not in self.attributed_specs}
            packed_sig = {
                key: tf.TensorSpec([None, layout.width(key)], layout.dtypes[key], name=key)
                for key in layout.groups
            }
            provided_sig = {}
            if self.baseline.kind == "array":
                provided_sig = {
                    key: tf.TensorSpec([None, None, layout.width(key)], layout.dtypes[key])
                    for key in layout.groups
                }
            self._attribute_fn = tf.function(
                self.attribute_packed,
                input_signature=[
                    rest_sig,
                    packed_sig,
                    tf.TensorSpec([None], tf.string),
                    provided_sig,
                    tf.TensorSpec([None], tf.int32),
                ],
                autograph=False,  # plain graph code: AutoGraph only adds tracing time
            )
            self._attribute_concrete = self._attribute_fn.get_concrete_function()
        return self._attribute_concrete

    # ------------------------------------------------------------------------ graph functions

    def embed(self, inputs: TensorDict) -> TensorDict:
        """The attributed tensors of an input batch (the inputs themselves, or the layer output)."""
        if self._split is not None:
            return {**self._front(inputs), **{n: inputs[n] for n in self._split.direct}}
        if self._front is not None:
            return {self.layer: self._front(inputs)}
        return {n: inputs[n] for n in self.attributed_specs}

    def selected_output(self, inputs: TensorDict, attributed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The explained output as [N, C] from the inputs with the attributed tensors replaced."""
        if self._split is not None:
            direct = {n: attributed[n] for n in self._split.direct}
            outputs = self._split.head({**inputs, **direct}, attributed)
        elif self._front is not None:
            outputs = self._head(inputs, attributed[self.layer])
        else:
            outputs = self.model({**inputs, **attributed})
        out = outputs[self.output]
        if self.target.kind == "callable":
            out = tf.reshape(self.target.fn(out), [-1, 1])
        out = tf.convert_to_tensor(out)
        return tf.reshape(out, [tf.shape(out)[0], -1])

    def attribute_packed(
        self,
        rest: TensorDict,
        x: TensorDict,
        keys: tf.Tensor,
        provided: TensorDict,
        requested: tf.Tensor,
    ) -> dict[str, Any]:
        """The whole IG computation for n examples, in graph code (the host and the export's).

        Args:
          rest: The model inputs that are not attributed (every input for a layer), [n, ...].
          x: The attributed values, packed: dtype key -> [n, D] (see `layout`).
          keys: tf.string [n] example keys (random baselines are a function of key and seed).
          provided: For baseline kind 'array': packed like x, dtype key -> [n, S, D]; else empty.
          requested: int32 [n] requested classes; -1 means the arg-max of F(x).

        Returns:
          A flat dict (see `output_specs`): "attributions/<dtype key>" [n, D] float64, averaged
          over the S baselines; "baselines/<dtype key>" [n, S, D], packed like x; "prediction",
          "baseline_prediction", "delta": [n] float64; "target": [n] int64 (`targets.NO_CLASS`
          for scalar/callable); "chosen": [n] int32 explained class (may be >= C: the caller
          reports it); "classes": [n] int32, the output's width C.

        Memory: with `examples_per_call` set, the caller passes at most that many examples per
        call and the graph evaluates them in one chunk; otherwise (one example's baseline
        samples alone exceed the row bound) the graph chunks the rows itself.
        """
        layout = self.layout()
        n = tf.shape(requested)[0]
        base = make_baselines(self.baseline, self.attributed_specs, layout, x, keys, provided)
        if self.padding is not None:  # padding positions do not move: their attribution is 0
            base = self.padding.hold(base, x, rest)
        if self.settings.smoothgrad is not None:
            return self._smoothgrad_packed(rest, x, keys, requested, base)
        samples = tf.shape(next(iter(base.values())))[1]
        repeat = self.baseline.kind == "array" or self.baseline.num_samples > 1

        def rows(t: tf.Tensor) -> tf.Tensor:  # each example once per baseline sample
            return tf.repeat(t, samples, axis=0) if repeat else t

        flat_base = {k: tf.reshape(v, [-1, layout.width(k)]) for k, v in base.items()}
        r_x = {k: rows(v) for k, v in x.items()}
        sums = self._path_sums(
            {k: rows(v) for k, v in rest.items()}, r_x, flat_base, rows(requested)
        )

        out, total = _averaged_attributions(layout, r_x, flat_base, base, sums, n, samples)
        prediction = tf.reshape(sums["fx"], [n, samples])[:, 0]
        baseline_prediction = tf.reduce_mean(tf.reshape(sums["fb"], [n, samples]), axis=1)
        chosen = tf.reshape(sums["chosen"], [n, samples])[:, 0]
        out.update(
            prediction=prediction,
            baseline_prediction=baseline_prediction,
            delta=total - (prediction - baseline_prediction),
            target=reported_targets(self.target, chosen),
            chosen=chosen,
            classes=tf.reshape(sums["classes"], [n, samples])[:, 0],
        )
        return out

    def _smoothgrad_packed(
        self,
        rest: TensorDict,
        x: TensorDict,
        keys: tf.Tensor,
        requested: tf.Tensor,
        base: TensorDict,
    ) -> dict[str, Any]:
        """`attribute_packed` with SmoothGrad (`attribution.smoothgrad`): N noisy copies of x.

        Rows are example-major, then noise sample, then baseline sample: [n * N * S, D]. The
        class is chosen on the clean F(x) and explained in every noisy copy; the reported
        prediction is the clean F_t(x); delta is sum attr - (mean_j F_t(x_j) - mean F_t(x')).
        """
        layout = self.layout()
        n = tf.shape(requested)[0]
        noise = smoothgrad_noise(self.settings.smoothgrad, self.attributed_specs, layout, keys)
        noisy = self.settings.noise_samples
        samples = tf.shape(next(iter(base.values())))[1]
        per_example = noisy * samples
        clean = self.selected_output(rest, layout.unpack(x))
        chosen, safe = select_classes(clean, requested)
        prediction = tf.cast(tf.gather(clean, safe, axis=1, batch_dims=1), tf.float64)

        def grid(t: tf.Tensor, key: str) -> tf.Tensor:  # [n, N, S, D] -> [n * N * S, D]
            return tf.reshape(
                tf.broadcast_to(t, [n, noisy, samples, layout.width(key)]),
                [-1, layout.width(key)],
            )

        r_x = {
            k: grid(v[:, tf.newaxis, tf.newaxis] + noise[k][:, :, tf.newaxis], k)
            for k, v in x.items()
        }
        flat_base = {k: grid(v[:, tf.newaxis], k) for k, v in base.items()}
        r_rest = {k: tf.repeat(v, per_example, axis=0) for k, v in rest.items()}
        sums = self._path_sums(r_rest, r_x, flat_base, tf.repeat(safe, per_example, axis=0))
        out, total = _averaged_attributions(layout, r_x, flat_base, base, sums, n, per_example)
        noisy_prediction = tf.reduce_mean(tf.reshape(sums["fx"], [n, per_example]), axis=1)
        baseline_prediction = tf.reduce_mean(tf.reshape(sums["fb"], [n, per_example]), axis=1)
        out.update(
            prediction=prediction,
            baseline_prediction=baseline_prediction,
            delta=total - (noisy_prediction - baseline_prediction),
            target=reported_targets(self.target, chosen),
            chosen=chosen,
            classes=tf.fill([n], tf.shape(clean)[1]),
        )
        return out

    def output_specs(self) -> dict[str, tf.TensorSpec]:
        """The specs of `attribute_packed`'s outputs (batch dimensions None)."""
        layout = self.layout()
        specs = {
            "prediction": tf.TensorSpec([None], tf.float64),
            "baseline_prediction": tf.TensorSpec([None], tf.float64),
            "delta": tf.TensorSpec([None], tf.float64),
            "target": tf.TensorSpec([None], tf.int64),
            "chosen": tf.TensorSpec([None], tf.int32),
            "classes": tf.TensorSpec([None], tf.int32),
        }
        samples = None if self.baseline.kind == "array" else self.baseline.num_samples
        for key in layout.groups:
            width = layout.width(key)
            specs[ATTRIBUTIONS + key] = tf.TensorSpec([None, width], tf.float64)
            specs[BASELINES + key] = tf.TensorSpec([None, samples, width], layout.dtypes[key])
        return specs

    def _path_sums(
        self, rest: TensorDict, x: TensorDict, base: TensorDict, requested: tf.Tensor
    ) -> TensorDict:
        """F(x), F(x'), the class and sum_k w_k dF/dz per row, in bounded chunks (graph code).

        Rows are processed `examples` at a time, all path points at once, or, when steps exceed
        `max_rows_per_call`, one row and `max_rows_per_call` points at a time with the path
        chunks accumulated in float64.
        """
        layout = self.layout()
        examples, points = rows_per_chunk(self.steps, self.max_rows_per_call)
        path_chunks = -(-self.steps // points)
        alphas = tf.constant(self.alphas, tf.float64)
        weights = tf.constant(self.weights, tf.float64)
        grad_specs = {
            "grads/" + key: tf.TensorSpec([None, layout.width(key)], tf.float64)
            for key in layout.groups
        }
        specs = {
            "fx": tf.TensorSpec([None], tf.float64),
            "fb": tf.TensorSpec([None], tf.float64),
            "chosen": tf.TensorSpec([None], tf.int32),
            "classes": tf.TensorSpec([None], tf.int32),
            **grad_specs,
        }

        def block(start: tf.Tensor, stop: tf.Tensor) -> TensorDict:
            r, xs, bs = _rows(rest, start, stop), _rows(x, start, stop), _rows(base, start, stop)
            out_x = self.selected_output(r, layout.unpack(xs))
            if not r and self.baseline.kind in SHARED_BASELINE_KINDS:
                # Every row has the same baseline and no other input: F(x') of one row will do.
                one = self.selected_output(r, layout.unpack({k: v[:1] for k, v in bs.items()}))
                out_b = tf.broadcast_to(one, [stop - start, tf.shape(one)[1]])
            else:
                out_b = self.selected_output(r, layout.unpack(bs))
            ranked = self.target.kind == "top_k"
            chosen, safe = select_classes(out_x, requested[start:stop], ranked)

            def part(j: Any) -> TensorDict:
                a, w = alphas[j * points : (j + 1) * points], weights[j * points : (j + 1) * points]
                if self.shared_paths:  # rows (example, output): one path per example
                    k = self.target.outputs_per_example
                    first = [{n: v[::k] for n, v in t.items()} for t in (r, xs, bs)]
                    g = self._shared_grad_sums(*first, tf.reshape(safe, [-1, k]), a, w)
                else:
                    g = self._grad_sum()(r, xs, bs, safe, a, w)
                return {"grads/" + k: tf.cast(v, tf.float64) for k, v in g.items()}

            if path_chunks == 1:
                grads = part(0)
            else:
                init = {
                    k: tf.zeros([stop - start, s.shape[1]], tf.float64)
                    for k, s in grad_specs.items()
                }

                def body(j: tf.Tensor, acc: TensorDict) -> tuple[tf.Tensor, TensorDict]:
                    p = part(j)
                    return j + 1, {k: acc[k] + p[k] for k in acc}

                _, grads = tf.while_loop(
                    lambda j, _: j < path_chunks,
                    body,
                    [tf.constant(0), init],
                    parallel_iterations=1,
                )
            return {
                "fx": tf.cast(tf.gather(out_x, safe, axis=1, batch_dims=1), tf.float64),
                "fb": tf.cast(tf.gather(out_b, safe, axis=1, batch_dims=1), tf.float64),
                "chosen": chosen,
                "classes": tf.fill([stop - start], tf.shape(out_x)[1]),
                **grads,
            }

        rows = tf.shape(requested)[0]
        if self.examples_per_call is not None:  # the caller bounds the rows: one chunk
            return block(tf.constant(0), rows)
        return map_chunks(block, rows, examples, specs)

    def _grad_sum(self) -> Callable[..., TensorDict]:
        """`_packed_grad_sum` for this layout; compiled by XLA with `jit_compile`."""
        if self._grad_fn is None:
            layout = self.layout()

            def grad_sum(*args: Any) -> TensorDict:
                return self._packed_grad_sum(*args, layout)

            self._grad_fn = (
                tf.function(grad_sum, jit_compile=True, autograph=False)
                if self.jit_compile
                else grad_sum
            )
        return self._grad_fn

    def _shared_grad_sums(
        self,
        rest: TensorDict,
        x: TensorDict,
        base: TensorDict,
        targets: tf.Tensor,
        alphas: tf.Tensor,
        weights: tf.Tensor,
    ) -> TensorDict:
        """`_packed_grad_sum` for m examples and K outputs each (targets [m, K]): [m * K, D] out.

        One forward pass over the m examples' path points under a persistent tape, then one
        backward pass per output: K forward passes fewer than repeating each example K times
        (measured 1.3-1.9x faster on the benchmark MLP at K = 2, 3). Rows come out
        example-major (the K outputs of an example consecutive), as the expanded rows are.
        """
        layout = self.layout()
        m = tf.shape(targets)[0]
        k = tf.shape(alphas)[0]
        outputs = targets.shape[1]
        keys, paths, tiled, tile = _path_rows(layout, x, base, alphas, rest)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(paths)
            out = self.selected_output(tiled, layout.unpack(dict(zip(keys, paths, strict=True))))
            picked = [
                tf.gather(out, tile(targets[:, j]), axis=1, batch_dims=1) for j in range(outputs)
            ]
        zero = tf.UnconnectedGradients.ZERO
        grads = [tape.gradient(p, paths, unconnected_gradients=zero) for p in picked]
        del tape
        result = {}
        for i, key in enumerate(keys):
            width = layout.width(key)
            w = tf.cast(tf.reshape(weights, [-1, 1, 1]), grads[0][i].dtype)
            sums = [tf.reduce_sum(w * tf.reshape(g[i], [k, m, width]), axis=0) for g in grads]
            result[key] = tf.reshape(tf.stack(sums, axis=1), [m * outputs, width])
        return result

    def _packed_grad_sum(
        self,
        rest: TensorDict,
        x: TensorDict,
        base: TensorDict,
        targets: tf.Tensor,
        alphas: tf.Tensor,
        weights: tf.Tensor,
        layout: Packing,
    ) -> TensorDict:
        """sum_k w_k dF_t/dz at z = base + a_k (x - base) on packed tensors: [n, D] in and out.

        The k path points of n examples are [k * n, D] rows (step-major), a handful of ops
        whatever the number of features: a 64-input model would otherwise build thousands of
        small per-feature ops and trace slowly. Each model input is one slice of one split.
        """
        n = tf.shape(targets)[0]
        k = tf.shape(alphas)[0]
        keys, paths, tiled, tile = _path_rows(layout, x, base, alphas, rest)
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

    # ---------------------------------------------------------------------------- host side

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
        for name, expected in self._example_shapes.items():
            shape = arrays[name].shape[1:]
            if expected is None:
                continue
            if len(shape) != len(expected) or any(
                e is not None and e != d for e, d in zip(expected, shape, strict=True)
            ):
                spec = self.input_specs[name]
                raise ValueError(
                    f"input {name!r} has shape {arrays[name].shape[1:]} per example; the model "
                    f"expects {tuple(spec.shape[1:])}"
                )
        return arrays, next(iter(sizes.values()))

    def _requested_targets(
        self, arrays: Mapping[str, np.ndarray], n: int, override: Any
    ) -> np.ndarray:
        """Host-side target indices [n]; -1 means the arg-max (predicted) class."""
        if override is not None:
            t = np.asarray(override)
            if t.ndim == 0:
                t = np.full(n, t)
            if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
                raise ValueError(f"targets must be {n} integer class indices, got shape {t.shape}")
            if np.any(t < 0):
                raise ValueError(f"targets must be >= 0, got {int(t.min())}")
            return t.astype(np.int32)
        label = None
        if self.target.kind == "label":
            name = self.target.feature
            if name not in arrays:
                raise ValueError(f"target kind 'label' needs the label feature {name!r} in inputs")
            labels = np.asarray(arrays[name]).reshape(n, -1)
            if labels.shape[1] != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"label feature {name!r} must hold one integer class per example")
            if np.any(labels < 0):
                raise ValueError(f"label feature {name!r} has negative classes")
            label = labels[:, 0]
        # `targets.requested_classes` in numpy: an eager op per call costs more than this (and
        # waits for TensorFlow's thread pool when the machine is busy).
        kind = self.target.kind
        if kind == "index":
            return np.full(n, self.target.value, np.int32)
        if kind in ("scalar", "callable"):
            return np.zeros(n, np.int32)
        if kind == "predicted":
            return np.full(n, -1, np.int32)
        return label.astype(np.int32)

    def _provided_baselines(self, baselines: Any, n: int) -> dict[str, np.ndarray]:
        """Per-example baselines of kind 'array', packed: dtype key -> [n, S, D] (S >= 1)."""
        kind = self.baseline.kind
        if kind == "array" and baselines is None:
            raise ValueError("baseline kind 'array' needs baselines=... passed to attribute()")
        if kind != "array":
            if baselines is not None:
                raise ValueError(
                    f"baselines=... given but the baseline kind is {kind!r}, not 'array'"
                )
            return {}
        if not isinstance(baselines, Mapping):
            baselines = {next(iter(self.attributed_specs)): baselines}
        out = {}
        for name, spec in self.attributed_specs.items():
            if name not in baselines:
                raise ValueError(f"baselines=... has no entry for {name!r}")
            base = np.asarray(baselines[name], dtype=spec.dtype.as_numpy_dtype)
            shape = (n, *spec.shape[1:])
            if base.shape == shape:
                base = base[:, None]
            elif base.ndim != len(shape) + 1 or base.shape[:1] + base.shape[2:] != shape:
                raise ValueError(
                    f"baselines[{name!r}] has shape {base.shape}; expected {shape} or [{n}, S, ...]"
                )
            out[name] = base
        sizes = {b.shape[1] for b in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"baselines disagree on the number of samples per example: {sizes}")
        (samples,) = sizes
        flat = {k: v.reshape((n * samples, *v.shape[2:])) for k, v in out.items()}
        return {k: v.reshape(n, samples, -1) for k, v in self.layout().pack(flat).items()}

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
          targets: Per-example class indices [B] (or one int), overriding the target spec (not
            with target kinds top_k and indices).

        Returns:
          An `Attribution`; with target kinds top_k and indices, of B * K rows (`output_ranks`).

        Raises:
          ValueError: missing inputs, inconsistent shapes, out-of-range targets, bad baselines.
        """
        arrays, n = self._prepare_inputs(inputs)
        if self.target.multi and targets is not None:
            raise ValueError(
                f"targets=... cannot be combined with target kind {self.target.kind!r}"
            )
        requested = None if self.target.multi else self._requested_targets(arrays, n, targets)
        if keys is None:
            keys = np.array([str(i) for i in range(n)], dtype=object)
        keys = np.asarray(keys, dtype=object)
        if keys.shape != (n,):
            raise ValueError(f"keys must have one entry per example ({n}), got shape {keys.shape}")
        ranks = None
        if self.target.multi:
            # One row per (example, explained output): each example repeated K times, with its
            # key, each copy asking for one output (see `attribution.multi_output`).
            per = self.target.outputs_per_example
            requested, ranks = requested_rows(self.target, n)
            arrays, keys = repeat_rows(arrays, per), repeat_rows(keys, per)
            if baselines is not None:
                baselines = repeat_rows(baselines, per)
            n *= per
        provided = self._provided_baselines(baselines, n)
        if n == 0:
            result = self._empty()
            result.output_ranks = ranks
            return result
        layout = self.layout()
        model_inputs = {k: arrays[k] for k in self.input_specs}
        rest = {k: v for k, v in model_inputs.items() if k not in self.attributed_specs}
        packed = layout.pack(self._embedded(model_inputs, n))
        keys = np.array([k if isinstance(k, str | bytes) else str(k) for k in keys], dtype=object)
        per_call = self.examples_per_call or n
        fn = self._compiled()
        parts = []
        pad = self.jit_compile and self.examples_per_call is not None
        for start in range(0, n, per_call):
            s = slice(start, min(n, start + per_call))
            size = s.stop - s.start

            # XLA compiles per shape: a call is padded with its last example to the next power
            # of two (at most `examples_per_call`), so a run compiles a handful of shapes.
            padded = min(per_call, 1 << (size - 1).bit_length()) if pad else size

            def rows(v: np.ndarray, s: slice = s, padded: int = padded) -> np.ndarray:
                if padded == s.stop - s.start:
                    return v[s]
                extra = padded - (s.stop - s.start)
                return np.concatenate([v[s], np.repeat(v[s.stop - 1 : s.stop], extra, 0)])

            specs = self.input_specs
            out = fn(
                {k: tf.convert_to_tensor(rows(v), specs[k].dtype) for k, v in rest.items()},
                {k: tf.convert_to_tensor(rows(v), layout.dtypes[k]) for k, v in packed.items()},
                tf.constant(rows(keys), tf.string),
                {k: tf.convert_to_tensor(rows(v)) for k, v in provided.items()},
                tf.constant(rows(requested), tf.int32),
            )
            parts.append({k: v.numpy()[:size] for k, v in out.items()})
        out = (
            parts[0]
            if len(parts) == 1
            else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        )
        check_classes(self.target, self.output, int(out["classes"][0]), int(out["chosen"].max()))
        attributions = layout.unpack({k: out[ATTRIBUTIONS + k] for k in layout.groups})
        samples = out[BASELINES + next(iter(layout.groups))].shape[1]
        flat = layout.unpack(
            {k: out[BASELINES + k].reshape(n * samples, -1) for k in layout.groups}
        )
        used = {k: v.reshape((n, samples, *v.shape[1:])) for k, v in flat.items()}
        result = self._result(
            attributions,
            out["prediction"],
            out["baseline_prediction"],
            out["delta"],
            out["target"],
            used,
        )
        result.output_ranks = ranks
        if self._padding_fn is not None:
            result.padding = self._padding_masks(model_inputs, n)
            if ranks is not None:  # one row per (example, explained output)
                result.padding = np.repeat(result.padding, len(result) // n, axis=0)
        return result

    def _padding_masks(self, model_inputs: dict[str, np.ndarray], n: int) -> np.ndarray:
        """bool [n, *scores shape]: the padding positions of a batch (see `attribution.text`)."""
        per = self.max_rows_per_call
        parts = [
            self._padding_fn(
                {
                    k: tf.convert_to_tensor(v[i : i + per], self.input_specs[k].dtype)
                    for k, v in model_inputs.items()
                }
            ).numpy()
            for i in range(0, n, per)
        ]
        return np.concatenate(parts).astype(bool)

    def _result(
        self,
        attributions: dict[str, np.ndarray],
        predictions: np.ndarray,
        baseline_predictions: np.ndarray,
        deltas: np.ndarray,
        targets: np.ndarray,
        baselines: dict[str, np.ndarray],
    ) -> Attribution:
        layer_scores = scores = None
        if self._split is not None:
            layers = self._split.layer_specs
            scores = {k: v.sum(axis=-1) if k in layers else v for k, v in attributions.items()}
        elif self.layer is not None:
            layer_scores = attributions[self.layer].sum(axis=-1)
        result: dict[str, np.ndarray] | np.ndarray = attributions
        if self.model.single_input and self.layer is None:
            result = attributions[next(iter(attributions))]
        return Attribution(
            attributions=result,
            predictions=predictions,
            baseline_predictions=baseline_predictions,
            deltas=deltas,
            targets=targets,
            baselines=baselines,
            layer_scores=layer_scores,
            scores=scores,
        )

    def _empty(self) -> Attribution:
        def empty(spec: tf.TensorSpec, extra: tuple = ()) -> np.ndarray:
            shape = tuple(d or 0 for d in spec.shape[1:])
            return np.zeros((0, *extra, *shape), np.float64)

        nothing = np.zeros(0, np.float64)
        return self._result(
            {n: empty(s) for n, s in self.attributed_specs.items()},
            nothing,
            nothing.copy(),
            nothing.copy(),
            np.zeros(0, np.int64),
            {n: empty(s, (self.baseline.num_samples,)) for n, s in self.attributed_specs.items()},
        )

    def _embedded(self, model_inputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        if self._front is None:
            return {k: np.asarray(model_inputs[k]) for k in self.attributed_specs}
        per = self.max_rows_per_call
        parts = [
            self._embed_fn(
                {
                    k: tf.convert_to_tensor(v[i : i + per], self.input_specs[k].dtype)
                    for k, v in model_inputs.items()
                }
            )
            for i in range(0, n, per)
        ]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in self.attributed_specs}

    def trace_counts(self) -> dict[str, int]:
        """How many times each compiled function was traced (1 each after any number of calls)."""
        return {
            "embed": self._embed_fn.experimental_get_tracing_count(),
            "attribute": (
                0
                if self._attribute_fn is None
                else self._attribute_fn.experimental_get_tracing_count()
            ),
        }
