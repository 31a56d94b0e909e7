"""Tests for pipeline.config: loading, defaults, paths, overrides and validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import config as cfg
from pipeline.config import (
    BASELINE_KINDS,
    METHODS,
    TARGET_KINDS,
    AttributionConfig,
    BaselineConfig,
    BatchingConfig,
    ConfigError,
    InputConfig,
    JobConfig,
    ModelConfig,
    OutputConfig,
    TargetConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "example.yaml"

# A valid config that sets every key to a non-default value.
FULL: dict[str, Any] = {
    "model": {
        "path": "/models/m.keras",
        "preprocess_path": "/models/pre",
        "signature": "explain",
        "safe_mode": False,
    },
    "input": {
        "pattern": "/data/a/*.tfrecord.gz,/data/b/*.tfrecord",
        "schema": "/data/schema.pbtxt",
        "key": "example_id",
    },
    "features": ["f0", "f1"],
    "passthrough": ["label", "country"],
    "attribution": {
        "method": "riemann_trapezoid",
        "steps": 64,
        "layer": "embedding",
        "output": "probs",
        "baseline": {
            "kind": "random_uniform",
            "low": {"f0": -1, "f1": 0.0},
            "high": 2.5,
            "seed": 7,
            "samples": 4,
        },
        "target": {"kind": "label", "feature": "label"},
    },
    "batching": {"batch_size": 32, "max_rows_per_call": 4096},
    "slices": [["country"], ["country", "label"]],
    "output": {"path": "gs://bucket/out/run1", "shards": 8, "row_group_rows": 1000},
    "max_dead_letter_fraction": 0.25,
}

MINIMAL: dict[str, Any] = {
    "model": {"path": "/m.keras"},
    "input": {"pattern": "/d/*.gz"},
    "output": {"path": "/out"},
}

# A valid base for the bad-config cases: simple baseline and target so that each case
# changes exactly one thing.
BASE: dict[str, Any] = {
    "model": {"path": "/m.keras"},
    "input": {"pattern": "/d/*.gz"},
    "features": ["f0", "f1"],
    "passthrough": ["label", "country"],
    "attribution": {
        "method": "gausslegendre",
        "steps": 50,
        "baseline": {"kind": "zeros"},
        "target": {"kind": "predicted"},
    },
    "slices": [["country"]],
    "output": {"path": "/out"},
}

_DELETE = object()


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Sets (or with `_DELETE` removes) a dotted key in a nested dict, for building cases."""
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    if value is _DELETE:
        data.pop(last, None)
    else:
        data[last] = value


def _variant(changes: dict[str, Any], base: dict[str, Any] = BASE) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        _set(data, dotted, value)
    return data


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Constants and dataclasses
# --------------------------------------------------------------------------------------------


def test_constants():
    assert METHODS == (
        "riemann_left",
        "riemann_right",
        "riemann_middle",
        "riemann_trapezoid",
        "gausslegendre",
    )
    assert BASELINE_KINDS == (
        "zeros",
        "constant",
        "per_feature",
        "random_uniform",
        "blur",
        "average",
        "reference",
        "expected_gradients",
    )
    assert TARGET_KINDS == ("predicted", "index", "label", "scalar", "top_k", "indices")


def test_config_error_is_value_error_with_key():
    err = ConfigError("must be an integer >= 1, got 0", "attribution.steps")
    assert isinstance(err, ValueError)
    assert err.key == "attribution.steps"
    assert str(err) == "attribution.steps: must be an integer >= 1, got 0"
    assert str(ConfigError("whole-file problem")) == "whole-file problem"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.key == err.key


# --------------------------------------------------------------------------------------------
# Full config, defaults, round trip
# --------------------------------------------------------------------------------------------


def test_full_config_values():
    job = parse_config(FULL)
    assert job.model == ModelConfig("/models/m.keras", "/models/pre", "explain", False)
    assert job.input == InputConfig(
        "/data/a/*.tfrecord.gz,/data/b/*.tfrecord", "/data/schema.pbtxt", "example_id"
    )
    assert job.input.patterns == ("/data/a/*.tfrecord.gz", "/data/b/*.tfrecord")
    assert job.features == ("f0", "f1")
    assert job.passthrough == ("label", "country")
    assert job.attribution == AttributionConfig(
        method="riemann_trapezoid",
        steps=64,
        layer="embedding",
        output="probs",
        baseline=BaselineConfig(
            kind="random_uniform", low={"f0": -1.0, "f1": 0.0}, high=2.5, seed=7, samples=4
        ),
        target=TargetConfig(kind="label", feature="label"),
    )
    assert isinstance(job.attribution.baseline.low["f0"], float)
    assert job.batching == BatchingConfig(32, 4096)
    assert job.slices == (("country",), ("country", "label"))
    assert job.output == OutputConfig("gs://bucket/out/run1", 8, 1000)
    assert job.max_dead_letter_fraction == 0.25


def test_full_config_round_trips_through_json():
    job = parse_config(FULL)
    as_dict = job.to_dict()
    text = json.dumps(as_dict)  # must be JSON-able
    again = JobConfig.from_dict(json.loads(text))
    assert again == job
    assert again.to_dict() == as_dict
    # The dict has the config file's shape: it is itself a valid config.
    assert parse_config(yaml.safe_load(yaml.safe_dump(as_dict))) == job


@pytest.mark.parametrize(
    "baseline",
    [
        {"kind": "zeros"},
        {"kind": "constant", "value": 0.5},
        {"kind": "per_feature", "values": {"f0": 1, "f1": [0.0, 1.5, -2]}},
        {"kind": "random_uniform", "low": 0, "high": 1},
        {"kind": "random_uniform", "low": {"f0": 0, "f1": 1}, "high": {"f0": 1, "f1": 3}},
    ],
)
def test_every_baseline_kind_round_trips(baseline):
    job = parse_config(_variant({"attribution.baseline": baseline}))
    assert job.attribution.baseline.kind == baseline["kind"]
    out = job.to_dict()["attribution"]["baseline"]
    assert set(out) - {"seed", "samples"} == set(baseline)
    assert JobConfig.from_dict(json.loads(json.dumps(job.to_dict()))) == job


@pytest.mark.parametrize(
    "target",
    [
        {"kind": "predicted"},
        {"kind": "index", "value": 3},
        {"kind": "label", "feature": "label"},
        {"kind": "scalar"},
        {"kind": "top_k", "k": 2},
        {"kind": "indices", "values": [2, 0]},
    ],
)
def test_every_target_kind_round_trips(target):
    job = parse_config(_variant({"attribution.target": target}))
    assert job.to_dict()["attribution"]["target"] == target
    assert JobConfig.from_dict(job.to_dict()) == job


def test_per_feature_values_are_floats_and_tuples():
    job = parse_config(
        _variant({"attribution.baseline": {"kind": "per_feature", "values": {"f0": 1, "f1": [2]}}})
    )
    assert job.attribution.baseline.values == {"f0": 1.0, "f1": (2.0,)}
    assert job.to_dict()["attribution"]["baseline"]["values"] == {"f0": 1.0, "f1": [2.0]}


def test_random_uniform_defaults():
    job = parse_config(
        _variant({"attribution.baseline": {"kind": "random_uniform", "low": 0, "high": 1}})
    )
    assert job.attribution.baseline == BaselineConfig(
        kind="random_uniform", low=0.0, high=1.0, seed=0, samples=1
    )


def test_minimal_config_gets_defaults():
    job = parse_config(MINIMAL)
    assert job.model == ModelConfig(
        path="/m.keras", preprocess_path=None, signature="serving_default", safe_mode=True
    )
    assert job.input == InputConfig(pattern="/d/*.gz", schema=None, key=None)
    assert job.features is None
    assert job.passthrough == ()
    assert job.attribution.method == "gausslegendre"
    assert job.attribution.steps == 50
    assert job.attribution.layer is None
    assert job.attribution.output is None
    assert job.attribution.baseline == BaselineConfig(kind="zeros")
    assert job.attribution.target == TargetConfig(kind="predicted")
    assert job.batching == BatchingConfig(
        batch_size="auto", max_rows_per_call="auto", memory_budget="auto"
    )
    assert job.slices == ()
    assert job.output == OutputConfig(path="/out", shards=0, row_group_rows=65536)
    assert job.max_dead_letter_fraction == 0.01
    assert job.input_features() is None


def test_null_values_take_defaults():
    data = _variant(
        {
            "model.signature": None,
            "model.safe_mode": None,
            "attribution.steps": None,
            "attribution.baseline": None,
            "batching": None,
            "slices": None,
            "passthrough": None,
            "max_dead_letter_fraction": None,
        },
        base=MINIMAL,
    )
    assert parse_config(data) == parse_config(MINIMAL)


def test_parse_config_does_not_modify_input():
    data = copy.deepcopy(FULL)
    parse_config(data, ["attribution.steps=9", "batching.batch_size=3"], base_dir="/base")
    assert data == FULL


def test_config_is_frozen_and_picklable():
    job = parse_config(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.attribution.steps = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.model = None  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(job)) == job


# --------------------------------------------------------------------------------------------
# input_features
# --------------------------------------------------------------------------------------------


def test_input_features_orders_and_dedups():
    job = parse_config(FULL)
    # features, passthrough, key, label feature ("label" already in passthrough).
    assert job.input_features() == ("f0", "f1", "label", "country", "example_id")


def test_input_features_includes_label_feature_outside_passthrough():
    job = parse_config(
        _variant(
            {
                "passthrough": ["country"],
                "attribution.target": {"kind": "label", "feature": "y"},
                "input.key": "id",
            }
        )
    )
    assert job.input_features() == ("f0", "f1", "country", "id", "y")


def test_input_features_none_when_features_null():
    job = parse_config(_variant({"features": None}))
    assert job.features is None
    assert job.input_features() is None


# --------------------------------------------------------------------------------------------
# load_config and paths
# --------------------------------------------------------------------------------------------


def test_load_config_resolves_relative_paths(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = _write(
        conf_dir / "job.yaml",
        """
model:
  path: models/m.keras
  preprocess_path: ../pre
input:
  pattern: "data/a-*.gz, /abs/b-*.gz,gs://bucket/c-*.gz"
  schema: schema.pbtxt
output:
  path: out/run1
""",
    )
    job = load_config(str(path))
    assert job.model.path == str(conf_dir / "models" / "m.keras")
    assert job.model.preprocess_path == str(tmp_path / "pre")
    assert job.input.patterns == (
        str(conf_dir / "data" / "a-*.gz"),
        "/abs/b-*.gz",
        "gs://bucket/c-*.gz",
    )
    assert job.input.schema == str(conf_dir / "schema.pbtxt")
    assert job.output.path == str(conf_dir / "out" / "run1")


def test_load_config_relative_config_path(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    _write(
        tmp_path / "sub" / "job.yaml",
        "model: {path: m.keras}\ninput: {pattern: x.gz}\noutput: {path: o}\n",
    )
    monkeypatch.chdir(tmp_path)
    job = load_config("sub/job.yaml")
    assert job.model.path == str(tmp_path / "sub" / "m.keras")
    assert os.path.isabs(job.output.path)


def test_load_config_keeps_absolute_and_uri_paths(tmp_path):
    path = _write(
        tmp_path / "job.yaml",
        "model: {path: /abs/m.keras, preprocess_path: 'gs://b/pre'}\n"
        "input: {pattern: 's3://b/*.gz', schema: /abs/schema.pbtxt}\n"
        "output: {path: 'gs://b/out'}\n",
    )
    job = load_config(str(path))
    assert job.model.path == "/abs/m.keras"
    assert job.model.preprocess_path == "gs://b/pre"
    assert job.input.pattern == "s3://b/*.gz"
    assert job.input.schema == "/abs/schema.pbtxt"
    assert job.output.path == "gs://b/out"


def test_parse_config_without_base_dir_keeps_relative_paths():
    job = parse_config(_variant({"model.path": "m.keras", "output.path": "out"}))
    assert job.model.path == "m.keras"
    assert job.output.path == "out"
    job = parse_config(_variant({"model.path": "m.keras"}), base_dir="/base")
    assert job.model.path == "/base/m.keras"


def test_override_paths_are_not_resolved(tmp_path):
    path = _write(
        tmp_path / "job.yaml", "model: {path: m.keras}\ninput: {pattern: x.gz}\noutput: {path: o}\n"
    )
    job = load_config(str(path), ["output.path=elsewhere/out"])
    assert job.output.path == "elsewhere/out"
    assert job.model.path == str(tmp_path / "m.keras")


def test_example_yaml_loads():
    job = load_config(str(EXAMPLE))
    configs_dir = EXAMPLE.parent
    assert job.model.path == str(configs_dir / "model.keras")
    assert job.input.pattern == str(configs_dir / "data" / "*.tfrecord.gz")
    assert job.input.schema == str(configs_dir / "data" / "schema.pbtxt")
    assert job.input.key == "example_id"
    assert job.features == ("f0", "f1")
    assert job.passthrough == ("label", "country")
    assert job.attribution.method == "gausslegendre"
    assert job.attribution.steps == 50
    assert job.attribution.baseline.kind == "zeros"
    assert job.attribution.target.kind == "predicted"
    assert ("country",) in job.slices
    assert job.output.path == str(configs_dir / "out" / "run1")
    assert job.max_dead_letter_fraction == 0.01


def _commented_alternatives(section: str) -> list[dict[str, Any]]:
    """The `{kind: ...}` alternatives shown in comments under `section:` in example.yaml."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"  {section}:") + 1
    found = []
    for line in lines[start:]:
        if re.match(r"^ {0,2}\S", line):  # the next key at the same or a lower level
            break
        match = re.match(r"^\s*#\s+(\{kind:.*\})", line)
        if match:
            found.append(yaml.safe_load(match.group(1)))
    return found


@pytest.mark.parametrize("section", ["baseline", "target"])
def test_example_yaml_commented_alternatives_are_valid(section):
    alternatives = _commented_alternatives(section)
    kinds = {a["kind"] for a in alternatives}
    default = "zeros" if section == "baseline" else "predicted"
    all_kinds = BASELINE_KINDS if section == "baseline" else TARGET_KINDS
    assert kinds == set(all_kinds) - {default}
    for alternative in alternatives:
        job = load_config(str(EXAMPLE), [f"attribution.{section}={json.dumps(alternative)}"])
        assert getattr(job.attribution, section).kind == alternative["kind"]


def test_readme_documents_every_key():
    readme = (REPO / "configs" / "README.md").read_text(encoding="utf-8")

    def walk(schema: dict[str, Any], prefix: str) -> list[str]:
        keys = []
        for name, sub in schema.items():
            dotted = f"{prefix}.{name}" if prefix else name
            keys.extend(walk(sub, dotted) if isinstance(sub, dict) else [dotted])
        return keys

    documented = set(re.findall(r"`([a-z_.]+)`", readme))
    for key in walk(cfg._SCHEMA, ""):
        section, _, leaf = key.rpartition(".")
        if section in ("attribution.baseline", "attribution.target"):
            assert f"`{leaf}`" in readme, key  # documented in the per-kind tables
        else:
            assert key in documented, key


# --------------------------------------------------------------------------------------------
# YAML safety and whole-file errors
# --------------------------------------------------------------------------------------------


def test_python_yaml_tag_is_rejected_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(
        tmp_path / "evil.yaml",
        f"model:\n  path: !!python/object/apply:os.system ['touch {marker}']\n"
        "input: {pattern: x.gz}\noutput: {path: o}\n",
    )
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(path))
    assert not marker.exists()


def test_python_tag_in_override_is_rejected_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL, [f"model.path=!!python/object/apply:os.system ['touch {marker}']"])
    assert info.value.key == "model.path"
    assert not marker.exists()


def test_invalid_yaml_is_config_error(tmp_path):
    path = _write(tmp_path / "bad.yaml", "model: {path: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(path))


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_top_level_must_be_mapping(tmp_path):
    path = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="mapping at top level"):
        parse_config(["a"])  # type: ignore[arg-type]


def test_empty_file_reports_required_keys(tmp_path):
    path = _write(tmp_path / "empty.yaml", "")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == "model.path: required"


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def test_overrides_int_list_nested(tmp_path):
    path = _write(tmp_path / "job.yaml", yaml.safe_dump(BASE))
    job = load_config(
        str(path),
        [
            "attribution.steps=64",
            "batching.batch_size=32",
            "features=[a,b]",
            "passthrough=[country]",
            "attribution.baseline.kind=constant",
            "attribution.baseline.value=0.5",
        ],
    )
    assert job.attribution.steps == 64
    assert job.batching.batch_size == 32
    assert job.features == ("a", "b")
    assert job.attribution.baseline == BaselineConfig(kind="constant", value=0.5)


def test_override_creates_missing_and_null_sections():
    job = parse_config(
        {**MINIMAL, "batching": None},
        ["batching.batch_size=8", "attribution.target.kind=index", "attribution.target.value=2"],
    )
    assert job.batching.batch_size == 8
    assert job.attribution.target == TargetConfig(kind="index", value=2)


def test_override_replaces_whole_section():
    job = parse_config(
        _variant({"attribution.baseline": {"kind": "constant", "value": 1}}),
        ["attribution.baseline={kind: zeros}"],
    )
    assert job.attribution.baseline == BaselineConfig(kind="zeros")


def test_override_map_entry():
    data = _variant({"attribution.baseline": {"kind": "per_feature", "values": {"f0": 0, "f1": 0}}})
    job = parse_config(data, ["attribution.baseline.values.f1=[1, 2]"])
    assert job.attribution.baseline.values == {"f0": 0.0, "f1": (1.0, 2.0)}


def test_override_null_restores_default_and_later_wins():
    job = parse_config(FULL, ["model.signature=null", "attribution.steps=5", "attribution.steps=6"])
    assert job.model.signature == "serving_default"
    assert job.attribution.steps == 6


def test_override_result_is_validated():
    with pytest.raises(ConfigError) as info:
        parse_config(BASE, ["attribution.baseline.kind=constant"])
    assert str(info.value) == "attribution.baseline.value: required for baseline kind 'constant'"
    with pytest.raises(ConfigError) as info:
        parse_config(BASE, ["attribution.steps=0"])
    assert str(info.value) == "attribution.steps: must be an integer >= 1, got 0"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("attribution.foo=1", "attribution.foo"),
        ("foo=1", "foo"),
        ("attribution.baseline.foo=1", "attribution.baseline.foo"),
        ("model.path.x=1", "model.path.x"),
        ("attribution.baseline.values.f0.x=1", "attribution.baseline.values.f0.x"),
        ("slices.0=[a]", "slices.0"),
        ("Attribution.steps=1", "Attribution"),
    ],
)
def test_unknown_override_path_fails(override, key):
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL, [override])
    assert info.value.key == key
    assert "unknown key" in str(info.value)
    assert override in str(info.value)


@pytest.mark.parametrize("override", ["attribution.steps", "=3", "attribution..steps=3", ""])
def test_malformed_override_fails(override):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_config(MINIMAL, [override])


def test_override_into_non_mapping_fails():
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "batching": 5}, ["batching.batch_size=2"])
    assert info.value.key == "batching"
    assert "not a mapping" in str(info.value)


def test_override_with_invalid_yaml_fails():
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL, ["features=[a, b"])
    assert info.value.key == "features"
    assert "invalid YAML" in str(info.value)


# --------------------------------------------------------------------------------------------
# Validation errors
# --------------------------------------------------------------------------------------------

# (changes applied to BASE, dotted key the error must name, fragment of the message).
BAD = [
    # required / strings / bools
    ({"model.path": _DELETE}, "model.path", "required"),
    ({"model": _DELETE}, "model.path", "required"),
    ({"input.pattern": _DELETE}, "input.pattern", "required"),
    ({"output.path": _DELETE}, "output.path", "required"),
    ({"output.path": None}, "output.path", "required"),
    ({"model.path": ""}, "model.path", "non-empty string, got ''"),
    ({"model.path": 5}, "model.path", "got 5"),
    ({"model.preprocess_path": " "}, "model.preprocess_path", "non-empty string"),
    ({"model.signature": ["a"]}, "model.signature", "got ['a']"),
    ({"model.safe_mode": "yes"}, "model.safe_mode", "true or false, got 'yes'"),
    ({"model.safe_mode": 1}, "model.safe_mode", "got 1"),
    ({"model": "m.keras"}, "model", "must be a mapping, got 'm.keras'"),
    ({"input.pattern": "a.gz,,b.gz"}, "input.pattern", "empty pattern"),
    ({"input.schema": 3}, "input.schema", "got 3"),
    ({"input.key": ""}, "input.key", "non-empty string"),
    # features / passthrough
    ({"features": []}, "features", "empty"),
    ({"features": "f0"}, "features", "list of feature names or null, got 'f0'"),
    ({"features": ["f0", "f0"]}, "features", "duplicate feature 'f0'"),
    ({"features": ["f0", ""]}, "features[1]", "non-empty string"),
    ({"features": ["f0", 3]}, "features[1]", "got 3"),
    ({"passthrough": ["label", "f0"]}, "passthrough", "'f0' is also in features"),
    ({"passthrough": ["label", "label"]}, "passthrough", "duplicate feature 'label'"),
    ({"passthrough": "label"}, "passthrough", "got 'label'"),
    # attribution
    ({"attribution": []}, "attribution", "must be a mapping"),
    ({"attribution.method": "simpson"}, "attribution.method", "unknown method 'simpson'"),
    ({"attribution.method": 3}, "attribution.method", "unknown method 3"),
    ({"attribution.steps": 0}, "attribution.steps", "must be an integer >= 1, got 0"),
    ({"attribution.steps": -5}, "attribution.steps", "got -5"),
    ({"attribution.steps": True}, "attribution.steps", "got True"),
    ({"attribution.steps": 2.0}, "attribution.steps", "got 2.0"),
    ({"attribution.steps": "10"}, "attribution.steps", "got '10'"),
    (
        {"attribution.method": "riemann_trapezoid", "attribution.steps": 1},
        "attribution.steps",
        ">= 2 for method riemann_trapezoid, got 1",
    ),
    ({"attribution.layer": ""}, "attribution.layer", "non-empty string"),
    ({"attribution.output": 3}, "attribution.output", "got 3"),
    # baseline
    ({"attribution.baseline": "zeros"}, "attribution.baseline", "must be a mapping"),
    ({"attribution.baseline": {"value": 1}}, "attribution.baseline.kind", "required"),
    ({"attribution.baseline.kind": "ones"}, "attribution.baseline.kind", "unknown baseline kind"),
    (
        {"attribution.baseline": {"kind": "constant"}},
        "attribution.baseline.value",
        "required for baseline kind 'constant'",
    ),
    (
        {"attribution.baseline": {"kind": "constant", "value": "x"}},
        "attribution.baseline.value",
        "must be a number, got 'x'",
    ),
    (
        {"attribution.baseline": {"kind": "constant", "value": True}},
        "attribution.baseline.value",
        "got True",
    ),
    (
        {"attribution.baseline": {"kind": "constant", "value": float("inf")}},
        "attribution.baseline.value",
        "got inf",
    ),
    (
        {"attribution.baseline": {"kind": "zeros", "value": 1}},
        "attribution.baseline.value",
        "not allowed for baseline kind 'zeros'",
    ),
    (
        {"attribution.baseline": {"kind": "zeros", "seed": 1}},
        "attribution.baseline.seed",
        "not allowed for baseline kind 'zeros'",
    ),
    (
        {"attribution.baseline": {"kind": "constant", "value": 1, "values": {"f0": 1}}},
        "attribution.baseline.values",
        "not allowed for baseline kind 'constant'",
    ),
    (
        {"attribution.baseline": {"kind": "per_feature"}},
        "attribution.baseline.values",
        "required for baseline kind 'per_feature'",
    ),
    (
        {"attribution.baseline": {"kind": "per_feature", "values": {"f0": 1}}},
        "attribution.baseline.values",
        "missing entries for features ['f1']",
    ),
    (
        {"attribution.baseline": {"kind": "per_feature", "values": {"f0": 1, "f1": 1, "f9": 0}}},
        "attribution.baseline.values.f9",
        "not an attributed feature",
    ),
    (
        {"attribution.baseline": {"kind": "per_feature", "values": {"f0": "a", "f1": 0}}},
        "attribution.baseline.values.f0",
        "got 'a'",
    ),
    (
        {"attribution.baseline": {"kind": "per_feature", "values": {"f0": [], "f1": 0}}},
        "attribution.baseline.values.f0",
        "got []",
    ),
    (
        {"attribution.baseline": {"kind": "per_feature", "values": {"f0": [1, "x"], "f1": 0}}},
        "attribution.baseline.values.f0",
        "list of numbers",
    ),
    (
        {"attribution.baseline": {"kind": "per_feature", "values": [1, 2]}},
        "attribution.baseline.values",
        "got [1, 2]",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "high": 1}},
        "attribution.baseline.low",
        "required for baseline kind 'random_uniform'",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "low": 0}},
        "attribution.baseline.high",
        "required for baseline kind 'random_uniform'",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "low": 0, "high": 1, "samples": 0}},
        "attribution.baseline.samples",
        "must be an integer >= 1, got 0",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "low": 0, "high": 1, "seed": -1}},
        "attribution.baseline.seed",
        "must be an integer >= 0, got -1",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "low": 2, "high": 1}},
        "attribution.baseline.high",
        "must be >= low",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "low": 0, "high": {"f0": 1, "f1": -1}}},
        "attribution.baseline.high.f1",
        "must be >= low",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "low": {"f0": 0}, "high": 1}},
        "attribution.baseline.low",
        "missing entries for features ['f1']",
    ),
    (
        {"attribution.baseline": {"kind": "random_uniform", "low": "a", "high": 1}},
        "attribution.baseline.low",
        "got 'a'",
    ),
    (
        {
            "attribution.baseline": {
                "kind": "random_uniform",
                "low": 0,
                "high": {"f0": 1, "f1": "x"},
            }
        },
        "attribution.baseline.high.f1",
        "got 'x'",
    ),
    (
        {
            "attribution.baseline": {
                "kind": "random_uniform",
                "low": {"f0": 0, "f1": 0},
                "high": {"f0": 1},
            }
        },
        "attribution.baseline.high",
        "same features",
    ),
    # target
    ({"attribution.target": {"value": 1}}, "attribution.target.kind", "required"),
    ({"attribution.target.kind": "argmax"}, "attribution.target.kind", "unknown target kind"),
    (
        {"attribution.target": {"kind": "index"}},
        "attribution.target.value",
        "required for target kind 'index'",
    ),
    (
        {"attribution.target": {"kind": "index", "value": -1}},
        "attribution.target.value",
        "must be an integer >= 0, got -1",
    ),
    ({"attribution.target": {"kind": "index", "value": True}}, "attribution.target.value", "True"),
    ({"attribution.target": {"kind": "index", "value": 1.5}}, "attribution.target.value", "1.5"),
    (
        {"attribution.target": {"kind": "label"}},
        "attribution.target.feature",
        "required for target kind 'label'",
    ),
    (
        {"attribution.target": {"kind": "label", "feature": ""}},
        "attribution.target.feature",
        "non-empty string",
    ),
    (
        {"attribution.target": {"kind": "predicted", "value": 1}},
        "attribution.target.value",
        "not allowed for target kind 'predicted'",
    ),
    (
        {"attribution.target": {"kind": "scalar", "feature": "y"}},
        "attribution.target.feature",
        "not allowed for target kind 'scalar'",
    ),
    (
        {"attribution.target": {"kind": "index", "value": 1, "feature": "y"}},
        "attribution.target.feature",
        "not allowed for target kind 'index'",
    ),
    # batching
    ({"batching": [1]}, "batching", "must be a mapping"),
    ({"batching.batch_size": 0}, "batching.batch_size", "must be an integer >= 1, got 0"),
    ({"batching.batch_size": True}, "batching.batch_size", "got True"),
    ({"batching.max_rows_per_call": 0}, "batching.max_rows_per_call", "got 0"),
    # slices
    ({"slices": [["region"]]}, "slices[0]", "'region' is not in passthrough"),
    ({"slices": [["f0"]]}, "slices[0]", "'f0' is not in passthrough"),
    ({"slices": ["country"]}, "slices[0]", "write [country]"),
    ({"slices": [[]]}, "slices[0]", "empty"),
    ({"slices": [["country"], ["country"]]}, "slices[1]", "duplicate slice"),
    ({"slices": [["country", "country"]]}, "slices[0]", "duplicate feature"),
    ({"slices": "country"}, "slices", "got 'country'"),
    ({"slices": [["country", 1]]}, "slices[0][1]", "got 1"),
    # output
    ({"output.shards": -1}, "output.shards", "must be an integer >= 0, got -1"),
    ({"output.shards": 1.5}, "output.shards", "got 1.5"),
    ({"output.row_group_rows": 0}, "output.row_group_rows", "must be an integer >= 1, got 0"),
    # dead letters
    ({"max_dead_letter_fraction": 1.5}, "max_dead_letter_fraction", "[0, 1], got 1.5"),
    ({"max_dead_letter_fraction": -0.1}, "max_dead_letter_fraction", "got -0.1"),
    ({"max_dead_letter_fraction": True}, "max_dead_letter_fraction", "got True"),
    ({"max_dead_letter_fraction": float("nan")}, "max_dead_letter_fraction", "got nan"),
    ({"max_dead_letter_fraction": "1e-3"}, "max_dead_letter_fraction", "write 1.0e-3"),
]


@pytest.mark.parametrize(
    ("changes", "key", "fragment"), BAD, ids=[f"{i}-{case[1]}" for i, case in enumerate(BAD)]
)
def test_bad_config_names_key(changes, key, fragment):
    data = _variant(changes)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    err = info.value
    assert err.key == key
    assert str(err).startswith(f"{key}: ")
    assert fragment in str(err)


def test_base_is_valid():
    """Guards the BAD table: each case must fail because of its change, not the base."""
    assert parse_config(BASE).features == ("f0", "f1")


def test_error_messages_match_documented_format():
    def message(changes: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config(_variant(changes))
        return str(info.value)

    assert message({"attribution.steps": 0}) == "attribution.steps: must be an integer >= 1, got 0"
    assert message({"attribution.method": "simpson"}) == (
        "attribution.method: unknown method 'simpson'; choose one of riemann_left, "
        "riemann_right, riemann_middle, riemann_trapezoid, gausslegendre"
    )
    assert message({"model.path": _DELETE}) == "model.path: required"
    assert message({"attribution.foo": 1}).startswith("attribution.foo: unknown key")


def test_feature_maps_unchecked_when_features_null():
    data = _variant(
        {
            "features": None,
            "slices": None,
            "attribution.baseline": {"kind": "per_feature", "values": {"anything": 1}},
        }
    )
    assert parse_config(data).attribution.baseline.values == {"anything": 1.0}


def test_trapezoid_with_two_steps_is_valid():
    job = parse_config(
        _variant({"attribution.method": "riemann_trapezoid", "attribution.steps": 2})
    )
    assert (job.attribution.method, job.attribution.steps) == ("riemann_trapezoid", 2)


@pytest.mark.parametrize(
    "dotted",
    [
        "foo",
        "model.foo",
        "input.foo",
        "attribution.foo",
        "attribution.baseline.foo",
        "attribution.target.foo",
        "batching.foo",
        "output.foo",
    ],
)
def test_unknown_keys_rejected(dotted):
    with pytest.raises(ConfigError) as info:
        parse_config(_variant({dotted: 1}))
    assert info.value.key == dotted
    assert "unknown key" in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = _write(
        tmp_path / "job.yaml",
        "model: {path: m.keras}\ninput: {pattern: x.gz}\noutput: {path: o}\n"
        "attribution:\n  step: 10\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.key == "attribution.step"
    assert "expected one of method, steps" in str(info.value)


def test_non_string_top_level_key_rejected():
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, 1: "x"})
    assert info.value.key == "1"


def test_max_rows_per_call_below_steps_is_allowed():
    # The engine splits one example's path over several calls; results do not change.
    job = parse_config(
        {
            "model": {"path": "/m.keras"},
            "input": {"pattern": "/d/*.tfrecord"},
            "output": {"path": "/out"},
            "batching": {"max_rows_per_call": 10},
        }
    )
    assert job.batching.max_rows_per_call == 10 < job.attribution.steps


def test_config_choices_match_the_engine():
    # pipeline.config stays free of TensorFlow, so it repeats the engine's names: keep in step.
    import attribution

    assert METHODS == attribution.METHODS
    assert set(BASELINE_KINDS) <= set(attribution.BASELINE_KINDS)
    assert set(TARGET_KINDS) <= set(attribution.TARGET_KINDS)
