"""Vertex Explainable AI migration: `igbeam import-vertex`, `approximation_error` and the
`output.format: vertex_jsonl` lines.

The spec translation is a pure function (`pipeline.vertex.translate`) checked against exact
config dicts; the lines and the approximation error are checked on pipeline runs of models
with closed-form attributions, against the Parquet output of the same run.
"""

from __future__ import annotations

import copy
import glob
import gzip
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import linear_model, read_attributions, write_examples

from pipeline import cli
from pipeline.config import load_config, parse_config
from pipeline.job import run_job
from pipeline.vertex import (
    INPUT_PLACEHOLDER,
    OUTPUT_PLACEHOLDER,
    VertexSpecError,
    read_documents,
    render_yaml,
    translate,
)
from transforms.attribute import approximation_errors
from transforms.vertex_jsonl import ATTRIBUTION_FIELDS, bigquery_name_problems

# ----------------------------------------------------------------------------- the spec

REALISTIC_MODEL = {
    "name": "projects/123/locations/us-central1/models/456",
    "displayName": "census-income",
    "artifactUri": "gs://my-bucket/census/model",
    "explanationSpec": {
        "parameters": {
            "integratedGradientsAttribution": {
                "stepCount": 50,
                "smoothGradConfig": {
                    "noisySampleCount": 5,
                    "featureNoiseSigma": {
                        "noiseSigma": [
                            {"name": "age", "sigma": 2.0},
                            {"name": "hours_per_week", "sigma": 1.5},
                        ]
                    },
                },
            },
            "topK": 2,
        },
        "metadata": {
            "inputs": {
                "age": {
                    "inputTensorName": "age",
                    "inputBaselines": [30, 45],
                    "featureValueDomain": {"minValue": 17, "maxValue": 90},
                    "groupName": "demographics",
                },
                "income": {
                    "inputTensorName": "income:0",
                    "inputBaselines": [50000.0, 80000.0],
                    "groupName": "demographics",
                },
                "hours_per_week": {"inputTensorName": "hours", "inputBaselines": [40]},
                "colour": {
                    "inputTensorName": "colour",
                    "encoding": "BAG_OF_FEATURES",
                    "indexFeatureMapping": ["red", "green", "blue"],
                    "inputBaselines": [[0, 0, 0], [0, 1, 0]],
                },
            },
            "outputs": {
                "probabilities": {
                    "outputTensorName": "probs:0",
                    "indexDisplayNameMapping": ["low", "mid", "high"],
                }
            },
        },
    },
}
"""A tabular Model as `gcloud ai models describe --format=json` prints it: several inputs, a
list of two baselines, top-k 2, SmoothGrad with per-feature noise."""

REALISTIC_CONFIG = {
    "model": {"path": "gs://my-bucket/census/model"},
    "input": {"pattern": "gs://my-bucket/census/data/*.tfrecord.gz", "key": "id"},
    "features": ["age", "income", "hours", "colour"],
    "attribution": {
        "method": "gausslegendre",
        "steps": 50,
        "baseline": {
            "kind": "average",
            "baselines": [
                {
                    "kind": "per_feature",
                    "values": {"age": 30.0, "income": 50000.0, "hours": 40.0, "colour": [0.0] * 3},
                },
                {
                    "kind": "per_feature",
                    "values": {
                        "age": 45.0,
                        "income": 80000.0,
                        "hours": 40.0,
                        "colour": [0.0, 1.0, 0.0],
                    },
                },
            ],
        },
        "smoothgrad": {"samples": 5, "feature_sigma": {"age": 2.0, "hours": 1.5}},
        "output": "probs",
        "display_names": ["low", "mid", "high"],
        "target": {"kind": "top_k", "k": 2},
    },
    "output": {
        "path": "gs://my-bucket/census/explanations",
        "format": "vertex_jsonl",
        "vertex": {
            "output_name": "probabilities",
            "feature_names": {"hours": "hours_per_week"},
            "index_feature_mapping": {"colour": ["red", "green", "blue"]},
            "groups": {"demographics": ["age", "income"]},
        },
    },
}
"""What the realistic spec translates into, key for key."""


def realistic(**paths):
    return translate(
        [copy.deepcopy(REALISTIC_MODEL)],
        input_pattern=paths.get("input", "gs://my-bucket/census/data/*.tfrecord.gz"),
        output=paths.get("output", "gs://my-bucket/census/explanations"),
        key="id",
        model=paths.get("model"),
    )


def test_realistic_spec_translates_to_exactly_the_expected_config():
    translation = realistic()
    assert translation.config == REALISTIC_CONFIG
    # a comment per translated field, naming the Vertex field it came from
    assert translation.comments["attribution.steps"] == "integratedGradientsAttribution.stepCount"
    assert translation.comments["attribution.target"] == "parameters.topK"
    assert "smoothGradConfig" in translation.comments["attribution.smoothgrad"]
    assert "indexDisplayNameMapping" in translation.comments["attribution.display_names"]
    assert "artifactUri" in translation.comments["model.path"]
    # a field that changes no attribution is listed as not carried over, not dropped silently
    assert any("age.featureValueDomain" in note for note in translation.notes)


def test_spec_parts_and_snake_case_translate_the_same():
    spec = REALISTIC_MODEL["explanationSpec"]
    parameters = {
        "integrated_gradients_attribution": {
            "step_count": 50,
            "smooth_grad_config": {
                "noisy_sample_count": 5,
                "feature_noise_sigma": {
                    "noise_sigma": [
                        {"name": "age", "sigma": 2.0},
                        {"name": "hours_per_week", "sigma": 1.5},
                    ]
                },
            },
        },
        "top_k": 2,
    }
    kwargs = {"input_pattern": "p", "output": "o", "model": "m"}
    from_parts = translate([parameters, copy.deepcopy(spec["metadata"])], **kwargs)
    from_spec = translate([copy.deepcopy(spec)], **kwargs)
    from_model = translate([copy.deepcopy(REALISTIC_MODEL)], **kwargs)
    assert from_parts.config == from_spec.config == from_model.config
    assert from_model.config["model"] == {"path": "m"}  # --model wins over artifactUri


def test_single_baseline_indices_and_blur():
    spec = {
        "parameters": {
            "integratedGradientsAttribution": {
                "stepCount": 20,
                "blurBaselineConfig": {"maxBlurSigma": 3.5},
            },
            "outputIndices": [2, 0],
        },
        "metadata": {
            "inputs": {"image": {"inputTensorName": "pixels:0", "modality": "image"}},
            "outputs": {"scores": {}},
        },
    }
    config = translate([spec]).config
    assert config["features"] == ["pixels"]
    assert config["attribution"] == {
        "method": "gausslegendre",
        "steps": 20,
        "baseline": {"kind": "blur", "sigma": 3.5},
        "target": {"kind": "indices", "values": [2, 0]},
    }
    assert config["input"] == {"pattern": INPUT_PLACEHOLDER}
    assert config["output"]["path"] == OUTPUT_PLACEHOLDER
    assert config["output"]["vertex"] == {
        "output_name": "scores",
        "feature_names": {"pixels": "image"},
    }
    no_baselines = copy.deepcopy(spec)
    del no_baselines["parameters"]["integratedGradientsAttribution"]["blurBaselineConfig"]
    no_baselines["parameters"]["outputIndices"] = [1]
    attribution = translate([no_baselines]).config["attribution"]
    assert attribution["baseline"] == {"kind": "zeros"}
    assert attribution["target"] == {"kind": "index", "value": 1}


def test_encoded_input_becomes_layer_attribution():
    spec = {
        "parameters": {"integratedGradientsAttribution": {"stepCount": 32}},
        "metadata": {
            "inputs": {
                "text": {
                    "inputTensorName": "ids",
                    "encoding": "CONCAT_EMBEDDING",
                    "encodedTensorName": "emb:0",
                    "encodedBaselines": [0.0],
                }
            },
            "outputs": {"out": {"outputTensorName": "out"}},
        },
    }
    config = translate([spec]).config
    assert "features" not in config  # every input; the layer is what is attributed
    assert config["attribution"]["layer"] == "emb"
    assert config["attribution"]["baseline"] == {"kind": "per_feature", "values": {"emb": 0.0}}
    assert config["attribution"]["target"] == {"kind": "predicted"}


def _categorical_spec():
    """Two categorical inputs embedded by their own layers (encodedTensorName) and a numeric
    input: the common Vertex tabular spec. Two baselines: the size layer and the numeric input
    give one value or two, the color layer two."""
    return {
        "parameters": {"integratedGradientsAttribution": {"stepCount": 16}},
        "metadata": {
            "inputs": {
                "color": {
                    "inputTensorName": "color",
                    "encoding": "IDENTITY",
                    "encodedTensorName": "emb_color",
                    "encodedBaselines": [[0.1, -0.2, 0.3], [[0.0, 0.4, -0.5]]],
                },
                "numeric": {"inputTensorName": "num:0", "inputBaselines": [1.0, -0.5]},
                "size": {
                    "encoding": "COMBINED_EMBEDDING",
                    "encodedTensorName": "emb_size:0",
                    "encodedBaselines": [0.5],
                },
            },
            "outputs": {"score": {}},
        },
    }


CATEGORICAL_BASELINE = {
    "kind": "average",
    "baselines": [
        {
            "kind": "per_feature",
            "values": {"emb_color": [0.1, -0.2, 0.3], "num": 1.0, "emb_size": 0.5},
        },
        {
            "kind": "per_feature",
            "values": {"emb_color": [0.0, 0.4, -0.5], "num": -0.5, "emb_size": 0.5},
        },
    ],
}


def test_several_encoded_inputs_and_a_numeric_one_become_a_layer_list():
    translation = translate([_categorical_spec()], model="m", input_pattern="p", output="o")
    assert translation.config == {
        "model": {"path": "m"},
        "input": {"pattern": "p"},
        "attribution": {
            "method": "gausslegendre",
            "steps": 16,
            "layer": ["emb_color", "emb_size"],  # in spec order
            "baseline": CATEGORICAL_BASELINE,
            "target": {"kind": "predicted"},
        },
        "output": {
            "path": "o",
            "format": "vertex_jsonl",
            "vertex": {
                "output_name": "score",
                "feature_names": {"emb_color": "color", "emb_size": "size", "num": "numeric"},
            },
        },
    }
    # no `features` with a layer: the numeric input is attributed as a float input feeding
    # no listed layer, and the comment says so
    comment = translation.comments["attribution.layer"]
    assert "attributed automatically" in comment and "num" in comment
    text = render_yaml(translation)
    assert yaml.safe_load(text) == translation.config
    parse_config(translation.config)  # a valid igbeam config


def test_layer_list_baseline_counts_and_names_are_checked():
    spec = _categorical_spec()
    spec["metadata"]["inputs"]["size"]["encodedBaselines"] = [0.5, 0.6, 0.7]
    with pytest.raises(VertexSpecError) as caught:
        translate([spec])
    assert str(caught.value) == (
        "metadata.inputs.color.encodedBaselines: 2 baselines while size has 3: give 1 or 3"
    )
    spec = _categorical_spec()
    spec["metadata"]["inputs"]["size"]["encodedTensorName"] = "num"
    with pytest.raises(VertexSpecError, match=r"^metadata\.inputs\.size\.encodedTensorName: 'num'"):
        translate([spec])
    spec = _categorical_spec()
    del spec["metadata"]["inputs"]["size"]["encodedBaselines"]
    translation = translate([spec])
    assert [
        b["values"]["emb_size"] for b in translation.config["attribution"]["baseline"]["baselines"]
    ] == [0.0, 0.0]
    assert any("layers ['emb_size'] had no encodedBaselines" in n for n in translation.notes)
    # SmoothGrad noise named by an encoded input's key goes on its layer
    spec = _categorical_spec()
    spec["parameters"]["integratedGradientsAttribution"]["smoothGradConfig"] = {
        "featureNoiseSigma": {"noiseSigma": [{"name": "color", "sigma": 0.2}]}
    }
    smoothgrad = translate([spec]).config["attribution"]["smoothgrad"]
    assert smoothgrad == {"samples": 3, "feature_sigma": {"emb_color": 0.2}}
    # one encoded input alone keeps the single-layer form; with a plain input it is a list
    spec = _categorical_spec()
    del spec["metadata"]["inputs"]["size"]
    assert translate([spec]).config["attribution"]["layer"] == ["emb_color"]
    del spec["metadata"]["inputs"]["numeric"]
    assert translate([spec]).config["attribution"]["layer"] == "emb_color"


def test_translated_layer_list_runs_and_equals_the_native_config(tmp_path):
    """The translated spec through the pipeline: one column per encoded input and the numeric
    one, the closed form w . (x - mean baseline) per feature (the model is linear in its
    embeddings), completeness, the same numbers as the settings written natively, and JSONL
    lines keyed by the spec's input names."""
    from test_layers import BIAS, COLORS, SIZES, D, _data, _tabular_model, _weights

    n = 12
    _tabular_model().save(str(tmp_path / "tabular.keras"))
    data = _data(n, seed=7)
    rows = [
        {
            "color": data["color"][i].encode(),
            "size": data["size"][i].encode(),
            "num": float(data["num"][i]),
            "id": f"r{i:02d}".encode(),
        }
        for i in range(n)
    ]
    write_examples(tmp_path / "data.tfrecord", rows)
    translated = translate(
        [_categorical_spec()],
        model=str(tmp_path / "tabular.keras"),
        input_pattern=str(tmp_path / "data.tfrecord"),
        output=str(tmp_path / "vertex"),
        key="id",
    ).config
    summary = run_job(parse_config(translated))
    assert summary["counts"]["examples_attributed"] == n
    native = {
        "model": {"path": str(tmp_path / "tabular.keras")},
        "input": {"pattern": str(tmp_path / "data.tfrecord"), "key": "id"},
        "attribution": {
            "layer": ["emb_color", "emb_size"],
            "method": "gausslegendre",
            "steps": 16,
            "baseline": CATEGORICAL_BASELINE,
            "target": {"kind": "predicted"},
        },
        "output": {"path": str(tmp_path / "native")},
    }
    run_job(parse_config(native))
    got = read_attributions(tmp_path / "vertex").sort_values("key").reset_index(drop=True)
    want = read_attributions(tmp_path / "native").sort_values("key").reset_index(drop=True)
    columns = ["attr_emb_color", "attr_emb_size", "attr_num"]
    assert [c for c in got.columns if c.startswith("attr_")] == columns
    assert list(got["key"]) == [f"r{i:02d}" for i in range(n)]
    for column in [*columns, "prediction", "baseline_prediction", "delta"]:
        np.testing.assert_allclose(got[column], want[column], rtol=0, atol=1e-9)
    # closed form: the baselines average, so IG is w . (x - mean of the baselines)
    color_table, size_table, w = _weights()
    w = w[:, 0].astype(np.float64)
    color = color_table[[COLORS.index(c) + 1 for c in data["color"]]].astype(np.float64)
    size = size_table[[SIZES.index(s) + 1 for s in data["size"]]].astype(np.float64)
    mean_color = np.mean([[0.1, -0.2, 0.3], [0.0, 0.4, -0.5]], axis=0)
    np.testing.assert_allclose(got["attr_emb_color"], (color - mean_color) @ w[:D], atol=1e-5)
    np.testing.assert_allclose(got["attr_emb_size"], (size - 0.5) @ w[D : 2 * D], atol=1e-5)
    np.testing.assert_allclose(got["attr_num"], w[2 * D] * (data["num"] - 0.25), atol=1e-5)
    total = got[columns].sum(axis=1)
    np.testing.assert_allclose(
        total, got["prediction"] - got["baseline_prediction"] + got["delta"], atol=1e-9
    )
    assert got["delta"].abs().max() < 1e-5
    baseline = mean_color @ w[:D] + 0.5 * w[D : 2 * D].sum() + 0.25 * w[2 * D] + BIAS
    np.testing.assert_allclose(got["baseline_prediction"], baseline, atol=1e-5)
    frame = got.set_index("key")
    lines = read_lines(tmp_path / "vertex")
    assert sorted(line["key"] for line in lines) == list(frame.index)
    for line in lines:
        (entry,) = line["explanation"]["attributions"]
        row = frame.loc[line["key"]]
        assert entry["featureAttributions"] == {
            "color": row["attr_emb_color"],
            "size": row["attr_emb_size"],
            "numeric": row["attr_num"],
        }


def _spec(**changes):
    """The realistic spec's ExplanationSpec with `changes` applied at dotted paths."""
    spec = copy.deepcopy(REALISTIC_MODEL["explanationSpec"])
    for dotted, value in changes.items():
        node = spec
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return spec


@pytest.mark.parametrize(
    "changes, field",
    [
        (
            {"parameters": {"xraiAttribution": {"stepCount": 10}}},
            "parameters.xraiAttribution",
        ),
        (
            {"parameters": {"sampledShapleyAttribution": {"pathCount": 10}}},
            "parameters.sampledShapleyAttribution",
        ),
        (
            {"parameters__examples": {"nearestNeighborSearchConfig": {}}},
            "parameters.examples",
        ),
        ({"metadata__latentSpaceSource": "emb"}, "metadata.latentSpaceSource"),
        (
            {"metadata__inputs__age__indicesTensorName": "idx"},
            "metadata.inputs.age.indicesTensorName",
        ),
        (
            {"metadata__outputs__probabilities__displayNameMappingKey": "classes"},
            "metadata.outputs.probabilities.displayNameMappingKey",
        ),
        ({"metadata__inputs__age__fooBar": 1}, "metadata.inputs.age.fooBar"),
        (
            {
                "parameters__integratedGradientsAttribution__blurBaselineConfig": {
                    "maxBlurSigma": 2.0
                }
            },
            "parameters.integratedGradientsAttribution.blurBaselineConfig",
        ),
        ({"parameters__topK": -1, "metadata__outputs": {"p": {}}}, "parameters.topK"),
        ({"parameters__outputIndices": [[0, 1]]}, "parameters.outputIndices"),
        (
            {"metadata__inputs__age__inputBaselines": ["thirty"]},
            "metadata.inputs.age.inputBaselines[0]",
        ),
        (
            {"metadata__inputs__age__inputBaselines": [1, 2, 3]},
            "metadata.inputs.income.inputBaselines",  # 2 baselines, where age has 3
        ),
        (
            {"metadata__outputs": {"a": {}, "b": {}}},
            "metadata.outputs",
        ),
        (
            {"metadata__inputs__age__modality": "text"},
            "metadata.inputs.age.modality",
        ),
        (
            {"metadata__inputs__colour__indexFeatureMapping": None},
            "metadata.inputs.colour.indexFeatureMapping",
        ),
        (
            {"metadata__inputs__colour__encodedTensorName": "emb"},
            "metadata.inputs.colour.encoding",  # BAG_OF_FEATURES is not an embedding
        ),
        (
            {
                "metadata__inputs__hours_per_week__encodedTensorName": "emb",
                "metadata__inputs__extra": {"encodedTensorName": "emb:0"},
            },
            "metadata.inputs.extra.encodedTensorName",  # one layer for two inputs
        ),
        (
            {
                "metadata__inputs__hours_per_week__encodedTensorName": "emb",
                "metadata__inputs__hours_per_week__encodedBaselines": [0.0, 1.0, 2.0],
            },
            "metadata.inputs.age.inputBaselines",  # 2 baselines, where the layer has 3
        ),
        (
            {"parameters__integratedGradientsAttribution__stepCount": None},
            "parameters.integratedGradientsAttribution.stepCount",
        ),
    ],
)
def test_what_igbeam_does_not_do_is_a_one_line_error_naming_the_field(changes, field):
    spec = _spec(**changes)
    if "parameters" in changes:  # a whole method replaced: IG is gone
        spec["parameters"] = changes["parameters"]
    with pytest.raises(VertexSpecError) as caught:
        translate([spec], input_pattern="p", output="o")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{field}: "), message
    assert caught.value.field == field


def test_rendered_yaml_has_comments_and_reads_back_as_the_config():
    translation = realistic()
    text = render_yaml(translation, "model.json")
    assert yaml.safe_load(text) == REALISTIC_CONFIG
    lines = text.splitlines()
    steps = lines.index("  steps: 50")
    assert lines[steps - 1] == "  # integratedGradientsAttribution.stepCount"
    assert lines[0].startswith("# igbeam job config translated from a Vertex AI")
    assert any(line.startswith("# NOTE: not carried over: metadata.inputs.age") for line in lines)


# --------------------------------------------------------------------------- the CLI

CLI_SPEC = {
    "parameters": {
        "integratedGradientsAttribution": {"stepCount": 16},
        "outputIndices": [0],
    },
    "metadata": {
        "inputs": {"features": {"inputTensorName": "x:0", "inputBaselines": [[0.5, 0.0, -1.0]]}},
        "outputs": {"y": {"outputTensorName": "y"}},
    },
}
"""A spec whose every field translates into keys this branch already has."""


def test_cli_writes_commented_yaml_that_load_config_reads(tmp_path, capsys):
    (tmp_path / "spec.json").write_text(json.dumps(CLI_SPEC))
    out = tmp_path / "job.yaml"
    code = cli.main(
        [
            "import-vertex",
            "--spec",
            str(tmp_path / "spec.json"),
            "--model",
            "model.keras",
            "--input",
            "data/*.tfrecord",
            "--output",
            "run",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    text = out.read_text()
    assert "  # integratedGradientsAttribution.stepCount\n  steps: 16\n" in text
    assert "# metadata.inputs.*.inputBaselines\n" in text
    config = load_config(str(out))
    assert config.model.path == str(tmp_path / "model.keras")  # relative to the file
    assert config.features == ("x",)
    assert config.attribution.steps == 16
    assert config.attribution.target.kind == "index" and config.attribution.target.value == 0
    assert config.attribution.baseline.kind == "per_feature"
    assert config.attribution.baseline.values == {"x": (0.5, 0.0, -1.0)}
    assert config.output.format == "vertex_jsonl"
    assert config.output.vertex.output_name == "y"
    assert config.output.vertex.feature_names == {"x": "features"}


def test_cli_unsupported_field_exits_2_with_one_line(tmp_path, capsys):
    spec = copy.deepcopy(CLI_SPEC)
    spec["parameters"] = {"xraiAttribution": {"stepCount": 10}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "job.yaml"
    code = cli.main(["import-vertex", "--spec", str(tmp_path / "spec.json"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "parameters.xraiAttribution: XRAI" in err
    assert not out.exists()


def test_model_without_explanation_spec_is_named():
    model = {k: v for k, v in REALISTIC_MODEL.items() if k != "explanationSpec"}
    with pytest.raises(VertexSpecError, match=r"^explanationSpec: missing"):
        translate([model])


def test_read_documents_rejects_non_objects():
    with pytest.raises(VertexSpecError, match=r"^spec\[1\]: must be a JSON object"):
        read_documents(['{"parameters": {}}', "[1, 2]"])


# ----------------------------------------------------------------- approximation error


def test_approximation_error_formula():
    deltas = np.array([0.1, -0.3, 0.0, 0.2])
    predictions = np.array([2.0, 1.0, 5.0, 3.0])
    baselines = np.array([1.0, 4.0, 5.0, 3.0])
    errors = approximation_errors(deltas, predictions, baselines)
    # |sum(attr) - (F(x) - F(x'))| / |F(x) - F(x')| = |delta| / |F(x) - F(x')|
    np.testing.assert_allclose(errors[:3], [0.1, 0.1, 0.0])
    # F(x) = F(x'): the denominator is floored at 1e-6 * |F|, the value stays finite
    np.testing.assert_allclose(errors[3], 0.2 / (1e-6 * 3.0))
    assert errors.dtype == np.float64


def quadratic_model(n: int):
    """y = sum_i x_i^2: right Riemann with 2 steps gives attr_i = 1.5 x_i^2 exactly."""
    import keras

    inp = keras.Input((n,), name="x")
    squares = keras.layers.Multiply(name="square")([inp, inp])
    out = keras.layers.Dense(1, name="y", use_bias=False, trainable=False)(squares)
    model = keras.Model(inp, out)
    model.get_layer("y").set_weights([np.ones((n, 1), np.float32)])
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two pipeline runs with output.format vertex_jsonl: a linear model (no key: lines carry
    the instance) and a quadratic one (key feature, gzip, a crude rule: a known error)."""
    root = tmp_path_factory.mktemp("vertex")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 3)).astype(np.float32)
    rows = [{"x": x[i].tolist(), "id": f"ex-{i:03d}", "tag": ["a", "b"][i % 2]} for i in range(24)]
    write_examples(root / "data.tfrecord", rows)
    weights = np.array([1.5, -2.0, 0.5])
    linear_model(weights, bias=0.25).save(str(root / "linear.keras"))
    quadratic_model(3).save(str(root / "quadratic.keras"))
    common = {"input": {"pattern": str(root / "data.tfrecord")}, "passthrough": ["tag"]}
    linear = parse_config(
        {
            **common,
            "model": {"path": str(root / "linear.keras")},
            "attribution": {
                "steps": 8,
                "target": {"kind": "scalar"},
                "baseline": {"kind": "per_feature", "values": {"x": [0.5, 0.0, -1.0]}},
            },
            "output": {
                "path": str(root / "linear"),
                "input_values": True,
                "format": "vertex_jsonl",
                "vertex": {"output_name": "y", "feature_names": {"x": "features"}},
            },
        }
    )
    quadratic = parse_config(
        {
            **common,
            "input": {**common["input"], "key": "id"},
            "model": {"path": str(root / "quadratic.keras")},
            "attribution": {"method": "riemann_right", "steps": 2, "target": {"kind": "scalar"}},
            "output": {
                "path": str(root / "quadratic"),
                "format": "vertex_jsonl",
                "compression": "gzip",
                "vertex": {"index_feature_mapping": {"x": ["a", "b", "c"]}},
            },
        }
    )
    return {
        "x": x,
        "weights": weights,
        "linear": (linear, run_job(linear)),
        "quadratic": (quadratic, run_job(quadratic)),
    }


def read_lines(out) -> list[dict]:
    lines = []
    for path in sorted(glob.glob(os.path.join(out, "explanations", "part-*"))):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        assert text.endswith("\n")
        lines += [json.loads(line) for line in text.splitlines()]  # every line parses alone
    return lines


def test_approximation_error_column_on_closed_form_models(runs):
    linear = read_attributions(runs["linear"][0].output.path)
    assert linear["approximation_error"].dtype == np.float64
    columns = list(linear.columns)
    assert columns[columns.index("delta") + 1] == "approximation_error"
    expected = approximation_errors(
        linear["delta"], linear["prediction"], linear["baseline_prediction"]
    )
    np.testing.assert_allclose(linear["approximation_error"], expected, rtol=1e-12)
    assert linear["approximation_error"].max() < 1e-5  # IG is exact on a linear model
    # y = sum x^2, right Riemann, 2 steps: sum(attr) = 1.5 F(x), F(x') = 0, delta = 0.5 F(x)
    quadratic = read_attributions(runs["quadratic"][0].output.path)
    np.testing.assert_allclose(quadratic["approximation_error"], 0.5, rtol=1e-5)


def test_jsonl_lines_have_vertex_fields_and_equal_the_parquet(runs):
    config, summary = runs["linear"]
    assert summary["explanations"] == {"format": "vertex_jsonl", "compression": "none", "files": 1}
    assert glob.glob(os.path.join(config.output.path, "explanations", "part-00000-00000.jsonl"))
    lines = read_lines(config.output.path)
    frame = read_attributions(config.output.path).set_index("key")
    assert len(lines) == len(frame) == 24
    x, weights = runs["x"], runs["weights"]
    rows = {tuple(row["in_x"]): row for _, row in frame.iterrows()}  # output.input_values
    for line in lines:
        assert list(line) == ["instance", "prediction", "explanation"]
        assert list(line["explanation"]) == ["attributions"]
        (entry,) = line["explanation"]["attributions"]
        assert list(entry) == list(ATTRIBUTION_FIELDS)
        i = next(j for j in range(24) if np.allclose(x[j], line["instance"]["x"]))
        row = rows[tuple(line["instance"]["x"])]
        assert line["instance"]["tag"] == ["a", "b"][i % 2]
        assert entry["instanceOutputValue"] == line["prediction"] == row["prediction"]
        assert entry["baselineOutputValue"] == row["baseline_prediction"]
        assert entry["approximationError"] == row["approximation_error"]
        assert entry["featureAttributions"]["features"] == list(row["attr_x"])
        # the closed form: w * (x - x')
        np.testing.assert_allclose(
            entry["featureAttributions"]["features"],
            weights * (x[i] - [0.5, 0.0, -1.0]),
            rtol=1e-5,
            atol=1e-6,
        )
        assert entry["outputIndex"] == []  # a scalar output has none, as in Vertex
        assert entry["outputDisplayName"] == ""
        assert entry["outputName"] == "y"


def test_jsonl_with_key_gzip_and_index_feature_mapping(runs):
    config, summary = runs["quadratic"]
    assert summary["explanations"]["compression"] == "gzip"
    lines = read_lines(config.output.path)
    frame = read_attributions(config.output.path).set_index("key")
    assert sorted(line["key"] for line in lines) == sorted(frame.index)
    for line in lines:
        assert list(line) == ["key", "prediction", "explanation"]
        (entry,) = line["explanation"]["attributions"]
        row = frame.loc[line["key"]]
        assert entry["featureAttributions"] == dict(zip("abc", row["attr_x"], strict=True))
        assert entry["approximationError"] == row["approximation_error"]
        assert line["prediction"] == row["prediction"]
        assert entry["outputName"] == ""


def test_jsonl_rows_of_several_outputs_make_one_line_and_nan_is_null():
    import pyarrow as pa

    from transforms.vertex_jsonl import JsonlSettings, explanation_lines

    table = pa.table(
        {
            "key": ["a", "a", "b", "b"],
            "target": pa.array([2, 0, 1, 2], pa.int64()),
            "prediction": [0.7, 0.2, 0.6, 0.3],
            "baseline_prediction": [0.1, 0.1, 0.2, 0.2],
            "delta": [0.0, 0.01, float("nan"), 0.0],
            "approximation_error": [0.0, 0.1, float("nan"), 0.0],
            "output_rank": pa.array([0, 1, 0, 1], pa.int32()),
            "output_name": ["high", "low", "mid", "high"],
            "attr_f": [0.5, 0.1, float("inf"), 0.1],
            "attr_v": [[1.0, 2.0, 3.0, 4.0]] * 4,
            "in_f": pa.array([1.0, 1.0, 2.0, 2.0], pa.float32()),
            "in_v": [[1.0, 2.0, 3.0, 4.0]] * 4,
        }
    )
    settings = JsonlSettings(
        attributed=("f", "v"),
        shapes={"f": (1,), "v": (2, 2)},
        instance_columns=(("f", "in_f"), ("v", "in_v")),
        output_name="probs",
        groups={"g": ("f",)},
    )
    lines = [json.loads(line) for line in explanation_lines(table, settings)]
    assert len(lines) == 2
    # a key seen twice (duplicate keys are reported, never dropped) is two examples
    twice = pa.concat_tables([table.slice(0, 2), table.slice(0, 2)])
    assert len(explanation_lines(twice, settings)) == 2
    first, second = lines
    assert first["instance"] == {"f": 1.0, "v": [[1.0, 2.0], [3.0, 4.0]]}
    assert first["prediction"] == [0.7, 0.2]
    assert [e["outputIndex"] for e in first["explanation"]["attributions"]] == [[2], [0]]
    assert [e["outputDisplayName"] for e in first["explanation"]["attributions"]] == [
        "high",
        "low",
    ]
    assert first["explanation"]["attributions"][0]["featureAttributions"] == {
        "g": 0.5,
        "v": [[1.0, 2.0], [3.0, 4.0]],
    }
    nan_entry = second["explanation"]["attributions"][0]
    assert nan_entry["approximationError"] is None
    assert nan_entry["featureAttributions"]["g"] is None


def test_bigquery_names():
    assert bigquery_name_problems(["age", "_x1", "hours-per-week", "1st", "a b"]) == [
        "hours-per-week",
        "1st",
        "a b",
    ]


# ------------------------------------------------------------- after the merge (engine keys)


def census_model():
    """Inputs age, income, hours (scalars) and colour (3): a 3-class softmax named probs."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = {n: keras.Input((1,), name=n) for n in ("age", "income", "hours")}
    inputs["colour"] = keras.Input((3,), name="colour")
    scaled = [
        keras.layers.Rescaling(1 / 50.0)(inputs["age"]),
        keras.layers.Rescaling(1 / 50000.0)(inputs["income"]),
        keras.layers.Rescaling(1 / 40.0)(inputs["hours"]),
        inputs["colour"],
    ]
    h = keras.layers.Dense(8, activation="tanh")(keras.layers.Concatenate()(scaled))
    out = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    return keras.Model(inputs, out)


def test_realistic_spec_runs_like_the_native_config_after_merge(tmp_path):
    """Needs the engine keys of the parallel branches (average baselines, smoothgrad, top_k,
    display_names): passes once they are merged."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "id": f"p{i}",
            "age": float(rng.integers(18, 80)),
            "income": float(rng.normal(60000, 15000)),
            "hours": float(rng.integers(10, 60)),
            "colour": np.eye(3)[i % 3].tolist(),
        }
        for i in range(20)
    ]
    write_examples(tmp_path / "data.tfrecord", rows)
    census_model().save(str(tmp_path / "census.keras"))
    translated = realistic(
        model=str(tmp_path / "census.keras"),
        input=str(tmp_path / "data.tfrecord"),
        output=str(tmp_path / "translated"),
    )
    (tmp_path / "job.yaml").write_text(render_yaml(translated))
    native = copy.deepcopy(REALISTIC_CONFIG)
    native["model"]["path"] = str(tmp_path / "census.keras")
    native["input"]["pattern"] = str(tmp_path / "data.tfrecord")
    native["output"] = {"path": str(tmp_path / "native")}
    run_job(load_config(str(tmp_path / "job.yaml")))
    run_job(parse_config(native))
    a = read_attributions(tmp_path / "translated").sort_values(["key", "output_rank"])
    b = read_attributions(tmp_path / "native").sort_values(["key", "output_rank"])
    assert len(a) == 2 * 20  # top-k 2: two rows per example
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    lines = read_lines(tmp_path / "translated")
    assert len(lines) == 20
    for line in lines:
        entries = line["explanation"]["attributions"]
        assert len(entries) == 2
        assert set(entries[0]["featureAttributions"]) == {
            "demographics",
            "hours_per_week",
            "red",
            "green",
            "blue",
        }
        assert entries[0]["outputDisplayName"] in ("low", "mid", "high")
