"""End-to-end tests of the igbeam job on the DirectRunner, from TFRecords written here."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from helpers import (
    read_attributions,
    read_parquet,
    workspace_config,
    write_demo_workspace,
    write_examples,
)

from attribution import IntegratedGradients, load_model
from pipeline import demo
from pipeline.config import parse_config
from pipeline.job import JobError, plan_job, run_job
from transforms.statistics import FEATURE_STATS_SCHEMA, SLICE_STATS_SCHEMA


@pytest.fixture(scope="module")
def tabular(tmp_path_factory, demo_model):
    """The demo's dict-input model and 300 examples in 3 gzip shards."""
    root = tmp_path_factory.mktemp("tabular")
    data = write_demo_workspace(root, demo_model, 300, seed=1, shards=3)
    return root, data


def job_config(root, out, **overrides) -> dict:
    return workspace_config(root, out, slices=[["country"]], **overrides)


def engine_reference(root, data, steps=16) -> tuple[np.ndarray, object]:
    ig = IntegratedGradients(load_model(str(root / "model.keras")), steps=steps)
    inputs = {name: data["x"][:, j : j + 1] for j, name in enumerate(demo.FEATURES)}
    return ig.attribute(inputs), ig


def test_end_to_end_matches_engine_and_statistics(tabular, tmp_path):
    root, data = tabular
    out = tmp_path / "run"
    config = parse_config(job_config(root, out))
    summary = run_job(config)

    assert summary["counts"]["examples_attributed"] == 300
    assert summary["counts"]["dead_letters"] == 0
    assert summary["metrics"]["model_loads"] == 1  # one per process across all bundles
    assert summary["metrics"]["batches"] >= 300 // 32
    assert os.path.exists(out / "_SUCCESS")
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["counts"] == summary["counts"]
    assert on_disk["config"] == config.to_dict()

    frame = read_attributions(out)
    # Every input example exactly once.
    assert sorted(frame.key) == sorted(f"ex-{i:06d}" for i in range(300))
    frame = frame.set_index("key").sort_index()
    index = np.array([int(k.split("-")[1]) for k in frame.index])

    reference, _ = engine_reference(root, data)
    for name in demo.FEATURES:
        np.testing.assert_allclose(
            frame[f"attr_{name}"], reference.attributions[name][index, 0], atol=1e-6
        )
    np.testing.assert_allclose(frame.delta, reference.deltas[index], atol=1e-6)
    np.testing.assert_array_equal(frame.target, reference.targets[index])
    np.testing.assert_array_equal(frame.label, data["label"][index])
    assert list(frame.country) == list(data["country"][index])

    # Statistics equal a numpy recomputation from the per-example Parquet.
    stats = pq.read_table(out / "statistics" / "features.parquet")
    assert stats.schema.equals(FEATURE_STATS_SCHEMA)
    stats = stats.to_pandas()
    for slice_name, slice_value, rows in [("all", "", frame)] + [
        ("country", c, frame[frame.country == c]) for c in demo.COUNTRIES
    ]:
        part = stats[(stats.slice_name == slice_name) & (stats.slice_value == slice_value)]
        assert sorted(part.feature) == sorted(demo.FEATURES)
        for row in part.itertuples():
            values = rows[f"attr_{row.feature}"].to_numpy()
            assert row.count == len(values)
            np.testing.assert_allclose(row.mean_attributions, values.mean(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(row.mean_absolute_attributions, np.abs(values).mean())
            np.testing.assert_allclose(row.std, values.std(), rtol=1e-6, atol=1e-12)
            assert row.min == values.min() and row.max == values.max()
            ranks = np.searchsorted(np.sort(values), row.quantiles, side="right")
            expected = np.linspace(0, len(values), len(row.quantiles))
            assert np.all(np.abs(ranks - expected) <= 0.005 * len(values) + 1)
        shares = part.share.to_numpy()
        np.testing.assert_allclose(shares.sum(), 1.0)
        assert sorted(part["rank"]) == list(range(1, 9))
    slices = pq.read_table(out / "statistics" / "slices.parquet")
    assert slices.schema.equals(SLICE_STATS_SCHEMA)
    overall = slices.to_pandas().query("slice_name == 'all'").iloc[0]
    assert overall.examples == 300
    np.testing.assert_allclose(overall.prediction_mean, frame.prediction.mean())
    np.testing.assert_allclose(overall.abs_delta_max, np.abs(frame.delta).max())


def test_rerun_replaces_output_and_schema_is_inferred(tabular, tmp_path):
    root, _ = tabular
    out = tmp_path / "run"
    (out / "attributions").mkdir(parents=True)
    stale = out / "attributions" / "part-stale.parquet"
    stale.write_bytes(b"old")
    raw = job_config(root, out)
    raw["input"]["schema"] = None
    summary = run_job(parse_config(raw))
    assert summary["schema_inferred"] is True
    assert not stale.exists()
    schema_text = (out / "schema.pbtxt").read_text()
    assert 'name: "f0"' in schema_text and "type: FLOAT" in schema_text
    frame = read_attributions(out)
    assert len(frame) == 300 and frame.key.is_unique
    assert isinstance(frame.country.iloc[0], str)  # bytes pass-through became strings


def test_multiprocessing_direct_runner_loads_one_model_per_worker(tabular, tmp_path):
    root, _ = tabular
    out = tmp_path / "run"
    summary = run_job(
        parse_config(job_config(root, out)),
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    assert summary["counts"]["examples_attributed"] == 300
    assert 1 <= summary["metrics"]["model_loads"] <= 2
    assert summary["metrics"]["batches"] > 2
    assert read_attributions(out).key.is_unique


def test_in_process_run_loads_the_model_once_and_keeps_no_engine(tabular, tmp_path, monkeypatch):
    # The launcher builds the engine for its checks; the in-process worker takes that one
    # instead of loading the model again. The offer ends with the run: a second run loads anew.
    from transforms import attribute

    root, _ = tabular
    loads = []
    original = attribute.EngineSpec.load
    monkeypatch.setattr(
        attribute.EngineSpec, "load", lambda spec: loads.append(spec) or original(spec)
    )
    config = parse_config(job_config(root, tmp_path / "run"))
    for run in (1, 2):
        summary = run_job(config, ["--direct_num_workers=1"])
        assert summary["counts"]["examples_attributed"] == 300
        assert summary["metrics"]["model_loads"] == 1
        assert len(loads) == run  # only the launcher's, once per run
        assert attribute._OFFERED == {}


def test_zero_and_one_example(tabular, tmp_path):
    root, _ = tabular
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "part-0.tfrecord").write_bytes(b"")
    raw = job_config(root, tmp_path / "zero")
    raw["input"]["pattern"] = str(empty / "*.tfrecord")
    summary = run_job(parse_config(raw))
    assert summary["counts"]["examples_attributed"] == 0
    frame = read_attributions(tmp_path / "zero")
    assert len(frame) == 0 and "attr_f0" in frame.columns
    assert os.path.exists(tmp_path / "zero" / "_SUCCESS")
    assert pq.read_table(tmp_path / "zero" / "statistics" / "features.parquet").num_rows == 0

    one = tmp_path / "one"
    one.mkdir()
    row = {name: 0.5 for name in demo.FEATURES}
    row.update(label=1, country=b"FR", example_id=b"only")
    write_examples(one / "part-0.tfrecord", [row])
    raw = job_config(root, tmp_path / "one_out")
    raw["input"]["pattern"] = str(one / "*.tfrecord")
    run_job(parse_config(raw))
    frame = read_attributions(tmp_path / "one_out")
    assert list(frame.key) == ["only"]
    assert abs(frame.delta[0]) < 0.05


def test_missing_features_are_dead_lettered_or_null(tabular, tmp_path):
    root, _ = tabular
    rows = []
    for i in range(10):
        row = {name: float(i) / 10 for name in demo.FEATURES}
        row.update(label=i % 3, country=b"DE", example_id=f"m{i}".encode())
        if i in (2, 5):
            del row["f3"]  # a model input: the example cannot be attributed
        if i == 7:
            del row["country"]  # a pass-through: null in the output
        rows.append(row)
    data = tmp_path / "data"
    data.mkdir()
    write_examples(data / "part-0.tfrecord", rows)
    raw = job_config(root, tmp_path / "out", max_dead_letter_fraction=0.5)
    raw["input"]["pattern"] = str(data / "*.tfrecord")
    summary = run_job(parse_config(raw))
    assert summary["counts"]["examples_attributed"] == 8
    assert summary["counts"]["dead_letters_by_stage"]["validate"] == 2
    assert summary["accounting"]["balanced"] is True
    assert summary["counts"]["dead_letters"] == 2
    frame = read_attributions(tmp_path / "out").set_index("key")
    assert "m2" not in frame.index and "m5" not in frame.index
    assert pd.isna(frame.loc["m7", "country"])
    dead = read_parquet(tmp_path / "out" / "dead_letter")
    assert sorted(dead.key) == ["m2", "m5"]
    assert set(dead.stage) == {"validate"}
    assert all("'f3' is missing" in r for r in dead.reason)
    assert sorted(dead.record_index) == [2, 5]
    assert all(len(raw_bytes) > 0 for raw_bytes in dead.raw)


def test_preprocessing_model_is_stacked_before_the_model(tabular, tmp_path):
    root, data = tabular

    class Parse(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def parse(self, examples):
            spec = {n: tf.io.FixedLenFeature([1], tf.float32) for n in demo.FEATURES}
            return tf.io.parse_example(examples, spec)

    module = Parse()
    tf.saved_model.save(module, str(tmp_path / "pre"), signatures={"serving_default": module.parse})
    out = tmp_path / "out"
    summary = run_job(
        parse_config(job_config(root, out, model__preprocess_path=str(tmp_path / "pre")))
    )
    assert summary["counts"]["examples_attributed"] == 300
    frame = read_attributions(out).set_index("key").sort_index()
    index = np.array([int(k.split("-")[1]) for k in frame.index])
    reference, _ = engine_reference(root, data)
    np.testing.assert_allclose(frame.attr_f1, reference.attributions["f1"][index, 0], atol=1e-6)


def test_layer_attribution_on_embedding_model(tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    tokens = keras.Input((6,), dtype="int64", name="tokens")
    emb = keras.layers.Embedding(50, 8, name="emb")(tokens)
    h = keras.layers.GlobalAveragePooling1D()(emb)
    out = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model({"tokens": tokens}, out)
    model.save(str(tmp_path / "text.keras"))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(40, 6))
    data = tmp_path / "data"
    data.mkdir()
    write_examples(
        data / "part-0.tfrecord", ({"tokens": ids[i], "id": f"t{i}".encode()} for i in range(40))
    )
    (data / "schema.pbtxt").write_text(
        'feature { name: "tokens" type: INT shape { dim { size: 6 } } }\n'
        'feature { name: "id" type: BYTES shape { dim { size: 1 } } }\n'
    )
    raw = {
        "model": {"path": str(tmp_path / "text.keras")},
        "input": {
            "pattern": str(data / "*.tfrecord"),
            "schema": str(data / "schema.pbtxt"),
            "key": "id",
        },
        "attribution": {"layer": "emb", "steps": 32},
        "output": {"path": str(tmp_path / "out")},
    }
    summary = run_job(parse_config(raw))
    assert summary["counts"]["examples_attributed"] == 40
    frame = read_attributions(tmp_path / "out").set_index("key")
    scores = np.stack(frame.loc[[f"t{i}" for i in range(40)], "attr_emb"].to_numpy())
    assert scores.shape == (40, 6)  # one score per token
    reference = IntegratedGradients(load_model(str(tmp_path / "text.keras")), layer="emb", steps=32)
    expected = reference.attribute({"tokens": ids}).layer_scores
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # Completeness still holds on the model output.
    np.testing.assert_allclose(
        scores.sum(axis=1),
        frame.loc[[f"t{i}" for i in range(40)], "delta"]
        + (frame.prediction - frame.baseline_prediction).loc[[f"t{i}" for i in range(40)]],
        atol=1e-9,
    )
    assert np.abs(frame.delta).max() < 1e-3


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"input__pattern": "/nonexistent/*.tfrecord"}, "no files match"),
        ({"model__path": "/nonexistent/model.keras"}, "does not exist"),
        ({"features": ["nope"]}, "unknown features"),
        ({"passthrough": ["label", "country", "absent"]}, "'absent' is not in the schema"),
    ],
)
def test_early_errors_before_beam(tabular, tmp_path, change, match):
    root, _ = tabular
    with pytest.raises(JobError, match=match):
        plan_job(parse_config(job_config(root, tmp_path / "out", **change)))
