"""The `igbeam` command line: exit codes, one-line early errors, the console script."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml
from helpers import workspace_config, write_demo_workspace, write_records

from pipeline import cli, demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _restore_root_log_level():
    """`main` sets the root logger's level (INFO with --verbose); keep other tests unaffected."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_model):
    """A model, a SavedModel, 40 good examples and a config using relative paths."""
    root = tmp_path_factory.mktemp("cli")
    write_demo_workspace(root, demo_model, 40, seed=2, shards=2)
    (root / "garbage.keras").write_bytes(b"this is not a zip file, let alone a Keras model")

    class Linear(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, 1], tf.float32, name=n) for n in demo.FEATURES]
        )
        def serve(self, f0, f1, f2, f3, f4, f5, f6, f7):
            return {"score": tf.add_n([f0, f1, f2, f3, f4, f5, f6, f7])}

    module = Linear()
    tf.saved_model.save(module, str(root / "saved"), signatures={"serving_default": module.serve})
    (root / "blocker").write_text("a regular file, not a directory")
    (root / "empty_dir").mkdir()
    return root


def write_config(root, name: str = "config.yaml", **changes) -> str:
    """Writes a config (relative paths, resolved against its directory); returns its path."""
    out = f"out-{name.removesuffix('.yaml')}"
    config = workspace_config("", out, steps=8, batch_size=16, **changes)
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *mentions: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("igbeam: error: "), err
    assert "Traceback" not in err
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])


# ---------------------------------------------------------------------------- early errors


def test_missing_config_file(capsys, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    code, out, err = run_cli(capsys, "--config", missing)
    assert code == cli.EXIT_USAGE == 2
    assert_one_line_error(err, "nope.yaml")
    assert out == ""


def test_invalid_config_value_names_the_key(capsys, workspace):
    config = write_config(workspace, "bad_steps.yaml", attribution={"steps": 0})
    code, _, err = run_cli(capsys, "--config", config)
    assert code == 2
    assert_one_line_error(err, "attribution.steps", "0")
    assert not (workspace / "out-bad_steps").exists()


def test_unknown_set_key(capsys, workspace):
    config = write_config(workspace)
    code, _, err = run_cli(capsys, "--config", config, "--set", "attribution.stepz=3")
    assert code == 2
    assert_one_line_error(err, "attribution.stepz")


def test_invalid_set_value_names_the_key(capsys, workspace):
    config = write_config(workspace)
    code, _, err = run_cli(capsys, "--config", config, "--set", "batching.batch_size=-1")
    assert code == 2
    assert_one_line_error(err, "batching.batch_size")


def test_invalid_max_dead_letter_fraction_flag(capsys, workspace):
    config = write_config(workspace)
    code, _, err = run_cli(capsys, "--config", config, "--max-dead-letter-fraction", "1.5")
    assert code == 2
    assert_one_line_error(err, "max_dead_letter_fraction")


@pytest.mark.parametrize(
    ("name", "changes", "mentions"),
    [
        ("no_files", {"input__pattern": "data/*.nothing"}, ["no files match", "*.nothing"]),
        ("no_model", {"model__path": "missing.keras"}, ["missing.keras", "does not exist"]),
        ("garbage_model", {"model__path": "garbage.keras"}, ["garbage.keras", "cannot load"]),
        ("not_a_dir", {"model__path": "blocker"}, ["blocker"]),
        ("not_saved_model", {"model__path": "empty_dir"}, ["empty_dir", "SavedModel"]),
        (
            "no_signature",
            {"model__path": "saved", "model__signature": "predict"},
            ["'predict'", "serving_default"],
        ),
        ("unknown_feature", {"features": ["f0", "f99"]}, ["f99"]),
        (
            "passthrough",
            {"passthrough": ["label", "absent"]},
            ["'absent'", "not in the schema"],
        ),
        ("schema_missing", {"input__schema": "data/none.pbtxt"}, ["none.pbtxt"]),
    ],
)
def test_early_errors_exit_2_with_one_line(capsys, workspace, name, changes, mentions):
    config = write_config(workspace, f"{name}.yaml", **changes)
    code, out, err = run_cli(capsys, "--config", config)
    assert code == 2, err
    assert_one_line_error(err, *mentions)
    assert "igbeam: wrote" not in out
    assert not (workspace / f"out-{name}" / "_SUCCESS").exists()


def test_unwritable_output_path(capsys, workspace):
    target = str(workspace / "blocker" / "out")
    config = write_config(workspace, "unwritable.yaml")
    code, _, err = run_cli(capsys, "--config", config, "--set", f"output.path={target}")
    assert code == 2
    assert_one_line_error(err, "output.path", target)


# ------------------------------------------------------------------------------------ runs


def test_dead_letter_threshold_exits_3(capsys, workspace, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    write_records(data / "extra.tfrecord", [b"\xff\xff\xff not a tf.Example"])
    out = tmp_path / "out"
    config = write_config(workspace, "threshold.yaml")
    code, stdout, err = run_cli(
        capsys,
        "--config",
        config,
        "--set",
        f"input.pattern={data}/*.tfrecord.gz,{data}/*.tfrecord",
        "--set",
        f"output.path={out}",
        "--max-dead-letter-fraction",
        "0.0",
    )
    assert code == cli.EXIT_DEAD_LETTERS == 3, err
    assert_one_line_error(err, "1 of 41 records", "max_dead_letter_fraction", "dead_letter")
    assert "igbeam: wrote" not in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed_dead_letter_threshold"
    assert summary["counts"]["examples_attributed"] == 40
    assert summary["counts"]["dead_letters_by_stage"]["decode"] == 1
    assert not (out / "_SUCCESS").exists()


def test_runtime_failure_exit_1_and_verbose_traceback(capsys, workspace, monkeypatch):
    import pipeline.job

    def broken(*args, **kwargs):
        raise RuntimeError("pipeline finished in state FAILED\nsecond line")

    monkeypatch.setattr(pipeline.job, "run_job", broken)
    config = write_config(workspace)
    code, _, err = run_cli(capsys, "--config", config)
    assert code == cli.EXIT_FAILED == 1
    assert_one_line_error(err, "RuntimeError", "state FAILED second line", "--verbose")
    with pytest.raises(RuntimeError, match="state FAILED"):
        cli.main(["run", "--config", config, "--verbose"])


def test_console_script_runs_a_job(workspace, tmp_path):
    config = write_config(workspace, "script.yaml")
    out = tmp_path / "script_out"
    script = os.path.join(os.path.dirname(sys.executable), "igbeam")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "pipeline.cli"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [
            *command,
            "run",
            "--config",
            config,
            "--set",
            f"output.path={out}",
            "--runner=DirectRunner",  # a Beam option, passed through
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"igbeam: wrote {out}" in result.stdout
    assert "examples attributed: 40" in result.stdout
    assert "Traceback" not in result.stderr
    assert (out / "_SUCCESS").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["beam_args"] == ["--runner=DirectRunner"]
    assert summary["config"]["model"]["path"] == str(workspace / "model.keras")


def test_console_script_early_error(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "igbeam")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "pipeline.cli"]
    result = subprocess.run(
        [*command, "run", "--config", str(tmp_path / "absent.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("igbeam: error:")]
    assert len(errors) == 1 and "absent.yaml" in errors[0], result.stderr
