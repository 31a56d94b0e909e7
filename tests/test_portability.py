"""What a remote runner does to the job before and while running it.

A runner ships the pipeline as a Runner API proto: every DoFn and CombineFn is pickled with
Beam's pickler on the launcher and unpickled on workers (Dataflow also round-trips the whole
pipeline through the proto before submitting it), and accumulators travel between workers
encoded, to be merged in whatever grouping and order the runner picks. These tests build the
real job pipeline (`pipeline.job.build_pipeline`) from a plan of a small demo workspace and
check:

* user code: the DoFn and CombineFn classes defined in `transforms/` and `pipeline/` (found by
  walking the packages) pickle by reference, and cover those of the job; every DoFn, CombineFn
  and Map/FlatMap callable of igbeam in the job pipeline (found with a `PipelineVisitor`, as the
  pipeline constructs them) round-trips through `apache_beam.internal.pickler` with its
  attributes intact (a dataclass's repr too: the engine spec's tags the per-process shared
  engine) and pickles no TensorFlow/Keras object; every CombineFn works after the round trip,
  the statistics CombineFn on results with the plan's schema;
* the proto: it serializes to bytes and back with the same transforms, it rebuilds a pipeline
  with the same unique labels and user code, in this process and in a fresh interpreter (as a
  worker does), and that rebuilt pipeline runs on the FnApiRunner to the same outputs as the
  original (so every DoFn works after the round trip); labels are unique and the same when
  the pipeline is built twice, in this process or another one (another hash seed);
* statistics: `AttributionStatsCombineFn` accumulators of random splits of the input, encoded
  with the CombineFn's accumulator coder or a pickler (as between workers), sometimes
  compacted, merged in random orders and random binary trees, give the single pass's output:
  counts, min/max, ranks, top values and (below the raw-values limit) quantiles and histogram
  boundaries exactly, sums and means to 1e-9 relative; above the limit (sketches) every
  histogram boundary stays within the sketches' rank error of the data."""

from __future__ import annotations

import base64
import bz2
import dataclasses
import importlib
import inspect
import itertools
import json
import os
import pickle
import pickletools
import pkgutil
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.core import CallableWrapperDoFn
from helpers import workspace_config, write_demo_workspace

from pipeline.config import parse_config
from pipeline.job import build_pipeline, plan_job
from transforms import statistics
from transforms.constants import KEY_COLUMN, STATISTICS_DIR
from transforms.statistics import ALL_DATA, AttributionStatistics, AttributionStatsCombineFn

REPO = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ("transforms", "pipeline")
OUR_PREFIXES = tuple(f"{p}." for p in OUR_PACKAGES)
FORBIDDEN_MODULES = ("tensorflow", "keras", "tf_keras")
COMBINES = (beam.CombineGlobally, beam.CombinePerKey, beam.CombineValues)

# ------------------------------------------------------------------------- the job's pipeline


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_model) -> Path:
    """The demo's model and 24 examples in 2 gzip shards."""
    root = tmp_path_factory.mktemp("workspace")
    write_demo_workspace(root, demo_model, 24, seed=3, shards=2)
    return root


def job_config(workspace: Path, out: Path) -> dict:
    return workspace_config(workspace, out, slices=[["country"]], steps=4, batch_size=8)


@pytest.fixture(scope="module")
def plan(workspace, tmp_path_factory):
    return plan_job(parse_config(job_config(workspace, tmp_path_factory.mktemp("out"))))


def build(plan, runner=None) -> beam.Pipeline:
    pipeline = beam.Pipeline(runner=runner or FnApiRunner(), options=PipelineOptions([]))
    build_pipeline(pipeline, plan)
    return pipeline


def _is_ours(obj: object) -> bool:
    return getattr(obj, "__module__", "").startswith(OUR_PREFIXES)


class _Collector(PipelineVisitor):
    """Every applied transform of a pipeline, except its root, in visiting order."""

    def __init__(self) -> None:
        self.nodes: list[AppliedPTransform] = []

    def enter_composite_transform(self, node: AppliedPTransform) -> None:
        self.visit_transform(node)

    def visit_transform(self, node: AppliedPTransform) -> None:
        if node.parent is not None:  # the root is not a step
            self.nodes.append(node)


def nodes(pipeline: beam.Pipeline) -> list[AppliedPTransform]:
    collector = _Collector()
    pipeline.visit(collector)
    return collector.nodes


def labels(pipeline: beam.Pipeline) -> list[str]:
    return [node.full_label for node in nodes(pipeline)]


def user_code(pipeline: beam.Pipeline) -> dict[str, tuple[str, Any]]:
    """igbeam's code in a pipeline: full label -> (role, object as Beam pickles it).

    Roles: "DoFn" (a ParDo's DoFn defined by igbeam), "callable" (Beam's wrapper of an igbeam
    function given to Map/FlatMap) and "CombineFn" (of a CombineGlobally/PerKey/Values).
    """
    found: dict[str, tuple[str, Any]] = {}
    for node in nodes(pipeline):
        transform = node.transform
        if isinstance(transform, beam.ParDo):
            fn = transform.fn
            if _is_ours(type(fn)):
                found[node.full_label] = ("DoFn", fn)
            elif isinstance(fn, CallableWrapperDoFn) and _is_ours(fn._fn):
                found[node.full_label] = ("callable", fn)
        elif isinstance(transform, COMBINES) and _is_ours(type(transform.fn)):
            found[node.full_label] = ("CombineFn", transform.fn)
    return found


def defined_classes() -> set[type]:
    """Every DoFn and CombineFn subclass defined in a module of `transforms` or `pipeline`."""
    classes: set[type] = set()
    for package_name in OUR_PACKAGES:
        package = importlib.import_module(package_name)
        names = [package_name]
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{package_name}.")]
        for name in names:
            module = importlib.import_module(name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == name and issubclass(cls, beam.DoFn | beam.CombineFn):
                    classes.add(cls)
    return classes


def roundtrip(obj: Any) -> Any:
    return pickler.loads(pickler.dumps(obj))


def comparable(value: Any, depth: int = 0) -> Any:
    """`value` in a form that compares by content (metrics by name, plain objects by state)."""
    if depth > 8:
        return repr(value)
    if isinstance(value, dict):
        return {k: comparable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__qualname__, [comparable(v, depth + 1) for v in value])
    if isinstance(value, np.ndarray):
        return ("ndarray", str(value.dtype), value.tolist())
    if hasattr(value, "metric_name"):  # Beam's counters and distributions
        return (type(value).__name__, value.metric_name)
    if inspect.isfunction(value) or inspect.isclass(value):
        return (value.__module__, value.__qualname__)
    if type(value).__eq__ is object.__eq__ and hasattr(value, "__dict__"):
        return (type(value).__qualname__, comparable(vars(value), depth + 1))
    return value


def pickled_strings(obj: Any) -> set[str]:
    """Every string in the pickle stream Beam's pickler makes of `obj` (module names included)."""
    encoded = base64.b64decode(pickler.dumps(obj))
    try:
        raw = bz2.decompress(encoded)
    except OSError:
        raw = zlib.decompress(encoded)
    return {arg for _, arg, _ in pickletools.genops(raw) if isinstance(arg, str)}


def reachable(obj: Any, cls: type, depth: int = 0) -> list[Any]:
    """Instances of `cls` that `obj` is or holds (in attributes, lists, tuples, dicts)."""
    if isinstance(obj, cls):
        return [obj]
    if depth >= 4:
        return []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple):
        children = list(obj)
    elif hasattr(obj, "__dict__") and _is_ours(type(obj)):
        children = list(vars(obj).values())
    else:
        return []
    return [found for child in children for found in reachable(child, cls, depth + 1)]


def statistics_fns(pipeline: beam.Pipeline) -> list[AttributionStatsCombineFn]:
    """The statistics CombineFns the pipeline's code holds (combined directly or inside)."""
    found = {}
    for _, obj in user_code(pipeline).values():
        for fn in reachable(obj, AttributionStatsCombineFn):
            found[id(fn)] = fn
    return list(found.values())


def test_dofn_and_combinefn_classes_are_found_and_the_job_uses_them(plan):
    classes = defined_classes()
    assert classes, "no DoFn or CombineFn class found in transforms/ or pipeline/"
    assert any(c.__module__ == "transforms.attribute" and issubclass(c, beam.DoFn) for c in classes)
    assert AttributionStatsCombineFn in classes
    for cls in classes:  # pickled by reference: workers import them from the installed package
        assert roundtrip(cls) is cls, cls
    pipeline = build(plan)
    used = {type(obj) for role, obj in user_code(pipeline).values() if role != "callable"}
    assert used <= classes, f"not found by the module walk: {used - classes}"
    assert any(c.__module__ == "transforms.attribute" and issubclass(c, beam.DoFn) for c in used)
    assert any(issubclass(c, beam.CombineFn) for c in used)
    assert statistics_fns(pipeline), "the job computes no statistics with AttributionStatsCombineFn"


def test_user_code_round_trips_through_beams_pickler(plan):
    found = user_code(build(plan))
    roles = {role for role, _ in found.values()}
    assert {"DoFn", "CombineFn"} <= roles
    for label, (role, obj) in found.items():
        copy = roundtrip(obj)
        assert type(copy) is type(obj), label
        assert copy is not obj
        if role == "callable":  # a module-level function travels by reference, a lambda by value
            original, restored = obj._fn, copy._fn
            name = (original.__module__, original.__qualname__)
            assert (restored.__module__, restored.__qualname__) == name, label
            if "<" not in original.__qualname__:  # not a lambda or local function
                assert restored is original, label
            elif hasattr(original, "__code__"):
                assert restored.__code__.co_code == original.__code__.co_code, label
            continue
        before, after = vars(obj), vars(copy)
        assert sorted(after) == sorted(before), label
        changed = [k for k in before if comparable(after[k]) != comparable(before[k])]
        assert not changed, f"{label}: attributes changed by the round trip: {changed}"
        for name, value in before.items():
            if dataclasses.is_dataclass(value):  # an engine spec's repr tags the shared engine
                assert after[name] == value and repr(after[name]) == repr(value), label


def test_no_tensorflow_object_is_pickled_into_the_pipeline(plan):
    for label, (_, obj) in user_code(build(plan)).items():
        strings = pickled_strings(obj)
        assert any(s.startswith(OUR_PREFIXES) for s in strings), label  # the scan sees modules
        tf_names = sorted(s for s in strings if s.split(".")[0] in FORBIDDEN_MODULES)
        assert not tf_names, f"{label} pickles {tf_names}"


def synthetic_results(schema: pa.Schema, n: int, seed: int) -> pa.Table:
    """Random per-example results with `schema` (the plan's results schema), nulls included."""
    rng = np.random.default_rng(seed)

    def values(data_type: pa.DataType, count: int) -> list:
        if pa.types.is_large_list(data_type) or pa.types.is_list(data_type):
            return [values(data_type.value_type, k) for k in rng.integers(0, 4, count)]
        if pa.types.is_string(data_type) or pa.types.is_binary(data_type):
            return list(rng.choice(["DE", "US", "FR"], count))
        if pa.types.is_integer(data_type):
            return rng.integers(0, 3, count).tolist()
        if pa.types.is_floating(data_type):
            return rng.normal(size=count).tolist()
        raise AssertionError(f"no random values for {data_type}")

    columns = []
    for field in schema:
        if field.name == "key":
            column = [f"ex-{seed}-{i}" for i in range(n)]
        else:
            column = values(field.type, n)
            if field.nullable:
                nulls = rng.random(n) < 0.1
                column = [None if null else v for v, null in zip(column, nulls, strict=True)]
        columns.append(pa.array(column, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def accumulate(fn: beam.CombineFn, inputs: list) -> Any:
    accumulator = fn.create_accumulator()
    for element in inputs:
        accumulator = fn.add_input(accumulator, element)
    return accumulator


def same_value(left: Any, right: Any) -> bool:
    """Deep equality of plain values, tuples, lists, dicts and Arrow tables."""
    if isinstance(right, pa.Table | pa.RecordBatch):
        return isinstance(left, type(right)) and left.equals(right)
    if isinstance(right, dict):
        return (
            isinstance(left, dict)
            and left.keys() == right.keys()
            and all(same_value(left[k], right[k]) for k in right)
        )
    if isinstance(right, list | tuple):
        return (
            type(left) is type(right)
            and len(left) == len(right)
            and all(same_value(a, b) for a, b in zip(left, right, strict=True))
        )
    if isinstance(right, np.ndarray):
        return isinstance(left, np.ndarray) and np.array_equal(left, right, equal_nan=True)
    if right is None:
        return left is None
    if type(right).__eq__ is object.__eq__:
        # e.g. an accumulator handed on by a first merge level: compare its state
        return type(left) is type(right) and same_value(left.__getstate__(), right.__getstate__())
    return left == right


def test_every_combine_fn_works_after_the_round_trip(plan):
    """Whatever its input: create, merge (with encoded accumulators) and extract."""
    fns = {id(obj): obj for role, obj in user_code(build(plan)).values() if role == "CombineFn"}
    assert fns
    for fn in fns.values():
        copy = roundtrip(fn)
        coder = copy.get_accumulator_coder()
        sent = coder.decode(coder.encode(fn.create_accumulator()))
        merged = copy.merge_accumulators([copy.create_accumulator(), sent])
        merged = copy.compact(merged)
        expected = fn.extract_output(fn.create_accumulator())
        assert same_value(copy.extract_output(merged), expected), type(fn)


def test_statistics_combine_fn_works_after_the_round_trip(plan):
    """The job's statistics CombineFn, pickled, on results with the plan's schema."""
    fns = statistics_fns(build(plan))
    assert fns
    tables = [synthetic_results(plan.results_schema, n, seed) for seed, n in ((1, 30), (2, 1))]
    tables.append(pa.concat_tables([synthetic_results(plan.results_schema, 9, 3)] * 2))
    for fn in fns:
        expected = fn.extract_output(accumulate(fn, tables))
        assert expected.features.num_rows > 0 and expected.inputs.num_rows > 0
        copy = roundtrip(fn)
        assert_same_statistics(copy.extract_output(accumulate(copy, tables)), expected)
        # Accumulators of the copy and of the original, sent between them, merge either way.
        coder = copy.get_accumulator_coder()
        left = coder.decode(coder.encode(accumulate(copy, tables[:1])))
        right = roundtrip(accumulate(fn, tables[1:]))
        merged = copy.merge_accumulators([right, left])
        assert_same_statistics(copy.extract_output(merged), expected)
        left = roundtrip(copy.compact(accumulate(copy, tables[:1])))
        merged = fn.merge_accumulators([fn.create_accumulator(), left, accumulate(fn, tables[1:])])
        assert_same_statistics(fn.extract_output(merged), expected)


# ------------------------------------------------------------------------ the Runner API proto


def transform_urns(proto: beam_runner_api_pb2.Pipeline) -> dict[str, str]:
    return {t.unique_name: t.spec.urn for t in proto.components.transforms.values()}


def code_summary(pipeline: beam.Pipeline) -> dict[str, list[str]]:
    """Label -> [role, module, qualified name] of igbeam's code in `pipeline` (JSON-ready)."""
    summary = {}
    for label, (role, obj) in user_code(pipeline).items():
        target = obj._fn if role == "callable" else type(obj)
        summary[label] = [role, target.__module__, target.__qualname__]
    return summary


def assert_same_code(rebuilt: dict[str, list[str]], original: dict[str, list[str]]) -> None:
    """A pipeline rebuilt from its proto holds the original's code at the same labels.

    Only transforms whose proto carries a payload (ParDo, CombinePerKey, CombineValues) get
    their objects back: composites such as CombineGlobally are rebuilt without theirs.
    """
    assert rebuilt.items() <= original.items()
    values = {tuple(v) for v in original.values()}
    assert {tuple(v) for v in rebuilt.values()} == values


def test_proto_round_trips_with_every_label_and_the_same_code(plan):
    pipeline = build(plan)
    original = labels(pipeline)
    proto = pipeline.to_runner_api()
    parsed = beam_runner_api_pb2.Pipeline.FromString(proto.SerializeToString())
    assert parsed == proto
    assert sorted(parsed.components.transforms) == sorted(proto.components.transforms)
    assert list(parsed.root_transform_ids) == list(proto.root_transform_ids)
    names = [
        t.unique_name
        for transform_id, t in parsed.components.transforms.items()
        if transform_id not in parsed.root_transform_ids  # the pipeline's root: no step
    ]
    assert len(names) == len(set(names))
    assert set(names) == set(original)

    rebuilt = beam.Pipeline.from_runner_api(parsed, pipeline.runner, pipeline._options)
    assert sorted(labels(rebuilt)) == sorted(original)
    assert_same_code(code_summary(rebuilt), code_summary(pipeline))
    assert transform_urns(rebuilt.to_runner_api()) == transform_urns(proto)
    # The rebuilt pipeline holds unpickled copies, not the launcher's objects.
    launcher_objects = {id(obj) for _, obj in user_code(pipeline).values()}
    assert not any(id(obj) in launcher_objects for _, obj in user_code(rebuilt).values())


def test_labels_are_unique_and_the_same_when_built_twice(plan):
    first, second = build(plan), build(plan)
    assert len(labels(first)) == len(set(labels(first)))
    assert labels(first) == labels(second)
    assert code_summary(first) == code_summary(second)
    assert transform_urns(first.to_runner_api()) == transform_urns(second.to_runner_api())


CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from test_portability import build, code_summary, labels
from pipeline.config import parse_config
from pipeline.job import plan_job

proto_path, config_path = sys.argv[1:3]
with open(proto_path, "rb") as f:
    proto = beam_runner_api_pb2.Pipeline.FromString(f.read())
rebuilt = beam.Pipeline.from_runner_api(proto, FnApiRunner(), PipelineOptions([]))
with open(config_path) as f:
    built = build(plan_job(parse_config(json.load(f))))
print("RESULT " + json.dumps({{
    "rebuilt": [labels(rebuilt), code_summary(rebuilt)],
    "built": [labels(built), code_summary(built)],
}}))
"""


def test_a_fresh_interpreter_rebuilds_the_same_pipeline(plan, workspace, tmp_path):
    """As a worker: the proto's payloads unpickle without the launcher's state; and the job
    built in another process (another hash seed) has the same labels and code."""
    pipeline = build(plan)
    proto_path = tmp_path / "pipeline.pb"
    proto_path.write_bytes(pipeline.to_runner_api().SerializeToString())
    config_path = tmp_path / "job.json"
    config_path.write_text(json.dumps(job_config(workspace, tmp_path / "out")))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PYTHONHASHSEED": "12345",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    child = CHILD.format(tests=str(REPO / "tests"))
    done = subprocess.run(
        [sys.executable, "-c", child, str(proto_path), str(config_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    expected = [labels(pipeline), code_summary(pipeline)]
    assert sorted(result["rebuilt"][0]) == sorted(expected[0])
    assert_same_code(result["rebuilt"][1], expected[1])
    assert result["built"] == expected


def written_tables(out: Path) -> dict[tuple[str, str], pa.Table]:
    """Every Parquet output under `out`: (directory, file name with digits as #) -> its files'
    rows together (sorted by key when there is a key column), so that runs that shard or name
    parts differently compare."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(out.rglob("*.parquet")):
        name = re.sub(r"[0-9]+", "#", path.name)
        groups.setdefault((str(path.parent.relative_to(out)), name), []).append(path)
    tables = {}
    for group, paths in groups.items():
        table = pa.concat_tables([pq.read_table(p) for p in paths])
        if KEY_COLUMN in table.column_names:
            table = table.sort_by(KEY_COLUMN)
        tables[group] = table
    return tables


def test_the_rebuilt_pipeline_runs_to_the_same_outputs(workspace, tmp_path):
    """Dataflow submits the pipeline after a proto round trip: it must run, to the same data."""
    outputs = {}
    for name in ("original", "rebuilt"):
        pipeline = build(plan_job(parse_config(job_config(workspace, tmp_path / name))))
        if name == "rebuilt":
            proto = beam_runner_api_pb2.Pipeline.FromString(
                pipeline.to_runner_api().SerializeToString()
            )
            pipeline = beam.Pipeline.from_runner_api(proto, FnApiRunner(), PipelineOptions([]))
        state = pipeline.run().wait_until_finish()
        assert state in (None, beam.runners.runner.PipelineState.DONE), name
        outputs[name] = written_tables(tmp_path / name)
    original, rebuilt = outputs["original"], outputs["rebuilt"]
    assert sorted(rebuilt) == sorted(original)
    attributions = [t for t in original.values() if KEY_COLUMN in t.column_names and len(t) == 24]
    assert attributions, "no output holds the 24 examples"
    assert any(directory.startswith(STATISTICS_DIR) for directory, _ in original)
    for group, table in original.items():
        assert_tables_close(rebuilt[group], table, "/".join(group), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------- comparing statistics tables

SUMMED = {
    "mean_abs",  # image_grids
    "mean_attributions",
    "mean_absolute_attributions",
    "total_attributions",
    "std",
    "share",
    "prediction_mean",
    "mean",
}
"""Columns computed from float sums, whose order changes with the merge order: to 1e-9."""
QUANTILE_COLUMNS = {"quantiles", "boundaries", "abs_delta_p50", "abs_delta_p95"}
"""Columns read from quantile sketches: exact only while the values are kept raw."""


def _floats(column: pa.Array) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype(np.float64)


def assert_columns_match(
    actual: pa.Array, expected: pa.Array, where: str, *, rtol: float = 0.0, atol: float = 0.0
) -> None:
    """Equal columns (NaN equals NaN); float values (also in lists) within rtol/atol if set."""
    assert actual.type == expected.type, where
    data_type = expected.type
    if pa.types.is_list(data_type) and pa.types.is_floating(data_type.value_type):
        assert actual.value_lengths().to_pylist() == expected.value_lengths().to_pylist(), where
        assert actual.is_null().to_pylist() == expected.is_null().to_pylist(), where
        actual, expected = actual.flatten(), expected.flatten()
    elif not pa.types.is_floating(data_type):
        assert actual.to_pylist() == expected.to_pylist(), where
        return
    left, right = _floats(actual), _floats(expected)
    if rtol or atol:
        np.testing.assert_allclose(left, right, rtol=rtol, atol=atol, err_msg=where)
    else:
        np.testing.assert_array_equal(left, right, err_msg=where)


def assert_tables_close(
    actual: pa.Table, expected: pa.Table, where: str, *, rtol: float, atol: float
) -> None:
    assert actual.schema == expected.schema, where
    assert actual.num_rows == expected.num_rows, where
    for name in expected.schema.names:
        assert_columns_match(
            actual.column(name).combine_chunks(),
            expected.column(name).combine_chunks(),
            f"{where}.{name}",
            rtol=rtol,
            atol=atol,
        )


def assert_same_statistics(
    actual: AttributionStatistics, expected: AttributionStatistics, *, exact_quantiles=True
) -> None:
    """Every table equal: counts, min/max, ranks, top values exactly, sums to 1e-9 relative;
    quantile columns exactly when `exact_quantiles` (else not compared here)."""
    for table in AttributionStatistics._fields:
        left, right = getattr(actual, table), getattr(expected, table)
        assert left.schema == right.schema, table
        assert left.num_rows == right.num_rows, table
        for name in right.schema.names:
            if name in QUANTILE_COLUMNS and not exact_quantiles:
                continue
            tolerance = {"rtol": 1e-9, "atol": 1e-9} if name in SUMMED else {}
            assert_columns_match(
                left.column(name).combine_chunks(),
                right.column(name).combine_chunks(),
                f"{table}.{name}",
                **tolerance,
            )


# ------------------------------------------------------- statistics merged in any grouping/order

STATS_CONFIG = dict(
    features=["a", "b", "tokens"],
    slices=[["country"], ["country", "label"]],
    slice_by_target=True,
    quantiles=10,
    replicates=4,
    histogram_buckets=20,
    numeric_inputs=[("a", "in_a"), ("label", "label")],
    vector_inputs=[("tokens", "in_tokens")],
    categorical_inputs=[("country", "country")],
    top_values=3,
    image_grids={"img": (2, 3)},
)
COUNTRIES = ["DE", "US", "FR", "BR", None]
ROWS = 1200
EXACT_LIMIT = 1 << 20
"""A raw-values limit no column of these tests reaches: every quantile exact."""


class Results:
    """Random per-example results in the job's layout (large lists for vectors, float32 inputs,
    nullable pass-through columns), kept as Python/numpy values for reference computations."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.key = [f"s{seed}-ex-{i:05d}" for i in range(n)]
        self.target = rng.integers(-1, 3, n)
        self.prediction = np.where(rng.random(n) < 0.02, np.nan, rng.random(n))
        self.delta = np.where(rng.random(n) < 0.02, np.nan, rng.normal(scale=1e-3, size=n))
        self.a = np.where(rng.random(n) < 0.05, np.nan, rng.normal(size=n))
        self.b = 3.0 * rng.standard_t(3, size=n)
        self.b_null = rng.random(n) < 0.03
        self.tokens: list[list[float] | None] = [
            list(10.0 * rng.normal(size=k)) for k in rng.integers(0, 5, n)
        ]
        for i in np.flatnonzero(rng.random(n) < 0.03):
            self.tokens[i] = None if i % 2 else [*self.tokens[i], np.nan]
        self.in_a = rng.lognormal(size=n).astype(np.float32)
        self.in_a[rng.random(n) < 0.05] = np.nan
        self.in_a_null = rng.random(n) < 0.05
        self.label: list[int | None] = [
            None if null else int(v)
            for v, null in zip(rng.integers(0, 2, n), rng.random(n) < 0.05, strict=True)
        ]
        self.country = list(
            rng.choice(np.array(COUNTRIES, object), n, p=[0.4, 0.3, 0.2, 0.07, 0.03])
        )
        self.in_tokens: list[list[float] | None] = [
            list(rng.normal(size=k).astype(np.float32)) for k in rng.integers(0, 4, n)
        ]
        for i in np.flatnonzero(rng.random(n) < 0.03):
            self.in_tokens[i] = None
        self.grid = rng.random((n, 6)).astype(np.float32)  # an image's grid_<feature> cells
        self.table = pa.table(
            {
                "key": pa.array(self.key, pa.string()),
                "target": pa.array(self.target, pa.int64()),
                "prediction": pa.array(self.prediction, pa.float64()),
                "baseline_prediction": pa.array(np.zeros(n), pa.float64()),
                "delta": pa.array(self.delta, pa.float64()),
                "attr_a": pa.array(self.a, pa.float64()),
                "attr_b": pa.array(self.b, pa.float64(), mask=self.b_null),
                "attr_tokens": pa.array(self.tokens, pa.large_list(pa.float64())),
                "label": pa.array(self.label, pa.int64()),
                "country": pa.array(self.country, pa.string()),
                "in_a": pa.array(self.in_a, pa.float32(), mask=self.in_a_null),
                "in_tokens": pa.array(self.in_tokens, pa.large_list(pa.float32())),
                "grid_img": pa.array(list(self.grid), pa.list_(pa.float32())),
            }
        )

    # Reference values, computed here without the statistics module.

    def reference_values(self) -> None:
        """Per-example values and slice membership, for `attribution`, `input_values`, `rows`."""

        def text(value: object) -> str:
            return statistics.NULL_SLICE_VALUE if value is None else str(value)

        tokens = [np.nan if t is None else float(np.sum(t)) for t in self.tokens]
        self.attributions = {
            "a": self.a,
            "b": np.where(self.b_null, np.nan, self.b),
            "tokens": np.array(tokens),
        }
        self.scalar_inputs = {
            "a": np.where(self.in_a_null, np.nan, self.in_a.astype(np.float64)),
            "label": np.array([np.nan if v is None else v for v in self.label], np.float64),
        }
        countries = [text(c) for c in self.country]
        self.slice_values = {
            "all": np.full(self.n, "", object),
            "country": np.array(countries, object),
            "country,label": np.array(
                [f"{c},{text(v)}" for c, v in zip(countries, self.label, strict=True)], object
            ),
            "target": np.array([str(t) for t in self.target], object),
        }
        hashes = np.array([zlib.crc32(b"replicate:" + k.encode()) for k in self.key])
        self.replicate = hashes % STATS_CONFIG["replicates"]

    def attribution(self, feature: str, rows: np.ndarray) -> np.ndarray:
        return self.attributions[feature][rows]

    def input_values(self, feature: str, rows: np.ndarray) -> np.ndarray:
        if feature in self.scalar_inputs:
            return self.scalar_inputs[feature][rows]
        lists = [self.in_tokens[i] for i in np.flatnonzero(rows)]
        return np.array([v for values in lists if values for v in values], np.float64)

    def rows(self, slice_name: str, slice_value: str, replicate: int) -> np.ndarray:
        mask = self.slice_values[slice_name] == slice_value
        if replicate != ALL_DATA:
            mask &= self.replicate == replicate
        return mask


@pytest.fixture(scope="module")
def results_cache() -> dict[int, tuple[Results, AttributionStatistics]]:
    return {}


def results_and_reference(cache, seed: int) -> tuple[Results, AttributionStatistics]:
    """The data of `seed` and its single-pass statistics (raw values: exact quantiles)."""
    if seed not in cache:
        data = Results(ROWS, seed)
        fn = AttributionStatsCombineFn(**STATS_CONFIG)
        limit, statistics.RAW_VALUES_LIMIT = statistics.RAW_VALUES_LIMIT, EXACT_LIMIT
        try:
            single = fn.extract_output(fn.add_input(fn.create_accumulator(), data.table))
        finally:
            statistics.RAW_VALUES_LIMIT = limit
        for table in AttributionStatistics._fields:
            assert getattr(single, table).num_rows > 0, table
        cache[seed] = (data, single)
    return cache[seed]


def transports(fn: AttributionStatsCombineFn) -> list[Callable[[Any], Any]]:
    """Ways an accumulator travels between workers (or stays put)."""
    coder = fn.get_accumulator_coder()
    return [
        lambda acc: acc,
        lambda acc: coder.decode(coder.encode(acc)),  # what runners encode accumulators with
        roundtrip,  # Beam's pickler
        lambda acc: pickle.loads(pickle.dumps(acc)),
    ]


def random_inputs(table: pa.Table, rng: np.random.Generator) -> Iterator[pa.Table | pa.RecordBatch]:
    """`table` as 1-3 inputs, some empty, as RecordBatches or multi-chunk Tables."""
    cuts = np.sort(rng.integers(0, table.num_rows + 1, rng.integers(0, 3)))
    bounds = [0, *cuts.tolist(), table.num_rows]
    for start, stop in itertools.pairwise(bounds):
        part = table.slice(start, stop - start)
        if rng.random() < 0.5 and part.num_rows > 1:
            middle = int(rng.integers(1, part.num_rows))
            yield pa.concat_tables([part.slice(0, middle), part.slice(middle)])  # two chunks
        else:
            yield part.combine_chunks().to_batches()[0] if part.num_rows else part


def partial_accumulators(
    fn: AttributionStatsCombineFn, data: Results, k: int, rng: np.random.Generator
) -> list[Any]:
    """One accumulator per random part (rows assigned at random, shuffled), compacted or not,
    each sent through a random transport."""
    part_of_row = rng.integers(0, k, data.n)
    ways = transports(fn)
    accumulators = []
    for part in range(k):
        rows = rng.permutation(np.flatnonzero(part_of_row == part))
        accumulator = accumulate(fn, list(random_inputs(data.table.take(rows), rng)))
        if rng.random() < 0.5:
            accumulator = fn.compact(accumulator)
        accumulators.append(ways[rng.integers(len(ways))](accumulator))
    return accumulators


def merge_flat(fn, accumulators: list, rng: np.random.Generator) -> Any:
    """One merge of every accumulator in a random order, an empty accumulator among them."""
    order = [accumulators[i] for i in rng.permutation(len(accumulators))]
    order.insert(int(rng.integers(0, len(order) + 1)), fn.create_accumulator())
    return fn.merge_accumulators(order)


def merge_tree(fn, accumulators: list, rng: np.random.Generator) -> Any:
    """Pairwise merges of random pairs (a random binary tree), results sent on at random."""
    ways = transports(fn)
    pool = list(accumulators)
    while len(pool) > 1:
        i, j = rng.choice(len(pool), 2, replace=False)
        merged = ways[rng.integers(len(ways))](fn.merge_accumulators([pool[i], pool[j]]))
        pool = [acc for index, acc in enumerate(pool) if index not in (i, j)] + [merged]
    return pool[0]


CASES = [(seed, k) for seed, k in zip(range(10), [1, 2, 3, 4, 5, 5, 4, 3, 2, 5], strict=True)]


@pytest.mark.parametrize(("seed", "k"), CASES)
def test_merged_statistics_equal_a_single_pass(results_cache, monkeypatch, seed, k):
    monkeypatch.setattr(statistics, "RAW_VALUES_LIMIT", EXACT_LIMIT)  # raw values: exact
    data, single = results_and_reference(results_cache, seed)
    fn = roundtrip(AttributionStatsCombineFn(**STATS_CONFIG))  # as a worker holds it
    rng = np.random.default_rng(1000 + seed)
    for merge in (merge_flat, merge_tree):
        merged = merge(fn, partial_accumulators(fn, data, k, rng), rng)
        assert_same_statistics(fn.extract_output(merged), single)


def rank_error(values: np.ndarray, boundaries: np.ndarray) -> float:
    """Largest distance of a boundary's rank range in `values` from its target rank."""
    ordered = np.sort(values)
    fractions = np.linspace(0.0, 1.0, len(boundaries))
    low = np.searchsorted(ordered, boundaries, side="left")
    high = np.searchsorted(ordered, boundaries, side="right") - 1
    target = fractions * (len(ordered) - 1)
    return float(np.max(np.maximum(0.0, np.maximum(low - target, target - high))))


@pytest.mark.parametrize(("seed", "k"), [(20, 3), (21, 5)])
def test_merged_sketches_stay_within_their_rank_error(results_cache, monkeypatch, seed, k):
    """Above the raw-values limit (lowered here) quantiles come from tfx-bsl sketches merged in
    random groupings: every other statistic is still the single pass's, and every histogram
    boundary is within the sketches' rank error (epsilon * n) of the data."""
    data, single = results_and_reference(results_cache, seed)
    data.reference_values()
    monkeypatch.setattr(statistics, "RAW_VALUES_LIMIT", 40)
    fn = AttributionStatsCombineFn(**STATS_CONFIG)
    rng = np.random.default_rng(2000 + seed)
    epsilon = statistics.DEFAULT_EPSILON
    for merge in (merge_flat, merge_tree):
        out = fn.extract_output(merge(fn, partial_accumulators(fn, data, k, rng), rng))
        assert_same_statistics(out, single, exact_quantiles=False)
        checked = 0
        for row in out.histograms.to_pylist():
            rows = data.rows(row["slice_name"], row["slice_value"], row["replicate"])
            if row["source"] == statistics.SOURCE_ATTRIBUTION:
                values = data.attribution(row["feature"], rows)
            else:
                values = data.input_values(row["feature"], rows)
            values = values[~np.isnan(values)]
            assert row["count"] == len(values), row
            if not len(values):
                assert row["boundaries"] == []
                continue
            tolerance = epsilon * len(values) + 1
            assert rank_error(values, np.array(row["boundaries"])) <= tolerance, row
            checked += len(values) > 40  # from a sketch, not raw values
        assert checked > 0
