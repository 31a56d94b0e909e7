"""`igbeam compare` end to end: real runs of the demo model, compared through the CLI and the API.

One model is trained per module (the demo's MLP, with the weights of f7 zeroed so that it truly
ignores f7) and every run is made once, on first use, then reused by the tests. A run takes about
two seconds, a comparison about one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import demo
from pipeline.cli import main
from pipeline.compare import DRIFT_SCHEMA, METRICS, ComparisonConfig, compare_runs
from pipeline.config import parse_config, parse_settings
from pipeline.job import run_job

PREDICTED = {"kind": "predicted"}
LABEL = {"kind": "label", "feature": "label"}
SLICES = {
    ("all", ""),
    ("country", "DE"),
    ("country", "FR"),
    ("country", "US"),
    ("target", "0"),
    ("target", "1"),
    ("target", "2"),
}
INPUTS = [*demo.FEATURES, "label", "country"]  # described inputs: attributed + passthrough
FEATURE_METRICS = [m for m, d in METRICS.items() if d.scope == "feature"]
PER_SLICE = (
    {(f, m) for f in demo.FEATURES for m in FEATURE_METRICS}
    | {(f, "impact") for f in INPUTS}
    | {(f, "input_jsd") for f in [*demo.FEATURES, "label"]}  # numeric inputs
    | {("country", "input_linf")}  # categorical
    | {("", m) for m, d in METRICS.items() if d.scope == "slice"}
)
"""(feature, metric) measured in every slice of a run of the demo data (65)."""
ATTRIBUTION_METRICS = {"attribution_jsd", "share_shift"}
ATTRIBUTION_ALERTS_OFF_METRICS = ("attribution_jsd", "share_shift", "share_l1", "impact", "ndcg")
ATTRIBUTION_ALERTS_OFF = [f"thresholds.{metric}=off" for metric in ATTRIBUTION_ALERTS_OFF_METRICS]


# ------------------------------------------------------------------------------------ data


def f7_shifted() -> dict[str, np.ndarray]:
    """Same distribution as the baseline but f7 (which the model ignores) moved by +3."""
    data = demo.make_data(2000, seed=5)
    data["x"][:, 7] += 3.0
    return data


def relationship_shifted() -> dict[str, np.ndarray]:
    """Same inputs, but the label's dependence on f1 flipped (a concept shift)."""
    data = demo.make_data(2000, seed=7)
    x = data["x"]
    sign = np.where(data["country"] == "DE", -1.0, 1.0)
    logits = np.stack([2 * x[:, 0] * sign, -1.5 * x[:, 1], x[:, 2] - 0.5 * x[:, 0]], axis=1)
    data["label"] = logits.argmax(axis=1)
    return data


def without_de() -> dict[str, np.ndarray]:
    data = demo.make_data(2000, seed=11)
    keep = data["country"] != "DE"
    return {name: values[keep] for name, values in data.items()}


# data name: its maker
DATA: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "d2000_1": lambda: demo.make_data(2000, seed=1),
    "d2000_2": lambda: demo.make_data(2000, seed=2),
    "d300_3": lambda: demo.make_data(300, seed=3),
    "d300_4": lambda: demo.make_data(300, seed=4),
    "f7_shift": f7_shifted,
    "relationship": relationship_shifted,
    "no_de": without_de,
}
# run name: (data name, job settings)
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("d2000_1", {}),
    "same": ("d2000_2", {}),
    "small_a": ("d300_3", {}),
    "small_b": ("d300_4", {}),
    "f7_shift": ("f7_shift", {}),
    "label_baseline": ("d2000_1", {"target": LABEL}),
    "label_shift": ("relationship", {"target": LABEL}),
    "steps8": ("d2000_1", {"steps": 8}),
    "f0_f1": ("d2000_1", {"features": ["f0", "f1"]}),
    "no_de": ("no_de", {}),
}


# --------------------------------------------------------------------------------- helpers


class Compared(NamedTuple):
    code: int
    stdout: str
    stderr: str
    out: Path


def cli(*argv: str) -> tuple[int, str, str]:
    """Runs `igbeam compare ARGV`; returns the exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["compare", *argv])
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _strict(constant: str) -> Any:
    raise AssertionError(f"drift.json holds {constant}: not strict JSON")


def report(out: Path) -> dict[str, Any]:
    """drift.json, parsed strictly (a NaN or Infinity fails)."""
    return json.loads((out / "drift.json").read_text(), parse_constant=_strict)


def rows(out: Path) -> list[dict[str, Any]]:
    return pq.read_table(out / "drift.parquet").to_pylist()


def row(table: list[dict[str, Any]], metric: str, feature: str, slice_=("all", "")) -> dict:
    found = [
        r
        for r in table
        if r["metric"] == metric
        and r["feature"] == feature
        and (r["slice_name"], r["slice_value"]) == slice_
    ]
    assert len(found) == 1, (metric, feature, slice_, len(found))
    return found[0]


def key(m: dict[str, Any]) -> tuple[str, str, str, str]:
    return m["slice_name"], m["slice_value"], m["feature"], m["metric"]


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compare")


@pytest.fixture(scope="module")
def model_path(workspace) -> str:
    """The demo model trained on 4000 examples, with f7's first-layer weights zeroed."""
    import keras

    model = demo.build_model(demo.make_data(4000, seed=0), epochs=8)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            weights, bias = layer.get_weights()
            weights[7, :] = 0
            layer.set_weights([weights, bias])
            break
    path = workspace / "model.keras"
    model.save(path)
    return str(path)


def _job(model: str, data_dir: Path, out: Path, settings: dict[str, Any]) -> str:
    raw = {
        "model": {"path": model},
        "input": {
            "pattern": f"{data_dir}/*.gz",
            "schema": f"{data_dir}/schema.pbtxt",
            "key": "example_id",
        },
        "passthrough": ["label", "country"],
        "slices": [["country"]],
        "attribution": {
            "steps": settings.get("steps", 16),
            "target": settings.get("target", PREDICTED),
        },
        "output": {"path": str(out)},
    }
    if "features" in settings:
        raw["features"] = settings["features"]
    run_job(parse_config(raw))
    return str(out)


@pytest.fixture(scope="module")
def data_dir(workspace) -> Callable[[str], Path]:
    """name -> a directory of gzip TFRecords and schema.pbtxt, written once."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            directory = workspace / "data" / name
            demo.write_tfrecords(str(directory), DATA[name](), shards=2)
            made[name] = directory
        return made[name]

    return get


@pytest.fixture(scope="module")
def run(workspace, model_path, data_dir) -> Callable[[str], str]:
    """name (of `RUNS`, or "empty") -> the run's output path, made once."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            out = workspace / "runs" / name
            if name == "empty":
                directory = workspace / "data" / "empty"
                directory.mkdir(parents=True)
                shutil.copy(data_dir("d2000_1") / "schema.pbtxt", directory / "schema.pbtxt")
                (directory / "part-0.tfrecord.gz").write_bytes(b"")
                made[name] = _job(model_path, directory, out, {})
            else:
                data, settings = RUNS[name]
                made[name] = _job(model_path, data_dir(data), out, settings)
        return made[name]

    return get


@pytest.fixture(scope="module")
def compare(workspace, run) -> Callable[..., Compared]:
    """(baseline name, current name, *options) -> the CLI comparison, made once."""
    made: dict[tuple[str, ...], Compared] = {}

    def get(baseline: str, current: str, *options: str) -> Compared:
        name = (baseline, current, *options)
        if name not in made:
            out = workspace / "compared" / str(len(made))
            code, stdout, stderr = cli(
                "--baseline", run(baseline), "--current", run(current), "--out", str(out), *options
            )
            made[name] = Compared(code, stdout, stderr, out)
        return made[name]

    return get


@pytest.fixture(scope="module")
def shift(compare) -> Compared:
    """The relationship shift (f1's effect on the label flipped), label targets on both sides."""
    return compare("label_baseline", "label_shift")


# ----------------------------------------------------------------------------------- tests


def test_relationship_shift_is_attribution_drift_of_f1(shift, compare):
    assert shift.code == 1, shift.stderr
    table = rows(shift.out)
    jsd = row(table, "attribution_jsd", "f1")
    assert jsd["breached"]
    assert jsd["value"] > 0.2  # measured 0.276
    assert jsd["noise_floor"] < 0.05  # measured 0.0097
    assert jsd["value"] > 2 * jsd["noise_floor"]
    assert jsd["baseline_examples"] == jsd["current_examples"] == 2000

    anomalies = report(shift.out)["anomalies"]
    assert anomalies, "the relationship shift raised no anomaly"
    first = anomalies[0]
    assert first["metric"] in ATTRIBUTION_METRICS
    assert first["feature"] == "f1"
    assert "\n" not in first["reason"] and "f1" in first["reason"]
    # the leading anomalies are all f1's attribution drift
    assert all(a["feature"] == "f1" for a in anomalies[:3]), [a["reason"] for a in anomalies]
    # and the CLI printed the verdict with the reasons
    assert first["reason"] in shift.stdout

    mapped = compare("label_baseline", "label_shift", "--drift-exit-code", "99")
    assert mapped.code == 99


def test_input_drift_of_an_ignored_feature_does_not_alert(compare):
    compared = compare("baseline", "f7_shift")
    assert compared.code == 0, compared.stdout + compared.stderr
    table = rows(compared.out)
    jsd = row(table, "input_jsd", "f7")
    assert jsd["value"] > 0.3  # measured 0.71
    assert jsd["value"] > 2 * jsd["noise_floor"]
    # the model ignores f7: its attribution share is 0, so its impact is too
    assert row(table, "share_shift", "f7")["baseline_value"] == 0.0
    impact = row(table, "impact", "f7")
    assert impact["threshold"] == METRICS["impact"].threshold
    assert impact["value"] < impact["threshold"]
    assert not impact["breached"]
    assert report(compared.out)["anomalies"] == []
    assert not any(r["breached"] for r in table)
    # no anomaly: a mapped drift exit code does not apply
    assert compare("baseline", "f7_shift", "--drift-exit-code", "99").code == 0


def _near_threshold(m: dict[str, Any]) -> bool:
    """Beyond its threshold or within 2x of it."""
    threshold = m["threshold"]
    if threshold is None or math.isnan(m["value"]):
        return False
    if METRICS[m["metric"]].direction == "below":
        return 1.0 - m["value"] >= (1.0 - threshold) / 2
    return abs(m["value"]) >= threshold / 2


@pytest.mark.parametrize(
    "baseline,current", [("small_a", "small_b"), ("baseline", "same")], ids=["300", "2000"]
)
def test_same_distribution_is_quiet(compare, baseline, current):
    compared = compare(baseline, current)
    assert compared.code == 0, compared.stdout
    assert report(compared.out)["anomalies"] == []
    table = rows(compared.out)
    assert table and not any(r["breached"] for r in table)
    # raw values do come near (or beyond) their thresholds; the gates keep them quiet
    gated = [
        r
        for r in table
        if r["scope"] != "slice"
        and _near_threshold(r)
        and ("fewer than" in r["note"] or "within its noise floor" in r["note"])
    ]
    assert gated, "no measurement near its threshold was held back by a gate"


def test_a_run_compared_with_itself_measures_no_change(compare):
    compared = compare("baseline", "baseline")
    assert compared.code == 0
    assert report(compared.out)["anomalies"] == []
    table = rows(compared.out)
    assert len(table) == len(PER_SLICE) * len(SLICES)
    for m in table:
        if m["metric"] == "ndcg":
            assert m["value"] == 1.0, m
        elif math.isnan(m["value"]):
            # undefined, not a change: the relative change of a zero mean |attribution| (f7),
            # or the impact of an input that is not attributed (its share is unknown)
            if m["metric"] == "mean_abs_change":
                assert m["feature"] == "f7" and m["baseline_value"] == 0.0, m
            else:
                assert m["metric"] == "impact" and m["feature"] in ("label", "country"), m
        else:
            assert m["value"] == 0.0, m
        assert not m["breached"]


def test_different_attribution_settings_are_incompatible(compare):
    compared = compare("baseline", "steps8")
    assert compared.code == 2
    lines = error_lines(compared.stderr)
    assert len(lines) == 1, compared.stderr
    assert lines[0].startswith("igbeam: error: ")
    assert "attribution" in lines[0] and "--allow-config-change" in lines[0]
    verdict = report(compared.out)
    assert verdict["comparable"] is False
    assert verdict["anomalies"] == [] and verdict["measurements"] == 0
    [difference] = verdict["fingerprint_differences"]
    assert difference == "attribution.steps differs: baseline 16, current 8"
    assert rows(compared.out) == []

    allowed = compare("baseline", "steps8", "--allow-config-change")
    assert allowed.code in (0, 1), allowed.stderr
    verdict = report(allowed.out)
    assert verdict["measurements"] == len(rows(allowed.out)) > 0
    assert any(
        note.startswith("compared although the attribution setups differ")
        and "attribution.steps differs" in note
        for note in verdict["notes"]
    ), verdict["notes"]
    assert "igbeam: note: compared although" in allowed.stdout


def test_anomalies_pbtxt_is_a_tfmd_anomalies_proto(shift):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    proto = text_format.Parse(
        (shift.out / "anomalies.pbtxt").read_text(), anomalies_pb2.Anomalies()
    )
    jsd = row(rows(shift.out), "attribution_jsd", "f1")
    infos = [i for i in proto.drift_skew_info if list(i.path.step) == ["attr_f1"]]
    assert len(infos) == 1
    measured = [
        m.value
        for m in infos[0].drift_measurements
        if m.type == anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE
    ]
    assert measured == [pytest.approx(jsd["value"], rel=1e-12, abs=0)]
    assert infos[0].drift_measurements[0].threshold == pytest.approx(0.1)

    assert "attr_f1" in proto.anomaly_info
    info = proto.anomaly_info["attr_f1"]
    assert info.severity == anomalies_pb2.AnomalyInfo.ERROR
    assert list(info.path.step) == ["attr_f1"]
    assert anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH in [
        r.type for r in info.reason
    ]
    # one anomaly_info entry per path of a breached measurement
    breached_paths = {
        ("" if a["slice_name"] == "all" else f"{a['slice_name']}={a['slice_value']}/")
        + {"feature": "attr_" + a["feature"], "input": a["feature"], "slice": "slice"}[a["scope"]]
        for a in report(shift.out)["anomalies"]
    }
    assert set(proto.anomaly_info) == breached_paths


def test_drift_parquet_has_one_row_per_measurement(shift):
    table = pq.read_table(shift.out / "drift.parquet")
    assert table.schema.equals(DRIFT_SCHEMA, check_metadata=False)
    measurements = table.to_pylist()
    keys = [key(m) for m in measurements]
    assert len(keys) == len(set(keys)), "a measurement appears twice"
    assert {m["metric"] for m in measurements} == set(METRICS)

    expected = {(s, v, f, m) for (s, v) in SLICES for (f, m) in PER_SLICE}
    assert set(keys) == expected
    for m in measurements:
        assert m["scope"] == METRICS[m["metric"]].scope
        assert m["threshold"] == METRICS[m["metric"]].threshold

    verdict = report(shift.out)
    assert verdict["comparable"] is True
    assert verdict["measurements"] == len(measurements)
    assert verdict["breached"] == len(verdict["anomalies"])
    assert {key(m) for m in measurements if m["breached"]} == {key(a) for a in verdict["anomalies"]}
    severities = [a["severity"] for a in verdict["anomalies"]]
    assert all(s > 1.0 for s in severities)


def test_thresholds_off_on_the_command_line_silence_attribution_alerts(compare, shift):
    args = [arg for setting in ATTRIBUTION_ALERTS_OFF for arg in ("--set", setting)]
    compared = compare("label_baseline", "label_shift", *args)
    assert compared.code == 0, compared.stderr
    table = rows(compared.out)
    assert not any(r["breached"] for r in table)
    for r in table:
        if r["metric"] in ATTRIBUTION_ALERTS_OFF_METRICS:
            assert r["threshold"] is None


def test_thresholds_off_through_the_api_silence_attribution_alerts(run):
    off = {metric: "off" for metric in ATTRIBUTION_ALERTS_OFF_METRICS}
    settings = parse_settings(ComparisonConfig, {"thresholds": off})
    comparison = compare_runs(run("label_baseline"), run("label_shift"), settings)
    assert comparison.anomalies == []
    # the values are still measured and reported
    jsd = [m for m in comparison.measurements if key(m) == ("all", "", "f1", "attribution_jsd")]
    assert jsd[0]["value"] > 0.2 and jsd[0]["threshold"] is None


def test_per_feature_threshold_from_a_yaml_file(compare, shift, workspace):
    config = workspace / "thresholds.yaml"
    config.write_text("features:\n  f1:\n    attribution_jsd: 0.9\n")
    compared = compare("label_baseline", "label_shift", "--config", str(config))
    assert compared.code == 1, compared.stderr
    table = rows(compared.out)
    for r in table:
        if r["metric"] == "attribution_jsd":
            assert r["threshold"] == (0.9 if r["feature"] == "f1" else 0.1)
    default = {key(a) for a in report(shift.out)["anomalies"]}
    overridden = {key(a) for a in report(compared.out)["anomalies"]}
    f1_jsd = {k for k in default if k[2:] == ("f1", "attribution_jsd")}
    assert f1_jsd, "the default comparison has no f1 JSD anomaly to remove"
    assert overridden == default - f1_jsd
    assert overridden, "the other anomalies must stay"


def test_unknown_threshold_key_is_a_one_line_error(run, workspace):
    code, _, stderr = cli(
        "--baseline",
        run("baseline"),
        "--current",
        run("baseline"),
        "--out",
        str(workspace / "bad_key"),
        "--set",
        "thresholds.nope=1",
    )
    assert code == 2
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("igbeam: error: ")
    assert "thresholds.nope" in lines[0]
    assert not (workspace / "bad_key").exists()


def test_a_run_without_examples(compare):
    compared = compare("baseline", "empty")
    assert compared.code == 0, compared.stderr
    verdict = report(compared.out)
    assert any("current run has no examples" in note for note in verdict["notes"])
    assert "no examples" in compared.stdout
    table = rows(compared.out)
    assert table
    for r in table:
        assert math.isnan(r["value"]) and not r["breached"] and r["note"], r
        assert r["current_examples"] == 0


def test_a_slice_on_one_side_only(compare):
    compared = compare("baseline", "no_de")
    assert compared.code == 0, compared.stdout
    de = [r for r in rows(compared.out) if (r["slice_name"], r["slice_value"]) == ("country", "DE")]
    assert len(de) == len(PER_SLICE)
    for r in de:
        assert math.isnan(r["value"]) and not r["breached"] and r["note"], r
        assert r["baseline_examples"] > 0 and r["current_examples"] == 0
    others = [r for r in rows(compared.out) if r["slice_value"] != "DE"]
    assert any(not math.isnan(r["value"]) for r in others)


def test_a_feature_attributed_in_one_run_only(compare):
    refused = compare("baseline", "f0_f1")
    assert refused.code == 2
    assert "attributed" in error_lines(refused.stderr)[0]

    compared = compare("baseline", "f0_f1", "--allow-config-change")
    assert compared.code in (0, 1), compared.stderr
    verdict = report(compared.out)
    assert any("attributed differs" in note for note in verdict["notes"])
    table = rows(compared.out)
    missing = [r for r in table if r["scope"] == "feature" and r["feature"] not in ("f0", "f1")]
    assert len(missing) == 6 * len(FEATURE_METRICS) * len(SLICES)
    for r in missing:
        assert math.isnan(r["value"]) and not r["breached"] and r["note"], r
    assert not math.isnan(row(table, "share_shift", "f0")["value"])


def test_a_directory_that_is_not_a_run(run, data_dir, workspace):
    not_a_run = str(data_dir("d2000_1"))
    code, _, stderr = cli(
        "--baseline", run("baseline"), "--current", not_a_run, "--out", str(workspace / "nr")
    )
    assert code == 2
    lines = error_lines(stderr)
    assert len(lines) == 1 and "not an igbeam run" in lines[0] and not_a_run in lines[0]


@pytest.mark.parametrize("broken", ["summary.json", "statistics/features.parquet"])
def test_a_corrupt_run_is_an_error_not_drift(run, workspace, broken):
    """An unreadable run is a usage error (2), never exit 1, which says "anomalies found"."""
    corrupt = workspace / f"corrupt_{broken.replace('/', '_')}"
    shutil.copytree(run("baseline"), corrupt)
    (corrupt / broken).write_bytes(b'{"truncated": ')
    code, _, stderr = cli(
        "--baseline", run("baseline"), "--current", str(corrupt), "--out", str(corrupt / "o")
    )
    assert code == 2, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and str(corrupt) in lines[0], stderr


def test_min_examples_gates_every_alert(compare, shift):
    compared = compare("label_baseline", "label_shift", "--set", "min_examples=5000")
    assert compared.code == 0, compared.stderr
    assert report(compared.out)["anomalies"] == []
    table = rows(compared.out)
    assert not any(r["breached"] for r in table)
    measured = [r for r in table if not math.isnan(r["value"])]
    assert measured and all("fewer than 5000" in r["note"] for r in measured)
    # including the measurements that breach at the default minimum
    default = {key(a) for a in report(shift.out)["anomalies"]}
    assert default
    for r in table:
        if key(r) in default:
            assert r["note"].startswith("fewer than 5000 examples on a side"), r
