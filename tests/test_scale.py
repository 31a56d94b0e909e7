"""Beyond one process: a real Dask cluster, a LocalCluster, and DirectRunner worker processes.

Every run here is compared with the same job on the in-process DirectRunner: the same keys, the
same attributions (to 1e-6: worker processes size TensorFlow's thread pools differently, which
may reorder float sums), the same dead letters and the same statistics; the accounting check
made from the pipeline's own counts (no runner metrics needed), and one model load per worker
process, reported by the run itself (`summary.json` `workers`).

The cluster test starts `dask scheduler` and two `dask worker` processes (one thread each) on
localhost with the `dask` command of this environment, and stops them afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import example_bytes, workspace_config, write_demo_workspace, write_records

from pipeline.config import parse_config
from pipeline.job import run_job

pytest.importorskip("distributed", reason="the dask extra (apache-beam[dask]) is not installed")

STATISTICS = ("features", "slices", "histograms", "inputs", "features_replicates")


def _job(root: Path, out: Path) -> dict:
    """The demo job with a seeded random baseline (keyed by example), slices and passthrough."""
    return workspace_config(
        root,
        out,
        slices=[["country"]],
        attribution={
            "steps": 8,
            "baseline": {
                "kind": "random_uniform",
                "low": -1.0,
                "high": 1.0,
                "samples": 2,
                "seed": 7,
            },
        },
        max_dead_letter_fraction=0.5,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_model) -> Path:
    """The demo data in 4 shards plus one file of damaged and undecodable records."""
    root = tmp_path_factory.mktemp("scale")
    write_demo_workspace(root, demo_model, 600, seed=4, shards=4)
    features = {f"f{i}": 0.25 * i for i in range(8)}
    good = example_bytes(**features, label=1, country=b"FR", example_id=b"extra-1")
    payloads = [good, b"not an Example", good.replace(b"extra-1", b"extra-2")]
    write_records(root / "data" / "z-mixed.tfrecord.gz", payloads, gzip=True)
    return root


@pytest.fixture(scope="module")
def reference(workspace) -> str:
    out = workspace / "runs" / "inprocess"
    run_job(parse_config(_job(workspace, out)))
    return str(out)


def run(workspace: Path, name: str, beam_args: list[str]) -> tuple[str, dict]:
    out = workspace / "runs" / name
    summary = run_job(parse_config(_job(workspace, out)), beam_args)
    return str(out), summary


def assert_same_run(out: str, reference: str) -> None:
    """Same keys, attributions (1e-6), dead letters and statistics as the reference run."""
    a = pq.read_table(Path(reference) / "attributions").to_pandas().sort_values("key")
    b = pq.read_table(Path(out) / "attributions").to_pandas().sort_values("key")
    assert a.key.tolist() == b.key.tolist() and len(a) > 0
    assert list(a.columns) == list(b.columns)
    for column in a.columns:
        if column.startswith("attr_") or column in ("prediction", "baseline_prediction", "delta"):
            np.testing.assert_allclose(b[column], a[column], rtol=1e-6, atol=1e-6, err_msg=column)
        elif column == "approximation_error":  # |delta| / |F(x) - F(x')|: delta's rounding, scaled
            scale = np.maximum(np.abs(a["prediction"] - a["baseline_prediction"]), 1e-6)
            np.testing.assert_allclose(b[column] * scale, a[column] * scale, atol=1e-6)
        else:
            assert a[column].tolist() == b[column].tolist(), column
    dead = [
        pq.read_table(Path(r) / "dead_letter").to_pandas().sort_values(["file", "record_index"])
        for r in (reference, out)
    ]
    assert dead[0][["file", "record_index", "stage"]].values.tolist() == (
        dead[1][["file", "record_index", "stage"]].values.tolist()
    )
    assert len(dead[0]) == 1
    for name in STATISTICS:
        x, y = (
            pq.read_table(Path(r) / "statistics" / f"{name}.parquet").to_pandas()
            for r in (reference, out)
        )
        keys = [
            c for c in ("replicate", "slice_name", "slice_value", "feature", "source") if c in x
        ]
        x, y = (t.sort_values(keys).reset_index(drop=True) for t in (x, y))
        assert len(x) == len(y) > 0, name
        for column in x.columns:
            if x[column].dtype.kind in "fiu":
                np.testing.assert_allclose(
                    y[column], x[column], rtol=1e-6, atol=1e-9, err_msg=column
                )
            else:
                assert x[column].astype(str).tolist() == y[column].astype(str).tolist(), column


def assert_accounted(summary: dict, processes: int) -> None:
    accounting = summary["accounting"]
    assert accounting["checked"] and accounting["balanced"], accounting
    assert accounting["records_read"] == 603
    assert summary["counts"]["dead_letters_by_stage"]["decode"] == 1
    workers = summary["workers"]
    assert workers["processes"] == processes, workers
    assert workers["model_loads"] == workers["processes"], workers  # one per process


# -------------------------------------------------------------------------- DirectRunner


def test_in_process_reference_is_accounted(reference):
    summary = json.loads((Path(reference) / "summary.json").read_text())
    assert_accounted(summary, 1)
    assert summary["accounting"]["metrics_agree"] is True  # the FnApiRunner has metrics too
    assert summary["workers"]["tensorflow_threads"] == [0]  # one process: TensorFlow's default


def test_two_worker_processes_match_in_process(workspace, reference):
    out, summary = run(
        workspace,
        "multiprocess",
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    assert_same_run(out, reference)
    assert_accounted(summary, 2)
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert summary["workers"]["tensorflow_threads"] == [expected]


# ----------------------------------------------------------------------------------- Dask


def test_dask_local_cluster_matches_in_process(workspace, reference):
    out, summary = run(workspace, "localcluster", ["--runner", "DaskRunner"])
    assert_same_run(out, reference)
    assert summary["workers"]["runner"] == "DaskRunner"
    assert summary["accounting"]["metrics_agree"] is None  # Dask has no metrics: data decides
    assert_accounted(summary, summary["workers"]["processes"])
    assert summary["workers"]["tensorflow_threads"] == [1]  # the LocalCluster's nthreads


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """A scheduler and two single-threaded workers, as separate `dask` processes; its file."""
    dask = shutil.which("dask", path=os.path.dirname(sys.executable))
    if dask is None:
        pytest.skip("the `dask` command is not installed next to this Python")
    root = tmp_path_factory.mktemp("cluster")
    scheduler_file = root / "scheduler.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    logs = [open(root / f"{n}.log", "wb") for n in ("scheduler", "worker-0", "worker-1")]  # noqa: SIM115
    commands = [
        [
            dask,
            "scheduler",
            "--no-dashboard",
            "--port",
            "0",
            "--scheduler-file",
            str(scheduler_file),
        ],
        *[
            [
                dask,
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nworkers",
                "1",
                "--nthreads",
                "1",
                "--no-dashboard",
                "--name",
                f"w{i}",
            ]
            for i in range(2)
        ],
    ]
    processes = []
    try:
        processes.append(
            subprocess.Popen(commands[0], stdout=logs[0], stderr=subprocess.STDOUT, env=env)
        )
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        for command, log in zip(commands[1:], logs[1:], strict=True):
            processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            )
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield str(scheduler_file)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def test_dask_cluster_matches_in_process(workspace, reference, dask_cluster):
    out, summary = run(
        workspace, "cluster", ["--runner", "DaskRunner", f"--dask_scheduler_file={dask_cluster}"]
    )
    assert_same_run(out, reference)
    assert_accounted(summary, 2)  # 5 files, 5 partitions: both workers attribute
    assert summary["workers"]["tensorflow_threads"] == [1]  # each worker's --nthreads
    assert summary["workers"]["hosts"] == 1


# ---------------------------------------------------------------------------- accounting


def test_a_lost_block_fails_the_accounting(workspace, monkeypatch):
    """The check can fail: a block whose attributions file is never written is caught."""
    from pipeline.job import AccountingError
    from transforms import outputs

    real = outputs.write_parquet_file

    def lose_one(path: str, table) -> None:
        if "attributions" in path and path.endswith("part-00001-00000.parquet"):
            return  # as if the worker's write were lost
        real(path, table)

    monkeypatch.setattr(outputs, "write_parquet_file", lose_one)
    out = workspace / "runs" / "lost"
    with pytest.raises(AccountingError, match="accounting mismatch: 603 records read"):
        run_job(parse_config(_job(workspace, out)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed_accounting"
    assert summary["accounting"]["balanced"] is False
    assert not (out / "_SUCCESS").exists()


def test_metrics_are_a_second_opinion():
    from pipeline.job import _accounting

    counts = {"records_read": 10, "examples_attributed": 8, "dead_letters": 2}
    agree = _accounting(counts, {"records_read": 9, "read_dead_letters": 1}, 8, 2)
    assert agree["balanced"] and agree["metrics_agree"] is True
    disagree = _accounting(counts, {"records_read": 7, "read_dead_letters": 1}, 8, 2)
    assert disagree["balanced"] and disagree["metrics_agree"] is False
    assert _accounting(counts, None, 8, 2)["metrics_agree"] is None
    assert _accounting(counts, None, 7, 2)["balanced"] is False  # a row lost after counting
    assert _accounting({}, None, 8, 2) == {"records_read": 10, "balanced": None, "checked": False}
