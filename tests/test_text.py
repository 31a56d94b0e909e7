"""Text and categorical inputs: per-token scores at an embedding, padding held and not reported.

Closed forms: a model whose output is linear in the embedding (Embedding -> average over
positions -> Dense(1)) has per-token IG exactly w . (e(x_t) - e'_t) / T (any integration rule),
and with padding held at its input, 0 at padding positions; with Keras masking
(`mask_zero=True`) the average runs over the L non-padding positions: w . e(x_t) / L. Through the
whole pipeline: completeness on the model output, `tokens_<layer>` aligned with `attr_<layer>`
position by position, padding null and left out of the statistics, a StringLookup + Embedding
model, and bad token features (missing, too long) handled as documented in docs/text.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import read_parquet, write_examples

from attribution import IntegratedGradients, load_model
from attribution.errors import SettingsError
from attribution.fields import parse, to_dict
from attribution.models import ModelAdapter
from attribution.settings import AttributionConfig, Target
from attribution.text_settings import TextConfig
from pipeline.config import parse_config
from pipeline.fingerprint import differences
from pipeline.job import JobError, plan_job, run_job
from transforms.constants import ATTRIBUTIONS_DIR
from transforms.text import scores_column, token_column
from transforms.text_statistics import TOKEN_STATISTICS_SCHEMA

REPO = Path(__file__).resolve().parent.parent
T, E, V = 6, 4, 12
WORDS = [f"w{i}" for i in range(V)]  # id i <-> WORDS[i]; id 0 is padding


def _linear_text_model(mask_zero: bool = False, seed: int = 0):
    """ids [T] -> Embedding "emb" -> average over positions -> Dense(1) "y" (linear in emb)."""
    import keras

    keras.utils.set_random_seed(seed)
    ids = keras.Input((T,), dtype="int64", name="ids")
    h = keras.layers.Embedding(V, E, mask_zero=mask_zero, name="emb")(ids)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(1, name="y")(h)
    return keras.Model({"ids": ids}, out)


def _ids(n: int, seed: int = 0) -> np.ndarray:
    """n sequences of 1..T ids in [1, V), padded with 0 at the end."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, T), np.int64)
    for i, length in enumerate(rng.integers(1, T + 1, n)):
        ids[i, :length] = rng.integers(1, V, length)
    return ids


def _engine(model, text: TextConfig | None, steps: int = 4) -> IntegratedGradients:
    settings = AttributionConfig(
        layer="emb", steps=steps, method="riemann_middle", target=Target(kind="scalar"), text=text
    )
    return IntegratedGradients(ModelAdapter.from_keras(model), settings=settings)


# ------------------------------------------------------------------------------ engine


def test_linear_model_closed_form_padding_held_at_zero():
    model = _linear_text_model()
    table = model.get_layer("emb").get_weights()[0]  # [V, E]
    w = model.get_layer("y").get_weights()[0][:, 0]  # [E]
    ids = _ids(16)
    result = _engine(model, TextConfig()).attribute({"ids": ids})
    pad = ids == 0
    expected = np.where(pad, 0.0, table[ids] @ w / T)  # w . (e(x_t) - 0) / T, 0 at padding
    np.testing.assert_allclose(result.layer_scores, expected, atol=1e-6)
    np.testing.assert_array_equal(result.padding, pad)
    assert np.all(result.layer_scores[pad] == 0.0)  # exactly: held positions never move
    # Completeness on the model output; the baseline keeps the padding embeddings.
    fx = model({"ids": ids}).numpy()[:, 0]
    np.testing.assert_allclose(result.predictions, fx, atol=1e-6)
    held = np.where(pad[..., None], table[ids], 0.0)  # e(0) at padding, 0 at the words
    bias = model.get_layer("y").get_weights()[1][0]
    np.testing.assert_allclose(result.baseline_predictions, held.mean(axis=1) @ w + bias, atol=1e-6)
    np.testing.assert_allclose(
        result.layer_scores.sum(axis=1), result.predictions - result.baseline_predictions, atol=1e-6
    )
    assert np.abs(result.deltas).max() < 1e-6


def test_without_text_padding_moves_and_gets_scores():
    """Why padding is held: with a zero baseline everywhere, padding positions get w.e(0)/T."""
    model = _linear_text_model()
    table = model.get_layer("emb").get_weights()[0]
    w = model.get_layer("y").get_weights()[0][:, 0]
    ids = _ids(8)
    result = _engine(model, None).attribute({"ids": ids})
    assert result.padding is None
    np.testing.assert_allclose(result.layer_scores, table[ids] @ w / T, atol=1e-6)
    pad = ids == 0
    assert pad.any() and np.all(np.abs(result.layer_scores[pad]) > 1e-6)


def test_mask_zero_marks_padding_without_text_settings():
    model = _linear_text_model(mask_zero=True, seed=1)
    table = model.get_layer("emb").get_weights()[0]
    w = model.get_layer("y").get_weights()[0][:, 0]
    ids = _ids(12, seed=2)
    result = _engine(model, None).attribute({"ids": ids})
    pad = ids == 0
    lengths = (~pad).sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(result.padding, pad)
    # The masked average: F = w . sum_{t not padding} e(x_t) / L + b, so IG_t = w . e(x_t) / L.
    np.testing.assert_allclose(
        result.layer_scores, np.where(pad, 0.0, table[ids] @ w / lengths), atol=1e-6
    )
    # The split model keeps Keras' mask: F(x) is the model's own output.
    np.testing.assert_allclose(result.predictions, model({"ids": ids}).numpy()[:, 0], atol=1e-6)
    assert np.abs(result.deltas).max() < 1e-6


def test_padding_value_other_than_zero():
    model = _linear_text_model()
    ids = _ids(6, seed=3)
    ids[ids == 0] = 5  # padded with id 5
    result = _engine(model, TextConfig(padding=5)).attribute({"ids": ids})
    np.testing.assert_array_equal(result.padding, ids == 5)
    assert np.all(result.layer_scores[ids == 5] == 0.0)


def test_stringlookup_mask_token_and_mask_zero_mark_the_empty_string():
    """StringLookup(mask_token="") maps "" to 0, which Embedding(mask_zero=True) masks."""
    import keras

    keras.utils.set_random_seed(2)
    words = keras.Input((4,), dtype="string", name="words")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c"], mask_token="")(words)
    h = keras.layers.Embedding(5, 3, mask_zero=True, name="emb")(ids)
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model({"words": words}, out)
    x = np.array([["a", "b", "", ""], ["c", "", "", ""], ["b", "x", "a", "c"]], dtype=object)
    result = _engine(model, None).attribute({"words": x})
    np.testing.assert_array_equal(result.padding, x == "")
    assert np.all(result.layer_scores[x == ""] == 0.0)
    np.testing.assert_allclose(
        result.predictions, model({"words": x.astype(bytes)}).numpy()[:, 0], atol=1e-6
    )
    assert np.abs(result.deltas).max() < 1e-6


def test_adaptive_steps_keep_the_padding():
    from attribution.adaptive import AdaptiveIntegratedGradients

    model = _linear_text_model(seed=3)
    settings = AttributionConfig(
        layer="emb", steps="auto", target=Target(kind="scalar"), text=TextConfig()
    )
    ids = _ids(10, seed=9)
    engine = AdaptiveIntegratedGradients(ModelAdapter.from_keras(model), settings=settings)
    result = engine.attribute({"ids": ids})
    np.testing.assert_array_equal(result.padding, ids == 0)
    assert np.all(result.layer_scores[ids == 0] == 0.0)


def test_shared_embedding_layer_is_refused_by_name():
    import keras

    a, b = keras.Input((3,), dtype="int64", name="a"), keras.Input((3,), dtype="int64", name="b")
    shared = keras.layers.Embedding(5, 2, name="shared")
    h = keras.layers.Concatenate(axis=1)([shared(a), shared(b)])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    with pytest.raises(ValueError, match="layer 'shared' is called 2 times"):
        IntegratedGradients(ModelAdapter.from_keras(model), layer="shared")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (TextConfig(feature="nope"), r"text\.feature: 'nope' is not a model input"),
        (TextConfig(padding=""), r"text\.padding: input 'ids' holds ids: padding must be an int"),
    ],
)
def test_bad_text_settings_name_the_key(text, match):
    with pytest.raises(SettingsError, match=match):
        _engine(_linear_text_model(), text)


def test_text_settings_parse_and_errors():
    config = parse(AttributionConfig, {"layer": "emb", "text": {"tokens": "words"}})
    assert config.text == TextConfig(tokens="words")
    assert parse(AttributionConfig, {"layer": "emb", "text": {"padding": ""}}).text.padding == ""
    with pytest.raises(SettingsError, match=r"text: .*set layer"):
        parse(AttributionConfig, {"text": {}})
    with pytest.raises(SettingsError, match=r"text\.padding: must be an integer token id or a str"):
        parse(AttributionConfig, {"layer": "emb", "text": {"padding": True}})
    with pytest.raises(SettingsError, match=r"text\.paddding"):
        parse(AttributionConfig, {"layer": "emb", "text": {"paddding": 0}})


def test_fingerprints_of_runs_before_text_settings_still_compare():
    current = to_dict(AttributionConfig(steps=16, layer="emb"))
    assert current.get("text") is None  # an unset optional section is left out of to_dict
    older = {k: v for k, v in current.items() if k != "text"}
    base = {"model_sha256": "x", "model_signature": "s", "attributed": ["emb"]}
    assert differences({**base, "attribution": older}, {**base, "attribution": current}) == []
    with_text = to_dict(AttributionConfig(steps=16, layer="emb", text=TextConfig()))
    lines = differences({**base, "attribution": older}, {**base, "attribution": with_text})
    assert [line.split(" differs")[0] for line in lines] == ["attribution.text"]


# --------------------------------------------------------------------------- columns


def test_scores_column_nulls_padding():
    column = scores_column(
        np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]),
        np.array([[False, False, True], [False, True, True]]),
    )
    assert column.to_pylist() == [[1.0, 2.0, None], [3.0, None, None]]


def test_token_column_pads_short_lists_with_nulls():
    column = pa.array([[b"a", b"b"], None, [], [b"c", b"d", b"e"]], pa.large_list(pa.binary()))
    out = token_column(column, 3)
    assert out.to_pylist() == [
        ["a", "b", None],
        None,
        [None, None, None],
        ["c", "d", "e"],
    ]


# -------------------------------------------------------------------------- pipeline


def _results(out) -> list[dict]:
    """The attributions of a run as Python rows, by key (nulls stay None, not NaN)."""
    rows = pq.read_table(str(out / ATTRIBUTIONS_DIR)).to_pylist()
    return sorted(rows, key=lambda r: r["key"])


def _write_text_data(tmp_path, ids: np.ndarray, extra: dict[int, dict] | None = None):
    """Records with `ids` (INT [T]), `words` (BYTES, unpadded), `id` key; schema.pbtxt."""
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, row_ids in enumerate(ids):
        row = {
            "ids": row_ids,
            "words": [WORDS[t].encode() for t in row_ids if t != 0],
            "id": f"t{i:03d}".encode(),
        }
        row.update((extra or {}).get(i, {}))
        rows.append({k: v for k, v in row.items() if v is not None})
    write_examples(data / "part-0.tfrecord", rows)
    (data / "schema.pbtxt").write_text(
        f'feature {{ name: "ids" type: INT shape {{ dim {{ size: {T} }} }} }}\n'
        'feature { name: "words" type: BYTES }\n'
        'feature { name: "id" type: BYTES shape { dim { size: 1 } } }\n'
    )
    return data


def _job(tmp_path, data, text: dict, **attribution) -> dict:
    return {
        "model": {"path": str(tmp_path / "text.keras")},
        "input": {
            "pattern": str(data / "*.tfrecord"),
            "schema": str(data / "schema.pbtxt"),
            "key": "id",
        },
        "attribution": {"layer": "emb", "steps": 16, "text": text, **attribution},
        "batching": {"batch_size": 16},
        "max_dead_letter_fraction": 0.5,
        "output": {"path": str(tmp_path / "out")},
    }


def _classifier(seed: int = 4):
    import keras

    keras.utils.set_random_seed(seed)
    ids = keras.Input((T,), dtype="int64", name="ids")
    h = keras.layers.Embedding(V, E, name="emb")(ids)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(8, activation="tanh")(h)
    out = keras.layers.Dense(3, activation="softmax")(h)
    return keras.Model({"ids": ids}, out)


def test_pipeline_tokens_aligned_padding_null_and_complete(tmp_path):
    _classifier().save(str(tmp_path / "text.keras"))
    n = 40
    ids = _ids(n, seed=5)
    extra = {
        3: {"words": None},  # no token strings: scored, tokens null
        7: {"words": [b"x"] * (T + 1)},  # more strings than positions: dead letter
        9: {"ids": None},  # no token ids: dead letter
    }
    data = _write_text_data(tmp_path, ids, extra)
    summary = run_job(parse_config(_job(tmp_path, data, {"tokens": "words"})))
    assert summary["counts"]["examples_attributed"] == n - 2
    dead = read_parquet(tmp_path / "out" / "dead_letter").set_index("key")
    assert sorted(dead.index) == ["t007", "t009"]
    assert set(dead.stage) == {"validate"}
    assert "token feature 'words' has 7 values, more than the 6 positions" in dead.reason["t007"]
    assert "feature 'ids' is missing" in dead.reason["t009"]

    results = _results(tmp_path / "out")
    rows = [i for i in range(n) if i not in (7, 9)]
    assert [r["key"] for r in results] == [f"t{i:03d}" for i in rows]
    reference = IntegratedGradients(
        load_model(str(tmp_path / "text.keras")),
        layer="emb",
        steps=16,
        settings=AttributionConfig(text=TextConfig(tokens="words")),
    ).attribute({"ids": ids[rows]})
    for j, i in enumerate(rows):
        row = results[j]
        scores, tokens = row["attr_emb"], row["tokens_emb"]
        pad = ids[i] == 0
        assert len(scores) == T
        assert [s is None for s in scores] == list(pad)  # padding marked, not scored
        if i == 3:
            assert tokens is None
        else:
            # Position by position: the word beside its score; padding positions have none.
            expected = [None if p else WORDS[t] for t, p in zip(ids[i], pad, strict=True)]
            assert list(tokens) == expected
        values = np.array([np.nan if s is None else s for s in scores])
        np.testing.assert_allclose(values[~pad], reference.layer_scores[j][~pad], atol=1e-6)
        # Completeness over the reported scores (padding's are exactly 0).
        np.testing.assert_allclose(
            values[~pad].sum(),
            row["prediction"] - row["baseline_prediction"] + row["delta"],
            atol=1e-9,
        )
        assert abs(row["delta"]) < 1e-3
    summary_json = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary_json["config"]["attribution"]["text"] == {
        "feature": None,
        "tokens": "words",
        "padding": None,
    }

    # Statistics: every example counted (padding nulls are not NaN scores), sums over tokens.
    stats = read_parquet(tmp_path / "out" / "statistics" / "features.parquet")
    overall = stats[(stats.slice_name == "all") & (stats.feature == "emb")].iloc[0]
    sums = np.array([sum(s for s in r["attr_emb"] if s is not None) for r in results])
    assert overall["count"] == n - 2
    assert overall["nan_count"] == 0
    np.testing.assert_allclose(overall.mean_attributions, sums.mean(), rtol=1e-9)
    np.testing.assert_allclose(overall.mean_absolute_attributions, np.abs(sums).mean(), rtol=1e-9)

    # Per position: examples with a token / with padding there, mean scores over the tokens.
    positions = read_parquet(tmp_path / "out" / "statistics" / "tokens.parquet")
    assert list(positions.feature) == ["emb"] * T
    assert list(positions.position) == list(range(T))
    grid = np.array([[np.nan if s is None else s for s in r["attr_emb"]] for r in results])
    np.testing.assert_array_equal(positions["count"], (~np.isnan(grid)).sum(axis=0))
    np.testing.assert_array_equal(positions.padding, (ids[rows] == 0).sum(axis=0))
    np.testing.assert_allclose(positions.mean_attributions, np.nanmean(grid, axis=0), rtol=1e-9)
    np.testing.assert_allclose(
        positions.mean_absolute_attributions, np.nanmean(np.abs(grid), axis=0), rtol=1e-9
    )


def test_pipeline_string_categories_with_stringlookup_inside(tmp_path):
    import keras

    keras.utils.set_random_seed(6)
    words = keras.Input((T,), dtype="string", name="words")
    lookup = keras.layers.StringLookup(vocabulary=WORDS[1:], name="lookup")(words)
    h = keras.layers.Embedding(V + 1, E, name="emb")(lookup)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(2, activation="softmax")(h)
    keras.Model({"words": words}, out).save(str(tmp_path / "text.keras"))

    n = 24
    ids = _ids(n, seed=7)
    strings = np.array([[WORDS[t] if t else "" for t in row] for row in ids], dtype=object)
    data = tmp_path / "data"
    data.mkdir()
    write_examples(
        data / "part-0.tfrecord",
        ({"words": [s.encode() for s in strings[i]], "id": f"s{i:03d}".encode()} for i in range(n)),
    )
    (data / "schema.pbtxt").write_text(
        f'feature {{ name: "words" type: BYTES shape {{ dim {{ size: {T} }} }} }}\n'
        'feature { name: "id" type: BYTES shape { dim { size: 1 } } }\n'
    )
    raw = _job(tmp_path, data, {})  # feature found from the layer, padding "", tokens = words
    summary = run_job(parse_config(raw))
    assert summary["counts"]["examples_attributed"] == n
    results = _results(tmp_path / "out")
    reference = IntegratedGradients(
        load_model(str(tmp_path / "text.keras")),
        layer="emb",
        steps=16,
        settings=AttributionConfig(text=TextConfig()),
    ).attribute({"words": strings.astype(bytes)})
    for i in range(n):
        pad = strings[i] == ""
        row = results[i]
        scores, tokens = row["attr_emb"], row["tokens_emb"]
        assert [s is None for s in scores] == list(pad)
        assert list(tokens) == list(strings[i])  # the feature's own strings, "" at padding
        values = np.array([0.0 if s is None else s for s in scores])
        np.testing.assert_allclose(values, reference.layer_scores[i], atol=1e-6)
        np.testing.assert_allclose(
            values.sum(), row["prediction"] - row["baseline_prediction"] + row["delta"], atol=1e-9
        )
    assert np.all(reference.layer_scores[strings == ""] == 0.0)


def test_token_feature_must_be_strings_in_the_schema(tmp_path):
    _classifier().save(str(tmp_path / "text.keras"))
    data = _write_text_data(tmp_path, _ids(4))
    with pytest.raises(JobError, match=r"text\.tokens: feature 'ids' must hold strings"):
        plan_job(parse_config(_job(tmp_path, data, {"tokens": "ids"})))
    with pytest.raises(JobError, match=r"text\.tokens: feature 'nope' is not in the"):
        plan_job(parse_config(_job(tmp_path, data, {"tokens": "nope"})))


def test_export_holds_padding_as_the_engine_does(tmp_path):
    import tensorflow as tf

    from attribution.savedmodel import export_integrated_gradients

    model = _linear_text_model()
    engine = _engine(model, TextConfig())
    path = export_integrated_gradients(engine, str(tmp_path / "export"))
    ids = _ids(9, seed=8)
    fn = tf.saved_model.load(path).signatures["integrated_gradients"]
    out = {k: v.numpy() for k, v in fn(ids=tf.constant(ids)).items()}
    reference = engine.attribute({"ids": ids})
    np.testing.assert_allclose(out["layer_scores/emb"], reference.layer_scores, atol=1e-6)
    assert np.all(out["layer_scores/emb"][ids == 0] == 0.0)
    np.testing.assert_allclose(out["delta"], reference.deltas, atol=1e-6)


def test_text_demo_config_runs_and_sentiment_words_lead(tmp_path):
    from pipeline import demo_text
    from pipeline.config import load_config

    root = tmp_path / "text"
    demo_text.build(str(root), n=300)
    config = load_config(
        str(REPO / "configs" / "demo_text.yaml"),
        [
            f"model.path={root / 'model.keras'}",
            f"input.pattern={root / 'data' / '*.tfrecord.gz'}",
            f"input.schema={root / 'data' / 'schema.pbtxt'}",
            f"output.path={tmp_path / 'out'}",
        ],
    )
    summary = run_job(config)
    assert summary["counts"]["examples_attributed"] == 300
    sentiment = set(demo_text.POSITIVE) | set(demo_text.NEGATIVE)
    lead = 0
    for row in _results(tmp_path / "out"):
        scores, tokens = row["attr_embedding"], row["tokens_embedding"]
        words = [t for t in tokens if t is not None]
        assert [s is None for s in scores] == [t is None for t in tokens]  # padding = no word
        top = max(range(len(words)), key=lambda t: abs(scores[t]))
        lead += words[top] in sentiment
        assert abs(row["delta"]) < 1e-3
    assert lead >= 0.95 * 300  # the label is decided by the sentiment words
    # The report reads per-token scores with nulls (padding) without failing.
    from pipeline.cli import main as cli_main

    assert cli_main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 0


def test_zero_examples_with_text_settings(tmp_path):
    _classifier().save(str(tmp_path / "text.keras"))
    data = _write_text_data(tmp_path, _ids(0))
    summary = run_job(parse_config(_job(tmp_path, data, {"tokens": "words"})))
    assert summary["counts"]["examples_attributed"] == 0
    table = pq.read_table(str(tmp_path / "out" / ATTRIBUTIONS_DIR))
    assert table.num_rows == 0
    assert {"attr_emb", "tokens_emb"} <= set(table.column_names)
    positions = pq.read_table(str(tmp_path / "out" / "statistics" / "tokens.parquet"))
    assert positions.num_rows == 0 and positions.schema == TOKEN_STATISTICS_SCHEMA
