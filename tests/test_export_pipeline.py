"""`igbeam export` and the pipeline running from an export equal the pipeline on the model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import yaml
from helpers import read_attributions, workspace_config, write_demo_workspace

from pipeline import demo
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.job import run_job


@pytest.fixture(scope="module")
def tabular(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("export")
    write_demo_workspace(root, demo_model, 120, seed=4, shards=2)
    return root


def config_dict(root, out, baseline) -> dict:
    return workspace_config(
        root,
        out,
        passthrough=["country"],
        steps=12,
        batch_size=16,
        max_rows_per_call=100,
        attribution__baseline=baseline,
    )


def frame(out):
    return read_attributions(out).set_index("key").sort_index()


@pytest.mark.parametrize(
    "baseline",
    [{"kind": "zeros"}, {"kind": "random_uniform", "low": -1.0, "high": 1.0, "seed": 9}],
)
def test_pipeline_on_export_equals_pipeline_on_model(tabular, tmp_path, baseline):
    raw = config_dict(tabular, tmp_path / "from_model", baseline)
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    code = main(
        [
            "export",
            "--config",
            str(config_path),
            "--out",
            str(tmp_path / "exp"),
            "--subdirectory",
            "v1",
        ]
    )
    assert code == 0
    export_dir = tmp_path / "exp" / "v1"
    loaded = tf.saved_model.load(str(export_dir))
    assert set(loaded.signatures) == {"serving_default", "integrated_gradients"}

    run_job(parse_config(raw))
    from_export = dict(raw, output={"path": str(tmp_path / "from_export")})
    from_export["model"] = {"path": str(export_dir), "signature": "integrated_gradients"}
    summary = run_job(parse_config(from_export))
    assert summary["counts"]["examples_attributed"] == 120

    a, b = frame(tmp_path / "from_model"), frame(tmp_path / "from_export")
    assert list(a.index) == list(b.index)
    assert list(a.columns) == list(b.columns)
    for column in ["prediction", "baseline_prediction", "delta"] + [
        f"attr_{f}" for f in demo.FEATURES
    ]:
        np.testing.assert_allclose(b[column], a[column], atol=1e-6, err_msg=column)
    np.testing.assert_array_equal(b.target, a.target)
    assert list(b.country) == list(a.country)
    if baseline["kind"] == "random_uniform":
        assert not np.allclose(a.baseline_prediction, a.baseline_prediction.iloc[0])


def test_export_errors_are_one_line(tabular, tmp_path, capsys):
    raw = config_dict(tabular, tmp_path / "out", {"kind": "zeros"})
    raw["model"]["path"] = str(tmp_path / "absent.keras")
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["export", "--config", str(config_path), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
