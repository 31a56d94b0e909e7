"""The igbeam job: config -> early checks -> Beam pipeline -> Parquet outputs -> summary.json.

Layout of `output.path`:
  attributions/part-*.parquet   one row per example (schema: `transforms.attribute`)
  statistics/features.parquet   per slice and feature (`transforms.statistics`)
  statistics/slices.parquet     per slice
  dead_letter/part-*.parquet    records not attributed, with reason and raw bytes
  duplicate_keys/*.parquet      example keys seen more than once (reported, not dropped)
  schema.pbtxt                  the TFMD schema used (inferred when the config has none)
  summary.json                  counts, resolved config, versions, wall time, examples/s
  _SUCCESS                      written last; a failed run never leaves one

Everything that can be checked before Beam starts is checked first (`JobError`, one line each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
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

from attribution import ModelLoadError
from attribution.savedmodel import IG_SIGNATURE
from pipeline.config import JobConfig
from pipeline.console import ProgressPrinter
from pipeline.fingerprint import fingerprint
from transforms import progress
from transforms.attribute import (
    AttributeRecords,
    Attributor,
    EngineSpec,
    attribution_schema,
    offer_loaded_engine,
)
from transforms.constants import (
    ATTRIBUTIONS_DIR,
    DEAD_LETTER_COUNTERS,
    DEAD_LETTER_DIR,
    DUPLICATE_KEYS_DIR,
    FEATURE_STATISTICS_FILE,
    INPUT_PREFIX,
    METRICS_NAMESPACE,
    OUTPUT_PARTS,
    READ_DEAD_LETTERS,
    RECORDS_READ,
    SCHEMA_FILE,
    STATISTICS_DIR,
    SUCCESS_FILE,
    SUMMARY_FILE,
)
from transforms.dead_letters import DEAD_LETTER_SCHEMA
from transforms.decode import feature_names, infer_schema, load_schema, schema_to_text
from transforms.outputs import (
    DUPLICATE_KEYS_SCHEMA,
    RunOutputs,
    WriteRunOutputs,
    write_parquet_file,
    write_statistics,
)
from transforms.records import ReadTFRecords, match_files, read_tfrecord_file
from transforms.statistics import (
    FEATURE_STATS_SCHEMA,
    SLICE_STATS_SCHEMA,
    AttributionStatistics,
)
from transforms.tfrecords import Record

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


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def engine_spec(config: JobConfig) -> EngineSpec:
    """The picklable engine spec of a config: its model and attribution sections, as they are."""
    return EngineSpec(
        model=config.model,
        attribution=config.attribution,
        features=config.features,
        max_rows_per_call=config.batching.max_rows_per_call,
    )


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
    # Attributed features read from the examples (not a layer, not a preprocessing model's
    # output) also get their input values into the results, for statistics and the output.
    input_features = [
        n for n in loaded.attributed_names if n in loaded.feature_specs and n in in_schema
    ]
    try:
        attributed_sizes = loaded.attributed_sizes()
        results_schema = attribution_schema(
            attributed_sizes, schema, config.passthrough, input_features
        )
    except ValueError as err:
        raise JobError(f"attribution: {err}") from err
    written = [
        f.name
        for f in results_schema
        if config.output.input_values or not f.name.startswith(INPUT_PREFIX)
    ]
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
    )


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
    """Adds the whole job to `pipeline`: read, attribute, write."""
    config = plan.config
    read = pipeline | "Read" >> ReadTFRecords(plan.files, chunk_size=config.batching.batch_size)
    attributed = read.records | "AttributeRecords" >> AttributeRecords(
        plan.spec,
        plan.schema,
        plan.results_schema,
        batch_size=config.batching.batch_size,
        key_feature=config.input.key,
        passthrough=config.passthrough,
        input_features=plan.input_features,
    )
    dead_letters = (read.dead_letters, attributed.dead_letters) | "FlattenDeadLetters" >> (
        beam.Flatten()
    )
    _ = RunOutputs(attributed.results, dead_letters) | "WriteOutputs" >> WriteRunOutputs(
        config.output.path,
        plan.output_schema,
        features=plan.attributed,
        slices=config.slices,
        row_group_rows=config.output.row_group_rows,
        shards=config.output.shards,
        statistics=statistics_arguments(plan),
    )


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


def _runner(options: PipelineOptions) -> Any:
    """The runner to use: the DirectRunner means Beam's in-process FnApiRunner, never Prism.

    Beam 2.77's DirectRunner first tries Prism, which it downloads from the internet at run time
    (and falls back to the FnApiRunner when it cannot). igbeam never downloads at run time, so
    the DirectRunner (named or the default) runs on the FnApiRunner directly; it honours
    `--direct_running_mode` and `--direct_num_workers`. Name `--runner=PrismRunner` to opt in.
    """
    name = options.view_as(StandardOptions).runner
    if name is None or name.lower() in ("directrunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None


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
    out = config.output.path
    _clear_output(out)
    with FileSystems.create(_join(out, SCHEMA_FILE)) as f:
        f.write(schema_to_text(plan.schema).encode())
    options = PipelineOptions(list(beam_args))
    pipeline = beam.Pipeline(runner=_runner(options), options=options)
    build_pipeline(pipeline, plan)
    # Workers in this process (the DirectRunner) take the launcher's engine instead of loading
    # the model a second time; elsewhere each worker process loads its own.
    with offer_loaded_engine(plan.spec, plan.loaded), _progress(plan, progress_interval):
        result = pipeline.run()
        state = result.wait_until_finish()
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
    attributed_rows, attribution_files = _parquet_rows(_join(out, ATTRIBUTIONS_DIR, "*.parquet"))
    dead_rows, _ = _parquet_rows(_join(out, DEAD_LETTER_DIR, "*.parquet"))
    duplicate_rows, _ = _parquet_rows(_join(out, DUPLICATE_KEYS_DIR, "*.parquet"))
    counters = _counters(result)
    versions = library_versions()
    accounting = _accounting(counters, attributed_rows, dead_rows)
    wall = time.time() - start
    dead_by_stage = {
        stage: (counters or {}).get(name, 0) for stage, name in DEAD_LETTER_COUNTERS.items()
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


def _accounting(counters: dict[str, int] | None, attributed: int, dead: int) -> dict[str, Any]:
    """records read (good frames + damaged frames/spans) vs attributed + dead-lettered."""
    if counters is None:  # a runner without metrics: the invariant cannot be checked
        return {"records_read": attributed + dead, "balanced": None, "checked": False}
    read = counters.get(RECORDS_READ, 0) + counters.get(READ_DEAD_LETTERS, 0)
    return {
        "records_read": read,
        "examples_attributed": attributed,
        "dead_lettered": dead,
        "balanced": read == attributed + dead,
        "checked": True,
    }
