"""Tests of the baseline kinds blur, average, reference, expected_gradients and of SmoothGrad.

Closed forms on linear models (IG = w * (x - x') exactly, averaged over baselines and noisy
copies), completeness, determinism per key across batches and workers, the settings' one-line
errors, the export, and the pipeline's resolution of data-derived baselines.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from helpers import (
    classifier,
    embedding_model,
    linear_model,
    read_attributions,
    workspace_config,
    write_demo_workspace,
)

import pipeline.reference as reference_module
from attribution import Baseline, IntegratedGradients, ModelAdapter, Target, load_model
from attribution.adaptive import AdaptiveIntegratedGradients
from attribution.blur import blur_matrix, gaussian_kernel
from attribution.errors import SettingsError
from attribution.fields import parse, to_dict, validated
from attribution.savedmodel import export_integrated_gradients
from attribution.settings import AttributionConfig, SmoothGrad
from attribution.smoothgrad import smoothgrad_noise
from pipeline import demo
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.examples import write_tfrecord_shards
from pipeline.job import JobError, plan_job, run_job
from pipeline.reference import ReferenceDataError, load_references, reference_statistics
from transforms.decode import load_schema

RNG = np.random.default_rng(3)
IG = "integrated_gradients"


def _linear(w: np.ndarray, **kwargs) -> IntegratedGradients:
    return IntegratedGradients(
        ModelAdapter.from_keras(linear_model(w)), steps=5, target=Target("scalar"), **kwargs
    )


def image_linear_model(height: int, width: int, channels: int, seed: int = 0) -> keras.Model:
    """y = w . flatten(image) + 0.25 on an [H, W, C] input "img": IG = w * (x - x') exactly."""
    rng = np.random.default_rng(seed)
    inp = keras.Input((height, width, channels), name="img")
    out = keras.layers.Dense(1, name="y")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    w = rng.normal(size=(height * width * channels, 1)).astype(np.float32)
    model.get_layer("y").set_weights([w, np.array([0.25], np.float32)])
    return model


# ------------------------------------------------------------------------------------ average


AVERAGED = (
    Baseline("zeros"),
    Baseline("constant", value=0.5),
    Baseline("per_feature", values={"x": [1.0, -1.0, 0.0, 2.0, 0.5, 1.0]}),
    Baseline("random_uniform", low=-1.0, high=2.0, seed=4, samples=3),
)


def test_average_equals_the_mean_of_single_baseline_runs_on_a_linear_model():
    w = RNG.normal(size=6)
    x = RNG.normal(size=(7, 6)).astype(np.float32)
    keys = [f"k{i}" for i in range(7)]
    average = _linear(w, baseline=Baseline("average", baselines=AVERAGED)).attribute(x, keys=keys)
    singles = [_linear(w, baseline=b).attribute(x, keys=keys) for b in AVERAGED]
    counts = np.array([b.num_samples for b in AVERAGED], np.float64)  # 1, 1, 1, 3: S = 6
    used = np.concatenate([s.baselines["x"] for s in singles], axis=1)
    assert average.baselines["x"].shape == (7, 6, 6)
    np.testing.assert_array_equal(average.baselines["x"], used)
    expected = sum(c * s.attributions for c, s in zip(counts, singles, strict=True)) / counts.sum()
    np.testing.assert_allclose(average.attributions, expected, atol=1e-6)
    # the closed form: w * (x - mean over the S baselines)
    np.testing.assert_allclose(average.attributions, w * (x - used.mean(axis=1)), atol=1e-5)
    base = (
        sum(c * s.baseline_predictions for c, s in zip(counts, singles, strict=True)) / counts.sum()
    )
    np.testing.assert_allclose(average.baseline_predictions, base, atol=1e-6)
    np.testing.assert_allclose(average.predictions, x @ w + 0.25, atol=1e-5)
    np.testing.assert_allclose(average.deltas, 0.0, atol=1e-5)


def test_average_on_a_classifier_matches_the_single_runs_and_is_complete():
    adapter = ModelAdapter.from_keras(classifier())
    x = RNG.normal(size=(5, 6)).astype(np.float32)
    keys = [f"e{i}" for i in range(5)]
    members = (Baseline("zeros"), Baseline("random_uniform", low=-1.0, high=1.0, samples=2))
    average = IntegratedGradients(
        adapter, steps=32, baseline=Baseline("average", baselines=members)
    ).attribute(x, keys=keys)
    singles = [
        IntegratedGradients(adapter, steps=32, baseline=b).attribute(x, keys=keys) for b in members
    ]
    np.testing.assert_array_equal(average.targets, singles[0].targets)
    expected = (singles[0].attributions + 2 * singles[1].attributions) / 3
    np.testing.assert_allclose(average.attributions, expected, atol=1e-6)
    assert np.abs(average.deltas).max() < 1e-4


@pytest.mark.parametrize(
    ("baseline", "match"),
    [
        ({"kind": "average"}, r"attribution\.baseline\.baselines: required for baseline kind"),
        ({"kind": "average", "baselines": []}, r"baselines: must be a non-empty list"),
        (
            {
                "kind": "average",
                "baselines": [{"kind": "average", "baselines": [{"kind": "zeros"}]}],
            },
            r"attribution\.baseline\.baselines\[0\]\.kind: baseline kind 'average' cannot be",
        ),
        (
            {"kind": "average", "baselines": [{"kind": "zeros"}, {"kind": "constant"}]},
            r"attribution\.baseline\.baselines\[1\]\.value: required for baseline kind",
        ),
        (
            {"kind": "average", "baselines": [{"kind": "random_uniform", "low": 2, "high": 1}]},
            r"attribution\.baseline\.baselines\[0\]\.high: must be >= low",
        ),
        ({"kind": "average", "baselines": [3]}, r"baselines\[0\]: must be a baseline mapping"),
        ({"kind": "zeros", "baselines": [{"kind": "zeros"}]}, r"baselines: not allowed for"),
        ({"kind": "blur"}, r"attribution\.baseline\.sigma: required for baseline kind 'blur'"),
        ({"kind": "blur", "sigma": 0}, r"attribution\.baseline\.sigma: must be a number > 0"),
        (
            {"kind": "reference", "statistic": "mean"},
            r"attribution\.baseline\.pattern: give exactly one of pattern",
        ),
        (
            {"kind": "reference", "statistic": "mean", "pattern": "a", "run": "b"},
            r"attribution\.baseline\.pattern: give exactly one of pattern",
        ),
        (
            {"kind": "reference", "statistic": "average", "pattern": "a"},
            r"attribution\.baseline\.statistic: unknown statistic 'average'; choose one of",
        ),
        ({"kind": "expected_gradients"}, r"attribution\.baseline\.pattern: required for"),
        (
            {"kind": "expected_gradients", "pattern": "a", "max_reference": 0},
            r"attribution\.baseline\.max_reference: must be an integer >= 1",
        ),
        (
            {"kind": "average", "baselines": [{"kind": "expected_gradients", "pattern": "a"}]},
            r"baselines\[0\]\.kind: baseline kind 'expected_gradients' cannot be averaged",
        ),
    ],
)
def test_baseline_settings_errors_name_the_dotted_key(baseline, match):
    with pytest.raises(SettingsError, match=match) as err:
        parse(AttributionConfig, {"baseline": baseline}, "attribution")
    assert "\n" not in str(err.value)


def test_new_settings_round_trip_through_to_dict():
    config = parse(
        AttributionConfig,
        {
            "baseline": {"kind": "average", "baselines": [dict(to_dict(b)) for b in AVERAGED]},
            "smoothgrad": {"samples": 4, "feature_sigma": {"x": 0.2}, "seed": 9},
        },
    )
    assert parse(AttributionConfig, to_dict(config)) == config
    assert config.baseline.num_samples == 6 and config.baseline.uses_keys
    assert config.noise_samples == 4
    for spec in (
        {"kind": "blur", "sigma": 2.5},
        {"kind": "reference", "statistic": "median", "run": "r"},
    ):
        b = parse(Baseline, spec)
        assert parse(Baseline, to_dict(b)) == b


# --------------------------------------------------------------------------------------- blur


def _blur_numpy(image: np.ndarray, sigma: float) -> np.ndarray:
    """An independent reference: np.pad(mode='symmetric') and np.convolve, axis by axis."""
    taps = gaussian_kernel(sigma)
    radius = len(taps) // 2
    out = np.asarray(image, np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        out = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), axis, padded)
    return out


@pytest.mark.parametrize(("size", "sigma"), [(9, 1.0), (5, 0.6), (6, 3.0), (1, 2.0), (3, 7.5)])
def test_blur_matrix_is_a_reflect_padded_gaussian_convolution(size, sigma):
    taps = gaussian_kernel(sigma)
    assert len(taps) == 2 * int(4 * sigma + 0.5) + 1
    np.testing.assert_allclose(taps.sum(), 1.0)
    np.testing.assert_allclose(taps, taps[::-1])
    v = RNG.normal(size=(size, 1))
    np.testing.assert_allclose(blur_matrix(size, sigma) @ v[:, 0], _blur_numpy(v, sigma)[:, 0])
    np.testing.assert_allclose(blur_matrix(size, sigma).sum(axis=1), 1.0)


@pytest.mark.parametrize("shape", [(6, 5, 3), (7, 4)])
def test_blur_baseline_linear_model_closed_form(shape):
    sigma = 1.5
    if len(shape) == 3:
        model = image_linear_model(*shape)
    else:
        inp = keras.Input(shape, name="img")
        model = keras.Model(inp, keras.layers.Dense(1, name="y")(keras.layers.Flatten()(inp)))
    ig = IntegratedGradients(
        ModelAdapter.from_keras(model),
        steps=3,
        target=Target("scalar"),
        baseline=Baseline("blur", sigma=sigma),
    )
    x = RNG.uniform(size=(4, *shape)).astype(np.float32)
    x[0] = 0.7  # a constant image is its own blur: zero attributions
    result = ig.attribute(x)
    blurred = np.stack([_blur_numpy(image, sigma) for image in x])
    np.testing.assert_allclose(result.baselines["img"][:, 0], blurred, atol=1e-5)
    w = model.get_layer("y").get_weights()[0][:, 0].reshape(shape)
    np.testing.assert_allclose(result.attributions, w * (x - blurred), atol=1e-5)
    np.testing.assert_allclose(result.attributions[0], 0.0, atol=1e-5)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-4)


def test_blur_refuses_features_that_are_not_two_dimensional():
    with pytest.raises(
        ValueError, match=r"kind 'blur' blurs the two spatial axes.*'x' has shape \(6,\)"
    ):
        _linear(RNG.normal(size=6), baseline=Baseline("blur", sigma=1.0))


# --------------------------------------------------------------------------------- smoothgrad


def _noise(spec: SmoothGrad, ig: IntegratedGradients, keys: list[str]) -> dict[str, np.ndarray]:
    layout = ig.layout()
    packed = smoothgrad_noise(spec, ig.attributed_specs, layout, tf.constant(keys))
    n = len(keys)
    flat = layout.unpack({k: v.numpy().reshape(n * spec.samples, -1) for k, v in packed.items()})
    return {k: v.reshape(n, spec.samples, *v.shape[1:]) for k, v in flat.items()}


def test_smoothgrad_linear_model_closed_form():
    w = RNG.normal(size=6)
    x = RNG.normal(size=(9, 6)).astype(np.float32)
    keys = [f"s{i}" for i in range(9)]
    spec = SmoothGrad(samples=5, sigma=0.3, seed=2)
    ig = _linear(
        w, baseline=Baseline("constant", value=0.5), settings=AttributionConfig(smoothgrad=spec)
    )
    result = ig.attribute(x, keys=keys)
    noise = _noise(spec, ig, keys)["x"]  # [n, N, 6]
    assert noise.shape == (9, 5, 6)
    noisy_mean = x + noise.mean(axis=1)
    np.testing.assert_allclose(result.attributions, w * (noisy_mean - 0.5), atol=1e-5)
    assert np.abs(result.attributions - w * (x - 0.5)).max() > 1e-3  # the noise is there
    np.testing.assert_allclose(result.predictions, x @ w + 0.25, atol=1e-5)  # clean F(x)
    np.testing.assert_allclose(result.baseline_predictions, 0.5 * w.sum() + 0.25, atol=1e-5)
    # delta is relative to the mean noisy prediction: zero for a linear model
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-5)


def test_smoothgrad_noise_is_normal_with_sigma_and_feature_sigma_leaves_others_clean():
    inp_a, inp_b = keras.Input((40,), name="a"), keras.Input((3,), name="b")
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([inp_a, inp_b]))
    adapter = ModelAdapter.from_keras(keras.Model({"a": inp_a, "b": inp_b}, out))
    spec = SmoothGrad(samples=50, feature_sigma={"a": 2.0}, seed=1)
    ig = IntegratedGradients(
        adapter, steps=2, target=Target("scalar"), settings=AttributionConfig(smoothgrad=spec)
    )
    keys = [f"n{i}" for i in range(20)]
    noise = _noise(spec, ig, keys)
    assert noise["a"].shape == (20, 50, 40) and noise["b"].shape == (20, 50, 3)
    assert (noise["b"] == 0).all()
    assert abs(noise["a"].std() - 2.0) < 0.05 and abs(noise["a"].mean()) < 0.05
    assert len(np.unique(noise["a"][:, 0, 0])) == 20  # per key, not repeated
    x = {
        "a": RNG.normal(size=(20, 40)).astype(np.float32),
        "b": RNG.normal(size=(20, 3)).astype(np.float32),
    }
    result = ig.attribute(x, keys=keys)
    w = adapter.keras_model.layers[-1].get_weights()[0][:, 0]
    np.testing.assert_allclose(result.attributions["b"], w[40:] * x["b"], atol=1e-5)
    np.testing.assert_allclose(
        result.attributions["a"], w[:40] * (x["a"] + noise["a"].mean(axis=1)), atol=1e-4
    )


def test_smoothgrad_is_reproducible_per_key_across_batches():
    adapter = ModelAdapter.from_keras(classifier())
    x = RNG.normal(size=(12, 6)).astype(np.float32)
    keys = [f"r{i}" for i in range(12)]
    settings = AttributionConfig(smoothgrad=SmoothGrad(samples=3, sigma=0.5, seed=7))
    whole = IntegratedGradients(adapter, steps=16, settings=settings).attribute(x, keys=keys)
    small = IntegratedGradients(adapter, steps=16, settings=settings, max_rows_per_call=16 * 3 * 2)
    order = [5, 11, 0, 3, 8, 1, 2, 4, 6, 7, 9, 10]
    parts = [
        small.attribute(x[order[i : i + 5]], keys=[keys[j] for j in order[i : i + 5]])
        for i in range(0, 12, 5)
    ]
    moved = np.concatenate([p.attributions for p in parts])
    np.testing.assert_allclose(moved, whole.attributions[order], rtol=1e-5, atol=1e-7)
    other = IntegratedGradients(
        adapter,
        steps=16,
        settings=AttributionConfig(smoothgrad=SmoothGrad(samples=3, sigma=0.5, seed=8)),
    ).attribute(x, keys=keys)
    assert np.abs(other.attributions - whole.attributions).max() > 1e-4
    # the clean class is explained; completeness holds on the noisy average
    np.testing.assert_array_equal(whole.targets, classifier()(x).numpy().argmax(axis=1))
    assert np.abs(whole.deltas).max() < 1e-4


def test_smoothgrad_with_adaptive_steps_reaches_the_tolerance_on_the_noisy_average():
    adapter = ModelAdapter.from_keras(classifier())
    x = RNG.normal(size=(8, 6)).astype(np.float32) * 2
    keys = [f"a{i}" for i in range(8)]
    smooth = SmoothGrad(samples=3, sigma=0.3, seed=1)
    auto = AdaptiveIntegratedGradients(
        adapter,
        settings=AttributionConfig(
            steps="auto", tolerance=1e-4, min_steps=4, max_steps=128, smoothgrad=smooth
        ),
    ).attribute(x, keys=keys)
    assert auto.within_tolerance.all() and auto.steps_used.max() > 4
    fixed = IntegratedGradients(
        adapter, steps=128, settings=AttributionConfig(smoothgrad=smooth)
    ).attribute(x, keys=keys)
    scale = np.abs(fixed.attributions).sum(axis=1, keepdims=True)
    assert (np.abs(auto.attributions - fixed.attributions) / scale).max() < 1e-2
    np.testing.assert_allclose(auto.predictions, fixed.predictions, rtol=1e-6)


def test_smoothgrad_on_a_layer_adds_noise_to_its_output_and_stays_complete():
    adapter = ModelAdapter.from_keras(embedding_model())
    inputs = {
        "ids": RNG.integers(0, 20, size=(6, 5)).astype(np.int32),
        "num": RNG.normal(size=(6, 3)).astype(np.float32),
    }
    keys = [f"t{i}" for i in range(6)]
    plain = IntegratedGradients(adapter, layer="emb", steps=64).attribute(inputs, keys=keys)
    smooth = AttributionConfig(smoothgrad=SmoothGrad(samples=4, feature_sigma={"emb": 0.2}))
    noisy = IntegratedGradients(adapter, layer="emb", steps=64, settings=smooth)
    result = noisy.attribute(inputs, keys=keys)
    assert np.abs(result.attributions["emb"] - plain.attributions["emb"]).max() > 1e-4
    assert np.abs(result.deltas).max() < 1e-4
    np.testing.assert_allclose(result.predictions, plain.predictions, rtol=1e-6)
    np.testing.assert_array_equal(result.targets, plain.targets)
    half = noisy.attribute({k: v[3:] for k, v in inputs.items()}, keys=keys[3:])
    np.testing.assert_allclose(half.attributions["emb"], result.attributions["emb"][3:], atol=1e-6)


@pytest.mark.parametrize(
    ("smoothgrad", "match"),
    [
        ({"samples": 0}, r"attribution\.smoothgrad\.samples: must be an integer >= 1"),
        ({"samples": 51}, r"attribution\.smoothgrad\.samples: must be an integer in \[1, 50\]"),
        ({"sigma": 0}, r"attribution\.smoothgrad\.sigma: must be a number > 0"),
        ({"sigma": 1.0, "feature_sigma": {"x": 1.0}}, r"smoothgrad\.feature_sigma: give sigma or"),
        (
            {"feature_sigma": {"x": -1.0}},
            r"attribution\.smoothgrad\.feature_sigma\.x: must be >= 0",
        ),
        ({"feature_sigma": 0.3}, r"attribution\.smoothgrad\.feature_sigma: must be a \{feature"),
        ({"noise": 1}, r"attribution\.smoothgrad\.noise: unknown key"),
    ],
)
def test_smoothgrad_settings_errors_name_the_dotted_key(smoothgrad, match):
    with pytest.raises(SettingsError, match=match):
        parse(AttributionConfig, {"smoothgrad": smoothgrad}, "attribution")


def test_smoothgrad_feature_sigma_must_name_attributed_features():
    settings = AttributionConfig(smoothgrad=SmoothGrad(feature_sigma={"y": 1.0}))
    with pytest.raises(SettingsError, match=r"smoothgrad\.feature_sigma\.y: not an attributed"):
        _linear(RNG.normal(size=3), settings=settings)


def test_smoothgrad_defaults_follow_vertex():
    spec = parse(SmoothGrad, {})
    assert spec.samples == 3 and spec.sigma_of("anything") == 0.1


# ------------------------------------------------------------------------------------- export


def test_export_serves_blur_average_and_smoothgrad_like_the_engine(tmp_path):
    model = image_linear_model(5, 4, 2)
    adapter = ModelAdapter.from_keras(model)
    baseline = Baseline(
        "average",
        baselines=(
            Baseline("blur", sigma=1.0),
            Baseline("random_uniform", low=0.0, high=1.0, seed=3, samples=2),
        ),
    )
    settings = AttributionConfig(smoothgrad=SmoothGrad(samples=2, sigma=0.1, seed=5))
    ig = IntegratedGradients(
        adapter, steps=4, target=Target("scalar"), baseline=baseline, settings=settings
    )
    fn = tf.saved_model.load(export_integrated_gradients(ig, str(tmp_path / "e"))).signatures[IG]
    x = RNG.uniform(size=(6, 5, 4, 2)).astype(np.float32)
    keys = [f"x{i}" for i in range(6)]
    out = fn(img=tf.constant(x), keys=tf.constant(keys))
    engine = ig.attribute(x, keys=keys)
    assert out["baseline/img"].shape == (6, 3, 5, 4, 2)
    np.testing.assert_allclose(out["baseline/img"].numpy(), engine.baselines["img"], atol=1e-6)
    np.testing.assert_allclose(out["attributions/img"].numpy(), engine.attributions, atol=1e-6)
    np.testing.assert_allclose(out["delta"].numpy(), engine.deltas, atol=1e-6)
    np.testing.assert_allclose(out["prediction"].numpy(), engine.predictions, atol=1e-6)


# ------------------------------------------------------------------------- expected gradients


def test_expected_gradients_linear_closed_form_and_draws_follow_keys():
    w = RNG.normal(size=4)
    references = {"x": RNG.normal(size=(23, 4)).astype(np.float32)}
    spec = Baseline(
        "expected_gradients", pattern="unused", samples=6, seed=3, references=references
    )
    ig = _linear(w, baseline=spec)
    x = RNG.normal(size=(10, 4)).astype(np.float32)
    keys = [f"g{i}" for i in range(10)]
    result = ig.attribute(x, keys=keys)
    used = result.baselines["x"]  # [10, 6, 4], each a reference record
    assert used.shape == (10, 6, 4)
    rows = {tuple(r) for r in references["x"].tolist()}
    assert all(tuple(b) in rows for b in used.reshape(-1, 4).tolist())
    assert len({tuple(b) for b in used.reshape(-1, 4).tolist()}) > 10  # not one shared draw
    np.testing.assert_allclose(result.attributions, w * (x - used.mean(axis=1)), atol=1e-5)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-5)
    # per key: another batch composition and order draws the same references
    order = [7, 2, 9]
    moved = _linear(w, baseline=spec, max_rows_per_call=5 * 6).attribute(
        x[order], keys=[keys[i] for i in order]
    )
    np.testing.assert_array_equal(moved.baselines["x"], used[order])
    np.testing.assert_allclose(moved.attributions, result.attributions[order], atol=1e-6)
    reseeded = _linear(w, baseline=dataclasses.replace(spec, seed=4)).attribute(x, keys=keys)
    assert not np.array_equal(reseeded.baselines["x"], used)


def test_expected_gradients_needs_loaded_references_and_matching_shapes():
    w = RNG.normal(size=4)
    with pytest.raises(ValueError, match="no reference records loaded"):
        _linear(w, baseline=Baseline("expected_gradients", pattern="p"))
    bad = {"x": np.zeros((5, 3), np.float32)}
    with pytest.raises(ValueError, match=r"reference records of 'x' have shape \(3,\)"):
        _linear(w, baseline=Baseline("expected_gradients", pattern="p", references=bad))
    with pytest.raises(ValueError, match="kind 'reference' has no resolved values"):
        _linear(w, baseline=Baseline("reference", statistic="mean", pattern="p"))


def test_export_serves_expected_gradients_with_keys(tmp_path):
    w = RNG.normal(size=4)
    references = {"x": RNG.normal(size=(9, 4)).astype(np.float32)}
    spec = Baseline("expected_gradients", pattern="p", samples=3, seed=1, references=references)
    ig = _linear(w, baseline=spec)
    fn = tf.saved_model.load(export_integrated_gradients(ig, str(tmp_path / "eg"))).signatures[IG]
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    keys = [f"q{i}" for i in range(5)]
    out = fn(x=tf.constant(x), keys=tf.constant(keys))
    engine = ig.attribute(x, keys=keys)
    np.testing.assert_array_equal(out["baseline/x"].numpy(), engine.baselines["x"])
    np.testing.assert_allclose(out["attributions/x"].numpy(), engine.attributions, atol=1e-6)


# ------------------------------------------------------------ data-derived baselines: the job


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_model):
    """The demo model, 40 job examples (2 shards) and 101 reference examples (3 shards)."""
    root = tmp_path_factory.mktemp("baselines")
    data = write_demo_workspace(root, demo_model, 40, seed=1, shards=2)
    reference = demo.make_data(101, seed=5)
    demo.write_tfrecords(str(root / "ref"), reference, shards=3)
    return root, data, reference


def _schema(root):
    return load_schema(str(root / "data" / "schema.pbtxt"))


@pytest.mark.parametrize("statistic", ["mean", "median", "min", "max"])
def test_reference_statistics_equal_numpy_on_the_reference_data(workspace, statistic):
    root, _, reference = workspace
    values, details = reference_statistics(
        str(root / "ref" / "*.tfrecord.gz"), demo.FEATURES, _schema(root), statistic
    )
    expected = getattr(np, statistic)(reference["x"].astype(np.float64), axis=0)
    np.testing.assert_allclose([values[f] for f in demo.FEATURES], expected, rtol=1e-12)
    if statistic == "median":  # 101 values: the middle one, exactly
        assert [values[f] for f in demo.FEATURES] == list(expected)
    assert details["records_read"] == 101 and details["records_skipped"] == 0
    assert details["exact"] is True


def test_reference_mode_and_sketched_median(workspace, monkeypatch):
    root, _, reference = workspace
    pattern = str(root / "ref" / "*.tfrecord.gz")
    values, _ = reference_statistics(pattern, ["label"], _schema(root), "mode")
    labels, counts = np.unique(reference["label"], return_counts=True)
    assert values == {"label": float(labels[counts.argmax()])}
    monkeypatch.setattr(reference_module, "EXACT_MEDIAN_VALUES", 50)
    values, details = reference_statistics(pattern, ["f0"], _schema(root), "median")
    assert details["exact"] is False
    rank = (reference["x"][:, 0] <= values["f0"]).mean()
    assert abs(rank - 0.5) < 0.02
    monkeypatch.setattr(reference_module, "MODE_MAX_DISTINCT", 10)
    with pytest.raises(ReferenceDataError, match=r"attribution\.baseline\.statistic: mode needs"):
        reference_statistics(pattern, ["f0"], _schema(root), "mode")
    with pytest.raises(ReferenceDataError, match=r"attribution\.baseline\.pattern: .*no|match"):
        reference_statistics(str(root / "nothing-*.gz"), ["f0"], _schema(root), "mean")


def _run(root, out, baseline, *beam_args, smoothgrad=None, **settings):
    attribution = {"steps": 8, "baseline": baseline, "smoothgrad": smoothgrad}
    config = parse_config(workspace_config(root, out, attribution=attribution, **settings))
    return config, run_job(config, list(beam_args))


def test_reference_baseline_job_records_its_values_and_matches_the_engine(workspace, tmp_path):
    root, data, reference = workspace
    baseline = {"kind": "reference", "statistic": "median", "pattern": str(root / "ref" / "*.gz")}
    _, summary = _run(root, tmp_path / "run", baseline)
    medians = np.median(reference["x"].astype(np.float64), axis=0)
    recorded = summary["config"]["attribution"]["baseline"]
    assert recorded["kind"] == "reference"
    assert [recorded["values"][f] for f in demo.FEATURES] == list(medians)
    assert summary["fingerprint"]["attribution"]["baseline"]["values"] == recorded["values"]
    assert summary["baseline_reference"]["records_read"] == 101
    frame = read_attributions(tmp_path / "run").set_index("key")
    values = {f: float(m) for f, m in zip(demo.FEATURES, medians, strict=True)}
    ig = IntegratedGradients(
        load_model(str(root / "model.keras")),
        steps=8,
        baseline=Baseline("per_feature", values=values),
    )
    inputs = {f: data["x"][:, j : j + 1] for j, f in enumerate(demo.FEATURES)}
    expected = ig.attribute(inputs)
    keys = [f"ex-{i:06d}" for i in range(40)]
    np.testing.assert_allclose(
        frame.loc[keys, "baseline_prediction"], expected.baseline_predictions, rtol=1e-5
    )
    np.testing.assert_allclose(
        frame.loc[keys, "attr_f0"], expected.attributions["f0"][:, 0], atol=1e-5
    )
    # the summary's config reruns with the recorded values, without the pass
    again = parse_config(summary["config"])
    assert again.attribution.baseline.values == recorded["values"]

    # an earlier run's input statistics: the means of that run's inputs
    _, from_run = _run(
        root,
        tmp_path / "run2",
        {"kind": "reference", "statistic": "mean", "run": str(tmp_path / "run")},
    )
    means = [from_run["config"]["attribution"]["baseline"]["values"][f] for f in demo.FEATURES]
    np.testing.assert_allclose(means, data["x"].astype(np.float64).mean(axis=0), rtol=1e-9)


def test_data_baselines_refuse_layer_attribution_and_missing_data(workspace, tmp_path):
    root, _, _ = workspace
    bad = {"kind": "reference", "statistic": "mean", "pattern": str(root / "none-*.gz")}
    with pytest.raises(JobError, match=r"^attribution\.baseline\.pattern: "):
        plan_job(
            parse_config(workspace_config(root, tmp_path / "o", attribution={"baseline": bad}))
        )
    run = {"kind": "reference", "statistic": "mean", "run": str(tmp_path / "no-run")}
    with pytest.raises(JobError, match=r"^attribution\.baseline\.run: no statistics/inputs"):
        plan_job(
            parse_config(workspace_config(root, tmp_path / "o", attribution={"baseline": run}))
        )
    layer = {"kind": "expected_gradients", "pattern": str(root / "ref" / "*.gz")}
    config = workspace_config(root, tmp_path / "o", attribution={"baseline": layer, "layer": "x"})
    with pytest.raises(JobError, match="needs input attribution of features read from"):
        plan_job(parse_config(config))


def test_expected_gradients_and_smoothgrad_job_is_reproducible_across_workers(workspace, tmp_path):
    root, _, _ = workspace
    baseline = {
        "kind": "expected_gradients",
        "pattern": str(root / "ref" / "*.gz"),
        "samples": 4,
        "seed": 2,
        "max_reference": 60,
    }
    smooth = {"samples": 2, "sigma": 0.2, "seed": 4}
    _, one = _run(root, tmp_path / "one", baseline, smoothgrad=smooth)
    _, two = _run(
        root,
        tmp_path / "two",
        baseline,
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
        smoothgrad=smooth,
        batching={"batch_size": 7, "max_rows_per_call": 64},
    )
    assert one["fingerprint"]["attribution"]["smoothgrad"] == {
        "samples": 2,
        "sigma": 0.2,
        "feature_sigma": None,
        "seed": 4,
    }
    assert one["baseline_reference"]["records_kept"] == 60
    assert one["baseline_reference"]["records_read"] == 101
    assert one["baseline_reference"]["sha256"] == two["baseline_reference"]["sha256"]
    a = read_attributions(tmp_path / "one").set_index("key").sort_index()
    b = read_attributions(tmp_path / "two").set_index("key").sort_index()
    assert len(a) == 40
    for column in ["baseline_prediction", "delta", *[f"attr_{f}" for f in demo.FEATURES]]:
        np.testing.assert_allclose(a[column], b[column], rtol=1e-5, atol=1e-6)
    assert a["baseline_prediction"].nunique() > 20  # drawn per example
    # the kept set depends on the records' contents, not on their files or order
    ref = demo.make_data(101, seed=5)
    columns = {f: ref["x"][:, j] for j, f in enumerate(demo.FEATURES)}
    columns.update(
        label=ref["label"],
        country=ref["country"],
        example_id=np.array([f"ex-{i:06d}" for i in range(101)]),
    )
    order = np.random.default_rng(0).permutation(101)
    shuffled = {k: v[order] for k, v in columns.items()}
    write_tfrecord_shards(str(tmp_path / "shuffled"), shuffled, shards=5, prefix="other")
    _, details = load_references(
        str(tmp_path / "shuffled" / "*.gz"), demo.FEATURES, _schema(root), 60, 2
    )
    assert details["sha256"] == one["baseline_reference"]["sha256"]
    _, reseeded = load_references(
        str(tmp_path / "shuffled" / "*.gz"), demo.FEATURES, _schema(root), 60, 3
    )
    assert reseeded["sha256"] != details["sha256"]


def test_igbeam_export_resolves_data_baselines_from_the_config(workspace, tmp_path):
    root, _, reference = workspace
    raw = workspace_config(
        root,
        tmp_path / "unused",
        attribution={
            "steps": 4,
            "baseline": {"kind": "reference", "statistic": "max", "pattern": str(root / "ref")},
        },
    )
    raw["attribution"]["baseline"]["pattern"] = str(root / "ref" / "*.gz")
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["export", "--config", str(config_path), "--out", str(tmp_path / "exp")]) == 0
    fn = tf.saved_model.load(str(tmp_path / "exp")).signatures[IG]
    inputs = {f: tf.zeros([2, 1]) for f in demo.FEATURES}
    out = fn(**inputs)
    maxima = reference["x"].max(axis=0)
    for j, f in enumerate(demo.FEATURES):
        np.testing.assert_array_equal(out[f"baseline/{f}"].numpy().ravel(), [maxima[j]] * 2)
    raw["attribution"]["baseline"]["pattern"] = str(root / "missing-*.gz")
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["export", "--config", str(config_path), "--out", str(tmp_path / "e2")]) == 2


def test_reference_records_compare_by_content():
    refs = {"x": np.arange(6, dtype=np.float32).reshape(3, 2)}
    a = Baseline("expected_gradients", pattern="p", references=refs)
    b = Baseline("expected_gradients", pattern="p", references={"x": refs["x"].copy()})
    assert validated(a) == validated(b)
    c = Baseline("expected_gradients", pattern="p", references={"x": refs["x"] + 1})
    assert validated(a) != validated(c)


def test_job_config_checks_feature_sigma_against_the_listed_features(workspace, tmp_path):
    root, _, _ = workspace
    config = workspace_config(
        root,
        tmp_path / "o",
        features=["f0", "f1"],
        attribution={"smoothgrad": {"feature_sigma": {"f9": 1.0}}},
    )
    with pytest.raises(SettingsError, match=r"^attribution\.smoothgrad\.feature_sigma\.f9: not an"):
        parse_config(config)
