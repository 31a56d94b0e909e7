"""Adaptive steps (`attribution.steps: auto`): settings, the refinement loop, the pipeline."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import linear_model, read_attributions, workspace_config, write_demo_workspace

from attribution import AttributionConfig, Baseline, IntegratedGradients, Target
from attribution.adaptive import (
    AdaptiveIntegratedGradients,
    relative_errors,
    step_levels,
)
from attribution.errors import SettingsError
from attribution.fields import parse, to_dict, validated
from attribution.integration import integration_rule
from attribution.models import ModelAdapter
from pipeline.config import ConfigError, parse_config
from pipeline.fingerprint import differences, fingerprint
from pipeline.job import run_job
from transforms.attribute import attribution_schema

RNG = np.random.default_rng(7)

# ------------------------------------------------------------------------------------ settings


def test_auto_parses_with_defaults_and_round_trips():
    settings = parse(AttributionConfig, {"steps": "auto"}, "attribution")
    assert settings.adaptive
    assert (settings.tolerance, settings.min_steps, settings.max_steps) == (0.01, 8, 256)
    written = to_dict(settings)
    assert written["steps"] == "auto" and written["tolerance"] == 0.01
    assert parse(AttributionConfig, written) == settings
    tight = parse(AttributionConfig, {"steps": "auto", "tolerance": 1e-3, "max_steps": 64})
    assert (tight.tolerance, tight.max_steps) == (0.001, 64)


def test_fixed_steps_are_unchanged():
    """Defaults, and what a fixed-steps config writes (its fingerprint), do not change."""
    settings = AttributionConfig()
    assert settings.steps == 50 and not settings.adaptive
    assert "tolerance" not in to_dict(settings) and "max_steps" not in to_dict(settings)
    assert set(to_dict(parse(AttributionConfig, {"steps": 16}))) == {
        "method",
        "steps",
        "layer",
        "output",
        "baseline",
        "target",
        "display_names",  # output names only: the fingerprint leaves it out
    }


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"steps": "auto", "method": "riemann_left"}, "attribution.steps", "auto needs method"),
        ({"steps": "Auto"}, "attribution.steps", "must be an integer >= 1 or auto, got 'Auto'"),
        ({"steps": 0}, "attribution.steps", "must be an integer >= 1, got 0"),
        ({"tolerance": 0.1}, "attribution.tolerance", "only used with steps: auto"),
        ({"steps": 20, "max_steps": 64}, "attribution.max_steps", "only used with steps: auto"),
        ({"steps": "auto", "tolerance": 0}, "attribution.tolerance", "must be a number > 0"),
        ({"steps": "auto", "tolerance": "1e-3"}, "attribution.tolerance", "YAML reads"),
        ({"steps": "auto", "min_steps": 0}, "attribution.min_steps", "integer >= 1"),
        ({"steps": "auto", "max_steps": 4}, "attribution.max_steps", "must be >= min_steps (8)"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(data, key, message):
    with pytest.raises(SettingsError) as info:
        parse(AttributionConfig, data, "attribution")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{key}: ") and message in text


def test_job_config_takes_auto_and_overrides():
    base = {"model": {"path": "m.keras"}, "input": {"pattern": "d/*"}, "output": {"path": "o"}}
    job = parse_config(base, ["attribution.steps=auto", "attribution.tolerance=0.002"])
    assert job.attribution.adaptive and job.attribution.tolerance == 0.002
    with pytest.raises(ConfigError, match=r"^attribution.tolerance: only used with steps: auto"):
        parse_config(base, ["attribution.tolerance=0.002"])


def test_python_settings_and_levels():
    assert validated(AttributionConfig(steps="auto", max_steps=100)).max_steps == 100
    assert step_levels(8, 256) == [8, 16, 32, 64, 128, 256]
    assert step_levels(8, 100) == [8, 16, 32, 64, 100]
    assert step_levels(5, 5) == [5]
    with pytest.raises(ValueError, match="steps: auto has no single rule"):
        integration_rule("gausslegendre", "auto")
    fixed = AttributionConfig(steps="auto", tolerance=0.5).with_steps(16)
    assert fixed.steps == 16 and validated(fixed) == fixed


def test_fingerprint_with_auto_is_comparable():
    from attribution.settings import ModelConfig

    model = ModelConfig(path=__file__)
    auto = AttributionConfig(steps="auto")
    a = fingerprint(model, auto, ["x"], "test")
    assert a["attribution"]["steps"] == "auto"
    assert differences(a, fingerprint(model, auto, ["x"], "test")) == []
    tighter = fingerprint(model, AttributionConfig(steps="auto", tolerance=0.001), ["x"], "t")
    expected = "attribution.tolerance differs: baseline 0.01, current 0.001"
    assert differences(a, tighter) == [expected]
    fixed = fingerprint(model, AttributionConfig(steps=50), ["x"], "test")
    assert differences(a, fixed) == [
        "attribution.steps differs: baseline 'auto', current 50",
        "attribution.tolerance differs: baseline 0.01, current None",
        "attribution.min_steps differs: baseline 8, current None",
        "attribution.max_steps differs: baseline 256, current None",
    ]


# ---------------------------------------------------------------------------------- the engine


def test_linear_model_stops_at_the_first_level_exactly():
    w = RNG.normal(size=5)
    adapter = ModelAdapter.from_keras(linear_model(w))
    x = RNG.normal(size=(12, 5)).astype(np.float32)
    settings = AttributionConfig(
        steps="auto",
        min_steps=4,
        target=Target("scalar"),
        baseline=Baseline("constant", value=0.5),
    )
    ig = AdaptiveIntegratedGradients(adapter, settings=settings)
    result = ig.attribute(x, keys=[f"k{i}" for i in range(12)])
    assert (result.steps_used == 4).all() and result.within_tolerance.all()
    np.testing.assert_allclose(result.attributions, w * (x - 0.5), atol=1e-5)
    assert ig.trace_counts() == {"attribute_4": 1}  # no higher level was ever built


def _mlp() -> ModelAdapter:
    """A fixed-weight tanh/softplus MLP, curved enough that few points do not suffice."""
    import keras

    rng = np.random.default_rng(3)
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(16, activation="tanh")(inp)
    h = keras.layers.Dense(16, activation="softplus")(h)
    out = keras.layers.Dense(3)(h)
    model = keras.Model(inp, out)
    model.set_weights([1.5 * rng.normal(size=w.shape) for w in model.get_weights()])
    return ModelAdapter.from_keras(model)


@pytest.fixture(scope="module")
def curved():
    adapter = _mlp()
    x = (2.0 * np.random.default_rng(4).normal(size=(24, 6))).astype(np.float32)
    keys = np.array([f"ex{i}" for i in range(24)], dtype=object)
    return adapter, x, keys


@pytest.mark.parametrize("baseline", [Baseline(), Baseline("random_uniform", low=-1, high=1)])
def test_nonlinear_model_converges_or_reaches_max_steps(curved, baseline):
    adapter, x, keys = curved
    settings = AttributionConfig(
        steps="auto", tolerance=1e-3, min_steps=2, max_steps=32, baseline=baseline
    )
    ig = AdaptiveIntegratedGradients(adapter, settings=settings)
    result = ig.attribute(x, keys=keys)
    errors = relative_errors(result.deltas, result.predictions, result.baseline_predictions)
    np.testing.assert_allclose(result.relative_errors, errors)
    assert len(set(result.steps_used.tolist())) > 1  # some examples needed more points
    assert set(result.steps_used.tolist()) <= {2, 4, 8, 16, 32}
    converged = result.within_tolerance
    assert (errors[converged] <= 1e-3).all()
    assert (result.steps_used[~converged] == 32).all()  # kept, with their delta, at max_steps
    assert converged.sum() >= len(x) // 2

    # Each example equals the fixed-steps engine at the steps it used.
    for steps in set(result.steps_used.tolist()):
        rows = np.flatnonzero(result.steps_used == steps)
        fixed = IntegratedGradients(adapter, settings=settings.with_steps(steps))
        reference = fixed.attribute(x[rows], keys=keys[rows])
        np.testing.assert_allclose(result.attributions[rows], reference.attributions, atol=1e-5)
        np.testing.assert_allclose(result.baselines["x"][rows], reference.baselines["x"])

    # Alone, or in another batch, an example uses the same steps (values equal to rounding).
    order = np.random.default_rng(5).permutation(len(x))
    shuffled = ig.attribute(x[order], keys=keys[order])
    np.testing.assert_array_equal(shuffled.steps_used, result.steps_used[order])
    np.testing.assert_allclose(shuffled.attributions, result.attributions[order], atol=1e-5)
    for i in range(0, len(x), 5):
        alone = ig.attribute(x[i : i + 1], keys=keys[i : i + 1])
        assert alone.steps_used[0] == result.steps_used[i]
        np.testing.assert_allclose(alone.attributions[0], result.attributions[i], atol=1e-5)
        np.testing.assert_allclose(alone.deltas[0], result.deltas[i], atol=1e-5)
    assert all(count == 1 for count in ig.trace_counts().values())


def test_targets_and_empty_batches(curved):
    adapter, x, keys = curved
    ig = AdaptiveIntegratedGradients(
        adapter, settings=AttributionConfig(steps="auto", min_steps=2, max_steps=16)
    )
    targets = np.arange(len(x)) % 3
    result = ig.attribute(x, keys=keys, targets=targets)
    np.testing.assert_array_equal(result.targets, targets)
    assert len(ig.attribute(x[:0], keys=keys[:0])) == 0


def test_adaptive_needs_auto(curved):
    with pytest.raises(ValueError, match="needs auto"):
        AdaptiveIntegratedGradients(curved[0], settings=AttributionConfig(steps=8))


# ------------------------------------------------------------------------------------ pipeline


def test_schema_has_steps_columns_only_when_adaptive():
    from tensorflow_metadata.proto.v0 import schema_pb2

    fixed = attribution_schema({"x": 1}, schema_pb2.Schema(), [])
    assert "steps" not in fixed.names
    auto = attribution_schema({"x": 1}, schema_pb2.Schema(), [], adaptive=True)
    assert str(auto.field("steps").type) == "int32"
    assert str(auto.field("within_tolerance").type) == "bool"


def test_pipeline_writes_steps_used(tmp_path, demo_model):
    root = tmp_path / "ws"
    write_demo_workspace(root, demo_model, 60, seed=2, shards=2)
    out = tmp_path / "run"
    config = workspace_config(root, out, steps="auto")
    config["attribution"].update(tolerance=0.001, min_steps=4, max_steps=64)
    summary = run_job(parse_config(config))

    frame = read_attributions(out)
    assert len(frame) == 60
    table = pq.read_table(str(out / "attributions"))
    assert str(table.schema.field("steps").type) == "int32"
    assert set(frame["steps"]) <= {4, 8, 16, 32, 64}
    errors = relative_errors(frame["delta"], frame["prediction"], frame["baseline_prediction"])
    within = frame["within_tolerance"].to_numpy()
    np.testing.assert_array_equal(within, errors <= 0.001)
    assert (frame["steps"][~within] == 64).all()

    adaptive = summary["adaptive_steps"]
    counts = frame["steps"].value_counts()
    assert adaptive["steps_used"] == {str(s): int(counts[s]) for s in sorted(counts.index)}
    assert adaptive["above_tolerance"] == int((~within).sum())
    assert adaptive["mean_steps"] == pytest.approx(frame["steps"].mean(), abs=1e-3)
    assert adaptive["tolerance"] == 0.001 and adaptive["max_steps"] == 64
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["fingerprint"]["attribution"]["steps"] == "auto"
    assert on_disk["adaptive_steps"] == adaptive


def test_an_error_at_the_tolerance_is_decided_on_the_example_alone(curved):
    """Tolerance set to one example's own error: a batch's rounding must not tip it over."""
    adapter, x, keys = curved
    settings = AttributionConfig(steps="auto", min_steps=4, max_steps=8)
    alone = IntegratedGradients(adapter, settings=settings.with_steps(4)).attribute(
        x[5:6], keys=keys[5:6]
    )
    error = relative_errors(alone.deltas, alone.predictions, alone.baseline_predictions)[0]
    tight = dataclasses.replace(settings, tolerance=float(error))
    ig = AdaptiveIntegratedGradients(adapter, settings=tight)
    for batch in (slice(0, 24), slice(5, 6), slice(3, 9)):
        result = ig.attribute(x[batch], keys=keys[batch])
        row = 5 - batch.start
        assert result.steps_used[row] == 4 and result.within_tolerance[row]
        np.testing.assert_array_equal(result.attributions[row], alone.attributions[0])
