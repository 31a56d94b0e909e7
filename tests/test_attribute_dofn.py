"""Unit tests of `AttributeBatchDoFn` with a fake engine: no TensorFlow model is built or called.

As Beam's `apache_beam/ml/inference/base_test.py` tests RunInference with a `FakeModelHandler`,
the DoFn here gets a `FakeSpec` whose `load()` returns a `FakeEngine`: attributions w * x exactly
(w = 2 for "a", -3 for "b"), prediction their sum, baseline prediction and delta 0. The engine
raises, or returns a NaN prediction, for the examples marked poisonous (by key or by the value of
"a"), and records the keys of every batch it is called with, so the halving retry can be checked
call by call. The DoFn is called directly (`setup()`, then `process(list of RecordChunk)`) and
once in a real pipeline on the FnApiRunner.

Every `FakeSpec` is named after its test (`spec` fixture), so the module-level load and call
records of one test never mix with another's.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from apache_beam.internal import pickler
from apache_beam.testing.util import assert_that, equal_to
from google.protobuf import text_format
from helpers import counter_totals, example_bytes, local_pipeline, record_offsets
from tensorflow_metadata.proto.v0 import schema_pb2

from attribution.engine import Attribution
from transforms import attribute
from transforms.attribute import (
    AttributeBatchDoFn,
    Attributor,
    attribution_schema,
    offer_loaded_engine,
)
from transforms.constants import (
    DEAD_LETTER_TAG,
    STAGE_DECODE,
    STAGE_MODEL,
    STAGE_VALIDATE,
)
from transforms.dead_letters import DeadLetter
from transforms.tfrecords import RecordChunk

WEIGHTS = {"a": 2.0, "b": -3.0}
FEATURES = tuple(WEIGHTS)
SCHEMA = text_format.Parse(
    """
    feature { name: "a" type: FLOAT shape { dim { size: 1 } } }
    feature { name: "b" type: FLOAT shape { dim { size: 1 } } }
    feature { name: "id" type: BYTES }
    feature { name: "n" type: INT }
    feature { name: "label" type: INT shape { dim { size: 1 } } }
    feature { name: "country" type: BYTES shape { dim { size: 1 } } }
    feature { name: "tags" type: BYTES }
    """,
    schema_pb2.Schema(),
)

# ------------------------------------------------------------------------------ fake engine

LOADS: Counter[str] = Counter()
"""FakeSpec.name -> how many times `load()` ran in this process."""
CALLS: defaultdict[str, list[list[str]]] = defaultdict(list)
"""FakeSpec.name -> the keys of every `attribute` call, in call order."""
SERIALIZED: defaultdict[str, list[tuple[list[str], list[bytes]]]] = defaultdict(list)
"""FakeSpec.name -> (keys, serialized examples) of every call, for a spec that needs them."""


@dataclasses.dataclass(frozen=True)
class FakeSpec:
    """A picklable stand-in for `EngineSpec`: what the fake engine does, and a name for records.

    Attributes:
      name: Keys the module-level records (one name per test).
      fail_keys: `attribute` raises when a batch holds one of these keys.
      nan_keys: `attribute` returns a NaN prediction for these keys.
      fail_value: `attribute` raises when a batch holds an example whose "a" equals this.
      needs_serialized: The engine asks for the serialized examples.
    """

    name: str
    fail_keys: frozenset[str] = frozenset()
    nan_keys: frozenset[str] = frozenset()
    fail_value: float | None = None
    needs_serialized: bool = False

    def load(self) -> FakeEngine:
        LOADS[self.name] += 1
        return FakeEngine(self)


class FakeEngine:
    """Attributions w * x in closed form; fails as its spec says; records every call."""

    layer = None

    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self.attributed_names = list(FEATURES)
        self.needs_serialized = spec.needs_serialized
        self.feature_specs = {n: tf.TensorSpec([None, 1], tf.float32, name=n) for n in FEATURES}

    def attributed_sizes(self) -> dict[str, int]:
        return dict.fromkeys(FEATURES, 1)

    def attribute(
        self, arrays: dict[str, np.ndarray], keys: np.ndarray, serialized: list[bytes]
    ) -> Attribution:
        keys = [str(k) for k in keys]
        CALLS[self.spec.name].append(keys)
        if self.needs_serialized:
            SERIALIZED[self.spec.name].append((keys, list(serialized)))
        poisonous = [k for k in keys if k in self.spec.fail_keys]
        if poisonous:
            raise ValueError(f"poisonous example {poisonous[0]}\nsecond line")
        if self.spec.fail_value is not None and np.any(arrays["a"] == self.spec.fail_value):
            raise RuntimeError(f"a == {self.spec.fail_value} is poisonous")
        n = len(keys)
        attributions = {name: WEIGHTS[name] * arrays[name].astype(np.float64) for name in FEATURES}
        predictions = sum(values[:, 0] for values in attributions.values())
        predictions = np.where(np.isin(keys, list(self.spec.nan_keys)), np.nan, predictions)
        return Attribution(
            attributions=attributions,
            predictions=predictions,
            baseline_predictions=np.zeros(n),
            deltas=np.zeros(n),
            targets=np.zeros(n, np.int64),
            baselines={name: np.zeros((n, 1, 1)) for name in FEATURES},
        )


# ---------------------------------------------------------------------------------- helpers


def a_of(i: int) -> float:
    return i + 0.5  # exact in float32, so the fake's results are exact


def b_of(i: int) -> float:
    return i / 4


def payload(key: str | bytes | None, i: int, **changes: Any) -> bytes:
    """Example i: a, b and the key "id" (`changes` replaces features; None removes one)."""
    features: dict[str, Any] = {"a": [a_of(i)], "b": [b_of(i)], "id": key}
    features.update(changes)
    return example_bytes(**{k: v for k, v in features.items() if v is not None})


def chunk(file: str, payloads: Sequence[bytes], first_index: int = 0) -> RecordChunk:
    """The records of `file` from index `first_index` on, as the reader chunks them."""
    offsets = record_offsets(payloads, start=1000 * first_index)  # any distinct offsets do
    indices = list(range(first_index, first_index + len(payloads)))
    return (file, indices, offsets, list(payloads))


def output_schema(passthrough: Sequence[str] = ()) -> pa.Schema:
    return attribution_schema(dict.fromkeys(FEATURES, 1), SCHEMA, passthrough)


def make_fn(
    spec: FakeSpec, key_feature: str | None = "id", passthrough: Sequence[str] = ()
) -> AttributeBatchDoFn:
    """A DoFn after `setup()`, as a worker holds it."""
    fn = AttributeBatchDoFn(
        spec,  # type: ignore[arg-type] - duck-typed: only `load()` and `repr` are used
        SCHEMA,
        output_schema(passthrough),
        key_feature=key_feature,
        passthrough=passthrough,
    )
    fn.setup()
    return fn


def run(fn: AttributeBatchDoFn, chunks: list[RecordChunk]) -> tuple[list[pa.RecordBatch], list]:
    """Everything `process` yields: (result batches, dead letters)."""
    results, letters = [], []
    for out in fn.process(chunks):
        if isinstance(out, beam.pvalue.TaggedOutput):
            assert out.tag == DEAD_LETTER_TAG
            assert isinstance(out.value, DeadLetter)
            letters.append(out.value)
        else:
            assert isinstance(out, pa.RecordBatch)
            assert out.schema.equals(fn._output_schema)
            assert out.num_rows > 0
            results.append(out)
    return results, letters


def rows_by_key(results: list[pa.RecordBatch]) -> dict[str, dict]:
    """Result rows by key; every key exactly once."""
    rows = [row for batch in results for row in batch.to_pylist()]
    by_key = {row["key"]: row for row in rows}
    assert len(by_key) == len(rows), Counter(row["key"] for row in rows).most_common(3)
    return by_key


def assert_fake_values(row: dict, i: int) -> None:
    """The row holds exactly the fake engine's results for example i."""
    a, b = 2.0 * a_of(i), -3.0 * b_of(i)
    assert (row["attr_a"], row["attr_b"]) == (a, b)
    assert row["prediction"] == a + b
    assert (row["baseline_prediction"], row["delta"], row["target"]) == (0.0, 0.0, 0)


def sizes(name: str) -> list[int]:
    return [len(keys) for keys in CALLS[name]]


@pytest.fixture
def spec(request) -> Iterator[FakeSpec]:
    """A FakeSpec named after the test; its records are dropped afterwards."""
    name = request.node.nodeid
    yield FakeSpec(name)
    for records in (LOADS, CALLS, SERIALIZED):
        records.pop(name, None)
    assert attribute._OFFERED == {}


# ------------------------------------------------------------------------------- the basics


def test_clean_batch_is_attributed_once_with_the_fake_values(spec):
    fn = make_fn(spec)
    payloads = [payload(f"k{i}", i) for i in range(6)]

    results, letters = run(
        fn, [chunk("a.tfrecord", payloads[:4]), chunk("b.tfrecord", payloads[4:])]
    )

    assert letters == []
    assert len(results) == 1  # one model call, one batch
    rows = rows_by_key(results)
    assert list(rows) == [f"k{i}" for i in range(6)]
    for i in range(6):
        assert_fake_values(rows[f"k{i}"], i)
    assert CALLS[spec.name] == [[f"k{i}" for i in range(6)]]


def test_without_key_feature_the_key_is_file_and_record_index(spec):
    fn = make_fn(spec, key_feature=None)
    payloads = [payload(f"k{i}", i) for i in range(3)]

    results, _ = run(fn, [chunk("gs://bucket/a.tfrecord", payloads, first_index=7)])

    assert list(rows_by_key(results)) == [f"gs://bucket/a.tfrecord:{i}" for i in (7, 8, 9)]


# ----------------------------------------------------------------------- the halving retry


@pytest.mark.parametrize(
    ("n", "poisonous", "expected_sizes"),
    [
        (8, {3}, [8, 4, 2, 2, 1, 1, 4]),
        (8, {0}, [8, 4, 2, 1, 1, 2, 4]),
        (8, {7}, [8, 4, 4, 2, 2, 1, 1]),
        (5, {4}, [5, 2, 3, 1, 2, 1, 1]),  # odd sizes: the first half is the smaller one
        (1, {0}, [1]),
        (8, {1, 6}, [8, 4, 2, 1, 1, 2, 4, 2, 2, 1, 1]),  # one in each half
    ],
)
def test_a_failing_batch_is_halved_down_to_the_poisonous_examples(
    spec, n, poisonous, expected_sizes
):
    poison = {f"k{i}" for i in poisonous}
    spec = dataclasses.replace(spec, fail_keys=frozenset(poison))
    fn = make_fn(spec)
    payloads = [payload(f"k{i}", i) for i in range(n)]
    cut = n // 2 + 1  # two files, so each dead letter must find its own file and index
    chunks = [chunk("a.tfrecord", payloads[:cut]), chunk("b.tfrecord", payloads[cut:])]

    results, letters = run(fn, chunks)

    assert sizes(spec.name) == expected_sizes
    assert [keys for keys in CALLS[spec.name] if len(keys) == 1 and keys[0] in poison] == [
        [k] for k in sorted(poison, key=lambda k: int(k[1:]))
    ]
    assert sorted(letter.key for letter in letters) == sorted(poison)
    for letter in letters:
        i = int(letter.key[1:])
        file, index = ("a.tfrecord", i) if i < cut else ("b.tfrecord", i - cut)
        records = chunks[0] if file == "a.tfrecord" else chunks[1]
        assert (letter.file, letter.record_index, letter.stage) == (file, index, STAGE_MODEL)
        assert letter.offset == records[2][index]
        assert letter.raw == payloads[i]
        assert letter.reason.startswith("model failed")
        assert f"ValueError: poisonous example k{i} second line" in letter.reason
        assert "\n" not in letter.reason
    rows = rows_by_key(results)
    assert sorted(rows) == sorted(f"k{i}" for i in range(n) if i not in poisonous)
    for key, row in rows.items():
        assert_fake_values(row, int(key[1:]))


def test_nan_outputs_are_retried_and_dead_lettered_like_an_exception(spec):
    spec = dataclasses.replace(spec, nan_keys=frozenset({"k2"}))
    fn = make_fn(spec)
    payloads = [payload(f"k{i}", i) for i in range(8)]

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert sizes(spec.name) == [8, 4, 2, 2, 1, 1, 4]
    assert [(d.key, d.stage, d.record_index, d.raw) for d in letters] == [
        ("k2", STAGE_MODEL, 2, payloads[2])
    ]
    assert letters[0].reason.startswith("model failed")
    assert "NaN" in letters[0].reason
    rows = rows_by_key(results)
    assert sorted(rows) == sorted(f"k{i}" for i in range(8) if i != 2)
    assert all(math.isfinite(row["prediction"]) for row in rows.values())
    for key, row in rows.items():
        assert_fake_values(row, int(key[1:]))


def test_a_poisonous_feature_value_is_found_without_a_key_feature(spec):
    spec = dataclasses.replace(spec, fail_value=a_of(5))
    fn = make_fn(spec, key_feature=None)
    payloads = [payload(None, i) for i in range(8)]

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert sizes(spec.name) == [8, 4, 4, 2, 1, 1, 2]
    assert [(d.key, d.stage, d.record_index) for d in letters] == [("a.tfrecord:5", STAGE_MODEL, 5)]
    assert "RuntimeError: a == 5.5 is poisonous" in letters[0].reason
    assert len(rows_by_key(results)) == 7


def test_when_every_example_fails_only_dead_letters_come_out(spec):
    keys = [f"k{i}" for i in range(4)]
    spec = dataclasses.replace(spec, fail_keys=frozenset(keys))
    fn = make_fn(spec)
    payloads = [payload(k, i) for i, k in enumerate(keys)]

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert results == []
    assert sizes(spec.name) == [4, 2, 1, 1, 2, 1, 1]
    assert [(d.key, d.stage, d.record_index, d.raw) for d in letters] == [
        (k, STAGE_MODEL, i, payloads[i]) for i, k in enumerate(keys)
    ]
    assert all(d.reason.startswith("model failed: ValueError: poisonous") for d in letters)


def test_serialized_examples_stay_with_their_rows_through_the_retries(spec):
    spec = dataclasses.replace(spec, fail_keys=frozenset({"k3"}), needs_serialized=True)
    fn = make_fn(spec)
    payloads = [payload(f"k{i}", i) for i in range(8)]
    payloads[1] = payload("k1", 1, b=None)  # not valid: never reaches the engine
    by_key = {f"k{i}": p for i, p in enumerate(payloads)}

    _, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert [(d.key, d.stage) for d in letters] == [("k1", STAGE_VALIDATE), ("k3", STAGE_MODEL)]
    calls = SERIALIZED[spec.name]
    assert [len(keys) for keys, _ in calls] == [7, 3, 1, 2, 1, 1, 4]
    for keys, serialized in calls:
        assert serialized == [by_key[k] for k in keys]


# ----------------------------------------------------------------------- decode and validate


def test_records_that_are_not_examples_are_dead_lettered_at_decode(spec):
    fn = make_fn(spec)
    wrong_type = payload("k2", 2, a=[3])  # an int64 list where the schema says FLOAT
    payloads = [payload("k0", 0), b"\x01 not a tf.Example", wrong_type, payload("k3", 3)]
    records = chunk("a.tfrecord", payloads, first_index=10)

    results, letters = run(fn, [records])

    assert [(d.file, d.record_index, d.offset, d.stage, d.raw, d.key) for d in letters] == [
        ("a.tfrecord", 11, records[2][1], STAGE_DECODE, payloads[1], ""),
        ("a.tfrecord", 12, records[2][2], STAGE_DECODE, payloads[2], ""),
    ]
    assert all(d.reason.startswith("not a valid tf.train.Example") for d in letters)
    rows = rows_by_key(results)
    assert sorted(rows) == ["k0", "k3"]
    assert_fake_values(rows["k3"], 3)


@pytest.mark.parametrize(
    ("changes", "reason", "key"),
    [
        ({"b": None}, "feature 'b' is missing", "bad"),
        ({"a": [1.0, 2.0]}, "feature 'a' has 2 values, expected 1", "bad"),
        ({"a": [float("nan")]}, "feature 'a' has NaN or Inf values", "bad"),
        ({"b": [float("-inf")]}, "feature 'b' has NaN or Inf values", "bad"),
        ({"id": None}, "key feature 'id' is missing", ""),
        ({"id": [b"bad", b"other"]}, "key feature 'id' has 2 values", "bad"),
    ],
    ids=["missing", "two_values", "nan", "inf", "missing_key", "two_keys"],
)
def test_invalid_examples_are_dead_lettered_at_validate(spec, changes, reason, key):
    fn = make_fn(spec)
    payloads = [payload("k0", 0), payload("bad", 1, **changes), payload("k2", 2)]
    records = chunk("a.tfrecord", payloads)

    results, letters = run(fn, [records])

    assert [(d.file, d.record_index, d.offset, d.stage, d.raw) for d in letters] == [
        ("a.tfrecord", 1, records[2][1], STAGE_VALIDATE, payloads[1])
    ]
    assert letters[0].reason == reason
    assert letters[0].key == key
    assert CALLS[spec.name] == [["k0", "k2"]]  # the engine never sees it
    assert sorted(rows_by_key(results)) == ["k0", "k2"]


def test_no_usable_example_means_no_result_batch_and_no_model_call(spec):
    fn = make_fn(spec)
    payloads = [payload("k0", 0, a=None), b"junk", payload(None, 2)]

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert results == []
    assert [d.stage for d in letters] == [STAGE_DECODE, STAGE_VALIDATE, STAGE_VALIDATE]
    assert CALLS[spec.name] == []


def test_no_chunks_or_empty_chunks_yield_nothing(spec):
    fn = make_fn(spec)

    assert run(fn, []) == ([], [])
    assert run(fn, [("a.tfrecord", [], [], [])]) == ([], [])
    assert CALLS[spec.name] == []


# ------------------------------------------------------------------------------------- keys


def test_a_key_that_is_not_utf8_is_dead_lettered_never_replaced(spec):
    fn = make_fn(spec)
    payloads = [
        payload("k0", 0),
        payload(b"k\xff", 1),
        payload(b"k\xfe", 2),  # differs from the one above only in its invalid byte
        payload("k\ufffd", 3),  # the valid key that U+FFFD replacement would collapse them to
    ]

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert [(d.record_index, d.stage, d.raw) for d in letters] == [
        (1, STAGE_VALIDATE, payloads[1]),
        (2, STAGE_VALIDATE, payloads[2]),
    ]
    for letter in letters:
        assert "not valid UTF-8" in letter.reason
        assert "\ufffd" not in letter.reason and "\ufffd" not in letter.key
    assert [d.key for d in letters] == ["k\\xff", "k\\xfe"]  # escaped, still distinct
    assert CALLS[spec.name] == [["k0", "k\ufffd"]]
    rows = rows_by_key(results)
    assert list(rows) == ["k0", "k\ufffd"]
    assert_fake_values(rows["k\ufffd"], 3)


def test_valid_utf8_keys_come_out_exactly(spec):
    fn = make_fn(spec)
    keys = ["ключ-1", "键-2", "clé 3", "emoji-🙂", "tab\tkey", "ascii"]
    payloads = [payload(k.encode(), i) for i, k in enumerate(keys)]

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert letters == []
    rows = rows_by_key(results)
    assert list(rows) == keys
    for i, k in enumerate(keys):
        assert_fake_values(rows[k], i)


def test_integer_key_features_come_out_as_decimal_strings(spec):
    fn = make_fn(spec, key_feature="n")
    values = [7, -3, 0, 1234567890123, -(2**63)]
    payloads = [payload(None, i, n=[v]) for i, v in enumerate(values)]

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert letters == []
    assert list(rows_by_key(results)) == ["7", "-3", "0", "1234567890123", str(-(2**63))]


# ----------------------------------------------------------------------------- pass-through


def test_passthrough_columns_stay_with_their_rows_through_the_retries(spec):
    spec = dataclasses.replace(spec, fail_keys=frozenset({"k2"}))
    passthrough = ["label", "country", "tags"]
    fn = make_fn(spec, passthrough=passthrough)
    payloads = [
        payload(f"k{i}", i, label=[10 + i], country=f"C{i}", tags=[f"t{i}", "x"]) for i in range(6)
    ]
    no_tags = tf.train.Feature(bytes_list=tf.train.BytesList())
    payloads[4] = payload("k4", 4, label=[14], tags=no_tags)  # no country, no tags
    payloads[5] = payload("k5", 5, label=[15], country=b"\xffDE")  # no tags

    results, letters = run(fn, [chunk("a.tfrecord", payloads)])

    assert [d.key for d in letters] == ["k2"]
    rows = rows_by_key(results)
    assert {k: (r["label"], r["country"], r["tags"]) for k, r in rows.items()} == {
        "k0": (10, "C0", ["t0", "x"]),
        "k1": (11, "C1", ["t1", "x"]),
        "k3": (13, "C3", ["t3", "x"]),
        "k4": (14, None, []),
        "k5": (15, "\ufffdDE", None),  # pass-through bytes (not keys) are replaced
    }


# ------------------------------------------------------------------------ one load a process


def test_copies_of_one_dofn_load_the_engine_once(spec):
    # Beam hands each worker thread/bundle processor its own unpickled copy of the DoFn.
    fn = AttributeBatchDoFn(spec, SCHEMA, output_schema(), key_feature="id")  # type: ignore[arg-type]
    copies = [pickler.loads(pickler.dumps(fn)) for _ in range(3)]
    for copy in copies:
        copy.setup()
    assert LOADS[spec.name] == 1
    assert len({id(copy._loaded) for copy in copies}) == 1
    for i, copy in enumerate(copies):
        results, _ = run(copy, [chunk("a.tfrecord", [payload(f"k{i}", i)])])
        assert list(rows_by_key(results)) == [f"k{i}"]

    other = make_fn(dataclasses.replace(spec, nan_keys=frozenset({"x"})))  # a different spec
    assert LOADS[spec.name] == 2
    assert other._loaded is not copies[0]._loaded


def test_a_separately_built_dofn_loads_its_own_engine(spec):
    # One engine per worker process *per pipeline*: Beam's copies of one DoFn share it (above),
    # while a DoFn built for another run loads afresh, so a model rewritten at the same path
    # between two runs in one process is never served stale from the first run.
    first = make_fn(spec)
    second = make_fn(FakeSpec(spec.name))
    assert repr(first._spec) == repr(second._spec)
    assert LOADS[spec.name] == 2
    assert second._loaded is not first._loaded


def test_an_offered_engine_is_taken_instead_of_loading(spec):
    offered = spec.load()
    assert isinstance(offered, Attributor)
    with offer_loaded_engine(spec, offered):  # type: ignore[arg-type]
        fn = make_fn(spec)
        assert attribute._OFFERED == {}  # taken by the first worker
    assert LOADS[spec.name] == 1  # only the launcher's
    assert fn._loaded is offered
    later = make_fn(spec)  # the offer has ended: a new DoFn loads its own
    assert LOADS[spec.name] == 2 and later._loaded is not offered


def test_in_a_pipeline_one_load_and_every_output(spec):
    spec = dataclasses.replace(spec, fail_keys=frozenset({"k3"}))
    fn = AttributeBatchDoFn(spec, SCHEMA, output_schema(), key_feature="id")  # type: ignore[arg-type]
    first = [payload(f"k{i}", i) for i in range(8)]
    second = [payload("k8", 8), b"junk", payload("k10", 10, a=None), payload("k11", 11)]
    batches = [
        [chunk("a.tfrecord", first[:5]), chunk("a.tfrecord", first[5:], first_index=5)],
        [chunk("b.tfrecord", second)],
    ]

    pipeline = local_pipeline()
    outputs = (
        pipeline
        | beam.Create(batches, reshuffle=False)
        | beam.ParDo(fn).with_outputs(DEAD_LETTER_TAG, main="results")
    )
    assert_that(
        outputs.results
        | "Rows" >> beam.FlatMap(lambda b: [(r["key"], r["prediction"]) for r in b.to_pylist()]),
        equal_to([(f"k{i}", 2 * a_of(i) - 3 * b_of(i)) for i in [0, 1, 2, 4, 5, 6, 7, 8, 11]]),
        label="CheckResults",
    )
    assert_that(
        outputs[DEAD_LETTER_TAG]
        | "Letters" >> beam.Map(lambda d: (d.file, d.record_index, d.stage, d.key)),
        equal_to(
            [
                ("a.tfrecord", 3, STAGE_MODEL, "k3"),
                ("b.tfrecord", 1, STAGE_DECODE, ""),
                ("b.tfrecord", 2, STAGE_VALIDATE, "k10"),
            ]
        ),
        label="CheckDeadLetters",
    )
    result = pipeline.run()
    result.wait_until_finish()

    counters = counter_totals(result)
    assert counters["model_loads"] == 1
    assert LOADS[spec.name] == 1
    assert counters["batches"] == 2
    assert counters["examples_attributed"] == 9
    assert counters["model_failures"] == 4  # the calls of 8, 4, 2 and 1 examples that failed
    assert counters["dead_letters_decode"] == 1
    assert counters["dead_letters_validate"] == 1
    assert counters["dead_letters_model"] == 1


# ---------------------------------------------------------------- blocks and prefetching


def test_prefetching_the_next_batch_changes_nothing_but_the_thread(spec, monkeypatch):
    """A block's batches come out the same, in the same order, with and without decoding the
    next batch in the background; with prefetch the decoding really runs in another thread."""
    from transforms.attribute import AttributeBlockDoFn
    from transforms.records import Block

    payloads = [payload(f"k{i}", i) for i in range(9)]
    payloads[2] = b"not an example"  # dead-lettered at decode
    payloads[5] = payload(None, 5)  # no key: dead-lettered at validate
    chunks = [
        chunk("a.tfrecord", payloads[0:3], 0),
        chunk("a.tfrecord", payloads[3:6], 3),
        chunk("a.tfrecord", payloads[6:9], 6),
    ]
    block = Block(0, 0, "a.tfrecord", chunks, [], last=True)
    threads: list[str] = []
    prepare = AttributeBatchDoFn.prepare

    def spy(self, batch_chunks):
        import threading

        threads.append(threading.current_thread().name)
        return prepare(self, batch_chunks)

    monkeypatch.setattr(AttributeBatchDoFn, "prepare", spy)
    outputs = {}
    for prefetch in (False, True):
        fn = AttributeBlockDoFn(make_fn(spec))
        fn.prefetch = prefetch
        (attributed,) = list(fn.process(block))
        fn.teardown()
        rows = [row for batch in attributed.results for row in batch.to_pylist()]
        letters = [(d.record_index, d.stage, d.reason) for d in attributed.dead_letters]
        outputs[prefetch] = (rows, letters, attributed.records_read)
    assert outputs[True] == outputs[False]
    rows, letters, read = outputs[True]
    assert [row["key"] for row in rows] == [f"k{i}" for i in (0, 1, 3, 4, 6, 7, 8)]
    assert [(i, stage) for i, stage, _ in letters] == [(2, STAGE_DECODE), (5, STAGE_VALIDATE)]
    assert read == 9
    assert len(CALLS[spec.name]) == 6  # one model call per batch, each run
    assert set(threads[:3]) == {"MainThread"}  # without prefetch: the caller decodes
    assert all(name.startswith("igbeam-prepare") for name in threads[3:])
