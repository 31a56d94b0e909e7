"""Tests of the Integrated Gradients SavedModel export (no Beam).

The main checks load the export in a fresh Python process with plain `tf.saved_model.load` (no
igbeam import), exchanging inputs and outputs through .npz files.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import classifier, embedding_model, example_bytes, linear_model

from attribution import Baseline, IntegratedGradients, ModelAdapter, Target
from attribution.savedmodel import export_integrated_gradients

RNG = np.random.default_rng(11)
IG = "integrated_gradients"
SERVE = "serving_default"


# ----------------------------------------------------------------------------------- models


def two_input_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="tanh")(keras.layers.Concatenate()([a, b]))
    out = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    return keras.Model({"a": a, "b": b}, out)


def example_parser(with_extras: bool = True) -> ModelAdapter:
    """A preprocess model: serialized tf.Examples -> {a, b} (+ label and id)."""
    spec = {
        "a": tf.io.FixedLenFeature([3], tf.float32),
        "b": tf.io.FixedLenFeature([2], tf.float32),
    }
    if with_extras:
        spec["label"] = tf.io.FixedLenFeature([1], tf.int64)
        spec["id"] = tf.io.FixedLenFeature([], tf.string)

    def parse(serialized: tf.Tensor) -> dict:
        return tf.io.parse_example(serialized, spec)

    return ModelAdapter.from_function(
        parse, {"serialized": tf.TensorSpec([None], tf.string)}, list(spec)
    )


def serialize(a: np.ndarray, b: np.ndarray, labels: np.ndarray, ids: list[str]) -> np.ndarray:
    out = [example_bytes(a=a[i], b=b[i], label=[labels[i]], id=ids[i]) for i in range(len(a))]
    return np.array(out, dtype=object)


# ---------------------------------------------------------------------------------- helpers

CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import tensorflow as tf

    work = sys.argv[1]
    n = int(sys.argv[2])
    loaded = {}
    for i in range(n):
        call = np.load(os.path.join(work, f"in{i}.npz"), allow_pickle=True)
        path, signature = str(call["__path"]), str(call["__signature"])
        if path not in loaded:
            loaded[path] = tf.saved_model.load(path)
        fn = loaded[path].signatures[signature]
        args = {}
        for k in call.files:
            if k.startswith("__"):
                continue
            v = call[k]
            args[k] = tf.constant(list(v), tf.string) if v.dtype == object else tf.constant(v)
        out = fn(**args)
        np.savez(os.path.join(work, f"out{i}.npz"), **{k: t.numpy() for k, t in out.items()})
    assert not any(m == "attribution" or m.startswith("attribution.") for m in sys.modules)
    """
)


def run_fresh(tmp_path, calls: list[tuple[str, str, dict]]) -> list[dict[str, np.ndarray]]:
    """Runs (export_dir, signature, inputs) calls in a fresh process without igbeam."""
    work = tmp_path / "fresh"
    work.mkdir()
    for i, (path, signature, inputs) in enumerate(calls):
        np.savez(work / f"in{i}.npz", __path=path, __signature=signature, **inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(work), str(len(calls))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [dict(np.load(work / f"out{i}.npz")) for i in range(len(calls))]


def check_against_engine(out: dict, ref, output_name: str = "attributions", atol=1e-5) -> None:
    """Compares an integrated_gradients signature's outputs with `engine.attribute`."""
    attributions = ref.attributions
    if not isinstance(attributions, dict):
        attributions = {next(iter(ref.baselines)): attributions}
    expected_keys = {f"{output_name}/{k}" for k in attributions} | {
        f"baseline/{k}" for k in ref.baselines
    }
    expected_keys |= {"prediction", "baseline_prediction", "delta", "target"}
    if ref.layer_scores is not None:
        expected_keys |= {f"layer_scores/{k}" for k in attributions}
        np.testing.assert_allclose(
            out[f"layer_scores/{next(iter(attributions))}"], ref.layer_scores, atol=atol
        )
    assert set(out) == expected_keys
    for name, value in attributions.items():
        assert out[f"{output_name}/{name}"].dtype == np.float64
        np.testing.assert_allclose(out[f"{output_name}/{name}"], value, atol=atol)
    for name, value in ref.baselines.items():
        assert out[f"baseline/{name}"].shape == value.shape
        np.testing.assert_allclose(out[f"baseline/{name}"], value, atol=1e-7)
    np.testing.assert_allclose(out["prediction"], ref.predictions, atol=atol)
    np.testing.assert_allclose(out["baseline_prediction"], ref.baseline_predictions, atol=atol)
    np.testing.assert_allclose(out["delta"], ref.deltas, atol=atol)
    assert out["target"].dtype == np.int64
    np.testing.assert_array_equal(out["target"], ref.targets)


def call(path: str, signature: str, **inputs) -> dict[str, np.ndarray]:
    fn = tf.saved_model.load(path).signatures[signature]
    args = {
        k: tf.constant(list(v), tf.string) if np.asarray(v).dtype == object else tf.constant(v)
        for k, v in inputs.items()
    }
    return {k: v.numpy() for k, v in fn(**args).items()}


def keys_of(n: int, prefix: str = "ex") -> np.ndarray:
    return np.array([f"{prefix}{i}".encode() for i in range(n)], dtype=object)


# ------------------------------------------------------------------- fresh-process exports


def test_fresh_process_signatures_match_keras_and_engine(tmp_path):
    # 1) Input attribution, random baselines (2 samples), predicted class, chunked path.
    model = classifier()
    baseline = Baseline("random_uniform", low=-1.0, high=1.0, seed=3, samples=2)
    ig = IntegratedGradients(
        ModelAdapter.from_keras(model), steps=12, baseline=baseline, max_rows_per_call=5
    )
    clf_dir = export_integrated_gradients(ig, str(tmp_path / "clf"))
    x = RNG.normal(size=(9, 6)).astype(np.float32)
    keys = keys_of(9)
    # 2) Layer attribution on an Embedding with a label target given as an extra input.
    emb_model = embedding_model()
    emb_ig = IntegratedGradients(
        ModelAdapter.from_keras(emb_model),
        layer="emb",
        steps=16,
        target=Target("label", feature="label"),
    )
    emb_dir = export_integrated_gradients(emb_ig, str(tmp_path / "emb"), output_name="ig")
    emb_in = {
        "ids": RNG.integers(1, 20, size=(7, 5)).astype(np.int32),
        "num": RNG.normal(size=(7, 3)).astype(np.float32),
    }
    labels = np.arange(7) % 3
    calls = [
        (clf_dir, SERVE, {"x": x, "keys": keys}),
        (clf_dir, IG, {"x": x, "keys": keys}),
        (emb_dir, SERVE, {**emb_in, "label": labels}),
        (emb_dir, IG, {**emb_in, "label": labels}),
        (clf_dir, IG, {"x": x[:0], "keys": keys[:0]}),
    ]
    served, attributed, emb_served, emb_attributed, empty = run_fresh(tmp_path, calls)

    assert set(served) == {"probs"}
    np.testing.assert_allclose(served["probs"], model(x).numpy(), atol=1e-6)
    check_against_engine(attributed, ig.attribute(x, keys=keys.astype(str)))
    assert attributed["baseline/x"].shape == (9, 2, 6)

    np.testing.assert_allclose(emb_served["out"], emb_model(emb_in).numpy(), atol=1e-6)
    ref = emb_ig.attribute({**emb_in, "label": labels[:, None]})
    check_against_engine(emb_attributed, ref, output_name="ig")
    assert emb_attributed["ig/emb"].shape == (7, 5, 4)
    np.testing.assert_array_equal(emb_attributed["target"], labels)
    assert np.abs(emb_attributed["delta"]).max() < 1e-4

    assert empty["attributions/x"].shape == (0, 6)
    assert empty["baseline/x"].shape == (0, 2, 6)


def test_preprocess_signatures_take_serialized_examples(tmp_path):
    model = two_input_model()
    adapter = ModelAdapter.from_keras(model)
    n = 6
    a = RNG.normal(size=(n, 3)).astype(np.float32)
    b = RNG.normal(size=(n, 2)).astype(np.float32)
    labels = np.array([2, 0, 1, 1, 0, 2])
    ids = [f"id-{i}" for i in range(n)]
    examples = serialize(a, b, labels, ids)

    # Random baselines keyed by a `keys` input, predicted class.
    baseline = Baseline("random_uniform", low={"a": -1.0, "b": 0.0}, high=1.0, seed=9)
    ig = IntegratedGradients(adapter, steps=10, baseline=baseline)
    plain_dir = export_integrated_gradients(
        ig, str(tmp_path / "plain"), preprocess=example_parser()
    )
    # Keys read from the examples' `id` feature; the label target read from the examples too.
    by_label = IntegratedGradients(
        adapter, steps=10, baseline=baseline, target=Target("label", feature="label")
    )
    keyed_dir = export_integrated_gradients(
        by_label, str(tmp_path / "keyed"), preprocess=example_parser(), key_feature="id"
    )
    keys = keys_of(n, "k")
    served, attributed, keyed = run_fresh(
        tmp_path,
        [
            (plain_dir, SERVE, {"examples": examples, "keys": keys}),
            (plain_dir, IG, {"examples": examples, "keys": keys}),
            (keyed_dir, IG, {"examples": examples}),
        ],
    )
    np.testing.assert_allclose(served["probs"], model({"a": a, "b": b}).numpy(), atol=1e-6)
    check_against_engine(attributed, ig.attribute({"a": a, "b": b}, keys=keys.astype(str)))
    ref = by_label.attribute({"a": a, "b": b, "label": labels[:, None]}, keys=ids)
    check_against_engine(keyed, ref)
    np.testing.assert_array_equal(keyed["target"], labels)

    # Input lists: the examples (and keys when not read from the examples) only.
    plain = tf.saved_model.load(plain_dir)
    for name in (SERVE, IG):
        assert set(plain.signatures[name].structured_input_signature[1]) == {"examples", "keys"}
    keyed_model = tf.saved_model.load(keyed_dir)
    assert set(keyed_model.signatures[IG].structured_input_signature[1]) == {"examples"}


# ---------------------------------------------------------------------- in-process checks


@pytest.mark.parametrize(
    "baseline",
    [
        Baseline("zeros"),
        Baseline("constant", value=0.5),
        Baseline("per_feature", values={"x": [1.0, -1.0, 0.0, 2.0, 0.5]}),
        Baseline("array"),
    ],
    ids=lambda b: b.kind,
)
def test_linear_model_closed_form_through_the_signature(tmp_path, baseline):
    w = RNG.normal(size=5)
    model = linear_model(w)
    ig = IntegratedGradients(
        ModelAdapter.from_keras(model),
        method="riemann_left",
        steps=3,
        target=Target("scalar"),
        baseline=baseline,
    )
    path = export_integrated_gradients(ig, str(tmp_path / "lin"), output_name="ig")
    x = RNG.normal(size=(8, 5)).astype(np.float32)
    inputs = {"x": x}
    if baseline.kind == "array":
        inputs["baseline_x"] = RNG.normal(size=(8, 5)).astype(np.float32)
        b = inputs["baseline_x"]
    elif baseline.kind == "per_feature":
        b = np.broadcast_to(np.asarray(baseline.values["x"], np.float32), x.shape)
    else:
        b = np.full(x.shape, baseline.value, np.float32)
    out = call(path, IG, **inputs)
    np.testing.assert_allclose(out["ig/x"], w * (x - b), atol=1e-5)
    np.testing.assert_allclose(out["baseline/x"][:, 0], b)
    np.testing.assert_allclose(out["prediction"], x @ w + 0.25, atol=1e-5)
    np.testing.assert_allclose(out["baseline_prediction"], b @ w + 0.25, atol=1e-5)
    np.testing.assert_allclose(out["delta"], 0.0, atol=1e-5)
    assert (out["target"] == -1).all()
    provided = {"baselines": inputs["baseline_x"]} if baseline.kind == "array" else {}
    check_against_engine(out, ig.attribute(x, **provided), output_name="ig")


def test_completeness_gauss_legendre_and_callable_target(tmp_path):
    model = classifier()
    adapter = ModelAdapter.from_keras(model)
    x = RNG.normal(size=(16, 6)).astype(np.float32) * 2
    ig = IntegratedGradients(adapter, steps=50)
    out = call(export_integrated_gradients(ig, str(tmp_path / "gl")), IG, x=x)
    assert np.abs(out["delta"]).max() < 1e-4
    assert np.abs(out["attributions/x"]).sum(axis=1).min() > 1e-4
    probs = model(x).numpy()
    np.testing.assert_array_equal(out["target"], probs.argmax(axis=1))
    np.testing.assert_allclose(out["prediction"], probs.max(axis=1), rtol=1e-5)

    pair = IntegratedGradients(
        adapter, steps=8, target=Target("callable", fn=lambda o: o[:, 0] + o[:, 1])
    )
    out = call(export_integrated_gradients(pair, str(tmp_path / "pair")), IG, x=x)
    check_against_engine(out, pair.attribute(x))
    fixed = IntegratedGradients(adapter, steps=8, target=Target("index", value=3))
    out = call(export_integrated_gradients(fixed, str(tmp_path / "fixed")), IG, x=x)
    check_against_engine(out, fixed.attribute(x))
    assert (out["target"] == 3).all()


def test_random_uniform_baselines_follow_keys_and_seed(tmp_path):
    adapter = ModelAdapter.from_keras(classifier())
    spec = Baseline("random_uniform", low=-2.0, high=3.0, seed=42, samples=3)
    ig = IntegratedGradients(adapter, steps=4, baseline=spec)
    other = IntegratedGradients(adapter, steps=4, baseline=dataclasses.replace(spec, seed=43))
    fn = tf.saved_model.load(export_integrated_gradients(ig, str(tmp_path / "s42"))).signatures[IG]
    fn_other = tf.saved_model.load(
        export_integrated_gradients(other, str(tmp_path / "s43"))
    ).signatures[IG]
    x = RNG.normal(size=(5, 6)).astype(np.float32)
    keys = ["a", "b", "c", "d", "e"]
    first = fn(x=tf.constant(x), keys=tf.constant(keys))["baseline/x"].numpy()
    again = fn(x=tf.constant(x), keys=tf.constant(keys))["baseline/x"].numpy()
    np.testing.assert_array_equal(first, again)
    assert first.shape == (5, 3, 6)
    assert first.min() >= -2.0 and first.max() <= 3.0
    np.testing.assert_array_equal(first, ig.attribute(x, keys=keys).baselines["x"])
    order = [3, 0, 4]
    moved = fn(x=tf.constant(x[order]), keys=tf.constant([keys[i] for i in order]))
    np.testing.assert_array_equal(moved["baseline/x"].numpy(), first[order])
    seeded = fn_other(x=tf.constant(x), keys=tf.constant(keys))["baseline/x"].numpy()
    assert not np.allclose(seeded, first)
    np.testing.assert_array_equal(seeded, other.attribute(x, keys=keys).baselines["x"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one per example"):
        fn(x=tf.constant(x), keys=tf.constant(keys[:2]))


def test_max_rows_per_call_smaller_than_steps_gives_the_same_results(tmp_path):
    adapter = ModelAdapter.from_keras(classifier())
    x = RNG.normal(size=(7, 6)).astype(np.float32)
    reference = IntegratedGradients(adapter, steps=10).attribute(x)
    for max_rows in (1, 3, 25):  # 1 and 3 split the path; 25 takes 2 examples x 10 points
        ig = IntegratedGradients(adapter, steps=10, max_rows_per_call=max_rows)
        out = call(export_integrated_gradients(ig, str(tmp_path / f"m{max_rows}")), IG, x=x)
        check_against_engine(out, ig.attribute(x))
        check_against_engine(out, reference, atol=1e-6)


# --------------------------------------------------------------------------------- errors


def _parser_without_label() -> ModelAdapter:
    return example_parser(with_extras=False)


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (
            lambda a: IntegratedGradients(a, target=Target("label", feature="label")),
            {"preprocess": _parser_without_label},
            "needs the preprocess model to output the label feature 'label'",
        ),
        (lambda a: IntegratedGradients(a, target=Target("scalar")), {}, "width 1"),
        (
            lambda a: IntegratedGradients(a, target=Target("index", value=3)),
            {},
            "out of range",
        ),
        (
            lambda a: IntegratedGradients(
                a, baseline=Baseline("random_uniform", low=0.0, high=1.0)
            ),
            {"key_feature": "id"},
            "without a preprocess model",
        ),
        (lambda a: IntegratedGradients(a), {"output_name": "baseline"}, "clashes"),
        (lambda a: IntegratedGradients(a), {"output_name": "a/b"}, "without '/'"),
    ],
)
def test_export_errors_raise_value_error(tmp_path, make, kwargs, match):
    engine = make(ModelAdapter.from_keras(two_input_model()))
    if "preprocess" in kwargs:
        kwargs = {**kwargs, "preprocess": kwargs["preprocess"]()}
    with pytest.raises(ValueError, match=match):
        export_integrated_gradients(engine, str(tmp_path / "bad"), **kwargs)


def test_export_errors_on_input_names(tmp_path):
    specs = {"keys": tf.TensorSpec([None, 2], tf.float32)}
    adapter = ModelAdapter.from_function(lambda v: tf.reduce_sum(v, axis=1), specs)
    ig = IntegratedGradients(
        adapter, target=Target("scalar"), baseline=Baseline("random_uniform", low=0.0, high=1.0)
    )
    with pytest.raises(ValueError, match="'keys' clashes with a model input"):
        export_integrated_gradients(ig, str(tmp_path / "clash"))
    odd = ModelAdapter.from_function(
        lambda v: tf.reduce_sum(v, axis=1), {"a-b": tf.TensorSpec([None, 2], tf.float32)}
    )
    with pytest.raises(ValueError, match="not an identifier"):
        export_integrated_gradients(IntegratedGradients(odd, target=Target("scalar")), "unused")
    two = ModelAdapter.from_function(
        lambda d: d, {"p": tf.TensorSpec([None], tf.string), "q": tf.TensorSpec([None], tf.string)}
    )
    with pytest.raises(ValueError, match="must take one input"):
        export_integrated_gradients(
            IntegratedGradients(ModelAdapter.from_keras(classifier())), "unused", preprocess=two
        )
