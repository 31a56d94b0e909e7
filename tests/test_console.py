"""What igbeam prints: native log noise dropped, real warnings kept, progress lines."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import yaml
from helpers import workspace_config, write_demo_workspace

from pipeline.config import parse_config
from pipeline.console import ProgressPrinter, format_progress, is_native_noise
from pipeline.job import run_job
from transforms import progress

# Lines TensorFlow 2.21 prints on this machine at import and device probing, verbatim.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796094424.456355    9685 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors.",
    "I0000 00:00:1796094424.457219    9685 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "E0000 00:00:1796094426.210651    9685 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "W0000 00:00:1758131045.228   3722035 computation_placer.cc:177] computation placer already "
    "registered.",
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not "
    "find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory: "
    "Attempting to register factory for plugin cuDNN when one has already been registered",
    # The second line of TensorFlow's two-line CPU feature notice (the first is an I line).
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, "
    "rebuild TensorFlow with the appropriate compiler flags.",
]

KEPT = [
    "igbeam: wrote /tmp/out",
    "/work/x.py:3: UserWarning: the label column has 3 classes",
    "Traceback (most recent call last):",
    "E0000 00:00:1796094426.210651    9685 bfc_allocator.cc:485] Allocator ran out of memory",
    "F0000 00:00:1796094426.210651    9685 check.cc:1] Check failed: x == y",
    "INFO: an unrelated line that starts like a level",
]


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("console_demo")
    write_demo_workspace(root, demo_model, 200, seed=0, shards=2)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(workspace_config(root, root / "out")))
    return {"root": root, "config": str(config)}


@pytest.mark.parametrize("line", NOISE)
def test_native_noise_is_recognised(line):
    assert is_native_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_other_lines_are_kept(line):
    assert not is_native_noise(line)


def test_filter_drops_noise_of_this_process_and_its_children_and_keeps_the_rest():
    # Writes at the file-descriptor level, as native code does, from this process and a child.
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys, warnings
        from pipeline.console import quiet_native_logs
        noise = {NOISE[1]!r}
        with quiet_native_logs():
            os.write(2, (noise + "\\n").encode())
            os.write(2, b"a real line\\n")
            warnings.warn("a warning that matters")
            subprocess.run(
                [sys.executable, "-c", "import os; os.write(2, {NOISE[3]!r}.encode() + b'\\\\n')"
                 " ; os.write(2, b'from the child\\\\n')"],
                check=True,
            )
            print("to stdout")
        print("after", file=sys.stderr)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout == "to stdout\n"
    err = done.stderr
    assert "a real line" in err and "a warning that matters" in err and "from the child" in err
    assert err.rstrip().endswith("after")
    assert "I0000" not in err and "cuInit" not in err


def test_console_script_prints_no_native_noise(demo_workspace, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "igbeam")
    done = subprocess.run(
        [
            script,
            "run",
            "--config",
            demo_workspace["config"],
            "--set",
            f"output.path={tmp_path / 'out'}",
            "--progress",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "igbeam: wrote" in done.stdout
    assert not [line for line in done.stderr.splitlines() if is_native_noise(line)]
    assert "I0000" not in done.stderr and "absl::InitializeLog" not in done.stderr


def test_format_progress_share_and_eta():
    counts = {
        "bytes_read": 250,
        "records_read": 1000,
        "read_dead_letters": 2,
        "examples_attributed": 900,
        "dead_letters": 3,
    }
    line = format_progress(counts, elapsed=3.0, total_bytes=1000)
    # 25% read in 3 s -> 9 s to go; 900 examples in 3 s -> 300 examples/s.
    assert line == (
        "igbeam: 1,002 records read, 900 attributed, 5 dead letters, 300 examples/s, "
        "25% of input read, ETA 0:09"
    )
    done = format_progress({**counts, "bytes_read": 1000}, elapsed=3.0, total_bytes=1000)
    assert done.endswith("100% of input read")


def test_report_writes_counts_only_where_a_launcher_reads(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    progress.report(records_read=5)  # no launcher: nothing anywhere, no error
    monkeypatch.setenv(progress.ENV_VAR, str(tmp_path))
    progress.report(records_read=5, bytes_read=100)
    progress.report(examples_attributed=4, dead_letters=1)
    progress.flush()
    files = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    assert len(files) == 1 and files[0].startswith(f"{os.getpid()}-")
    assert progress.read_progress(str(tmp_path)) == {
        "bytes_read": 100,
        "records_read": 5,
        "read_dead_letters": 0,
        "examples_attributed": 4,
        "dead_letters": 1,
    }
    # Another worker process's file adds up; a half-written file is skipped.
    (tmp_path / "other.json").write_text(json.dumps({"records_read": 7}))
    (tmp_path / "broken.json").write_text("{")
    assert progress.read_progress(str(tmp_path))["records_read"] == 12
    monkeypatch.setenv(progress.ENV_VAR, str(tmp_path / "missing"))  # a remote worker
    progress.report(records_read=1)
    assert not (tmp_path / "missing").exists()


def test_printer_prints_every_interval_and_nothing_for_short_runs(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps({"records_read": 10, "bytes_read": 50}))
    stream = io.StringIO()
    with ProgressPrinter(str(tmp_path), total_bytes=100, interval=0.05, stream=stream) as printer:
        time.sleep(0.4)
    lines = stream.getvalue().splitlines()
    assert len(lines) == printer.lines >= 3
    assert all(line.startswith("igbeam: 10 records read,") for line in lines)
    assert "50% of input read" in lines[0]
    quiet = io.StringIO()
    with ProgressPrinter(str(tmp_path), total_bytes=100, interval=30, stream=quiet):
        time.sleep(0.1)
    assert quiet.getvalue() == ""


def test_a_run_prints_progress_and_leaves_nothing_behind(demo_workspace, tmp_path, capfd):
    before = set(os.listdir(tempfile.gettempdir()))
    config = parse_config(workspace_config(demo_workspace["root"], tmp_path / "out"))
    summary = run_job(config, progress_interval=0.05)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("igbeam: ")]
    assert lines, err  # the run takes longer than 0.05 s
    last = lines[-1]
    read = int(last.split(" records read")[0].split()[-1].replace(",", ""))
    assert 0 <= read <= summary["counts"]["records_read"] == 200
    assert progress.ENV_VAR not in os.environ
    left = {p for p in set(os.listdir(tempfile.gettempdir())) - before if "igbeam-progress" in p}
    assert not left
    # A run shorter than the interval prints nothing.
    run_job(
        parse_config(workspace_config(demo_workspace["root"], tmp_path / "o2")),
        progress_interval=60,
    )
    assert "records read" not in capfd.readouterr().err
