"""Several categorical features in one run: `attribution.layer` as a list of layers.

Closed forms: a tabular model with two string categorical features (StringLookup + Embedding
each, fixed weights) and one numeric feature, concatenated into Dense(1) with known weights, is
linear in the embeddings and the numeric input, so with a zeros baseline IG is exact for any
integration rule: the score of a categorical feature is w_f . e_f(x) (its embedding row dotted
with its Dense weights), the numeric feature's is w_n * x_n, and completeness holds over all of
them: the scores sum to F(x) - F(x') = F(x) - bias. Through the whole pipeline (TFRecords in,
`attr_<layer>` and `attr_<input>` out), the single-string form unchanged, and the refusals
(unknown, repeated or nested layers, mask_zero, text, export), each naming its key.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import write_examples

from attribution import IntegratedGradients, load_model
from attribution.errors import SettingsError
from attribution.fields import parse, to_dict
from attribution.models import ModelAdapter
from attribution.settings import AttributionConfig, Target
from pipeline.config import parse_config
from pipeline.job import JobError, plan_job, run_job
from transforms.constants import ATTRIBUTIONS_DIR

COLORS = ["red", "green", "blue"]  # StringLookup ids 1..3; 0 is out of vocabulary
SIZES = ["S", "M", "L", "XL"]  # ids 1..4
D = 3  # embedding width
LAYERS = ["emb_color", "emb_size"]
BIAS = 0.5


def _weights():
    rng = np.random.default_rng(0)
    color_table = rng.normal(size=(len(COLORS) + 1, D)).astype(np.float32)
    size_table = rng.normal(size=(len(SIZES) + 1, D)).astype(np.float32)
    w = rng.normal(size=(2 * D + 1, 1)).astype(np.float32)
    return color_table, size_table, w


def _tabular_model(nonlinear: bool = False):
    """color, size (strings) -> StringLookup -> Embedding each; num (float); concat -> Dense(1)."""
    import keras

    color = keras.Input((), dtype="string", name="color")
    size = keras.Input((), dtype="string", name="size")
    num = keras.Input((), dtype="float32", name="num")
    c = keras.layers.StringLookup(vocabulary=COLORS, name="lookup_color")(color)
    s = keras.layers.StringLookup(vocabulary=SIZES, name="lookup_size")(size)
    ec = keras.layers.Embedding(len(COLORS) + 1, D, name="emb_color")(c)
    es = keras.layers.Embedding(len(SIZES) + 1, D, name="emb_size")(s)
    n = keras.layers.Reshape((1,), name="num_column")(num)
    h = keras.layers.Concatenate(name="concat")([ec, es, n])
    if nonlinear:
        h = keras.layers.Dense(2 * D + 1, activation="tanh", name="hidden")(h)
    out = keras.layers.Dense(1, name="y")(h)
    model = keras.Model({"color": color, "size": size, "num": num}, out)
    color_table, size_table, w = _weights()
    model.get_layer("emb_color").set_weights([color_table])
    model.get_layer("emb_size").set_weights([size_table])
    if nonlinear:
        keras.utils.set_random_seed(1)
        model.get_layer("hidden").set_weights(
            [np.eye(2 * D + 1, dtype=np.float32) * 0.8, np.full(2 * D + 1, 0.1, np.float32)]
        )
    model.get_layer("y").set_weights([w, np.array([BIAS], np.float32)])
    return model


def _data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "color": np.array([COLORS[i] for i in rng.integers(0, len(COLORS), n)], dtype=object),
        "size": np.array([SIZES[i] for i in rng.integers(0, len(SIZES), n)], dtype=object),
        "num": rng.normal(size=n).astype(np.float32),
    }


def _expected(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Closed-form IG with a zeros baseline: w_f . e_f(x) per feature, w_n * x_n."""
    color_table, size_table, w = _weights()
    w = w[:, 0].astype(np.float64)
    color_ids = np.array([COLORS.index(c) + 1 for c in data["color"]])
    size_ids = np.array([SIZES.index(s) + 1 for s in data["size"]])
    return {
        "emb_color": color_table[color_ids].astype(np.float64) @ w[:D],
        "emb_size": size_table[size_ids].astype(np.float64) @ w[D : 2 * D],
        "num": w[2 * D] * data["num"].astype(np.float64),
    }


def _engine(model, layer, steps: int = 4, method: str = "riemann_middle") -> IntegratedGradients:
    settings = AttributionConfig(
        layer=layer, steps=steps, method=method, target=Target(kind="scalar")
    )
    adapter = model if isinstance(model, ModelAdapter) else ModelAdapter.from_keras(model)
    return IntegratedGradients(adapter, settings=settings)


def _inputs(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**data, "color": data["color"].astype(bytes), "size": data["size"].astype(bytes)}


# ------------------------------------------------------------------------------- settings


def test_layer_setting_takes_a_string_or_a_list_of_distinct_names():
    assert parse(AttributionConfig, {"layer": "emb"}).layer == "emb"
    assert parse(AttributionConfig, {"layer": ["a", "b"]}).layer == ("a", "b")
    assert to_dict(parse(AttributionConfig, {"layer": "emb"}))["layer"] == "emb"
    with pytest.raises(SettingsError, match=r"^layer: layer 'a' is listed twice$"):
        parse(AttributionConfig, {"layer": ["a", "b", "a"]})
    with pytest.raises(SettingsError, match=r"^layer: must be a layer name or a non-empty list"):
        parse(AttributionConfig, {"layer": []})
    with pytest.raises(SettingsError, match=r"^layer\[1\]: must be a non-empty string"):
        parse(AttributionConfig, {"layer": ["a", ""]})
    with pytest.raises(SettingsError, match=r"^text: token padding is supported for a single"):
        parse(AttributionConfig, {"layer": ["a", "b"], "text": {}})


# --------------------------------------------------------------------------------- engine


def test_closed_form_score_per_categorical_feature_and_numeric_input():
    model = _tabular_model()
    data = _data(20)
    engine = _engine(model, LAYERS)
    assert list(engine.attributed_specs) == ["emb_color", "emb_size", "num"]
    result = engine.attribute(_inputs(data))
    expected = _expected(data)
    assert set(result.scores) == {"emb_color", "emb_size", "num"}
    for name in expected:
        assert result.scores[name].shape == (20,)
        np.testing.assert_allclose(result.scores[name], expected[name], atol=1e-5)
    assert result.attributions["emb_color"].shape == (20, D)  # per embedding dimension
    assert result.layer_scores is None and result.padding is None
    # Completeness over all attributed tensors, against the model's own output.
    np.testing.assert_allclose(result.baseline_predictions, BIAS, atol=1e-6)
    np.testing.assert_allclose(result.predictions, model(_inputs(data)).numpy()[:, 0], atol=1e-5)
    total = sum(result.scores.values())
    np.testing.assert_allclose(total, result.predictions - BIAS, atol=1e-5)
    assert np.abs(result.deltas).max() < 1e-5


def test_completeness_on_a_nonlinear_head():
    model = _tabular_model(nonlinear=True)
    data = _data(12, seed=3)
    result = _engine(model, LAYERS, steps=64, method="gausslegendre").attribute(_inputs(data))
    total = sum(result.scores.values())
    np.testing.assert_allclose(
        total, result.predictions - result.baseline_predictions + result.deltas, atol=1e-9
    )
    assert np.abs(result.deltas).max() < 1e-4
    # F(x'): both embeddings and the numeric input at zero -> tanh(0.1) through y.
    _, _, w = _weights()
    f_base = float(np.tanh(0.1) * w[:, 0].sum() + BIAS)
    np.testing.assert_allclose(result.baseline_predictions, f_base, atol=1e-5)


def test_adaptive_steps_with_several_layers():
    from attribution.adaptive import AdaptiveIntegratedGradients

    model = _tabular_model()
    data = _data(8, seed=5)
    settings = AttributionConfig(layer=LAYERS, steps="auto", target=Target(kind="scalar"))
    engine = AdaptiveIntegratedGradients(ModelAdapter.from_keras(model), settings=settings)
    assert engine.layers == ("emb_color", "emb_size")
    result = engine.attribute(_inputs(data))
    for name, values in _expected(data).items():
        np.testing.assert_allclose(result.scores[name], values, atol=1e-5)


def test_single_string_is_unchanged_and_equals_a_list_of_one_without_other_inputs():
    """A one-layer model: layer 'emb' (string) and ['emb'] attribute the same tensor alone."""
    import keras

    color = keras.Input((), dtype="string", name="color")
    e = keras.layers.Embedding(len(COLORS) + 1, D, name="emb")(
        keras.layers.StringLookup(vocabulary=COLORS)(color)
    )
    model = keras.Model({"color": color}, keras.layers.Dense(1, activation="tanh")(e))
    x = {"color": _data(10, seed=2)["color"].astype(bytes)}
    single = _engine(model, "emb", steps=8).attribute(x)
    listed = _engine(model, ["emb"], steps=8).attribute(x)
    assert single.scores is None and single.layer_scores.shape == (10,)
    assert set(listed.scores) == {"emb"}
    np.testing.assert_array_equal(listed.scores["emb"], single.layer_scores)
    np.testing.assert_array_equal(listed.deltas, single.deltas)
    np.testing.assert_array_equal(listed.attributions["emb"], single.attributions["emb"])


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (["emb_color", "nope"], r"attribution\.layer: model has no layer 'nope'; layers: "),
        (["emb_color", "concat"], r"attribution\.layer: layer 'concat' is computed from layer "),
        (["lookup_color", "emb_color"], r"attribution\.layer: layer 'emb_color' is computed from"),
    ],
)
def test_bad_layer_lists_are_refused_naming_the_key(layer, match):
    with pytest.raises(SettingsError, match=match) as info:
        _engine(_tabular_model(), layer)
    assert "\n" not in str(info.value)


def test_mask_zero_embedding_in_a_list_is_refused():
    import keras

    a = keras.Input((2,), dtype="int64", name="a")
    b = keras.Input((2,), dtype="int64", name="b")
    ea = keras.layers.Embedding(4, 2, mask_zero=True, name="ea")(a)
    eb = keras.layers.Embedding(4, 2, name="eb")(b)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Concatenate(axis=1)([ea, eb]))
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(h))
    with pytest.raises(SettingsError, match=r"attribution\.layer: layer 'ea' is an Embedding\("):
        _engine(model, ["ea", "eb"])


def test_export_refuses_several_layers(tmp_path):
    from attribution.savedmodel import export_integrated_gradients

    engine = _engine(_tabular_model(), LAYERS)
    with pytest.raises(SettingsError, match=r"^attribution\.layer: an export attributes at one"):
        export_integrated_gradients(engine, str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


T = 5  # token positions of the sequence model


def _sequence_model():
    """ids_a, ids_b [T] -> Embedding each [B, T, D] -> average over T -> concat -> Dense(1)."""
    import keras

    keras.utils.set_random_seed(4)
    a = keras.Input((T,), dtype="int64", name="ids_a")
    b = keras.Input((T,), dtype="int64", name="ids_b")
    ea = keras.layers.Embedding(7, D, name="emb_a")(a)
    eb = keras.layers.Embedding(9, D, name="emb_b")(b)
    pooled = [keras.layers.GlobalAveragePooling1D()(e) for e in (ea, eb)]
    out = keras.layers.Dense(1, name="y")(keras.layers.Concatenate()(pooled))
    return keras.Model({"ids_a": a, "ids_b": b}, out)


def test_sequence_layers_get_one_score_per_position(tmp_path):
    """[B, T, D] layers: w_f . e_f(x_t) / T per position; list<double> columns in the pipeline."""
    model = _sequence_model()
    rng = np.random.default_rng(6)
    x = {"ids_a": rng.integers(0, 7, (6, T)), "ids_b": rng.integers(0, 9, (6, T))}
    result = _engine(model, ["emb_a", "emb_b"]).attribute(x)
    assert set(result.scores) == {"emb_a", "emb_b"}  # integer inputs: not attributed
    w = model.get_layer("y").get_weights()[0][:, 0].astype(np.float64)
    for name, ids, part in (("emb_a", x["ids_a"], w[:D]), ("emb_b", x["ids_b"], w[D:])):
        table = model.get_layer(name).get_weights()[0].astype(np.float64)
        assert result.scores[name].shape == (6, T)
        np.testing.assert_allclose(result.scores[name], table[ids] @ part / T, atol=1e-6)

    model.save(str(tmp_path / "seq.keras"))
    folder = tmp_path / "data"
    folder.mkdir()
    write_examples(
        folder / "part-0.tfrecord",
        (
            {"ids_a": x["ids_a"][i], "ids_b": x["ids_b"][i], "id": f"q{i}".encode()}
            for i in range(6)
        ),
    )
    (folder / "schema.pbtxt").write_text(
        f'feature {{ name: "ids_a" type: INT shape {{ dim {{ size: {T} }} }} }}\n'
        f'feature {{ name: "ids_b" type: INT shape {{ dim {{ size: {T} }} }} }}\n'
        'feature { name: "id" type: BYTES shape { dim { size: 1 } } }\n'
    )
    raw = _job(tmp_path, ["emb_a", "emb_b"])
    raw["model"]["path"] = str(tmp_path / "seq.keras")
    run_job(parse_config(raw))
    table = pq.read_table(str(tmp_path / "out" / ATTRIBUTIONS_DIR))
    assert [c for c in table.schema.names if c.startswith("attr_")] == ["attr_emb_a", "attr_emb_b"]
    rows = _rows(tmp_path / "out")
    for i, row in enumerate(rows):
        assert len(row["attr_emb_a"]) == T
        np.testing.assert_allclose(row["attr_emb_b"], result.scores["emb_b"][i], atol=1e-9)


# ------------------------------------------------------------------------------- pipeline


def _write(tmp_path, n: int):
    _tabular_model().save(str(tmp_path / "tabular.keras"))
    data = _data(n, seed=11)
    folder = tmp_path / "data"
    folder.mkdir()
    write_examples(
        folder / "part-0.tfrecord",
        (
            {
                "color": data["color"][i].encode(),
                "size": data["size"][i].encode(),
                "num": float(data["num"][i]),
                "id": f"r{i:03d}".encode(),
            }
            for i in range(n)
        ),
    )
    (folder / "schema.pbtxt").write_text(
        'feature { name: "color" type: BYTES shape { dim { size: 1 } } }\n'
        'feature { name: "size" type: BYTES shape { dim { size: 1 } } }\n'
        'feature { name: "num" type: FLOAT shape { dim { size: 1 } } }\n'
        'feature { name: "id" type: BYTES shape { dim { size: 1 } } }\n'
    )
    return data


def _job(tmp_path, layer, out: str = "out") -> dict:
    return {
        "model": {"path": str(tmp_path / "tabular.keras")},
        "input": {
            "pattern": str(tmp_path / "data" / "*.tfrecord"),
            "schema": str(tmp_path / "data" / "schema.pbtxt"),
            "key": "id",
        },
        "attribution": {
            "layer": layer,
            "steps": 4,
            "method": "riemann_middle",
            "target": {"kind": "scalar"},
        },
        "batching": {"batch_size": 8},
        "output": {"path": str(tmp_path / out)},
    }


def _rows(out) -> list[dict]:
    return sorted(pq.read_table(str(out / ATTRIBUTIONS_DIR)).to_pylist(), key=lambda r: r["key"])


def test_pipeline_writes_one_column_per_layer_and_numeric_input(tmp_path):
    n = 24
    data = _write(tmp_path, n)
    summary = run_job(parse_config(_job(tmp_path, LAYERS)))
    assert summary["counts"]["examples_attributed"] == n
    table = pq.read_table(str(tmp_path / "out" / ATTRIBUTIONS_DIR))
    for name in ("attr_emb_color", "attr_emb_size", "attr_num"):
        assert str(table.schema.field(name).type) == "double"
    rows = _rows(tmp_path / "out")
    expected = _expected(data)
    for i, row in enumerate(rows):
        assert row["key"] == f"r{i:03d}"
        for name in ("emb_color", "emb_size", "num"):
            np.testing.assert_allclose(row[f"attr_{name}"], expected[name][i], atol=1e-5)
        total = row["attr_emb_color"] + row["attr_emb_size"] + row["attr_num"]
        np.testing.assert_allclose(
            total, row["prediction"] - row["baseline_prediction"] + row["delta"], atol=1e-9
        )
        np.testing.assert_allclose(row["baseline_prediction"], BIAS, atol=1e-6)
        assert abs(row["delta"]) < 1e-5
    reference = _engine(load_model(str(tmp_path / "tabular.keras")), LAYERS).attribute(
        _inputs(data)
    )
    np.testing.assert_allclose(
        [r["attr_emb_size"] for r in rows], reference.scores["emb_size"], atol=1e-9
    )


def test_pipeline_single_string_layer_is_a_single_layer_run(tmp_path):
    n = 16
    data = _write(tmp_path, n)
    run_job(parse_config(_job(tmp_path, "emb_color")))
    table = pq.read_table(str(tmp_path / "out" / ATTRIBUTIONS_DIR))
    attributed = [c for c in table.schema.names if c.startswith("attr_")]
    assert attributed == ["attr_emb_color"]
    rows = _rows(tmp_path / "out")
    reference = IntegratedGradients(
        load_model(str(tmp_path / "tabular.keras")),
        settings=AttributionConfig(
            layer="emb_color", steps=4, method="riemann_middle", target=Target(kind="scalar")
        ),
    ).attribute(_inputs(data))
    np.testing.assert_allclose(
        [r["attr_emb_color"] for r in rows], reference.layer_scores, atol=1e-9
    )
    # Only the color embedding moves: F(x') has the size embedding and num at their values.
    np.testing.assert_allclose(
        [r["prediction"] - r["baseline_prediction"] for r in rows],
        _expected(data)["emb_color"],
        atol=1e-5,
    )


def test_pipeline_errors_name_the_key(tmp_path):
    _write(tmp_path, 4)
    with pytest.raises(JobError, match=r"attribution\.layer: model has no layer 'nope'"):
        plan_job(parse_config(_job(tmp_path, ["emb_color", "nope"])))
    with pytest.raises(SettingsError, match=r"^attribution\.layer: layer 'emb_size' is listed tw"):
        parse_config(_job(tmp_path, ["emb_size", "emb_size"]))
    raw = _job(tmp_path, LAYERS)
    raw["attribution"]["text"] = {}
    with pytest.raises(SettingsError, match=r"^attribution\.text: token padding is supported for"):
        parse_config(raw)
