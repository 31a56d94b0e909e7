"""The igbeam job: config -> early checks -> Beam pipeline -> Parquet outputs -> summary.json.

Layout of `output.path`:
  attributions/part-*.parquet   one row per example, a file per block (`transforms.attribute`)
  statistics/*.parquet          per slice and feature, per slice, histograms, inputs, replicates
  dead_letter/part-*.parquet    records not attributed, with reason and raw bytes
  duplicate_keys/*.parquet      example keys seen more than once (reported, not dropped)
  schema.pbtxt                  the TFMD schema used (inferred when the config has none)
  counts.json                   the pipeline's own counts, as data, and its worker processes
  summary.json                  counts, accounting, workers, config, versions, wall time, and
                                with steps auto `adaptive_steps` (steps used, above tolerance)
  _SUCCESS                      written last; a failed run never leaves one

Everything that can be checked before Beam starts is checked first (`JobError`, one line each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from tensorflow_metadata.proto.v0 import schema_pb2

from attribution import ModelLoadError
from attribution.errors import SettingsError, one_line
from attribution.savedmodel import IG_SIGNATURE
from pipeline.config import JobConfig
from pipeline.console import ProgressPrinter
from pipeline.fingerprint import fingerprint
from transforms import progress
from transforms.attribute import (
    DASK_WORKER_THREADS,
    AttributeBlocks,
    Attributor,
    EngineSpec,
    attribution_schema,
    offer_loaded_engine,
)
from transforms.constants import (
    ABOVE_TOLERANCE,
    ATTRIBUTIONS_DIR,
    BLOCK_BYTES,
    COUNTS_FILE,
    DEAD_LETTER_COUNTERS,
    DEAD_LETTER_DIR,
    DUPLICATE_KEYS_DIR,
    EXPLANATIONS_DIR,
    FEATURE_STATISTICS_FILE,
    INPUT_PREFIX,
    METRICS_NAMESPACE,
    OUTPUT_PARTS,
    READ_DEAD_LETTERS,
    RECORDS_READ,
    SCHEMA_FILE,
    STATISTICS_DIR,
    STEPS_COLUMN,
    STEPS_USED_PREFIX,
    SUCCESS_FILE,
    SUMMARY_FILE,
)
from transforms.dead_letters import DEAD_LETTER_SCHEMA
from transforms.decode import feature_names, infer_schema, load_schema, schema_to_text
from transforms.images import ImageSpec, resolve_image
from transforms.outputs import (
    DUPLICATE_KEYS_SCHEMA,
    TOTAL_GROUPS,
    WriteRunOutputs,
    write_parquet_file,
    write_statistics,
)
from transforms.records import ReadBlocks, match_files, read_tfrecord_file
from transforms.statistics import (
    FEATURE_STATS_SCHEMA,
    SLICE_STATS_SCHEMA,
    AttributionStatistics,
)
from transforms.tfrecords import Record
from transforms.vertex_jsonl import (
    JsonlSettings,
    bigquery_name_problems,
    check_vertex_names,
    instance_columns,
)

SCHEMA_SAMPLE_RECORDS = 1000


class DeadLetterThresholdError(RuntimeError):
    """More records were dead-lettered than `max_dead_letter_fraction` allows (outputs written)."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class AccountingError(RuntimeError):
    """records read != examples attributed + records dead-lettered: something was lost."""


class JobError(ValueError):
    """A problem found before any Beam work starts (one line, names the thing)."""


@dataclasses.dataclass
class Plan:
    """What the launcher resolved before building the pipeline.

    `loaded` is the engine the launcher built for its checks: never pickled into the pipeline,
    only offered to workers that run in this process (see `offer_loaded_engine`).
    """

    config: JobConfig
    files: list[str]
    schema: Any  # schema_pb2.Schema
    spec: EngineSpec
    output_schema: pa.Schema  # of the attributions written
    results_schema: pa.Schema  # of the per-example results (also input values for statistics)
    attributed: list[str]
    input_features: list[str]  # attributed features with input values (`in_<name>`)
    schema_inferred: bool
    input_bytes: int
    loaded: Attributor | None = dataclasses.field(default=None, repr=False, compare=False)
    baseline_reference: dict[str, Any] | None = None  # data-derived baseline (summary.json)
    padded: list[str] = dataclasses.field(default_factory=list)  # layers with padding (nulls)
    jsonl: JsonlSettings | None = None  # output.format vertex_jsonl: how lines are written
    images: dict[str, ImageSpec] = dataclasses.field(default_factory=dict)


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def engine_spec(config: JobConfig) -> EngineSpec:
    """The picklable engine spec of a config: its model and attribution sections, as they are."""
    return EngineSpec(
        model=config.model,
        attribution=config.attribution,
        features=config.features,
        max_rows_per_call=config.batching.max_rows_per_call,
        memory_budget=config.batching.memory_budget,
        batch_size=config.batching.batch_size,
        jit_compile=config.batching.jit_compile,
    )


READ_CHUNK = 256
"""Records per reader chunk when `batching.batch_size` is `auto`: each worker regroups a
block's chunks into its engine's examples per call (`transforms.attribute.rechunk`)."""


def _read_chunk(batch_size: int | str) -> int:
    return READ_CHUNK if isinstance(batch_size, str) else int(batch_size)


def _sample_records(files: Sequence[str], limit: int) -> list[bytes]:
    sample: list[bytes] = []
    for path in files:
        for item in read_tfrecord_file(path):
            if isinstance(item, Record):
                sample.append(item.data)
                if len(sample) >= limit:
                    return sample
    return sample


def plan_job(config: JobConfig) -> Plan:
    """Checks everything that can be checked before Beam starts.

    Raises:
      JobError: no input files, model not loadable or without a usable signature, features not
        among the model inputs or not in the schema, unwritable output.
    """
    try:
        sizes = match_files(list(config.input.patterns))
    except ValueError as err:
        raise JobError(f"input.pattern: {err}") from err
    except OSError as err:
        raise JobError(f"input.pattern: cannot list files: {err}") from err
    files = list(sizes)
    schema_inferred = config.input.schema is None
    if schema_inferred:
        try:
            schema = infer_schema(_sample_records(files, SCHEMA_SAMPLE_RECORDS))
        except ValueError as err:
            raise JobError(f"input.schema: {err}") from err
    else:
        try:
            schema = load_schema(config.input.schema)
        except ValueError as err:
            raise JobError(f"input.schema: {err}") from err
    config, baseline_reference = _resolve_baseline(config, schema)
    spec = engine_spec(config)
    try:
        loaded = spec.load()
    except ModelLoadError as err:
        raise JobError(f"model: {err}") from err
    except ValueError as err:
        raise JobError(f"attribution: {err}") from err
    in_schema = set(feature_names(schema))
    missing = [n for n in loaded.feature_specs if n not in in_schema]
    if missing:
        raise JobError(
            f"features: model inputs {missing} are not in the schema "
            f"(schema features: {', '.join(sorted(in_schema))})"
        )
    for name in (*config.passthrough, config.input.key, config.attribution.target.feature):
        if name is not None and name not in in_schema:
            raise JobError(f"feature {name!r} is not in the schema")
    images = _plan_images(config, loaded, schema)
    # Attributed features read from the examples (not a layer, not a preprocessing model's
    # output, not an image) also get their input values into the results, for statistics.
    input_features = [
        n
        for n in loaded.attributed_names
        if n in loaded.feature_specs and n in in_schema and n not in images
    ]
    token_layers = _token_layers(loaded, schema)
    try:
        attributed_sizes = loaded.attributed_sizes()
        results_schema = attribution_schema(
            attributed_sizes,
            schema,
            config.passthrough,
            input_features,
            adaptive=getattr(loaded, "adaptive", False),
            token_layers=token_layers,
            output_rank=config.attribution.target.multi,
            output_name=config.attribution.display_names is not None,
            images=images,
            full_images=config.output.full_image_attributions,
        )
    except ValueError as err:
        raise JobError(f"attribution: {err}") from err
    written = [
        f.name
        for f in results_schema
        if config.output.input_values or not f.name.startswith(INPUT_PREFIX)
    ]
    jsonl = None
    if config.output.format == "vertex_jsonl":
        jsonl = jsonl_settings(config, loaded, list(attributed_sizes), input_features)
        try:
            check_vertex_names(jsonl, attributed_sizes)
        except ValueError as err:
            raise JobError(str(err)) from err
        unfit = bigquery_name_problems([*jsonl.attribution_keys(), *dict(jsonl.instance_columns)])
        if unfit:
            logging.warning(
                "output.format vertex_jsonl: %s are not BigQuery column names (letters, digits, "
                "underscores): load the lines into a JSON column, or rename them with "
                "output.vertex.feature_names",
                unfit,
            )
    _check_writable(config.output.path)
    return Plan(
        config=config,
        files=files,
        schema=schema,
        spec=spec,
        output_schema=pa.schema([results_schema.field(n) for n in written]),
        results_schema=results_schema,
        attributed=list(attributed_sizes),
        input_features=input_features,
        schema_inferred=schema_inferred,
        input_bytes=sum(sizes.values()),
        loaded=loaded,
        baseline_reference=baseline_reference,
        padded=[loaded.layer] if getattr(loaded, "padding", None) is not None else [],
        jsonl=jsonl,
        images=images,
    )


def jsonl_settings(
    config: JobConfig, loaded: Any, attributed: Sequence[str], input_features: Sequence[str]
) -> JsonlSettings:
    """How a run writes Vertex batch-explanation lines (`output.format: vertex_jsonl`)."""
    specs = getattr(loaded, "feature_specs", {}) or {}
    shapes = {}
    for name in attributed:
        spec = specs.get(name)
        dims = list(spec.shape)[1:] if spec is not None and spec.shape.rank else None
        if dims and all(d is not None for d in dims):
            shapes[name] = tuple(int(d) for d in dims)
    vertex = config.output.vertex
    return JsonlSettings(
        attributed=tuple(attributed),
        shapes=shapes,
        key_feature=config.input.key,
        instance_columns=instance_columns(input_features, config.passthrough),
        output_name=vertex.output_name or config.attribution.output or "",
        feature_names=dict(vertex.feature_names),
        index_feature_mapping={k: tuple(v) for k, v in vertex.index_feature_mapping.items()},
        groups={k: tuple(v) for k, v in vertex.groups.items()},
        compression=config.output.compression,
    )


DATA_BASELINE_KINDS = ("reference", "expected_gradients")


def resolve_data_baseline(config: JobConfig) -> JobConfig:
    """The config with a `reference`/`expected_gradients` baseline resolved (for `igbeam export`).

    The schema is the job's (`input.schema`, else inferred from the input records, as `plan_job`).

    Raises:
      JobError: as `plan_job`'s baseline checks.
    """
    if config.attribution.baseline.kind not in DATA_BASELINE_KINDS:
        return config
    if config.input.schema is not None:
        try:
            schema = load_schema(config.input.schema)
        except ValueError as err:
            raise JobError(f"input.schema: {err}") from err
    else:
        try:
            files = list(match_files(list(config.input.patterns)))
            schema = infer_schema(_sample_records(files, SCHEMA_SAMPLE_RECORDS))
        except ValueError as err:
            raise JobError(f"input.pattern: {err}") from err
    return _resolve_baseline(config, schema)[0]


def _resolve_baseline(config: JobConfig, schema: Any) -> tuple[JobConfig, dict[str, Any] | None]:
    """The config with a `reference`/`expected_gradients` baseline resolved from its data.

    Raises:
      JobError: the combination is unsupported, or the reference data cannot give the baseline.
    """
    baseline = config.attribution.baseline
    if baseline.kind not in DATA_BASELINE_KINDS or config.model.signature == IG_SIGNATURE:
        return config, None
    from pipeline.reference import ReferenceDataError, resolve_baseline

    if config.attribution.layer is not None or config.model.preprocess_path is not None:
        raise JobError(
            f"attribution.baseline.kind: {baseline.kind} needs input attribution of features "
            "read from the examples (no attribution.layer, no model.preprocess_path)"
        )
    features = config.features
    if features is None:  # every model input: their names come from the model
        from attribution import load_model

        try:
            model = load_model(
                config.model.path,
                signature=config.model.signature,
                safe_mode=config.model.safe_mode,
            )
        except ModelLoadError as err:
            raise JobError(f"model: {err}") from err
        features = tuple(model.input_specs)
    try:
        resolved, details = resolve_baseline(baseline, features, schema)
    except ReferenceDataError as err:
        raise JobError(str(err)) from err
    except OSError as err:
        raise JobError(f"attribution.baseline.pattern: cannot read: {one_line(err)}") from err
    attribution = dataclasses.replace(config.attribution, baseline=resolved)
    return dataclasses.replace(config, attribution=attribution), details


def _token_layers(loaded: Attributor, schema: Any) -> list[str]:
    """[layer] when the run writes `tokens_<layer>` (`attribution.text`), else [].

    Raises:
      JobError: the token feature is not a BYTES feature of the schema.
    """
    padding = getattr(loaded, "padding", None)
    if padding is None or padding.tokens is None:
        return []
    by_name = {f.name: f for f in schema.feature}
    feature = by_name.get(padding.tokens)
    if feature is None:
        raise JobError(f"attribution.text.tokens: feature {padding.tokens!r} is not in the schema")
    if feature.type != schema_pb2.BYTES:
        raise JobError(
            f"attribution.text.tokens: feature {padding.tokens!r} must hold strings (BYTES), "
            f"not {schema_pb2.FeatureType.Name(feature.type)}"
        )
    return [loaded.layer]


def _attributed_shape(loaded: Attributor, name: str) -> tuple[int | None, ...]:
    """The per-example shape of an attributed tensor (engine or export)."""
    engine = getattr(loaded, "engine", None)
    if engine is not None:
        return tuple(engine.attributed_specs[name].shape[1:].as_list())
    return tuple(loaded.exported.output_shape(name).as_list())  # type: ignore[attr-defined]


def _plan_images(config: JobConfig, loaded: Attributor, schema: Any) -> dict[str, ImageSpec]:
    """The `images` entries checked against the model and the schema (`resolve_image`)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    if not config.images:
        return {}
    if loaded.layer is not None or getattr(loaded, "layers", ()):
        raise JobError("images: image summaries need input attributions, not attribution.layer")
    types = {f.name: schema_pb2.FeatureType.Name(f.type) for f in schema.feature}
    images = {}
    for name, image in config.images.items():
        if name not in loaded.attributed_names:
            raise JobError(
                f"images.{name}: not an attributed feature "
                f"(attributed: {', '.join(loaded.attributed_names)})"
            )
        decode = name in loaded.feature_specs
        try:
            images[name] = resolve_image(
                name, image, _attributed_shape(loaded, name), types.get(name), decode
            )
        except SettingsError as err:
            raise JobError(str(err)) from err
    return images


def statistics_arguments(plan: Plan) -> dict[str, Any]:
    """Keyword arguments of `AttributionStatsCombineFn` for a plan's `statistics` settings.

    Inputs described: every attributed feature read from the examples (`in_<name>`) and every
    pass-through feature; BYTES features are categorical, numeric lists are described over all
    their values.
    """
    settings = plan.config.statistics
    arguments: dict[str, Any] = {
        "replicates": settings.replicates,
        "histogram_buckets": settings.histogram_buckets,
        "top_values": settings.top_values,
    }
    if plan.images:
        arguments["image_grids"] = {name: image.grid for name, image in plan.images.items()}
    if not settings.inputs:
        return arguments
    numeric, vectors, categorical = [], [], []
    columns = [(n, INPUT_PREFIX + n) for n in plan.input_features]
    columns += [(n, n) for n in plan.config.passthrough]
    for feature, column in columns:
        data_type = plan.results_schema.field(column).type
        value_type = data_type.value_type if pa.types.is_large_list(data_type) else data_type
        if pa.types.is_string(value_type) or pa.types.is_binary(value_type):
            categorical.append((feature, column))
        elif pa.types.is_large_list(data_type):
            vectors.append((feature, column))
        else:
            numeric.append((feature, column))
    arguments.update(numeric_inputs=numeric, vector_inputs=vectors, categorical_inputs=categorical)
    return arguments


def _check_writable(path: str) -> None:
    probe = _join(path, ".igbeam_write_probe")
    try:
        if "://" not in path:
            os.makedirs(path, exist_ok=True)
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as err:
        raise JobError(f"output.path: {path!r} is not writable: {err}") from err


def _clear_output(path: str) -> None:
    """Removes a previous run's outputs, `_SUCCESS` first, so a rerun replaces them."""
    marker = _join(path, SUCCESS_FILE)
    if FileSystems.exists(marker):
        FileSystems.delete([marker])
    old = [p for p in (_join(path, part) for part in OUTPUT_PARTS) if FileSystems.exists(p)]
    if old:
        FileSystems.delete(old)


def build_pipeline(pipeline: beam.Pipeline, plan: Plan) -> None:
    """Adds the whole job to `pipeline`: read blocks, attribute them, write.

    Every step has one output and emits nothing from `finish_bundle`, and one last step follows
    everything written: the forms every runner executes the same way, Beam's DaskRunner
    included (it drops tagged outputs' routing and `finish_bundle` outputs, and computes only
    the graph behind the last step).
    """
    config = plan.config
    blocks = pipeline | "Read" >> ReadBlocks(
        plan.files,
        chunk_size=_read_chunk(config.batching.batch_size),
        block_rows=config.output.row_group_rows,
        block_bytes=BLOCK_BYTES,
    )
    attributed = blocks | "AttributeBlocks" >> AttributeBlocks(
        plan.spec,
        plan.schema,
        plan.results_schema,
        key_feature=config.input.key,
        passthrough=config.passthrough,
        input_features=plan.input_features,
        images=plan.images,
    )
    _ = attributed | "WriteOutputs" >> WriteRunOutputs(
        config.output.path,
        plan.output_schema,
        features=plan.attributed,
        slices=config.slices,
        shards=config.output.shards,
        statistics=statistics_arguments(plan),
        groups=_merge_groups(pipeline),
        token_layers=plan.padded,
        jsonl=plan.jsonl,
    )


def _merge_groups(pipeline: beam.Pipeline) -> int:
    """Groups of the statistics' first merge level: many only where combines are not lifted."""
    return TOTAL_GROUPS if type(pipeline.runner).__name__ in _UNLIFTED_RUNNERS else 1


_UNLIFTED_RUNNERS = ("DaskRunner",)
"""Runners that do not lift combiners (each group's block results meet in one list)."""


@contextlib.contextmanager
def _progress(plan: Plan, interval: float | None) -> Iterator[None]:
    """Workers report counts to a fresh directory that a printer thread reads (`interval` s)."""
    if not interval:
        yield
        return
    directory = tempfile.mkdtemp(prefix="igbeam-progress-")
    previous = os.environ.get(progress.ENV_VAR)
    os.environ[progress.ENV_VAR] = directory  # inherited by worker processes started below
    try:
        with ProgressPrinter(directory, plan.input_bytes, interval):
            yield
    finally:
        if previous is None:
            os.environ.pop(progress.ENV_VAR, None)
        else:
            os.environ[progress.ENV_VAR] = previous
        shutil.rmtree(directory, ignore_errors=True)


def _parquet_rows(pattern: str) -> tuple[int, list[str]]:
    files = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    rows = 0
    for path in files:
        # Only the footer is read: FileSystems files are seekable (local, GCS, S3).
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    return rows, sorted(files)


def _ensure_file(directory: str, schema: pa.Schema) -> None:
    """An empty output still gets one Parquet file carrying its schema."""
    if not [m for r in FileSystems.match([_join(directory, "*.parquet")]) for m in r.metadata_list]:
        write_parquet_file(_join(directory, "part-empty.parquet"), schema.empty_table())


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int] | None:
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception:  # noqa: BLE001 - some runners have no metrics; the summary says so
        return None
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


@dataclasses.dataclass
class _Runner:
    """The runner a job runs on, and what igbeam set up for it.

    Attributes:
      runner: A runner instance, or None to let Beam resolve `--runner`.
      name: What ran, for the summary ("FnApiRunner", "DaskRunner", "DataflowRunner", ...).
      processes: Worker processes per machine, when known (for the TensorFlow threads).
      threads: `EngineSpec.threads` for the workers.
      cluster: A Dask `LocalCluster` igbeam started (closed after the run), else None.
    """

    runner: Any
    name: str
    processes: int | None
    threads: int
    cluster: Any = None


_DASK_NAMES = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner")
_DIRECT_NAMES = ("direct", "directrunner")


def _runner(options: PipelineOptions, config: JobConfig, files: int) -> _Runner:
    """Picks the runner (see `run_job`) and sizes the workers' TensorFlow threads.

    * DirectRunner (named or the default): Beam's in-process FnApiRunner, never Prism (which
      Beam 2.77's DirectRunner would first download at run time); it honours
      `--direct_running_mode` and `--direct_num_workers`. `--runner=PrismRunner` opts in.
    * DaskRunner: `--dask_client_address` (or `--dask_scheduler_file`) names a running
      scheduler; without one igbeam starts a `LocalCluster`, one worker process per core with
      one thread each, and closes it after the run. Each input file is a partition unless
      `--dask_npartitions`/`--dask_partition_size` say otherwise.
    * Anything else is Beam's (`--runner=DataflowRunner`, `FlinkRunner`, `PortableRunner`...).
    """
    name = (options.view_as(StandardOptions).runner or "").strip()
    configured = config.workers.threads
    cores = os.cpu_count() or 1
    if name.lower() in ("", *_DIRECT_NAMES):
        from apache_beam.options.pipeline_options import DirectOptions
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(DirectOptions)
        processes = 1
        if direct.direct_running_mode == "multi_processing":
            processes = direct.direct_num_workers or cores
        threads = configured or (max(1, cores // processes) if processes > 1 else 0)
        return _Runner(FnApiRunner(), "FnApiRunner", processes, threads)
    if name.lower() in _DASK_NAMES:
        return _dask_runner(options, configured, files, cores)
    processes = None
    threads = configured
    if name.lower() in ("dataflow", "dataflowrunner"):
        from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions

        experiments = options.view_as(DebugOptions).experiments or []
        services = options.view_as(GoogleCloudOptions).dataflow_service_options or []
        one_process = "no_use_multiple_sdk_containers" in experiments or any(
            "worker_accelerator" in s for s in services
        )
        threads = configured or (0 if one_process else 1)  # else one SDK process per vCPU
    return _Runner(None, name, processes, threads)


def _dask_runner(options: PipelineOptions, configured: int, files: int, cores: int) -> _Runner:
    try:
        from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner
    except ImportError as err:
        raise JobError(
            "the DaskRunner needs dask.distributed: pip install 'igbeam[dask]' "
            f"(apache-beam[dask]): {one_line(err)}"
        ) from err
    dask = options.view_as(DaskOptions)
    cluster = None
    quiet = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    logging.getLogger("distributed").setLevel(quiet)  # its INFO lines unless igbeam is verbose
    if not dask.address and not dask.scheduler_file:
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=cores,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=quiet,  # the workers' log level (a failed task still fails the run)
        )
        dask.address = cluster.scheduler_address
    if not dask.npartitions and not dask.partition_size:
        dask.npartitions = max(1, files)  # one file per partition: files spread over workers
    threads = configured or DASK_WORKER_THREADS
    return _Runner(DaskRunner(), "DaskRunner", cores if cluster else None, threads, cluster)


def library_versions() -> dict[str, str]:
    """igbeam's version and those of the libraries a run's results depend on."""
    import keras
    import numpy as np
    import tensorflow as tf
    import tfx_bsl

    try:
        igbeam = importlib.metadata.version("igbeam")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        igbeam = "unknown"
    return {
        "igbeam": igbeam,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "apache_beam": beam.__version__,
        "tfx_bsl": tfx_bsl.__version__,
        "pyarrow": pa.__version__,
    }


def run_job(
    config: JobConfig,
    beam_args: Sequence[str] = (),
    *,
    plan: Plan | None = None,
    started: float | None = None,
    progress_interval: float | None = None,
) -> dict[str, Any]:
    """Plans, runs and summarises one job; returns the summary (also in summary.json).

    Args:
      config: The job.
      beam_args: Pipeline options, handed to Beam as they are.
      plan: The result of `plan_job(config)` when the caller already made it.
      started: When the caller began (a `time.time()`), e.g. before its own `plan_job`, so that
        `wall_seconds` covers planning too.
      progress_interval: Print a progress line to stderr every this many seconds while the
        pipeline runs (workers in this machine's processes report; see `transforms.progress`).
        None: no progress lines.

    Raises:
      JobError: an early check failed (before any Beam work).
      RuntimeError: the pipeline did not finish.
    """
    start = started if started is not None else time.time()
    plan = plan or plan_job(config)
    config = plan.config  # with a data-derived baseline resolved
    out = config.output.path
    _clear_output(out)
    with FileSystems.create(_join(out, SCHEMA_FILE)) as f:
        f.write(schema_to_text(plan.schema).encode())
    options = PipelineOptions(list(beam_args))
    # Workers in this process (the DirectRunner) take the launcher's engine instead of loading
    # the model a second time; elsewhere each worker process loads its own.
    with _progress(plan, progress_interval):
        chosen = _runner(options, config, len(plan.files))
        try:
            plan = dataclasses.replace(
                plan, spec=dataclasses.replace(plan.spec, threads=chosen.threads)
            )
            pipeline = beam.Pipeline(runner=chosen.runner, options=options)
            build_pipeline(pipeline, plan)
            with offer_loaded_engine(plan.spec, plan.loaded):
                result = pipeline.run()
                state = result.wait_until_finish()
        finally:
            client = getattr(locals().get("result"), "client", None)  # a DaskRunnerResult's
            if client is not None:
                client.close()
            if chosen.cluster is not None:
                chosen.cluster.close()
    if state not in (None, beam.runners.runner.PipelineState.DONE):
        raise RuntimeError(f"pipeline finished in state {state}")
    _ensure_file(_join(out, ATTRIBUTIONS_DIR), plan.output_schema)
    _ensure_file(_join(out, DEAD_LETTER_DIR), DEAD_LETTER_SCHEMA)
    _ensure_file(_join(out, DUPLICATE_KEYS_DIR), DUPLICATE_KEYS_SCHEMA)
    if not FileSystems.exists(_join(out, STATISTICS_DIR, FEATURE_STATISTICS_FILE)):
        empty = AttributionStatistics(
            FEATURE_STATS_SCHEMA.empty_table(), SLICE_STATS_SCHEMA.empty_table()
        )
        write_statistics(_join(out, STATISTICS_DIR), empty)
    attribution_rows, attribution_files = _parquet_rows(_join(out, ATTRIBUTIONS_DIR, "*.parquet"))
    # Target kinds top_k and indices write K rows per example: the accounting counts examples.
    per_example = config.attribution.target.outputs_per_example
    attributed_rows = attribution_rows // per_example
    dead_rows, _ = _parquet_rows(_join(out, DEAD_LETTER_DIR, "*.parquet"))
    duplicate_rows, _ = _parquet_rows(_join(out, DUPLICATE_KEYS_DIR, "*.parquet"))
    counters = _counters(result)
    versions = library_versions()
    counted = _read_counts(out)
    accounting = _accounting(counted["counts"], counters, attributed_rows, dead_rows)
    if config.attribution.target.multi:
        accounting["attribution_rows"] = attribution_rows
        accounting["outputs_per_example"] = per_example
        if attribution_rows != attributed_rows * per_example and accounting["checked"]:
            accounting["balanced"] = False  # an example with fewer rows than explained outputs
    wall = time.time() - start
    dead_by_stage = {
        stage: counted["counts"].get("dead_letters_" + stage, 0) for stage in DEAD_LETTER_COUNTERS
    }
    records = accounting["records_read"]
    fraction = dead_rows / records if records else 0.0
    summary = {
        "status": "succeeded",
        "output": out,
        "counts": {
            "input_files": len(plan.files),
            "records_read": records,
            "examples_attributed": attributed_rows,
            "dead_letters": dead_rows,
            "dead_letters_by_stage": dead_by_stage,
            "dead_letter_fraction": round(fraction, 6),
            "duplicate_keys": duplicate_rows,
            "attribution_files": len(attribution_files),
        },
        "accounting": accounting,
        "workers": _workers(counted["workers"], chosen),
        "max_dead_letter_fraction": config.max_dead_letter_fraction,
        "metrics": counters,
        "wall_seconds": round(wall, 3),
        "examples_per_second": round(attributed_rows / wall, 2) if wall > 0 else None,
        "schema_inferred": plan.schema_inferred,
        "config": config.to_dict(),
        "fingerprint": fingerprint(
            config.model,
            config.attribution,
            plan.attributed,
            versions["igbeam"],
            from_export=config.model.signature == IG_SIGNATURE,
        ),
        "versions": versions,
        "beam_args": list(beam_args),
    }
    if plan.baseline_reference is not None:
        summary["baseline_reference"] = plan.baseline_reference
    if plan.jsonl is not None:
        summary["explanations"] = {
            "format": config.output.format,
            "compression": config.output.compression,
            "files": _count_files(_join(out, EXPLANATIONS_DIR, "part-*")),
        }
    if plan.images:
        summary["images"] = {name: image.summary() for name, image in plan.images.items()}
    if plan.output_schema.get_field_index(STEPS_COLUMN) >= 0:
        summary["adaptive_steps"] = _adaptive_steps(config, counted["counts"])
    failure = None
    if accounting["balanced"] is False:
        failure = AccountingError(
            f"accounting mismatch: {records} records read but {attributed_rows} attributed + "
            f"{dead_rows} dead-lettered"
        )
        summary["status"] = "failed_accounting"
    elif fraction > config.max_dead_letter_fraction:
        failure = DeadLetterThresholdError(
            f"{dead_rows} of {records} records ({fraction:.2%}) were dead-lettered, above "
            f"max_dead_letter_fraction {config.max_dead_letter_fraction:.2%}; see "
            f"{_join(out, DEAD_LETTER_DIR)}",
            summary,
        )
        summary["status"] = "failed_dead_letter_threshold"
    summary["failure"] = str(failure) if failure else None
    with FileSystems.create(_join(out, SUMMARY_FILE)) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    if failure is not None:
        raise failure
    with FileSystems.create(_join(out, SUCCESS_FILE)) as f:
        f.write(b"")
    return summary


def _count_files(pattern: str) -> int:
    try:
        return len(FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # noqa: BLE001 - no such directory: no files
        return 0


def _adaptive_steps(config: JobConfig, counts: dict[str, int]) -> dict[str, Any]:
    """With steps auto: how many examples used each number of steps, and how many stayed above
    tolerance at max_steps (from the pipeline's counts)."""
    used = {
        int(name[len(STEPS_USED_PREFIX) :]): count
        for name, count in counts.items()
        if name.startswith(STEPS_USED_PREFIX)
    }
    total = sum(used.values())
    settings = config.attribution
    return {
        "tolerance": settings.tolerance,
        "min_steps": settings.min_steps,
        "max_steps": settings.max_steps,
        "steps_used": {str(steps): used[steps] for steps in sorted(used)},
        "mean_steps": round(sum(s * c for s, c in used.items()) / total, 3) if total else None,
        "above_tolerance": counts.get(ABOVE_TOLERANCE, 0),
        "within_tolerance_fraction": (
            round(1 - counts.get(ABOVE_TOLERANCE, 0) / total, 6) if total else None
        ),
    }


def _read_counts(out: str) -> dict[str, Any]:
    """The pipeline's own counts (`counts.json`, written as data by its last steps)."""
    path = _join(out, COUNTS_FILE)
    if not FileSystems.exists(path):  # the pipeline did not finish its totals
        return {"counts": {}, "workers": []}
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read())


def _accounting(
    counts: dict[str, int], counters: dict[str, int] | None, attributed: int, dead: int
) -> dict[str, Any]:
    """Records read vs examples attributed + records dead-lettered, on every runner.

    The pipeline counts what it read, attributed and dead-lettered as data (`counts.json`);
    the rows actually written are counted from the Parquet footers. Beam metrics, where the
    runner has them, are a second opinion (`metrics_agree`).
    """
    if not counts:
        return {"records_read": attributed + dead, "balanced": None, "checked": False}
    read = counts.get("records_read", 0)
    agree = None
    if counters is not None:
        agree = counters.get(RECORDS_READ, 0) + counters.get(READ_DEAD_LETTERS, 0) == read
    return {
        "records_read": read,
        "examples_attributed": attributed,
        "dead_lettered": dead,
        "balanced": (
            read == attributed + dead
            and counts.get("examples_attributed", 0) == attributed
            and counts.get("dead_letters", 0) == dead
        ),
        "checked": True,
        "method": "pipeline counts as data (counts.json) vs rows in the Parquet footers",
        "metrics_agree": agree,
    }


_BATCHING = ("device", "memory_budget", "rows_per_call", "examples_per_call")
"""The batch sizes each worker's engine chose (`attribution.budget.BatchPlan`)."""


def _workers(workers: list[dict[str, Any]], chosen: _Runner) -> dict[str, Any]:
    """The worker processes that attributed blocks, and the model loads among them."""
    processes = {(w["host"], w["pid"]) for w in workers}
    batching = {tuple(w.get(k, 0) for k in _BATCHING) for w in workers}
    return {
        "runner": chosen.name,
        "processes": len(processes),
        "hosts": len({w["host"] for w in workers}),
        "model_loads": len({w["load_id"] for w in workers if w["load_id"]}),
        "tensorflow_threads": sorted({w["threads"] for w in workers}),
        "threads_setting": chosen.threads,
        "batching": [dict(zip(_BATCHING, b, strict=True)) for b in sorted(batching)],
    }
