"""`igbeam monitor`: date templates, its config, and a scheduled job end to end."""

from __future__ import annotations

import datetime
import html
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import write_demo_workspace

from attribution.errors import SettingsError
from pipeline import demo
from pipeline.cli import main
from pipeline.config import parse_settings
from pipeline.monitor import MonitorConfig, load_monitor_config, render_dates

REPO = Path(__file__).resolve().parents[1]
DAY = datetime.date(2026, 12, 1)


def test_render_dates():
    tree = {"a": "x/{date}/y", "b": ["{yesterday}", "{date-7}-{date-0}"], "c": 3, "d": "{other}"}
    assert render_dates(tree, DAY) == {
        "a": "x/2026-12-01/y",
        "b": ["2026-11-30", "2026-11-24-2026-12-01"],
        "c": 3,
        "d": "{other}",
    }
    assert render_dates("{date-31}", DAY) == "2026-10-31"  # across a month


JOB = {
    "model": {"path": "m.keras"},
    "input": {"pattern": "d/{date}/*.gz"},
    "output": {"path": "runs/{date}"},
}


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ({}, "baseline: give exactly one of run and date"),
        ({"run": "a", "date": "2026-01-01"}, "baseline: give exactly one of run and date"),
        ({"date": "last week"}, "baseline.date: must render to a YYYY-MM-DD date"),
        ({"run": "a", "missing": "maybe"}, "baseline.missing: unknown policy 'maybe'"),
    ],
)
def test_bad_baselines_name_the_key(baseline, message):
    with pytest.raises(SettingsError) as info:
        parse_settings(MonitorConfig, {"job": JOB, "baseline": baseline})
    assert str(info.value).startswith(message)


def test_job_errors_name_the_dotted_key():
    with pytest.raises(SettingsError) as info:
        parse_settings(
            MonitorConfig, {"job": {**JOB, "attribution": {"steps": 0}}, "baseline": {"run": "r"}}
        )
    assert str(info.value) == "job.attribution.steps: must be an integer >= 1, got 0"
    with pytest.raises(SettingsError, match=r"^compare.thresholds.nope: unknown metric"):
        parse_settings(
            MonitorConfig,
            {"job": JOB, "baseline": {"run": "r"}, "compare": {"thresholds": {"nope": 1}}},
        )


def test_shipped_nightly_config_loads_for_a_date():
    path = REPO / "configs" / "nightly.yaml"
    config, baseline = load_monitor_config(str(path), DAY)
    configs = str(REPO / "configs")
    assert config.job.input.pattern == os.path.join(configs, "data", "2026-12-01", "*.tfrecord.gz")
    assert config.job.output.path == os.path.join(configs, "runs", "2026-12-01")
    assert baseline == os.path.join(configs, "runs", "2026-11-24")  # {date-7}
    assert config.comparison_dir == os.path.join(configs, "runs", "2026-12-01", "drift")
    assert config.baseline.missing == "skip" and config.compare.min_examples == 200


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, demo_model):
    """A workspace with one model, three days of data (the third shifted) and a nightly config."""
    root = tmp_path_factory.mktemp("nightly")
    write_demo_workspace(root / "ws", demo_model, 10, seed=0, shards=1)
    shutil.copyfile(root / "ws" / "model.keras", root / "model.keras")
    for day, seed in (("2026-11-30", 1), ("2026-12-01", 2)):
        demo.write_tfrecords(str(root / "data" / day), demo.make_data(1200, seed=seed), shards=2)
    shifted = demo.make_data(1200, seed=3)
    shifted["x"][:, 0] *= 4.0  # the demo's most important input moves
    demo.write_tfrecords(str(root / "data" / "2026-12-02"), shifted, shards=2)
    config = {
        "job": {
            "model": {"path": "model.keras"},
            "input": {
                "pattern": "data/{date}/*.tfrecord.gz",
                "schema": "data/2026-11-30/schema.pbtxt",
                "key": "example_id",
            },
            "passthrough": ["label", "country"],
            "attribution": {"steps": 8},
            "slices": [["country"]],
            "output": {"path": "runs/{date}"},
        },
        "baseline": {"date": "{yesterday}", "missing": "skip"},
    }
    (root / "nightly.yaml").write_text(yaml.safe_dump(config))
    return root


def monitor(root: Path, day: str, *extra: str) -> int:
    return main(["monitor", "--config", str(root / "nightly.yaml"), "--date", day, *extra])


def test_monitor_end_to_end_over_dates(nightly, capsys):
    # Day 1: no baseline run yet: the run happens, nothing is compared, exit 0.
    assert monitor(nightly, "2026-11-30") == 0
    assert "no baseline run at" in capsys.readouterr().out
    assert (nightly / "runs" / "2026-11-30" / "_SUCCESS").exists()
    # Day 2, same distribution: compared with day 1, no anomaly.
    assert monitor(nightly, "2026-12-01") == 0
    report = json.loads((nightly / "runs" / "2026-12-01" / "drift" / "drift.json").read_text())
    assert report["baseline"] == str(nightly / "runs" / "2026-11-30")
    assert report["comparable"] and report["breached"] == 0 and report["measurements"] > 0
    # Day 3, the most important input moved: anomalies, and the exit code drives the alert.
    assert monitor(nightly, "2026-12-02") == 1
    out = capsys.readouterr().out
    assert "anomalies" in out
    drift = nightly / "runs" / "2026-12-02" / "drift"
    report = json.loads((drift / "drift.json").read_text())
    assert report["breached"] > 0
    assert report["anomalies"][0]["feature"] == "f0"
    assert report["anomalies"][0]["metric"] in ("share_shift", "attribution_jsd", "share_l1")
    # the comparison's report sits next to it, and names the first anomaly
    page = (drift / "report.html").read_text()
    assert str(drift / "report.html") in out
    assert html.escape(report["anomalies"][0]["reason"]) in page
    assert '<tr class="breach">' in page
    # A rerun for the same date replaces its outputs; a mapped exit code for the scheduler.
    before = (drift / "drift.parquet").stat().st_mtime_ns
    assert monitor(nightly, "2026-12-02", "--drift-exit-code", "99") == 99
    assert (drift / "drift.parquet").stat().st_mtime_ns != before
    assert (nightly / "runs" / "2026-12-02" / "_SUCCESS").exists()


def test_monitor_errors_are_one_line_exit_2(nightly, capsys):
    assert monitor(nightly, "yesterday") == 2
    assert capsys.readouterr().err.strip() == (
        "igbeam: error: --date must be YYYY-MM-DD, got 'yesterday'"
    )
    assert monitor(nightly, "2026-12-05", "--set", "baseline.missing=error") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input.pattern" in err[0]  # no data for that date: an early check
    assert (
        main(
            [
                "monitor",
                "--config",
                str(nightly / "nightly.yaml"),
                "--date",
                "2026-11-30",
                "--set",
                "baseline={run: nowhere}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "baseline: no run at" in err[0]


def test_reference_documents_every_comparison_and_monitor_key_and_metric():
    from attribution.fields import schema
    from pipeline.compare import METRICS, ComparisonConfig

    readme = (REPO / "configs" / "README.md").read_text(encoding="utf-8")
    for key in schema(ComparisonConfig):
        assert f"| `{key}` |" in readme, key
    for metric in METRICS:
        assert f"| `{metric}` |" in readme, metric
    tree = schema(MonitorConfig)
    for key, sub in tree.items():
        if key in ("job", "compare"):
            assert f"| `{key}` |" in readme, key
        elif isinstance(sub, dict):
            for leaf in sub:
                assert f"| `{key}.{leaf}` |" in readme, f"{key}.{leaf}"
        else:
            assert f"| `{key}` |" in readme, key
