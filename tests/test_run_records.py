"""A run records what comparisons need: statistics files, input values, the fingerprint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import read_attributions, workspace_config, write_demo_workspace

from pipeline.config import parse_config
from pipeline.job import run_job

N = 600


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("records")
    data = write_demo_workspace(root, demo_model, N, seed=4, shards=2)
    return root, data


@pytest.fixture(scope="module")
def run(workspace):
    root, data = workspace
    out = root / "out"
    config = workspace_config(root, out, slices=[["country"]])
    config["output"]["input_values"] = True
    config["statistics"] = {"replicates": 3, "histogram_buckets": 12, "top_values": 2}
    summary = run_job(parse_config(config))
    return out, data, summary


def table(out, name):
    return pq.read_table(out / "statistics" / name).to_pylist()


def test_input_values_are_written_next_to_attributions(run):
    out, data, _ = run
    frame = read_attributions(out).sort_values("key")
    index = frame["key"].str.slice(3).astype(int).to_numpy()  # "ex-000123"
    for j in range(8):
        np.testing.assert_array_equal(
            frame[f"in_f{j}"].to_numpy(), data["x"][index, j].astype(np.float32)
        )


def test_input_values_are_not_written_by_default(workspace, tmp_path):
    root, _ = workspace
    run_job(parse_config(workspace_config(root, tmp_path / "out")))
    columns = pq.read_schema(next((tmp_path / "out" / "attributions").glob("*.parquet"))).names
    assert not [c for c in columns if c.startswith("in_")]
    assert (tmp_path / "out" / "statistics" / "inputs.parquet").exists()  # still described


def test_statistics_files_describe_inputs_and_replicates(run):
    out, data, _ = run
    inputs = {
        (r["replicate"], r["slice_name"], r["slice_value"], r["feature"]): r
        for r in table(out, "inputs.parquet")
    }
    f0 = inputs[(-1, "all", "", "f0")]
    x0 = data["x"][:, 0].astype(np.float32).astype(np.float64)
    assert (f0["kind"], f0["count"], f0["missing"]) == ("numeric", N, 0)
    np.testing.assert_allclose([f0["mean"], f0["std"]], [x0.mean(), x0.std()], rtol=1e-9)
    country = inputs[(-1, "all", "", "country")]
    counts = {c: int((data["country"] == c).sum()) for c in set(data["country"])}
    top = sorted(counts.items(), key=lambda p: (-p[1], p[0]))[:2]
    assert country["kind"] == "categorical" and country["unique"] == 3
    assert [(t["value"], t["count"]) for t in country["top_values"]] == top
    assert inputs[(-1, "all", "", "label")]["kind"] == "numeric"

    histograms = table(out, "histograms.parquet")
    assert {len(r["boundaries"]) for r in histograms if r["count"]} == {13}
    assert {r["source"] for r in histograms} == {"attribution", "input"}
    slices = table(out, "slices_replicates.parquet")
    for name, value in {(r["slice_name"], r["slice_value"]) for r in slices}:
        parts = [r for r in slices if (r["slice_name"], r["slice_value"]) == (name, value)]
        assert sorted(r["replicate"] for r in parts) == [0, 1, 2]
        whole = [
            r
            for r in table(out, "slices.parquet")
            if (r["slice_name"], r["slice_value"]) == (name, value)
        ]
        assert sum(r["examples"] for r in parts) == whole[0]["examples"]
    features = table(out, "features_replicates.parquet")
    assert {r["replicate"] for r in features} == {0, 1, 2}


def test_summary_has_the_attribution_fingerprint(run, workspace):
    root, _ = workspace
    _, _, summary = run
    fingerprint = summary["fingerprint"]
    digest = hashlib.sha256((root / "model.keras").read_bytes()).hexdigest()
    assert fingerprint["model_sha256"] == digest
    assert fingerprint["model_signature"] == "serving_default"
    assert fingerprint["attribution"]["steps"] == 16
    assert fingerprint["attribution"]["baseline"] == {"kind": "zeros"}
    assert fingerprint["attributed"] == [f"f{j}" for j in range(8)]
    assert fingerprint["igbeam"] == summary["versions"]["igbeam"]
    written = json.loads((run[0] / "summary.json").read_text())
    assert written["fingerprint"] == fingerprint
