"""Tests of the pure IG engine against closed-form answers (no Beam)."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import classifier, embedding_model, linear_model

from attribution import (
    METHODS,
    Baseline,
    IntegratedGradients,
    ModelAdapter,
    ModelLoadError,
    Target,
    integration_rule,
    load_model,
)

RNG = np.random.default_rng(7)


# ------------------------------------------------------------------------------- integration


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [2, 5, 50])
def test_rule_weights_sum_to_one_and_alphas_in_unit_interval(method, steps):
    alphas, weights = integration_rule(method, steps)
    assert alphas.shape == weights.shape == (steps,)
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-12)
    assert alphas.min() >= 0.0 and alphas.max() <= 1.0


def test_rule_points_match_their_definitions():
    n = 4
    np.testing.assert_allclose(integration_rule("riemann_left", n)[0], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(integration_rule("riemann_right", n)[0], [0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(
        integration_rule("riemann_middle", n)[0], [0.125, 0.375, 0.625, 0.875]
    )
    alphas, weights = integration_rule("riemann_trapezoid", n)
    np.testing.assert_allclose(alphas, np.linspace(0, 1, n))
    np.testing.assert_allclose(weights, [1 / 6, 1 / 3, 1 / 3, 1 / 6])
    # captum/alibi's trapezoid weights are 1/n everywhere: they sum to (n-1)/n, not 1.
    assert not math.isclose(np.full(n, 1 / n)[[0, -1]].sum() / 2 + (n - 2) / n, 1.0)
    nodes, w = np.polynomial.legendre.leggauss(n)
    alphas, weights = integration_rule("gausslegendre", n)
    np.testing.assert_allclose(alphas, (nodes + 1) / 2)
    np.testing.assert_allclose(weights, w / 2)


@pytest.mark.parametrize(
    ("method", "steps", "match"),
    [
        ("simpson", 10, "choose one of riemann_left"),
        ("riemann_left", 0, "steps: must be an integer >= 1, got 0"),
        ("riemann_trapezoid", 1, "steps: must be an integer >= 2 for method"),
        ("gausslegendre", 2.5, "steps: must be an integer >= 1, got 2.5"),
        ("gausslegendre", True, "steps: must be an integer >= 1, got True"),
    ],
)
def test_rule_rejects_bad_arguments(method, steps, match):
    with pytest.raises(ValueError, match=match):
        integration_rule(method, steps)


# ----------------------------------------------------------------------- closed-form answers


@pytest.mark.parametrize("method", METHODS)
def test_linear_model_random_baselines_exact_for_every_method(method):
    w = RNG.normal(size=5)
    adapter = ModelAdapter.from_keras(linear_model(w))
    x = RNG.normal(size=(9, 5)).astype(np.float32)
    keys = [f"ex{i}" for i in range(9)]
    ig = IntegratedGradients(
        adapter,
        method=method,
        steps=7,
        target=Target("scalar"),
        baseline=Baseline("random_uniform", low=-2.0, high=2.0, seed=11),
    )
    result = ig.attribute(x, keys=keys)
    b = result.baselines["x"][:, 0]
    np.testing.assert_allclose(result.attributions, w * (x - b), atol=1e-5)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-5)
    np.testing.assert_allclose(result.predictions, x @ w + 0.25, atol=1e-5)
    np.testing.assert_allclose(result.baseline_predictions, b @ w + 0.25, atol=1e-5)
    assert (result.targets == -1).all()


def _two_relu_models():
    relu = tf.nn.relu
    f1 = lambda x: relu(relu(x[:, 0]) - 1 - relu(x[:, 1]))  # noqa: E731
    f2 = lambda x: relu(relu(x[:, 0] - 1) - relu(x[:, 1]))  # noqa: E731
    return f1, f2


@pytest.mark.parametrize("which", [0, 1])
def test_published_relu_models_give_1_5_and_minus_0_5(which):
    fn = _two_relu_models()[which]
    adapter = ModelAdapter.from_function(fn, {"x": tf.TensorSpec([None, 2], tf.float32)})
    ig = IntegratedGradients(adapter, method="riemann_right", steps=500, target=Target("scalar"))
    result = ig.attribute(np.array([[3.0, 1.0]], np.float32))
    np.testing.assert_allclose(result.attributions[0], [1.5, -0.5], atol=0.05)


def test_published_check_five_two_y_cos_z():
    # F = 5x + y^2 + sin z, so dF = (5, 2y, cos z).
    def fn(v):
        return 5 * v[:, 0] + v[:, 1] ** 2 + tf.sin(v[:, 2])

    adapter = ModelAdapter.from_function(fn, {"v": tf.TensorSpec([None, 3], tf.float64)})
    ig = IntegratedGradients(
        adapter,
        target=Target("scalar"),
        baseline=Baseline("per_feature", values={"v": [0.5, 1.0, 1.0]}),
    )
    result = ig.attribute(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(result.attributions[0], [2.5, 3.0, math.sin(3) - math.sin(1)], 1e-9)
    np.testing.assert_allclose(result.baselines["v"][0, 0], [0.5, 1.0, 1.0])


def test_completeness_gauss_legendre_on_smooth_classifier():
    adapter = ModelAdapter.from_keras(classifier())
    x = RNG.normal(size=(32, 6)).astype(np.float32) * 2
    result = IntegratedGradients(adapter, steps=50).attribute(x)
    assert np.abs(result.deltas).max() < 1e-4
    # And the attributions are not trivially zero.
    assert np.abs(result.attributions).sum(axis=1).min() > 1e-4
    # A coarse left Riemann sum is visibly worse: the delta measures the integration error.
    coarse = IntegratedGradients(adapter, method="riemann_left", steps=3).attribute(x)
    assert np.abs(coarse.deltas).max() > 10 * np.abs(result.deltas).max()


# ------------------------------------------------------------------------ inputs and layers


def test_dict_model_with_pass_through_input():
    # F = (w . a) * b with b passed through: IG on a is exactly w * (a - a') * b.
    w = RNG.normal(size=4)

    def fn(inputs):
        return tf.reduce_sum(inputs["a"] * w, axis=1) * inputs["b"][:, 0]

    specs = {"a": tf.TensorSpec([None, 4], tf.float64), "b": tf.TensorSpec([None, 1], tf.float64)}
    adapter = ModelAdapter.from_function(fn, specs)
    ig = IntegratedGradients(adapter, features=["a"], target=Target("scalar"), steps=3)
    a = RNG.normal(size=(6, 4))
    b = RNG.normal(size=(6, 1))
    result = ig.attribute({"a": a, "b": b, "unused_label": np.arange(6)})
    assert set(result.attributions) == {"a"}
    np.testing.assert_allclose(result.attributions["a"], w * a * b, rtol=1e-9)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-9)


def test_mixed_dtypes_and_shapes_pack_exactly():
    # Attributed inputs of two dtypes and four shapes ([], [1], [3], [2, 2]) travel packed per
    # dtype; F is linear, so IG is exactly w * (x - x') per value, with a random baseline.
    specs = {
        "s": tf.TensorSpec([None], tf.float32),
        "one": tf.TensorSpec([None, 1], tf.float64),
        "vec": tf.TensorSpec([None, 3], tf.float32),
        "mat": tf.TensorSpec([None, 2, 2], tf.float64),
        "passed": tf.TensorSpec([None, 1], tf.float32),
    }
    w = {name: RNG.normal(size=spec.shape[1:]) for name, spec in specs.items()}

    def fn(inputs):
        total = tf.zeros_like(inputs["s"], tf.float64)
        for name in ("s", "one", "vec", "mat"):
            v = tf.cast(inputs[name], tf.float64) * w[name]
            total += tf.reduce_sum(tf.reshape(v, [tf.shape(v)[0], -1]), axis=1)
        return total * tf.cast(inputs["passed"][:, 0], tf.float64)

    adapter = ModelAdapter.from_function(fn, specs)
    names = ["mat", "s", "vec", "one"]  # not grouped by dtype: the order must survive packing
    ig = IntegratedGradients(
        adapter,
        features=names,
        target=Target("scalar"),
        steps=4,
        baseline=Baseline("random_uniform", low=-1.0, high=1.0, seed=3, samples=2),
    )
    n = 7
    inputs = {
        name: RNG.normal(size=(n, *spec.shape[1:])).astype(spec.dtype.as_numpy_dtype)
        for name, spec in specs.items()
    }
    result = ig.attribute(inputs, keys=[f"k{i}" for i in range(n)])
    assert list(result.attributions) == names
    passed = inputs["passed"][:, 0].astype(np.float64)
    for name in names:
        x = inputs[name].astype(np.float64)
        base = result.baselines[name].astype(np.float64).mean(axis=1)
        expected = w[name] * (x - base) * passed.reshape((n,) + (1,) * (x.ndim - 1))
        assert result.attributions[name].shape == x.shape
        np.testing.assert_allclose(result.attributions[name], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-5)
    assert ig.trace_counts()["attribute"] == 1


def test_dict_keras_model_attributions_have_input_shapes():
    adapter = ModelAdapter.from_keras(embedding_model())
    inputs = {"ids": RNG.integers(0, 20, size=(5, 5)), "num": RNG.normal(size=(5, 3))}
    result = IntegratedGradients(adapter, features=["num"]).attribute(inputs)
    assert result.attributions["num"].shape == (5, 3)
    assert np.abs(result.deltas).max() < 1e-4


def test_layer_attribution_on_embedding_is_complete():
    adapter = ModelAdapter.from_keras(embedding_model())
    inputs = {"ids": RNG.integers(1, 20, size=(8, 5)), "num": RNG.normal(size=(8, 3))}
    ig = IntegratedGradients(adapter, layer="emb", steps=32)
    result = ig.attribute(inputs)
    assert result.attributions["emb"].shape == (8, 5, 4)
    np.testing.assert_allclose(result.layer_scores, result.attributions["emb"].sum(axis=-1))
    assert result.layer_scores.shape == (8, 5)
    assert np.abs(result.deltas).max() < 1e-4
    # Baseline lives in the embedding space (zeros) and the prediction is the model's output.
    assert result.baselines["emb"].shape == (8, 1, 5, 4)
    probs = adapter(inputs)["out"].numpy()
    np.testing.assert_allclose(result.predictions, probs[np.arange(8), result.targets], rtol=1e-5)


def test_integer_input_error_points_to_layer_attribution():
    adapter = ModelAdapter.from_keras(embedding_model())
    with pytest.raises(ValueError, match="layer="):
        IntegratedGradients(adapter)


# ----------------------------------------------------------------------------- invariances


def test_results_do_not_depend_on_batching_or_chunking():
    adapter = ModelAdapter.from_keras(classifier())
    x = RNG.normal(size=(13, 6)).astype(np.float32)
    keys = [f"k{i}" for i in range(13)]
    baseline = Baseline("random_uniform", low=-1.0, high=1.0, seed=5, samples=2)
    reference = IntegratedGradients(adapter, steps=20, baseline=baseline).attribute(x, keys=keys)
    for max_rows in (1, 7, 20, 41, 100000):  # 1 and 7 split the path itself
        ig = IntegratedGradients(adapter, steps=20, baseline=baseline, max_rows_per_call=max_rows)
        whole = ig.attribute(x, keys=keys)
        np.testing.assert_allclose(whole.attributions, reference.attributions, atol=1e-6)
        np.testing.assert_allclose(whole.deltas, reference.deltas, atol=1e-6)
    ig = IntegratedGradients(adapter, steps=20, baseline=baseline, max_rows_per_call=64)
    parts = [ig.attribute(x[s], keys=keys[s]) for s in (slice(0, 1), slice(1, 6), slice(6, 13))]
    np.testing.assert_allclose(
        np.concatenate([p.attributions for p in parts]), reference.attributions, atol=1e-6
    )
    np.testing.assert_array_equal(np.concatenate([p.targets for p in parts]), reference.targets)


def test_random_baseline_is_deterministic_per_example_key():
    w = RNG.normal(size=3)
    adapter = ModelAdapter.from_keras(linear_model(w))
    spec = Baseline("random_uniform", low={"x": -1.0}, high={"x": 3.0}, seed=42, samples=3)
    ig = IntegratedGradients(adapter, target=Target("scalar"), baseline=spec, steps=4)
    x = RNG.normal(size=(5, 3)).astype(np.float32)
    keys = np.array(["a", "b", "c", "d", "e"], dtype=object)
    first = ig.attribute(x, keys=keys).baselines["x"]
    order = [3, 0, 4]
    again = ig.attribute(x[order], keys=keys[order]).baselines["x"]
    np.testing.assert_array_equal(again, first[order])
    assert first.shape == (5, 3, 3)
    assert first.min() >= -1.0 and first.max() <= 3.0
    assert len(np.unique(first.reshape(-1))) == first.size  # distinct draws per example/sample
    other = IntegratedGradients(
        adapter, target=Target("scalar"), baseline=dataclasses.replace(spec, seed=43), steps=4
    )
    other_seed = other.attribute(x, keys=keys)
    assert not np.allclose(other_seed.baselines["x"], first)
    # Several baselines per example are averaged: for a linear model, w * (x - mean baseline).
    result = ig.attribute(x, keys=keys)
    np.testing.assert_allclose(result.attributions, w * (x - first.mean(axis=1)), atol=1e-5)


def test_new_batch_sizes_do_not_retrace():
    adapter = ModelAdapter.from_keras(classifier())
    ig = IntegratedGradients(adapter, steps=8, max_rows_per_call=40)
    for n in (1, 3, 17, 2, 64):
        ig.attribute(RNG.normal(size=(n, 6)).astype(np.float32))
    assert ig.trace_counts() == {"embed": 0, "attribute": 1}


def test_zero_examples():
    adapter = ModelAdapter.from_keras(classifier())
    result = IntegratedGradients(adapter).attribute(np.zeros((0, 6), np.float32))
    assert len(result) == 0
    assert result.attributions.shape == (0, 6)


# ---------------------------------------------------------------------------------- targets


def test_targets_index_array_predicted_label_callable():
    model = classifier()
    adapter = ModelAdapter.from_keras(model)
    x = RNG.normal(size=(10, 6)).astype(np.float32)
    probs = model(x).numpy()
    predicted = IntegratedGradients(adapter, steps=16).attribute(x)
    np.testing.assert_array_equal(predicted.targets, probs.argmax(axis=1))
    np.testing.assert_allclose(predicted.predictions, probs.max(axis=1), rtol=1e-5)

    fixed = IntegratedGradients(adapter, steps=16, target=Target("index", value=2)).attribute(x)
    assert (fixed.targets == 2).all()
    np.testing.assert_allclose(fixed.predictions, probs[:, 2], rtol=1e-5)

    per_example = np.arange(10) % 4
    given = IntegratedGradients(adapter, steps=16).attribute(x, targets=per_example)
    np.testing.assert_array_equal(given.targets, per_example)

    labelled = IntegratedGradients(adapter, steps=16, target=Target("label", feature="label"))
    by_label = labelled.attribute({"x": x, "label": per_example[:, None]})
    np.testing.assert_allclose(by_label.attributions, given.attributions, atol=1e-7)

    # A callable target: the sum of classes 0 and 1. IG is linear in the target function.
    pair = Target("callable", fn=lambda out: out[:, 0] + out[:, 1])
    summed = IntegratedGradients(adapter, steps=16, target=pair).attribute(x)
    zeros = IntegratedGradients(adapter, steps=16).attribute(x, targets=0)
    ones = IntegratedGradients(adapter, steps=16).attribute(x, targets=1)
    np.testing.assert_allclose(
        summed.attributions, zeros.attributions + ones.attributions, atol=1e-6
    )
    assert (summed.targets == -1).all()


def test_named_output_of_multi_output_model():
    keras.utils.set_random_seed(1)
    inp = keras.Input((4,), name="x")
    head_a = keras.layers.Dense(3, activation="softmax", name="a")(inp)
    head_b = keras.layers.Dense(1, name="b")(inp)
    model = keras.Model(inp, {"a": head_a, "b": head_b})
    adapter = ModelAdapter.from_keras(model)
    with pytest.raises(ValueError, match="choose one with output="):
        IntegratedGradients(adapter)
    x = RNG.normal(size=(4, 4)).astype(np.float32)
    reg = IntegratedGradients(adapter, output="b", target=Target("scalar")).attribute(x)
    w = model.get_layer("b").get_weights()[0][:, 0]
    np.testing.assert_allclose(reg.attributions, w * x, atol=1e-5)
    cls = IntegratedGradients(adapter, output="a").attribute(x)
    assert np.abs(cls.deltas).max() < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "call", "match"),
    [
        ({"target": Target("index", value=9)}, {}, "out of range"),
        ({}, {"targets": [0, 1, 2]}, "integer class indices"),
        ({}, {"targets": np.array([0, 5, 0, 0])}, "out of range"),
        ({"target": Target("scalar")}, {}, "width 1"),
        ({"target": Target("label", feature="y")}, {}, "needs the label feature 'y'"),
    ],
)
def test_bad_targets_raise(kwargs, call, match):
    adapter = ModelAdapter.from_keras(classifier())
    with pytest.raises(ValueError, match=match):
        IntegratedGradients(adapter, **kwargs).attribute(np.zeros((4, 6), np.float32), **call)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "simpson"}, "choose one of"),
        ({"steps": 0}, "steps: must be an integer >= 1, got 0"),
        ({"max_rows_per_call": 0}, "max_rows_per_call: must be an integer >= 1, got 0"),
        ({"features": ["nope"]}, "unknown features"),
        ({"features": []}, "features: must not be an empty list"),
        ({"output": "logits"}, "unknown output"),
        ({"layer": "nope"}, "no layer 'nope'"),
        ({"target": Target("index", value=-1)}, "target.value: must be an integer >= 0, got -1"),
        ({"target": Target("sideways")}, "unknown target kind"),
        ({"baseline": Baseline("median")}, "unknown baseline kind"),
        ({"baseline": Baseline("per_feature", values={})}, "baseline.values: must be a non-empty"),
        ({"baseline": Baseline("random_uniform", low=0.0)}, "baseline.high: required for"),
        (
            {"baseline": Baseline("random_uniform", low=1.0, high=0.0)},
            "baseline.high: must be >= low",
        ),
        ({"baseline": Baseline("random_uniform", low=0.0, high=1.0, samples=0)}, "samples"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    adapter = ModelAdapter.from_keras(classifier())
    with pytest.raises(ValueError, match=match):
        IntegratedGradients(adapter, **kwargs)


def test_bad_inputs_and_baselines_raise():
    adapter = ModelAdapter.from_keras(classifier())
    ig = IntegratedGradients(adapter)
    with pytest.raises(ValueError, match="shape"):
        ig.attribute(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="needs baselines="):
        IntegratedGradients(adapter, baseline=Baseline("array")).attribute(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="expected"):
        IntegratedGradients(adapter, baseline=Baseline("array")).attribute(
            np.zeros((2, 6)), baselines=np.zeros((3, 6))
        )
    with pytest.raises(ValueError, match="keys must have one entry"):
        ig.attribute(np.zeros((2, 6)), keys=["a"])
    dict_adapter = ModelAdapter.from_keras(embedding_model())
    with pytest.raises(ValueError, match=r"lack the model inputs \['ids'\]"):
        IntegratedGradients(dict_adapter, features=["num"]).attribute({"num": np.zeros((1, 3))})


def test_array_baselines_are_used_per_example():
    w = RNG.normal(size=3)
    adapter = ModelAdapter.from_keras(linear_model(w))
    ig = IntegratedGradients(adapter, target=Target("scalar"), baseline=Baseline("array"))
    x = RNG.normal(size=(4, 3)).astype(np.float32)
    b = RNG.normal(size=(4, 3)).astype(np.float32)
    result = ig.attribute(x, baselines=b)
    np.testing.assert_allclose(result.attributions, w * (x - b), atol=1e-5)


# ---------------------------------------------------------------------------------- loading


def test_keras_file_and_saved_model_give_the_same_attributions(tmp_path):
    model = classifier()
    x = RNG.normal(size=(5, 6)).astype(np.float32)
    reference = IntegratedGradients(ModelAdapter.from_keras(model), steps=10).attribute(x)
    path = str(tmp_path / "m.keras")
    model.save(path)
    from_file = IntegratedGradients(load_model(path), steps=10).attribute(x)
    np.testing.assert_allclose(from_file.attributions, reference.attributions, atol=1e-6)

    class Module(tf.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="features")])
        def serve(self, features):
            return {"probs": self.m(features)}

    saved = str(tmp_path / "saved")
    module = Module(model)
    tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
    adapter = load_model(saved)
    assert list(adapter.input_specs) == ["features"]
    restored = IntegratedGradients(adapter, steps=10).attribute({"features": x})
    np.testing.assert_allclose(restored.attributions["features"], reference.attributions, atol=1e-6)
    with pytest.raises(ModelLoadError, match="no signature 'nope'"):
        load_model(saved, signature="nope")


def test_missing_model_paths_raise(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "absent.keras"))
    with pytest.raises(ModelLoadError, match=r"neither a \.keras file nor a SavedModel"):
        load_model(str(tmp_path / "absent"))
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="cannot load Keras model"):
        load_model(str(bad))


# --------------------------------------------------------------- F(x') of a shared baseline


@pytest.mark.parametrize("max_rows", [16384, 40])  # one chunk per call; chunked in-graph
def test_shared_baseline_matches_the_same_values_given_per_example(max_rows):
    # A constant baseline is the same for every example: the engine evaluates F(x') once per
    # chunk. It must agree with the same values passed per example (kind 'array', F(x') per row).
    adapter = ModelAdapter.from_keras(classifier())
    x = RNG.normal(size=(13, 6)).astype(np.float32)
    shared = IntegratedGradients(
        adapter, steps=9, baseline=Baseline("constant", value=0.3), max_rows_per_call=max_rows
    ).attribute(x)
    given = IntegratedGradients(
        adapter, steps=9, baseline=Baseline("array"), max_rows_per_call=max_rows
    ).attribute(x, baselines=np.full_like(x, 0.3), targets=shared.targets)
    probs = adapter.keras_model(np.full((1, 6), 0.3, np.float32)).numpy()[0]
    np.testing.assert_allclose(shared.baseline_predictions, probs[shared.targets], rtol=1e-6)
    np.testing.assert_allclose(shared.baseline_predictions, given.baseline_predictions, rtol=1e-6)
    np.testing.assert_allclose(shared.attributions, given.attributions, atol=1e-7)
    np.testing.assert_allclose(shared.deltas, given.deltas, atol=1e-7)


def test_baseline_prediction_follows_pass_through_inputs():
    # F = w . a + b with b passed through: F(x') = w . a' + b differs per example although the
    # baseline a' is the same for all, and IG on a is exactly w * (a - a').
    w = RNG.normal(size=4)

    def fn(inputs):
        return tf.reduce_sum(inputs["a"] * w, axis=1) + inputs["b"][:, 0]

    specs = {"a": tf.TensorSpec([None, 4], tf.float64), "b": tf.TensorSpec([None, 1], tf.float64)}
    adapter = ModelAdapter.from_function(fn, specs)
    ig = IntegratedGradients(
        adapter,
        features=["a"],
        target=Target("scalar"),
        steps=3,
        baseline=Baseline("constant", value=0.5),
    )
    a, b = RNG.normal(size=(7, 4)), RNG.normal(size=(7, 1))
    result = ig.attribute({"a": a, "b": b})
    np.testing.assert_allclose(result.baseline_predictions, 0.5 * w.sum() + b[:, 0], rtol=1e-9)
    np.testing.assert_allclose(result.attributions["a"], w * (a - 0.5), rtol=1e-9)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-9)
