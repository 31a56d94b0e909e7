"""The Beam adapter of the IG engine: batches of TFRecord records in, Arrow attributions out.

`AttributeBatchDoFn` holds one engine per worker process (`apache_beam.utils.shared.Shared`), built
in `setup()`, never at pipeline construction. Per batch it decodes the records with tfx-bsl,
turns Arrow columns (or a preprocessing model's outputs) into model inputs, calls the engine, and
emits one Arrow RecordBatch of per-example results with the explicit schema from
`attribution_schema`. Records that cannot be decoded or validated, and examples on which the
model fails, go to the dead-letter output with a reason; a failing batch is split in halves and
retried down to single examples so that one poisonous example does not take its neighbours with
it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.utils import shared
from tensorflow_metadata.proto.v0 import schema_pb2

from attribution import AttributionConfig, IntegratedGradients, ModelAdapter, load_model
from attribution.adaptive import AdaptiveIntegratedGradients, relative_errors
from attribution.budget import AUTO, BatchPlan
from attribution.engine import Attribution
from attribution.errors import one_line
from attribution.multi_output import display_names_of
from attribution.savedmodel import IG_SIGNATURE, ExportedAttributor
from attribution.settings import ModelConfig
from transforms import progress, stages
from transforms.constants import (
    ABS_DELTA_MICROS,
    APPROXIMATION_ERROR_COLUMN,
    ATTRIBUTION_PREFIX,
    BATCHES,
    DEAD_LETTER_COUNTERS,
    DEAD_LETTER_TAG,
    EXAMPLES_ATTRIBUTED,
    INPUT_PREFIX,
    KEY_COLUMN,
    METRICS_NAMESPACE,
    MODEL_FAILURES,
    MODEL_LOADS,
    OUTPUT_NAME_COLUMN,
    OUTPUT_RANK_COLUMN,
    STAGE_DECODE,
    STAGE_MODEL,
    STAGE_VALIDATE,
    STEPS_COLUMN,
    WITHIN_TOLERANCE_COLUMN,
)
from transforms.dead_letters import DeadLetter
from transforms.decode import ExampleDecoder, dense_column, fixed_length, scalar_or_list
from transforms.images import FULL_PREFIX, GRID_PREFIX, ImageSpec, decode_column, image_columns
from transforms.records import Block
from transforms.text import TOKENS_PREFIX, scores_column, token_column, token_fields, token_reasons
from transforms.tfrecords import Record, RecordChunk, chunk_length, chunk_records

__all__ = [
    "DASK_WORKER_THREADS",
    "RESULT_FIELDS",
    "AttributeBatchDoFn",
    "AttributeBlockDoFn",
    "AttributeBlocks",
    "AttributedBlock",
    "Attributor",
    "EngineSpec",
    "LoadedEngine",
    "LoadedExport",
    "WorkerInfo",
    "approximation_errors",
    "attribution_schema",
    "configure_threads",
    "offer_loaded_engine",
]

RESULT_FIELDS = [
    pa.field(KEY_COLUMN, pa.string(), nullable=False),
    pa.field("target", pa.int64(), nullable=False),
    pa.field("prediction", pa.float64(), nullable=False),
    pa.field("baseline_prediction", pa.float64(), nullable=False),
    pa.field("delta", pa.float64(), nullable=False),
    pa.field(APPROXIMATION_ERROR_COLUMN, pa.float64(), nullable=False),
]


@runtime_checkable
class Attributor(Protocol):
    """What the attribution DoFn needs of a loaded engine (`LoadedEngine`, `LoadedExport`).

    Attributes:
      attributed_names: The attributed features (or the one layer), in output order.
      layer: The layer of layer attribution, else None.
      needs_serialized: `attribute` needs the serialized examples (a preprocessing model).
      feature_specs: The features to read from the examples: name -> TensorSpec [None, ...].
      adaptive: The steps are chosen per example (`attribute` returns an `AdaptiveAttribution`).
    """

    attributed_names: list[str]
    layer: str | None
    needs_serialized: bool
    feature_specs: dict[str, tf.TensorSpec]

    def attributed_sizes(self) -> dict[str, int]:
        """Output column name -> values per example (1 means a scalar column)."""
        ...

    def attribute(
        self, arrays: dict[str, np.ndarray], keys: np.ndarray, serialized: list[bytes]
    ) -> Attribution:
        """Attributes one batch: feature arrays, keys [B] and (when needed) serialized examples."""
        ...


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build the engine: the job's settings, picklable, no TF.

    Attributes:
      model: The model section of the job config.
      attribution: The attribution section (method, steps, baseline, target, layer, output).
      features: The attributed features (None: every model input).
      max_rows_per_call: The engine's row bound per gradient call (`auto`: from the budget).
      memory_budget: The engine's memory budget (`batching.memory_budget`).
      batch_size: Examples per model call (`auto`: as many as fit a gradient call).
      jit_compile: Compile the engine's gradient computation with XLA.
      threads: TensorFlow's intra- and inter-op threads in each worker process: 0 leaves
        TensorFlow's default (every core), `DASK_WORKER_THREADS` takes the Dask worker's
        `nthreads` (see `configure_threads`).
    """

    model: ModelConfig
    attribution: AttributionConfig = dataclasses.field(default_factory=AttributionConfig)
    features: tuple[str, ...] | None = None
    max_rows_per_call: int | str | None = None
    threads: int = 0
    memory_budget: int | str = AUTO
    batch_size: int | str = AUTO
    jit_compile: bool = False

    def load(self) -> Attributor:
        """Loads the model(s) and builds the compiled engine (expensive; once per process).

        With `signature: integrated_gradients` the model is an igbeam export: only the SavedModel
        is loaded and its signature called (every engine setting is baked into it). TensorFlow's
        thread pools are sized first (`threads`, see `configure_threads`).
        """
        configure_threads(self.threads)
        model = self.model
        if model.signature == IG_SIGNATURE and self.attribution.target.multi:
            raise ValueError(
                f"target.kind: {self.attribution.target.kind} needs the trained model; an igbeam "
                "export explains one output per example"
            )
        if model.signature == IG_SIGNATURE:
            return LoadedExport(ExportedAttributor(model.path), self.batch_size)
        adapter = load_model(model.path, signature=model.signature, safe_mode=model.safe_mode)
        preprocess = None
        if model.preprocess_path:
            preprocess = load_model(model.preprocess_path, safe_mode=model.safe_mode)
        make = AdaptiveIntegratedGradients if self.attribution.adaptive else IntegratedGradients
        engine = make(
            adapter,
            settings=self.attribution,
            features=self.features,
            max_rows_per_call=self.max_rows_per_call,
            memory_budget=self.memory_budget,
            jit_compile=self.jit_compile,
        )
        plan = engine.batch_plan
        if self.batch_size != AUTO:
            plan = dataclasses.replace(plan, examples_per_call=int(self.batch_size))
        return LoadedEngine(adapter, preprocess, engine, plan)


DASK_WORKER_THREADS = -1
"""`EngineSpec.threads`: as many TensorFlow threads as the Dask worker process has threads."""

_THREADS: dict[str, int] = {}
"""The TensorFlow threads this process was given ("applied"), once sized."""


def configure_threads(threads: int) -> int:
    """Sizes TensorFlow's thread pools in this process before it runs anything; returns them.

    Worker processes that share a machine would each size their pools to every core and
    oversubscribe it (two processes on two cores measured 0.55x one). `threads` > 0 sets the
    intra- and inter-op pools; `DASK_WORKER_THREADS` uses the Dask worker's `nthreads`; 0 keeps
    TensorFlow's default. A process whose TensorFlow already ran keeps its pools (returns 0).
    """
    if "applied" in _THREADS:
        return _THREADS["applied"]
    if threads == DASK_WORKER_THREADS:
        threads = _dask_worker_threads()
    applied = 0
    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
            applied = threads
        except RuntimeError:  # TensorFlow is initialised: its pools are fixed for this process
            applied = 0
    _THREADS["applied"] = applied
    return applied


def _dask_worker_threads() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):  # not in a Dask worker
        return 0


_OFFERED: dict[str, Attributor] = {}
"""Engines built by the launcher, by spec tag, for workers that run in the same process."""


@contextlib.contextmanager
def offer_loaded_engine(spec: EngineSpec, loaded: Attributor | None) -> Iterator[None]:
    """Offers `loaded` (built from `spec`) to `AttributeBatchDoFn`s in this process.

    The launcher builds the engine anyway, to check the model against the schema; on a runner
    whose workers share its process (the DirectRunner) the first worker takes it instead of
    loading the model again. Workers elsewhere never see it. The offer ends with the block, so
    no later run can pick up a stale engine.
    """
    tag = repr(spec)
    if loaded is not None:
        _OFFERED[tag] = loaded
    try:
        yield
    finally:
        _OFFERED.pop(tag, None)


def _size(name: str, shape: tf.TensorShape) -> int:
    if not shape.is_fully_defined():
        raise ValueError(f"attributed tensor {name!r} has no fixed shape: {shape}")
    return int(np.prod(shape.as_list())) if shape.rank else 1


class LoadedEngine:
    """A loaded model, optional preprocessing model and compiled engine (shared per process).

    The DoFn sees only this interface (shared with `LoadedExport`): which features to read from
    the examples (`feature_specs`), whether serialized examples are needed, and `attribute`.
    """

    def __init__(
        self,
        model: ModelAdapter,
        preprocess: ModelAdapter | None,
        engine: IntegratedGradients | AdaptiveIntegratedGradients,
        batch_plan: BatchPlan | None = None,
    ) -> None:
        self.model = model
        self.batch_plan = batch_plan or engine.batch_plan
        self.preprocess = preprocess
        self.engine = engine
        self.adaptive = isinstance(engine, AdaptiveIntegratedGradients)
        # One layer's name (its scores are `layer_scores`); None for inputs or several layers,
        # whose output columns are `Attribution.scores` (`attribution.layers`).
        self.layer = engine.layer if isinstance(engine.layer, str) else None
        self.layers = engine.layers
        self.attributed_names = list(engine.attributed_specs)
        self.needs_serialized = preprocess is not None
        first = getattr(engine, "first", engine)  # an adaptive engine's first level
        self.padding = getattr(first, "padding", None)  # `attribution.text.Padding` or None
        specs = {} if preprocess is not None else dict(model.input_specs)
        target = engine.target
        if target.kind == "label" and target.feature not in specs:
            specs[target.feature] = tf.TensorSpec([None, 1], tf.int64, name=target.feature)
        self.feature_specs = specs

    def attributed_sizes(self) -> dict[str, int]:
        """Output column name -> values per example (1 means a scalar column)."""
        sizes = {}
        for name, spec in self.engine.attributed_specs.items():
            shape = spec.shape[1:]
            if name in self.layers:
                shape = shape[:-1]  # per-token scores: summed over the embedding axis
            sizes[name] = _size(name, shape)
        return sizes

    def attribute(
        self, arrays: dict[str, np.ndarray], keys: np.ndarray, serialized: list[bytes]
    ) -> Attribution:
        """Runs the preprocessing model (if any) and the engine on one batch."""
        inputs = dict(arrays)
        if self.preprocess is not None:
            inputs.update(self._preprocess(serialized))
        return self.engine.attribute(inputs, keys=keys)

    def _preprocess(self, serialized: list[bytes]) -> dict[str, np.ndarray]:
        name = next(iter(self.preprocess.input_specs))
        wanted = list(self.model.input_specs)
        out = self.preprocess({name: tf.constant(serialized, tf.string)})
        if set(wanted) <= set(out):
            return {k: out[k].numpy() for k in wanted}
        if len(wanted) == 1 and len(out) == 1:
            return {wanted[0]: next(iter(out.values())).numpy()}
        raise ValueError(
            f"preprocessing outputs {sorted(out)} do not provide the model inputs {wanted}"
        )


EXPORT_BATCH_SIZE = 256
"""Examples per call of an igbeam export's signature when `batch_size` is `auto`."""


class LoadedExport:
    """An igbeam export's `integrated_gradients` signature behind the `LoadedEngine` interface."""

    def __init__(self, exported: ExportedAttributor, batch_size: int | str = AUTO) -> None:
        self.exported = exported
        # The export bounds its own rows per call; the host sends `batch_size` examples a call.
        examples = EXPORT_BATCH_SIZE if batch_size == AUTO else int(batch_size)
        self.batch_plan = BatchPlan(0, examples, 0, 0, "", "export")
        self.adaptive = False  # an export's steps are fixed
        self.layer = exported.layer
        self.attributed_names = list(exported.attributed_names)
        self.needs_serialized = exported.takes_examples
        self.feature_specs = dict(exported.feature_specs)

    def attributed_sizes(self) -> dict[str, int]:
        """Output column name -> values per example (1 means a scalar column)."""
        return {n: _size(n, self.exported.output_shape(n)) for n in self.attributed_names}

    def attribute(
        self, arrays: dict[str, np.ndarray], keys: np.ndarray, serialized: list[bytes]
    ) -> Attribution:
        """Calls the exported signature on one batch."""
        return self.exported.attribute(arrays, keys=keys, examples=serialized)


def approximation_errors(
    deltas: np.ndarray, predictions: np.ndarray, baseline_predictions: np.ndarray
) -> np.ndarray:
    """Vertex AI's `approximationError` of each explained output, as float64.

    Vertex compares the sum of the attributions with the difference between the instance's and
    the baseline's output (`Attribution.approximation_error`; "Improve feature-based
    explanations" in the Vertex docs), relative to that difference (its 0.05 threshold is
    unit-free): |sum(attr) - (F(x) - F(x'))| / |F(x) - F(x')| = |delta| / |F(x) - F(x')|. The
    denominator is floored as `attribution.adaptive.relative_errors` does (the same quantity
    `steps: auto` holds to its tolerance), so the value stays finite when F(x) = F(x').
    """
    return relative_errors(deltas, predictions, baseline_predictions)


def _arrow_type(feature: schema_pb2.Feature) -> pa.DataType:
    return {
        schema_pb2.FLOAT: pa.float32(),
        schema_pb2.INT: pa.int64(),
        schema_pb2.BYTES: pa.string(),
    }.get(feature.type, pa.string())


def attribution_schema(
    attributed_sizes: Mapping[str, int],
    schema: schema_pb2.Schema,
    passthrough: Sequence[str],
    input_features: Sequence[str] = (),
    *,
    adaptive: bool = False,
    token_layers: Sequence[str] = (),
    output_rank: bool = False,
    output_name: bool = False,
    images: Mapping[str, ImageSpec] | None = None,
    full_images: bool = False,
) -> pa.Schema:
    """The explicit Arrow schema of the per-example results.

    Columns: key, target, prediction, baseline_prediction, delta, approximation_error
    (`approximation_errors`: Vertex AI's, |delta| / |prediction - baseline_prediction|); with
    `adaptive` (steps auto) `steps` (int32, the steps the example used) and `within_tolerance`
    (bool; there are no such columns with fixed steps, whose number is the config's); with
    `output_rank` (target kinds top_k and indices: one row per example and explained output)
    `output_rank` (int32); with `output_name` (display names) `output_name` (string);
    `attr_<name>` per attributed feature (float64 for a scalar, list<float64> for a vector;
    per-token scores for a layer, null at padding positions); `tokens_<layer>` (list<string>) for
    each of `token_layers` (see `transforms.text`); then the pass-through features (a scalar when
    the schema fixes one value per example, else a list; bytes become UTF-8 strings; null when
    missing); then `in_<name>`, the input value of each of `input_features` (attributed features
    read from the examples), typed like a pass-through.
    An image feature (`images`) gets `attr_<name>` float64 (the signed sum over its pixels and
    channels), `grid_<name>` list<float32> (|attribution| summed per grid cell) and, with
    `full_images`, `full_<name>` list<float16> (every value, row-major HWC); see
    `transforms.images`.
    """
    fields = list(RESULT_FIELDS)
    if adaptive:
        fields.append(pa.field(STEPS_COLUMN, pa.int32(), nullable=False))
        fields.append(pa.field(WITHIN_TOLERANCE_COLUMN, pa.bool_(), nullable=False))
    if output_rank:
        fields.append(pa.field(OUTPUT_RANK_COLUMN, pa.int32(), nullable=False))
    if output_name:
        fields.append(pa.field(OUTPUT_NAME_COLUMN, pa.string(), nullable=False))
    images = images or {}
    for name, size in attributed_sizes.items():
        value = pa.float64() if size == 1 or name in images else pa.list_(pa.float64())
        fields.append(pa.field(ATTRIBUTION_PREFIX + name, value, nullable=False))
        if name in images:
            fields.append(pa.field(GRID_PREFIX + name, pa.list_(pa.float32()), nullable=False))
            if full_images:
                fields.append(pa.field(FULL_PREFIX + name, pa.list_(pa.float16()), nullable=False))
    fields.extend(token_fields(token_layers))
    by_name = {f.name: f for f in schema.feature}
    columns = [(name, name) for name in passthrough]
    columns += [(name, INPUT_PREFIX + name) for name in input_features]
    for name, column in columns:
        if name not in by_name:
            raise ValueError(f"feature {name!r} is not in the schema")
        value = _arrow_type(by_name[name])
        if fixed_length(schema, name) != 1:
            value = pa.large_list(value)
        fields.append(pa.field(column, value, nullable=True))
    return pa.schema(fields)


def _dense_column(values: np.ndarray, field: pa.Field) -> pa.Array:
    """A dense [n, ...] array as a column of `field`'s type: one value, or a list, per row."""
    n = len(values)
    data_type = field.type
    large = pa.types.is_large_list(data_type)
    value_type = data_type.value_type if large or pa.types.is_list(data_type) else data_type
    flat = np.asarray(values).reshape(n, -1).astype(value_type.to_pandas_dtype(), copy=False)
    if value_type is data_type:
        return pa.array(flat[:, 0], type=data_type)
    size = flat.shape[1]
    offsets = pa.array(np.arange(0, (n + 1) * size, size, dtype=np.int64 if large else np.int32))
    array_type = pa.LargeListArray if large else pa.ListArray
    return array_type.from_arrays(offsets, pa.array(flat.reshape(-1), type=value_type))


def _to_strings(column: pa.Array) -> pa.Array:
    """Bytes (or list of bytes) to UTF-8 strings, replacing invalid sequences."""

    def convert(values: pa.Array) -> pa.Array:
        try:
            return values.cast(pa.large_string()).cast(pa.string())
        except pa.ArrowInvalid:
            return pa.array(
                [None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()],
                pa.string(),
            )

    if pa.types.is_large_list(column.type) or pa.types.is_list(column.type):
        flat = convert(column.flatten())
        return pa.LargeListArray.from_arrays(
            column.offsets.cast(pa.int64()), flat, mask=column.is_null()
        )
    return convert(column)


@dataclasses.dataclass
class _Rows:
    """The examples of one batch that reached the model, and what they need."""

    index: np.ndarray  # positions in the decoded batch
    keys: np.ndarray
    inputs: dict[str, np.ndarray]
    serialized: list[bytes]

    def part(self, s: slice) -> _Rows:
        """The rows in `s`."""
        return _Rows(
            self.index[s],
            self.keys[s],
            {k: v[s] for k, v in self.inputs.items()},
            self.serialized[s],
        )


class AttributeBatchDoFn(beam.DoFn):
    """Decodes, validates and attributes a batch of record chunks (`list[RecordChunk]`).

    Main output: `pa.RecordBatch` with `output_schema`. Tagged output `DEAD_LETTER_TAG`:
    `DeadLetter` for every record that was not attributed.

    Args:
      spec: How to build the engine (in `setup()`, once per worker process).
      schema: The TFMD schema the records are decoded against.
      output_schema: The results' schema (`attribution_schema`).
      key_feature: The feature holding each example's key (None: file and record index).
      passthrough: Features copied to the results.
      input_features: Attributed features whose input values are copied to `in_<name>`.
      images: Image features (`transforms.images.ImageSpec`): encoded ones are decoded here,
        per batch; each gets summary columns (`attribution_schema`).
    """

    def __init__(
        self,
        spec: EngineSpec,
        schema: schema_pb2.Schema,
        output_schema: pa.Schema,
        *,
        key_feature: str | None = None,
        passthrough: Sequence[str] = (),
        input_features: Sequence[str] = (),
        images: Mapping[str, ImageSpec] | None = None,
    ) -> None:
        self._spec = spec
        self._images = dict(images or {})
        self._schema_bytes = schema.SerializeToString()
        self._output_schema = output_schema
        self._key_feature = key_feature
        self._passthrough = list(passthrough)
        self._input_features = list(input_features)
        # One engine per worker process for this pipeline: Beam's copies of this DoFn share the
        # handle; a DoFn built for another run gets its own, so a model rewritten at the same
        # path between runs in one process is never served stale.
        self._shared = shared.Shared()
        self._loaded: Attributor | None = None
        self._decoder: ExampleDecoder | None = None
        self._layout: list[tuple[str, int, tuple[int, ...], np.dtype]] | None = None
        ns = METRICS_NAMESPACE
        self._examples = beam.metrics.Metrics.counter(ns, EXAMPLES_ATTRIBUTED)
        self._batches = beam.metrics.Metrics.counter(ns, BATCHES)
        self._loads = beam.metrics.Metrics.counter(ns, MODEL_LOADS)
        self._failures = beam.metrics.Metrics.counter(ns, MODEL_FAILURES)
        self._dead = {
            s: beam.metrics.Metrics.counter(ns, DEAD_LETTER_COUNTERS[s])
            for s in (STAGE_DECODE, STAGE_VALIDATE, STAGE_MODEL)
        }
        self._abs_delta = beam.metrics.Metrics.distribution(ns, ABS_DELTA_MICROS)

    def setup(self) -> None:
        def build() -> Attributor:
            # Metrics updated in setup() are not attributed to a step: count it in process().
            self._load_to_report = True
            offered = _OFFERED.pop(repr(self._spec), None)
            loaded = offered if offered is not None else self._spec.load()
            loaded.load_id = uuid.uuid4().hex  # type: ignore[attr-defined] - told apart in counts
            return loaded

        self._load_to_report = False
        self._loaded = self._shared.acquire(build, tag=repr(self._spec))
        schema = schema_pb2.Schema.FromString(self._schema_bytes)
        self._decoder = ExampleDecoder(schema)

    @property
    def batch_examples(self) -> int:
        """Examples per model call of this worker's engine (after `setup()`)."""
        plan = getattr(self._loaded, "batch_plan", None)
        return plan.examples_per_call if plan is not None else 0

    @property
    def worker(self) -> WorkerInfo:
        """This process and the engine it holds (after `setup()`), as counts report them."""
        plan = getattr(self._loaded, "batch_plan", None)
        return WorkerInfo(
            socket.gethostname(),
            os.getpid(),
            getattr(self._loaded, "load_id", ""),
            _THREADS.get("applied", 0),
            *(
                (plan.device, plan.memory_budget, plan.rows_per_call, plan.examples_per_call)
                if plan is not None
                else ("", 0, 0, 0)
            ),
        )

    # ----------------------------------------------------------------------------------- steps

    def _dead_letter(self, record: Record, stage: str, reason: str, key: str = "") -> Any:
        self._dead[stage].inc()
        progress.report(dead_letters=1)
        letter = DeadLetter(
            record.file, record.index, record.offset, stage, reason, record.data, key
        )
        return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)

    def _keys(
        self, batch: pa.RecordBatch, records: Sequence[Record]
    ) -> tuple[list[str], list[str]]:
        """The key of each example and a reason per unusable key ("" when usable).

        Keys stay exact: a bytes key that is not valid UTF-8 is not replaced (two different keys
        could collapse into one); its record is dead-lettered with the key's bytes escaped.
        """
        if self._key_feature is None:
            return [f"{r.file}:{r.index}" for r in records], [""] * len(records)
        name = self._key_feature
        index = batch.schema.get_field_index(name)
        if index < 0:  # plan_job checks the schema; never read another column as the key
            return [""] * len(records), [f"key feature {name!r} is not in the schema"] * len(
                records
            )
        column = batch.column(index)
        keys, reasons = [], []
        for value in column.to_pylist():
            if not value:
                keys.append("")
                reasons.append(f"key feature {name!r} is missing")
                continue
            first = value[0]
            reason = "" if len(value) == 1 else f"key feature {name!r} has {len(value)} values"
            if isinstance(first, bytes):
                try:
                    first = first.decode("utf-8")
                except UnicodeDecodeError:
                    escaped = first.decode("utf-8", "backslashreplace")
                    first, reason = escaped, f"key feature {name!r} is not valid UTF-8: {escaped!r}"
            keys.append(str(first))
            reasons.append(reason)
        return keys, reasons

    def _features(self, batch: pa.RecordBatch) -> tuple[dict[str, np.ndarray], list[str]]:
        """Dense arrays of the features the model reads, and a reason per unusable row."""
        reasons = [""] * batch.num_rows
        arrays: dict[str, np.ndarray] = {}
        for name, per, shape, dtype in self._feature_layout():
            if self._encoded(name):
                continue  # decoded by `_decode_images`
            index = batch.schema.get_field_index(name)
            if index < 0:
                return {}, [f"feature {name!r} is not in the schema"] * batch.num_rows
            values, why = dense_column(batch.column(index), per, dtype, name)
            arrays[name] = values.reshape((batch.num_rows, *shape))
            if why is not None:
                reasons = [a or b for a, b in zip(reasons, why, strict=True)]
        return arrays, reasons

    def _token_reasons(self, batch: pa.RecordBatch) -> list[str]:
        """A reason per row whose token strings cannot be aligned with its scores."""
        layer = self._loaded.layer or ""
        if TOKENS_PREFIX + layer not in self._output_schema.names:
            return [""] * batch.num_rows
        padding = self._loaded.padding
        index = batch.schema.get_field_index(padding.tokens)
        if index < 0:
            return [f"token feature {padding.tokens!r} is not in the schema"] * batch.num_rows
        positions = int(np.prod(padding.shape))
        return token_reasons(batch.column(index), positions, padding.tokens, layer)

    def _encoded(self, name: str) -> bool:
        image = self._images.get(name)
        return image is not None and image.decode and image.encoding != "floats"

    def _decode_images(self, batch: pa.RecordBatch) -> tuple[dict[str, np.ndarray], list, list]:
        """Decodes the encoded image features the model reads: arrays, and per row a
        validation reason (missing, several values) and a decoding reason ("" when fine)."""
        arrays: dict[str, np.ndarray] = {}
        missing = broken = [""] * batch.num_rows
        for name, _, shape, dtype in self._feature_layout():
            if not self._encoded(name):
                continue
            image = self._images[name]
            column = batch.column(batch.schema.get_field_index(name)).to_pylist()
            pixels, why_missing, why_broken = decode_column(column, image)
            arrays[name] = pixels.reshape((batch.num_rows, *shape)).astype(dtype, copy=False)
            missing = [a or b for a, b in zip(missing, why_missing, strict=True)]
            broken = [a or b for a, b in zip(broken, why_broken, strict=True)]
        return arrays, missing, broken

    def _feature_layout(self) -> list[tuple[str, int, tuple[int, ...], np.dtype]]:
        """(name, values per example, shape, numpy dtype) of each feature the model reads."""
        if self._layout is None:
            self._layout = []
            for name, spec in self._loaded.feature_specs.items():
                shape = tuple(spec.shape[1:].as_list())
                per = int(np.prod(shape)) if shape else 1
                self._layout.append((name, per, shape, spec.dtype.as_numpy_dtype))
        return self._layout

    def _display_names(self) -> tuple[str, ...] | None:
        """`attribution.display_names` of the spec (None: no `output_name` column)."""
        return getattr(getattr(self._spec, "attribution", None), "display_names", None)

    def _attribute(self, rows: _Rows) -> Iterator[tuple[np.ndarray, Any, str]]:
        """Yields (positions, Attribution or None, reason); splits failing batches in halves."""
        try:
            with stages.timed("engine"):
                result = self._loaded.attribute(rows.inputs, rows.keys, rows.serialized)
            finite = all(
                np.isfinite(values).all()
                for values in (result.predictions, result.baseline_predictions, result.deltas)
            )
            if not finite:
                raise FloatingPointError("the model produced NaN or Inf outputs or gradients")
            names = self._display_names()
            if names is not None:  # an output index without a name (width known only now)
                display_names_of(names, result.targets)
            yield rows.index, result, ""
            return
        except Exception as err:  # noqa: BLE001 - every failure is retried or dead-lettered
            self._failures.inc()
            if len(rows.index) == 1:
                yield rows.index, None, f"model failed: {one_line(err, limit=300)}"
                return
        half = len(rows.index) // 2
        yield from self._attribute(rows.part(slice(0, half)))
        yield from self._attribute(rows.part(slice(half, None)))

    def _result_batch(
        self,
        batch: pa.RecordBatch,
        index: np.ndarray,
        keys: np.ndarray,
        result: Any,
        inputs: Mapping[str, np.ndarray],
    ) -> pa.RecordBatch:
        if len(result) != len(index):  # K rows per example (target kinds top_k, indices)
            per = len(result) // len(index)
            index, keys = np.repeat(index, per), np.repeat(keys, per)
        columns: dict[str, pa.Array] = {
            KEY_COLUMN: pa.array(list(keys), pa.string()),
            "target": pa.array(result.targets, pa.int64()),
            "prediction": pa.array(result.predictions, pa.float64()),
            "baseline_prediction": pa.array(result.baseline_predictions, pa.float64()),
            "delta": pa.array(result.deltas, pa.float64()),
            APPROXIMATION_ERROR_COLUMN: pa.array(
                approximation_errors(
                    result.deltas, result.predictions, result.baseline_predictions
                ),
                pa.float64(),
            ),
        }
        if STEPS_COLUMN in self._output_schema.names:
            columns[STEPS_COLUMN] = pa.array(result.steps_used, pa.int32())
            columns[WITHIN_TOLERANCE_COLUMN] = pa.array(result.within_tolerance, pa.bool_())
        if OUTPUT_RANK_COLUMN in self._output_schema.names:
            columns[OUTPUT_RANK_COLUMN] = pa.array(result.output_ranks, pa.int32())
        if OUTPUT_NAME_COLUMN in self._output_schema.names:
            names = display_names_of(self._display_names(), result.targets)
            columns[OUTPUT_NAME_COLUMN] = pa.array(names, pa.string())
        attributions = result.attributions
        if not isinstance(attributions, Mapping):
            attributions = {self._loaded.attributed_names[0]: attributions}
        if result.layer_scores is not None:
            attributions = {self._loaded.layer: result.layer_scores}
        elif getattr(result, "scores", None) is not None:  # several layers
            attributions = result.scores
        padding = getattr(result, "padding", None)
        for name, values in attributions.items():
            field = self._output_schema.field(ATTRIBUTION_PREFIX + name)
            if name in self._images:
                summary = image_columns(
                    values, self._images[name], FULL_PREFIX + name in self._output_schema.names
                )
                columns[field.name] = pa.array(summary["attr"], pa.float64())
                grid = self._output_schema.field(GRID_PREFIX + name)
                columns[grid.name] = _dense_column(summary["grid"], grid)
                if "full" in summary:
                    full = self._output_schema.field(FULL_PREFIX + name)
                    columns[full.name] = _dense_column(summary["full"], full)
                continue
            if padding is not None and result.layer_scores is not None:
                columns[field.name] = scores_column(values, padding)  # padding: null
            else:
                columns[field.name] = _dense_column(values, field)
        tokens = TOKENS_PREFIX + (self._loaded.layer or "")
        if tokens in self._output_schema.names:
            column = batch.column(batch.schema.get_field_index(self._loaded.padding.tokens))
            columns[tokens] = token_column(
                column.take(pa.array(index)), int(np.prod(self._loaded.padding.shape))
            )
        for name in self._input_features:  # the dense values the model read: no Arrow copies
            field = self._output_schema.field(INPUT_PREFIX + name)
            columns[field.name] = _dense_column(inputs[name][index], field)
        take = pa.array(index)
        for name in self._passthrough:
            output = name
            column = batch.column(batch.schema.get_field_index(name)).take(take)
            field = self._output_schema.field(output)
            single = not pa.types.is_large_list(field.type)
            value_type = field.type if single else field.type.value_type
            if pa.types.is_string(value_type):
                column = _to_strings(column)
            column = scalar_or_list(column, single)
            columns[output] = column.cast(field.type)
        return pa.RecordBatch.from_arrays(
            [columns[f.name] for f in self._output_schema], schema=self._output_schema
        )

    # --------------------------------------------------------------------------------- process

    def finish_bundle(self) -> None:
        progress.flush()

    def prepare(self, chunks: Sequence[RecordChunk]) -> _Prepared:
        """Decodes and validates a batch: plain data, no metrics, safe in another thread.

        `AttributeBlockDoFn` prepares the next batch in a background thread while the engine
        attributes this one (TensorFlow releases the GIL while it runs).
        """
        with stages.timed("decode"):
            records = [r for chunk in chunks for r in chunk_records(chunk)]
            batch, good, reasons = self._decoder.decode([r.data for r in records])
            rejected = [
                (records[i], STAGE_DECODE, reason, "") for i, reason in enumerate(reasons) if reason
            ]
            good_records = [records[i] for i in good]
            if not good_records:
                return _Prepared(batch, [], rejected, None)
            keys, key_reasons = self._keys(batch, good_records)
            inputs, input_reasons = self._features(batch)
            text_reasons = self._token_reasons(batch)
            images, missing, broken = self._decode_images(batch)
            inputs.update(images)
            usable = []
            for pos, record in enumerate(good_records):
                reason = key_reasons[pos] or input_reasons[pos] or text_reasons[pos] or missing[pos]
                if reason:
                    rejected.append((record, STAGE_VALIDATE, reason, keys[pos]))
                elif broken[pos]:
                    rejected.append((record, STAGE_DECODE, broken[pos], keys[pos]))
                else:
                    usable.append(pos)
            if not usable:
                return _Prepared(batch, good_records, rejected, None)
            index = np.array(usable)
            keys_array = np.array(keys, dtype=object)
            serialized = (
                [good_records[i].data for i in index] if self._loaded.needs_serialized else []
            )
            rows = _Rows(
                index, keys_array[index], {k: v[index] for k, v in inputs.items()}, serialized
            )
            return _Prepared(batch, good_records, rejected, (rows, keys_array, inputs))

    def emit(self, prepared: _Prepared) -> Iterator[Any]:
        """Attributes a prepared batch: its dead letters (tagged) and result batches."""
        if self._load_to_report:
            self._loads.inc()
            self._load_to_report = False
        self._batches.inc()
        for record, stage, reason, key in prepared.rejected:
            yield self._dead_letter(record, stage, reason, key)
        if prepared.usable is None:
            return
        rows, keys, inputs = prepared.usable
        for positions, result, reason in self._attribute(rows):
            if result is None:
                for pos in positions:
                    record = prepared.good_records[pos]
                    yield self._dead_letter(record, STAGE_MODEL, reason, keys[pos])
                continue
            self._examples.inc(len(positions))
            progress.report(examples_attributed=len(positions))
            micros = (np.minimum(np.abs(result.deltas), 1e12) * 1e6).astype(np.int64)
            for d in micros.tolist():
                self._abs_delta.update(d)
            with stages.timed("results"):
                out = self._result_batch(prepared.batch, positions, keys[positions], result, inputs)
            yield out

    def process(self, chunks: Sequence[RecordChunk]) -> Iterator[Any]:
        yield from self.emit(self.prepare(chunks))


def rechunk(chunks: Sequence[RecordChunk], size: int) -> list[RecordChunk]:
    """A block's record chunks regrouped into chunks of `size` records (the last one smaller).

    Chunks of one block hold consecutive records of one file; chunks already of that size are
    returned as they are.
    """
    if not chunks or size <= 0:
        return list(chunks)
    if all(chunk_length(c) == size for c in chunks[:-1]) and chunk_length(chunks[-1]) <= size:
        return list(chunks)
    path = chunks[0][0]
    indices = [i for c in chunks for i in c[1]]
    offsets = [o for c in chunks for o in c[2]]
    payloads = [p for c in chunks for p in c[3]]
    return [
        (path, indices[i : i + size], offsets[i : i + size], payloads[i : i + size])
        for i in range(0, len(payloads), size)
    ]


class _Prepared(NamedTuple):
    """A decoded and validated batch (`AttributeBatchDoFn.prepare`).

    Attributes:
      batch: The decoded record batch (None when nothing decoded).
      good_records: The records that decoded, in `batch` order.
      rejected: (record, stage, reason, key) of every record that failed decoding or validation.
      usable: (rows to attribute, every decoded record's key, dense inputs), or None.
    """

    batch: pa.RecordBatch | None
    good_records: list[Record]
    rejected: list[tuple[Record, str, str, str]]
    usable: tuple[_Rows, np.ndarray, dict[str, np.ndarray]] | None


class WorkerInfo(NamedTuple):
    """A worker process as the job's counts see it (one model load per process is checked).

    Attributes:
      host, pid: The process.
      load_id: The engine it holds (a new id per model load in a process).
      threads: The TensorFlow threads it was given (0: TensorFlow's default).
      device, memory_budget, rows_per_call, examples_per_call: Its engine's batch sizes
        (`attribution.budget.BatchPlan`).
    """

    host: str
    pid: int
    load_id: str
    threads: int
    device: str = ""
    memory_budget: int = 0
    rows_per_call: int = 0
    examples_per_call: int = 0


class AttributedBlock(NamedTuple):
    """A `Block` attributed: its per-example results and every dead letter of its records.

    Attributes:
      file_index, block_index, path: The block (see `transforms.records.Block`).
      results: `pa.RecordBatch`es of per-example results (the results schema).
      dead_letters: The block's dead letters: read (damaged data), decode, validate, model.
      records_read: Intact records plus damaged records and spans read in this block.
      last: Whether this is the file's last block.
      worker: The process that attributed it.
    """

    file_index: int
    block_index: int
    path: str
    results: list[pa.RecordBatch]
    dead_letters: list[DeadLetter]
    records_read: int
    last: bool
    worker: WorkerInfo


class AttributeBlockDoFn(beam.DoFn):
    """`Block` -> `AttributedBlock`: `AttributeBatchDoFn` over each of the block's chunks.

    One output and nothing emitted from `finish_bundle` (the forms every runner executes, Beam's
    DaskRunner included); the batch DoFn does the work, one model batch per chunk.
    """

    prefetch = True
    """Decode the next batch in a background thread while the engine runs (benchmarks A/B it)."""

    def __init__(self, batch_fn: AttributeBatchDoFn) -> None:
        super().__init__()
        self._fn = batch_fn
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def setup(self) -> None:
        self._fn.setup()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "igbeam-prepare")
        return self._pool

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _prepared(self, chunks: Sequence[RecordChunk]) -> Iterator[Any]:
        """The chunks decoded, one batch each; with `prefetch`, batch i+1 is decoded in a
        background thread while the caller attributes batch i."""
        if not self.prefetch:
            yield from (self._fn.prepare([chunk]) for chunk in chunks)
            return
        pool = self._executor()
        pending = pool.submit(self._fn.prepare, chunks[:1]) if chunks else None
        for i in range(len(chunks)):
            prepared = pending.result()
            more = i + 1 < len(chunks)
            pending = pool.submit(self._fn.prepare, chunks[i + 1 : i + 2]) if more else None
            yield prepared

    def process(self, block: Block) -> Iterator[AttributedBlock]:
        results: list[pa.RecordBatch] = []
        dead = list(block.dead_letters)
        for prepared in self._prepared(rechunk(block.chunks, self._fn.batch_examples)):
            for out in self._fn.emit(prepared):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    dead.append(out.value)
                else:
                    results.append(out)
        progress.flush()
        yield AttributedBlock(
            block.file_index,
            block.block_index,
            block.path,
            results,
            dead,
            block.records + len(block.dead_letters),
            block.last,
            self._fn.worker,
        )


class AttributeBlocks(beam.PTransform[beam.PCollection[Block], beam.PCollection[AttributedBlock]]):
    """Attributes `Block`s: PCollection[Block] -> PCollection[AttributedBlock].

    The engine is built from `spec` in each worker's `setup()` (one per process, shared by every
    copy of the DoFn), never here. Arguments as `AttributeBatchDoFn`'s.
    """

    def __init__(
        self,
        spec: EngineSpec,
        schema: schema_pb2.Schema,
        output_schema: pa.Schema,
        *,
        key_feature: str | None = None,
        passthrough: Sequence[str] = (),
        input_features: Sequence[str] = (),
        images: Mapping[str, ImageSpec] | None = None,
    ) -> None:
        super().__init__()
        self._fn = AttributeBlockDoFn(
            AttributeBatchDoFn(
                spec,
                schema,
                output_schema,
                key_feature=key_feature,
                passthrough=passthrough,
                input_features=input_features,
                images=images,
            )
        )

    def expand(self, blocks: beam.PCollection[Block]) -> beam.PCollection[AttributedBlock]:
        return blocks | "Attribute" >> beam.ParDo(self._fn)
