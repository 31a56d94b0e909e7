"""Batch sizes from a memory budget (`attribution.budget`), and how the engine and job use them.

The estimate is checked against a closed form: for a Keras model the bytes per row are the sum
of every layer's per-example output elements x 4 bytes (float32) x `BACKWARD_FACTOR`, so the
rows per call of a budget follow exactly; results never depend on the sizes chosen.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from attribution import IntegratedGradients
from attribution.budget import (
    BACKWARD_FACTOR,
    CPU_BUDGET_BYTES,
    DEFAULT_ROWS,
    MAX_ROWS,
    bytes_per_row,
    device_budget,
    parse_size,
    plan_batches,
)
from attribution.errors import SettingsError
from attribution.models import ModelAdapter
from attribution.settings import BatchingConfig
from transforms.attribute import rechunk


def mlp(inputs: int = 4, hidden: int = 16, classes: int = 3) -> keras.Model:
    x = keras.Input((inputs,), name="x")
    h = keras.layers.Dense(hidden, activation="relu", name="h")(x)
    y = keras.layers.Dense(classes, activation="softmax", name="y")(h)
    return keras.Model(x, y)


def cnn() -> keras.Model:
    x = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    y = keras.layers.Dense(5, activation="softmax")(h)
    return keras.Model(x, y)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("512MiB", 512 << 20),
        ("2GB", 2 * 1000**3),
        ("1.5GiB", int(1.5 * (1 << 30))),
        ("64 kib", 64 << 10),
        ("300", 300),
    ],
)
def test_sizes_parse_to_bytes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [0, -1, True, "", "lots", "12 parsecs", "1e9", 2.5, None])
def test_bad_sizes_are_refused(value):
    assert parse_size(value) is None


def test_batching_settings_take_auto_sizes_and_say_what_is_wrong():
    from attribution.fields import parse

    assert parse(BatchingConfig, {}) == BatchingConfig("auto", "auto", "auto")
    given = parse(BatchingConfig, {"batch_size": 64, "memory_budget": "1GiB"})
    assert (given.batch_size, given.memory_budget) == (64, "1GiB")
    with pytest.raises(SettingsError) as err:
        parse(BatchingConfig, {"memory_budget": "much"}, "batching")
    assert str(err.value) == (
        "batching.memory_budget: must be a size (bytes, or like 512MiB, 2GB) or auto, got 'much'"
    )
    with pytest.raises(SettingsError) as err:
        parse(BatchingConfig, {"batch_size": "big"}, "batching")
    assert str(err.value) == "batching.batch_size: must be an integer >= 1 or auto, got 'big'"


def test_bytes_per_row_is_every_layer_output_times_the_backward_factor():
    # Input 4, hidden 16, output 3 floats per example.
    assert bytes_per_row(mlp()) == (4 + 16 + 3) * 4 * BACKWARD_FACTOR
    # Input 8x8x3, conv 8x8x4, pool 4x4x4, flatten 64, dense 5.
    assert bytes_per_row(cnn()) == (192 + 256 + 64 + 64 + 5) * 4 * BACKWARD_FACTOR
    assert bytes_per_row(None) is None


def test_rows_and_examples_follow_the_budget():
    row = 100
    plan = plan_batches(steps=50, samples=1, row_bytes=row, budget=1_000_000)
    assert (plan.rows_per_call, plan.examples_per_call) == (10_000, 200)
    assert (plan.memory_budget, plan.bytes_per_row, plan.source) == (1_000_000, 100, "budget")
    # Baseline samples multiply the rows of an example.
    sampled = plan_batches(steps=50, samples=4, row_bytes=row, budget=1_000_000)
    assert sampled.examples_per_call == 50
    # Bounds: at least one row and one example, at most MAX_ROWS.
    tiny = plan_batches(steps=50, samples=1, row_bytes=10**9, budget=1000)
    assert (tiny.rows_per_call, tiny.examples_per_call) == (1, 1)
    assert plan_batches(steps=1, samples=1, row_bytes=1, budget="1GiB").rows_per_call == MAX_ROWS


def test_given_sizes_win_and_unknown_models_get_the_default_rows():
    given = plan_batches(steps=10, samples=1, row_bytes=100, max_rows_per_call=500, batch_size=7)
    assert (given.rows_per_call, given.examples_per_call, given.source) == (500, 7, "given")
    unknown = plan_batches(steps=10, samples=1, row_bytes=None)
    assert (unknown.rows_per_call, unknown.source) == (DEFAULT_ROWS, "default")


def test_the_cpu_default_budget_is_used_without_a_gpu():
    budget, device = device_budget("auto")
    assert device == "CPU"  # the tests hide GPUs (conftest)
    assert budget == CPU_BUDGET_BYTES
    assert device_budget("256MiB") == (256 << 20, "CPU")
    with pytest.raises(ValueError, match="memory_budget must be a size"):
        device_budget("plenty")


def test_the_engine_sizes_its_calls_from_the_budget_and_results_do_not_change():
    """A linear model: IG = w * (x - 0) exactly, whatever the rows per call."""
    x_in = keras.Input((6,), name="x")
    out = keras.layers.Dense(1, use_bias=True, name="y")(x_in)
    model = keras.Model(x_in, out)
    w = np.arange(1, 7, dtype=np.float32).reshape(6, 1) / 10
    model.get_layer("y").set_weights([w, np.array([0.5], np.float32)])
    adapter = ModelAdapter.from_keras(model)
    x = np.random.default_rng(0).standard_normal((37, 6)).astype(np.float32)
    row = (6 + 1) * 4 * BACKWARD_FACTOR
    budgets = {"small": 64 * row, "default": "auto"}
    results = {}
    for name, budget in budgets.items():
        from attribution.settings import Target

        engine = IntegratedGradients(
            adapter, steps=16, target=Target(kind="scalar"), memory_budget=budget
        )
        results[name] = engine.attribute(x).attributions
        plan = engine.batch_plan
        if name == "small":
            assert (plan.rows_per_call, plan.examples_per_call) == (64, 4)
            assert engine.examples_per_call == 4
        else:
            assert plan.rows_per_call == min(MAX_ROWS, CPU_BUDGET_BYTES // row)
    np.testing.assert_allclose(results["small"], results["default"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(results["small"], x * w.reshape(1, 6), rtol=1e-5, atol=1e-6)


def test_rechunk_regroups_a_blocks_records_in_order():
    chunks = [
        ("f", [0, 1, 2], [0, 10, 20], [b"a", b"b", b"c"]),
        ("f", [3, 4], [30, 40], [b"d", b"e"]),
    ]
    assert rechunk(chunks, 2) == [
        ("f", [0, 1], [0, 10], [b"a", b"b"]),
        ("f", [2, 3], [20, 30], [b"c", b"d"]),
        ("f", [4], [40], [b"e"]),
    ]
    payloads = [b"a", b"b", b"c", b"d", b"e"]
    assert rechunk(chunks, 10) == [("f", [0, 1, 2, 3, 4], [0, 10, 20, 30, 40], payloads)]
    same = [("f", [0, 1], [0, 1], [b"a", b"b"]), ("f", [2], [2], [b"c"])]
    assert rechunk(same, 2) is not same and rechunk(same, 2) == same
    assert rechunk([], 4) == []
    assert rechunk(chunks, 0) == chunks


def test_a_job_with_auto_batching_reports_its_sizes_and_matches_given_sizes(tmp_path, demo_model):
    """Auto sizes (budget small enough for several calls per block) give the same attributions
    as hand-set ones, and `summary.json` says what each worker chose."""
    import json

    from helpers import read_attributions, workspace_config, write_demo_workspace

    from pipeline.config import parse_config
    from pipeline.job import run_job

    write_demo_workspace(tmp_path / "ws", demo_model, 300, seed=3, shards=2)
    given = workspace_config(tmp_path / "ws", tmp_path / "given")
    auto = workspace_config(tmp_path / "ws", tmp_path / "auto")
    auto["batching"] = {"batch_size": "auto", "max_rows_per_call": "auto", "memory_budget": "1MiB"}
    run_job(parse_config(given))
    summary = run_job(parse_config(auto))

    (chosen,) = summary["workers"]["batching"]
    assert chosen["device"] == "CPU" and chosen["memory_budget"] == 1 << 20
    assert 1 <= chosen["examples_per_call"] < 300  # several calls for 150-example blocks
    assert chosen["rows_per_call"] // 16 == chosen["examples_per_call"]  # steps: 16
    assert summary["counts"]["examples_attributed"] == 300
    with open(tmp_path / "auto" / "summary.json") as f:
        assert json.load(f)["workers"]["batching"] == [chosen]
    a = read_attributions(tmp_path / "given").sort_values("key").reset_index(drop=True)
    b = read_attributions(tmp_path / "auto").sort_values("key").reset_index(drop=True)
    assert list(a["key"]) == list(b["key"])
    columns = [c for c in a.columns if c.startswith("attr_")] + ["delta", "prediction"]
    np.testing.assert_allclose(b[columns].to_numpy(), a[columns].to_numpy(), rtol=1e-5, atol=1e-6)


def test_xla_compiled_engine_equals_the_closed_form_and_pads_short_calls():
    """jit_compile: IG of a linear model is w * (x - 0) exactly; a batch that is not a multiple
    of the examples per call is padded to one shape and the padding never comes out."""
    from attribution.settings import Target

    x_in = keras.Input((5,), name="x")
    model = keras.Model(x_in, keras.layers.Dense(1, name="y")(x_in))
    w = np.array([[0.5], [-1.0], [2.0], [0.0], [3.0]], np.float32)
    model.get_layer("y").set_weights([w, np.array([1.0], np.float32)])
    adapter = ModelAdapter.from_keras(model)
    x = np.random.default_rng(1).standard_normal((11, 5)).astype(np.float32)
    jit = IntegratedGradients(
        adapter, steps=8, target=Target(kind="scalar"), max_rows_per_call=32, jit_compile=True
    )
    plain = IntegratedGradients(
        adapter, steps=8, target=Target(kind="scalar"), max_rows_per_call=32
    )
    assert jit.examples_per_call == 4  # 11 examples: calls of 4, 4 and 3 (padded to 4)
    assert len(jit.attribute(x[:3]).deltas) == 3  # 3 examples padded to 4, then cut
    result = jit.attribute(x)
    assert result.attributions.shape == (11, 5) and result.deltas.shape == (11,)
    np.testing.assert_allclose(result.attributions, x * w.reshape(1, 5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-5)
    np.testing.assert_allclose(
        result.attributions, plain.attribute(x).attributions, rtol=1e-6, atol=1e-7
    )
    assert jit._grad_fn is not None and hasattr(jit._grad_fn, "experimental_get_compiler_ir")
