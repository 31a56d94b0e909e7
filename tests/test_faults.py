"""Fault injection: nothing is lost (issue "Nothing lost").

One job runs on a mix of good and damaged inputs (damaged TFRecord framing, records that are not
tf.train.Examples, features of the wrong type / length / value, missing features, duplicate keys)
and is compared with a clean run on only the good examples. A separate small job runs a
SavedModel that fails (an assertion) or returns NaN on poisonous examples placed in the middle of
a batch. Every good example must be attributed exactly once with the clean run's values, every
bad record must be in `dead_letter/` with the right stage, location, reason and raw bytes, and
the accounting invariant must hold.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from helpers import (
    RECORD_FOOTER,
    RECORD_HEADER,
    demo_job_config,
    example_bytes,
    read_parquet,
    record_offsets,
    write_records,
)

from attribution import IntegratedGradients, load_model
from pipeline import demo
from pipeline.config import parse_config
from pipeline.job import DeadLetterThresholdError, run_job
from transforms.decode import ExampleDecoder, load_schema

ATTR_COLUMNS = [f"attr_{name}" for name in demo.FEATURES]
HEADER, FOOTER = RECORD_HEADER, RECORD_FOOTER  # TFRecord framing: length + CRC, data CRC


# ------------------------------------------------------------------------------------ helpers


def example(example_id: str, values, label: int = 0, country: str = "FR", **replace) -> bytes:
    """A serialized tf.train.Example; `replace` overrides features (None removes one)."""
    features = {name: float(values[j]) for j, name in enumerate(demo.FEATURES)}
    features.update(label=int(label), country=country, example_id=example_id)
    for name, value in replace.items():
        if value is None:
            del features[name]
        else:
            features[name] = value
    return example_bytes(**features)


def floats(*values: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x5A]) + data[position + 1 :]


def not_an_example(rng: np.random.Generator) -> bytes:
    """Random bytes that are not a parsable protocol buffer."""
    while True:
        payload = rng.bytes(48)
        try:
            tf.train.Example.FromString(payload)
        except Exception:  # noqa: BLE001 - DecodeError: what we want
            return payload


def job_config(model_path, pattern, schema_path, out, **top) -> dict:
    settings = {"batch_size": 8, "slices": [["country"]], "max_dead_letter_fraction": 0.9}
    return demo_job_config(model_path, pattern, schema_path, out, **{**settings, **top})


# ------------------------------------------------------------------------------------ fixtures


class Expected:
    """What the fault run must produce."""

    def __init__(self) -> None:
        self.good: dict[str, list[bytes]] = {}  # key -> serialized good examples with that key
        self.dead: list[dict] = []  # expected dead letters (file basename, stage, ...)

    def add_good(self, key: str, payload: bytes) -> bytes:
        self.good.setdefault(key, []).append(payload)
        return payload

    def add_dead(self, file: str, stage: str, reason: str, **fields) -> None:
        self.dead.append({"file": file, "stage": stage, "reason": reason, **fields})

    @property
    def good_payloads(self) -> list[bytes]:
        return [p for payloads in self.good.values() for p in payloads]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory, demo_model):
    """The demo's Keras model (trained one epoch) and its TFMD schema."""
    root = tmp_path_factory.mktemp("faults_model")
    shutil.copyfile(demo_model, root / "model.keras")
    (root / "schema.pbtxt").write_text(demo.SCHEMA_TEXT)
    return root


def _build_fault_inputs(directory) -> Expected:
    """Writes the mix of good and bad files; returns what the job must make of them."""
    directory.mkdir()
    data = demo.make_data(120, seed=11)
    rng = np.random.default_rng(7)
    expected = Expected()
    counter = iter(range(10**6))

    def good(prefix: str = "g") -> bytes:
        i = next(counter)
        key = f"{prefix}-{i:04d}"
        payload = example(key, data["x"][i], data["label"][i], str(data["country"][i]))
        return expected.add_good(key, payload)

    def victim(name: str) -> bytes:
        i = next(counter)
        return example(name, data["x"][i], data["label"][i], str(data["country"][i]))

    # a: a data-CRC flip in record 2 of a plain file (plus one of the two duplicate keys).
    payloads = [good(), good(), victim("victim-data-crc"), good(), good(), good()]
    payloads.append(expected.add_good("dup", example("dup", data["x"][100], 1, "DE")))
    write_records(directory / "a_data_crc.tfrecord", payloads)
    offsets = record_offsets(payloads)
    raw = (directory / "a_data_crc.tfrecord").read_bytes()
    position = offsets[2] + HEADER + len(payloads[2]) // 2
    (directory / "a_data_crc.tfrecord").write_bytes(flip(raw, position))
    damaged = flip(raw, position)[offsets[2] + HEADER : offsets[2] + HEADER + len(payloads[2])]
    expected.add_dead(
        "a_data_crc.tfrecord",
        "read",
        "data CRC mismatch",
        record_index=2,
        offset=offsets[2],
        raw=damaged,
    )

    # b: a length-CRC flip in record 3.
    payloads = [good(), good(), good(), victim("victim-length-crc"), good(), good()]
    write_records(directory / "b_length_crc.tfrecord", payloads)
    offsets = record_offsets(payloads)
    raw = (directory / "b_length_crc.tfrecord").read_bytes()
    (directory / "b_length_crc.tfrecord").write_bytes(flip(raw, offsets[3] + 9))
    expected.add_dead(
        "b_length_crc.tfrecord",
        "read",
        "length CRC mismatch",
        record_index=3,
        offset=offsets[3],
        raw=payloads[3],
    )

    # c: 100 garbage bytes inserted between records 2 and 3: every record survives.
    payloads = [good() for _ in range(6)]
    write_records(directory / "c_garbage.tfrecord", payloads)
    offsets = record_offsets(payloads)
    raw = (directory / "c_garbage.tfrecord").read_bytes()
    garbage = b"\xff" * 4 + rng.bytes(96)  # a huge declared length: not a record header
    (directory / "c_garbage.tfrecord").write_bytes(raw[: offsets[3]] + garbage + raw[offsets[3] :])
    expected.add_dead(
        "c_garbage.tfrecord",
        "read",
        "skipped 100 bytes",
        record_index=-1,
        offset=offsets[3],
        raw=garbage,
    )

    # d: the last record truncated in the middle of its data.
    payloads = [good(), good(), good(), good(), victim("victim-truncated")]
    write_records(directory / "d_truncated.tfrecord", payloads)
    offsets = record_offsets(payloads)
    raw = (directory / "d_truncated.tfrecord").read_bytes()
    cut = offsets[4] + HEADER + len(payloads[4]) // 2
    (directory / "d_truncated.tfrecord").write_bytes(raw[:cut])
    expected.add_dead(
        "d_truncated.tfrecord",
        "read",
        "truncated record",
        record_index=4,
        offset=offsets[4],
        raw=raw[offsets[4] : cut],
    )

    # e: an empty file: nothing to attribute, nothing to dead-letter.
    (directory / "e_empty.tfrecord").write_bytes(b"")

    # f: a gzip file cut in half: the records decodable before the cut survive.
    payloads = [victim(f"gz-{i:02d}") for i in range(40)]
    write_records(directory / "f_cut.tfrecord.gz", payloads, gzip=True)
    offsets = record_offsets(payloads)
    whole = (directory / "f_cut.tfrecord.gz").read_bytes()
    ends = {o + HEADER + len(payloads[i]) + FOOTER for i, o in enumerate(offsets)}
    # Cut near the middle, where the decodable prefix ends inside a record (the serialized
    # examples, hence the compressed bytes, can differ between processes: map field order).
    for size in range(len(whole) // 2, len(whole)):
        compressed = whole[:size]
        prefix = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(compressed)
        if len(prefix) not in ends:
            break
    (directory / "f_cut.tfrecord.gz").write_bytes(compressed)
    complete = [
        i for i, o in enumerate(offsets) if o + HEADER + len(payloads[i]) + FOOTER <= len(prefix)
    ]
    assert 5 <= len(complete) < 35, "the cut should leave some records on each side"
    for i in complete:
        expected.add_good(f"gz-{i:02d}", payloads[i])
    end = offsets[len(complete)]
    assert len(prefix) > end, "the cut should fall inside a record"
    expected.add_dead(
        "f_cut.tfrecord.gz",
        "read",
        "truncated gzip",
        record_index=-1,
        offset=end,
        raw=prefix[end:],
    )

    # g: records with valid framing that are not tf.train.Examples.
    junk = [not_an_example(rng) for _ in range(3)]
    payloads = [good(), junk[0], good(), good(), junk[1], junk[2], good()]
    write_records(directory / "g_not_example.tfrecord", payloads)
    offsets = record_offsets(payloads)
    for index in (1, 4, 5):
        expected.add_dead(
            "g_not_example.tfrecord",
            "decode",
            "not a valid tf.train.Example",
            record_index=index,
            offset=offsets[index],
            raw=payloads[index],
        )

    # h: bad features, each between good neighbours (and the second duplicate key).
    x = data["x"][101]
    bad = {
        "bad-type": (
            "decode",
            "f0",
            example("bad-type", x, f0=tf.train.Feature(int64_list=tf.train.Int64List(value=[3]))),
        ),
        "bad-length": ("validate", "f1", example("bad-length", x, f1=floats(1.0, 2.0, 3.0))),
        "bad-nan": ("validate", "NaN", example("bad-nan", x, f2=floats(float("nan")))),
        "bad-inf": ("validate", "Inf", example("bad-inf", x, f3=floats(float("inf")))),
        "bad-missing": ("validate", "'f4' is missing", example("bad-missing", x, f4=None)),
    }
    payloads, where = [good()], {}
    for key, (_, _, payload) in bad.items():
        where[key] = len(payloads)
        payloads += [payload, good()]
    payloads.append(expected.add_good("dup", example("dup", data["x"][102], 2, "US")))
    payloads += [good() for _ in range(9)]  # later batches after the bad records
    write_records(directory / "h_bad_features.tfrecord", payloads)
    offsets = record_offsets(payloads)
    for key, (stage, mention, payload) in bad.items():
        index = where[key]
        expected.add_dead(
            "h_bad_features.tfrecord",
            stage,
            mention,
            record_index=index,
            offset=offsets[index],
            raw=payload,
            key=key if stage == "validate" else "",
        )
    return expected


@pytest.fixture(scope="module")
def fault_run(model_root, tmp_path_factory):
    """One run on the mix of good and bad files, and one on only the good examples."""
    root = tmp_path_factory.mktemp("faults")
    expected = _build_fault_inputs(root / "mixed")
    schema = model_root / "schema.pbtxt"
    summary = run_job(
        parse_config(
            job_config(model_root / "model.keras", root / "mixed" / "*", schema, root / "out")
        )
    )
    (root / "clean").mkdir()
    write_records(root / "clean" / "good.tfrecord", expected.good_payloads)
    clean_summary = run_job(
        parse_config(
            job_config(
                model_root / "model.keras",
                root / "clean" / "*.tfrecord",
                schema,
                root / "clean_out",
                max_dead_letter_fraction=0.0,
            )
        )
    )
    return {
        "expected": expected,
        "out": root / "out",
        "summary": summary,
        "clean_out": root / "clean_out",
        "clean_summary": clean_summary,
    }


# --------------------------------------------------------------------------------------- tests


def test_fault_run_succeeds_and_balances(fault_run):
    out, summary, expected = fault_run["out"], fault_run["summary"], fault_run["expected"]
    assert summary["status"] == "succeeded"
    assert os.path.exists(out / "_SUCCESS")
    counts = summary["counts"]
    n_good = len(expected.good_payloads)
    assert counts["input_files"] == 8
    assert counts["examples_attributed"] == n_good
    assert counts["dead_letters"] == len(expected.dead)
    assert counts["records_read"] == counts["examples_attributed"] + counts["dead_letters"]
    assert summary["accounting"]["balanced"] is True
    assert summary["accounting"]["records_read"] == counts["records_read"]
    by_stage = {stage: 0 for stage in ("read", "decode", "validate", "model")}
    for letter in expected.dead:
        by_stage[letter["stage"]] += 1
    assert counts["dead_letters_by_stage"] == by_stage
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["counts"] == counts and on_disk["status"] == "succeeded"


def test_every_good_example_attributed_once_as_in_clean_run(fault_run):
    expected = fault_run["expected"]
    frame = read_parquet(fault_run["out"] / "attributions")
    clean = read_parquet(fault_run["clean_out"] / "attributions")
    assert fault_run["clean_summary"]["counts"]["dead_letters"] == 0

    wanted = {key: len(payloads) for key, payloads in expected.good.items()}
    assert frame.key.value_counts().to_dict() == wanted
    assert clean.key.value_counts().to_dict() == wanted
    assert not any(k.startswith(("victim", "bad-")) for k in frame.key)

    columns = ["key", "prediction", *ATTR_COLUMNS, "delta"]
    mixed = frame.sort_values(["key", "prediction"])[columns].reset_index(drop=True)
    reference = clean.sort_values(["key", "prediction"])[columns].reset_index(drop=True)
    assert list(mixed.key) == list(reference.key)
    np.testing.assert_allclose(
        mixed[columns[1:]].to_numpy(float), reference[columns[1:]].to_numpy(float), atol=1e-6
    )
    pd.testing.assert_frame_equal(
        frame.sort_values(["key", "prediction"])[["key", "target", "label", "country"]].reset_index(
            drop=True
        ),
        clean.sort_values(["key", "prediction"])[["key", "target", "label", "country"]].reset_index(
            drop=True
        ),
    )


def test_every_bad_record_is_dead_lettered_with_stage_place_reason_and_raw(fault_run):
    expected = fault_run["expected"]
    dead = read_parquet(fault_run["out"] / "dead_letter")
    assert len(dead) == len(expected.dead)
    dead["name"] = [os.path.basename(f) for f in dead.file]
    assert (dead.reason.str.len() > 0).all()
    assert (dead.raw.map(len) > 0).all()  # every bad record here has bytes to replay
    for want in expected.dead:
        rows = dead[
            (dead.name == want["file"])
            & (dead.offset == want["offset"])
            & (dead.record_index == want["record_index"])
        ]
        assert len(rows) == 1, f"no single dead letter for {want['file']} at {want['offset']}"
        row = rows.iloc[0]
        assert row.stage == want["stage"], (want["file"], row.reason)
        assert want["reason"] in row.reason, row.reason
        assert bytes(row.raw) == want["raw"], (want["file"], want["offset"])
        if "key" in want:
            assert row.key == want["key"]
        assert "\n" not in row.reason


def test_read_damage_keeps_records_around_it(fault_run):
    frame = read_parquet(fault_run["out"] / "attributions")
    keys = set(frame.key)
    expected = fault_run["expected"]
    # Before and after each damage: every good key of every damaged file is attributed.
    assert set(expected.good) <= keys
    dead = read_parquet(fault_run["out"] / "dead_letter")
    read = dead[dead.stage == "read"]
    assert sorted(os.path.basename(f) for f in read.file) == [
        "a_data_crc.tfrecord",
        "b_length_crc.tfrecord",
        "c_garbage.tfrecord",
        "d_truncated.tfrecord",
        "f_cut.tfrecord.gz",
    ]
    assert not any("e_empty" in f for f in dead.file)


def test_duplicate_keys_are_reported_not_dropped(fault_run):
    summary, out = fault_run["summary"], fault_run["out"]
    assert summary["counts"]["duplicate_keys"] == 1
    duplicates = read_parquet(out / "duplicate_keys")
    assert duplicates.to_dict("records") == [{"key": "dup", "count": 2}]
    frame = read_parquet(out / "attributions")
    rows = frame[frame.key == "dup"].sort_values("label")
    assert list(rows.label) == [1, 2] and list(rows.country) == ["DE", "US"]


def test_wrong_type_feature_does_not_break_decoding_of_other_records(model_root):
    """tfx-bsl refuses a float feature given as int64_list; the records after it still decode."""
    decoder = ExampleDecoder(load_schema(str(model_root / "schema.pbtxt")))
    x = np.arange(8, dtype=np.float32)
    wrong = example("wrong", x, f0=tf.train.Feature(int64_list=tf.train.Int64List(value=[3])))
    records = [example("a", x), wrong, example("b", x), example("c", x)]
    batch, good, reasons = decoder.decode(records)
    assert good == [0, 2, 3]
    assert reasons[1] and "f0" in reasons[1]
    assert [r for i, r in enumerate(reasons) if i != 1] == ["", "", ""]
    assert [v[0] for v in batch.column("example_id").to_pylist()] == [b"a", b"b", b"c"]
    # The same decoder keeps working for the next batch.
    batch, good, reasons = decoder.decode([example("d", x), example("e", x)])
    assert good == [0, 1] and reasons == ["", ""] and batch.num_rows == 2


def test_above_threshold_writes_outputs_then_fails_without_success(model_root, tmp_path):
    data = demo.make_data(4, seed=3)
    rng = np.random.default_rng(1)
    payloads = [
        example("t-0", data["x"][0]),
        not_an_example(rng),
        example("t-1", data["x"][1]),
        not_an_example(rng),
        example("t-2", data["x"][2]),
    ]
    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data" / "part.tfrecord", payloads)
    out = tmp_path / "out"
    out.mkdir()
    (out / "_SUCCESS").write_bytes(b"")  # a previous successful run's marker
    config = job_config(
        model_root / "model.keras",
        tmp_path / "data" / "*.tfrecord",
        model_root / "schema.pbtxt",
        out,
        max_dead_letter_fraction=0.3,
    )
    with pytest.raises(DeadLetterThresholdError, match="max_dead_letter_fraction") as info:
        run_job(parse_config(config))
    assert not os.path.exists(out / "_SUCCESS")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed_dead_letter_threshold"
    assert info.value.summary["status"] == "failed_dead_letter_threshold"
    assert summary["failure"] and "2 of 5 records" in summary["failure"]
    assert summary["counts"]["dead_letters"] == 2
    assert summary["accounting"]["balanced"] is True
    assert sorted(read_parquet(out / "attributions").key) == ["t-0", "t-1", "t-2"]
    dead = read_parquet(out / "dead_letter")
    assert list(dead.stage) == ["decode", "decode"]
    assert sorted(bytes(r) for r in dead.raw) == sorted([payloads[1], payloads[3]])


# ------------------------------------------------------------------------------ model failures


class PoisonModel(tf.Module):
    """Softmax of a fixed linear map of f0..f7; fails for f0 >= 1000, NaN for f1 < -1000."""

    def __init__(self) -> None:
        super().__init__()
        weights = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
        self.w = tf.Variable(weights)

    @tf.function(
        input_signature=[tf.TensorSpec([None, 1], tf.float32, name=n) for n in demo.FEATURES]
    )
    def serve(self, f0, f1, f2, f3, f4, f5, f6, f7):
        tf.debugging.assert_less(f0, 1000.0, message="poison: f0 must be below 1000")
        x = tf.concat([f0, f1, f2, f3, f4, f5, f6, f7], axis=1)
        # sqrt of a negative number (NaN) where f1 < -1000, else sqrt(0); no gradient.
        poison = tf.stop_gradient(tf.sqrt(tf.minimum(f1 + 1000.0, 0.0)))
        return {"probs": tf.nn.softmax(tf.matmul(x, self.w) + poison)}


@pytest.fixture(scope="module")
def poison_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("poison")
    module = PoisonModel()
    tf.saved_model.save(module, str(root / "model"), signatures={"serving_default": module.serve})
    (root / "schema.pbtxt").write_text(demo.SCHEMA_TEXT)
    data = demo.make_data(24, seed=9)
    x = data["x"].copy()
    poisons = {3: ("f0", 5000.0), 4: ("f1", -5000.0), 13: ("f0", 1000.0), 20: ("f1", -2000.0)}
    for i, (name, value) in poisons.items():
        x[i, demo.FEATURES.index(name)] = value
    payloads = [example(f"p-{i:02d}", x[i], data["label"][i]) for i in range(24)]
    (root / "data").mkdir()
    write_records(root / "data" / "part.tfrecord", payloads)
    offsets = record_offsets(payloads)
    out = root / "out"
    summary = run_job(
        parse_config(
            job_config(
                root / "model",
                root / "data" / "*.tfrecord",
                root / "schema.pbtxt",
                out,
                passthrough=[],
                slices=[],
            )
        )
    )
    return {
        "root": root,
        "x": x,
        "poisons": poisons,
        "payloads": payloads,
        "offsets": offsets,
        "summary": summary,
        "out": out,
    }


def test_model_failures_dead_letter_only_the_poisonous_examples(poison_run):
    summary, out, poisons = poison_run["summary"], poison_run["out"], poison_run["poisons"]
    assert summary["status"] == "succeeded"
    counts = summary["counts"]
    assert counts["examples_attributed"] == 24 - len(poisons)
    assert counts["dead_letters"] == len(poisons)
    assert counts["dead_letters_by_stage"] == {
        "read": 0,
        "decode": 0,
        "validate": 0,
        "model": len(poisons),
    }
    assert summary["accounting"]["balanced"] is True
    assert counts["records_read"] == 24

    dead = read_parquet(out / "dead_letter").sort_values("record_index")
    assert list(dead.record_index) == sorted(poisons)
    assert list(dead.key) == [f"p-{i:02d}" for i in sorted(poisons)]
    assert set(dead.stage) == {"model"}
    for row in dead.itertuples():
        i = row.record_index
        assert row.offset == poison_run["offsets"][i]
        assert bytes(row.raw) == poison_run["payloads"][i]
        assert row.reason.startswith("model failed")
        if poisons[i][0] == "f0":
            assert "poison: f0 must be below 1000" in row.reason, row.reason
        else:
            assert "NaN" in row.reason, row.reason


def test_neighbours_of_poisonous_examples_are_attributed_exactly(poison_run):
    x, poisons = poison_run["x"], poison_run["poisons"]
    good = [i for i in range(24) if i not in poisons]
    frame = read_parquet(poison_run["out"] / "attributions").set_index("key")
    assert sorted(frame.index) == [f"p-{i:02d}" for i in good]
    frame = frame.loc[[f"p-{i:02d}" for i in good]]
    engine = IntegratedGradients(load_model(str(poison_run["root"] / "model")), steps=16)
    reference = engine.attribute({n: x[good, j : j + 1] for j, n in enumerate(demo.FEATURES)})
    for name in demo.FEATURES:
        np.testing.assert_allclose(
            frame[f"attr_{name}"], reference.attributions[name][:, 0], atol=1e-6
        )
    np.testing.assert_allclose(frame.prediction, reference.predictions, atol=1e-6)
    assert np.isfinite(frame[ATTR_COLUMNS].to_numpy()).all()
