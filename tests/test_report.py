"""`igbeam report`: the HTML page of a run and of a comparison, read back as text.

Runs of the session's demo model are made once per module: a normal run, a shifted one (f0
moved by +2, so the comparison breaches), one on an empty file, one whose every record is a
dead letter, and a wide run (120 features, 150 slices) for the size limit. The page is checked
as text here; `test_report_browser.py` renders it in headless Chromium.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import workspace_config, write_demo_workspace, write_examples, write_records

from pipeline import demo
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.job import run_job
from pipeline.report import (
    COMPLETENESS_TOLERANCE,
    MAX_HEATMAP_SLICES,
    ReportError,
    write_report,
)

MAX_BYTES = 5_000_000


def cli(*argv: str) -> tuple[int, str, str]:
    """Runs `igbeam ARGV`; returns the exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def section(page: str, ident: str) -> str:
    """The HTML of one `<section id=ident>` of the page."""
    match = re.search(rf'<section id="{ident}">(.*?)</section>', page, re.S)
    assert match, f"no section {ident!r}"
    return match.group(1)


def text_of(fragment: str) -> str:
    """The visible text of an HTML fragment (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


def top_feature(run: str) -> str:
    table = pq.read_table(Path(run) / "statistics" / "features.parquet").to_pylist()
    overall = [r for r in table if r["slice_name"] == "all"]
    return min(overall, key=lambda r: r["rank"])["feature"]


def summary(run: str) -> dict:
    return json.loads((Path(run) / "summary.json").read_text())


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report")


def _run(root: Path, **settings) -> str:
    out = root / "out"
    run_job(parse_config(workspace_config(root, out, slices=[["country"]], **settings)))
    return str(out)


@pytest.fixture(scope="module")
def runs(workspace, demo_model) -> Callable[[str], str]:
    """name -> a run's output path, made once: base, other, shifted, empty, dead."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name in made:
            return made[name]
        root = workspace / name
        if name in ("base", "shifted", "other"):
            seed = 3 if name == "other" else 2  # other: a second sample of base's distribution
            data = write_demo_workspace(root, demo_model, 600, seed=seed, shards=2)
            if name == "shifted":
                data["x"][:, 0] += 2.0
                shutil.rmtree(root / "data")
                demo.write_tfrecords(str(root / "data"), data, shards=2)
            made[name] = _run(root)
        elif name == "empty":
            write_demo_workspace(root, demo_model, 10, seed=3, shards=1)
            for shard in (root / "data").glob("*.tfrecord.gz"):
                shard.unlink()
            (root / "data" / "part-0.tfrecord.gz").write_bytes(b"")
            made[name] = _run(root)
        elif name == "dead":
            write_demo_workspace(root, demo_model, 10, seed=4, shards=1)
            for shard in (root / "data").glob("*.tfrecord.gz"):
                shard.unlink()
            payloads = [b"not a tf.train.Example %d" % i for i in range(25)]
            write_records(root / "data" / "part-0.tfrecord.gz", payloads, gzip=True)
            made[name] = _run(root, max_dead_letter_fraction=1.0)
        else:
            raise KeyError(name)
        return made[name]

    return get


@pytest.fixture(scope="module")
def report(workspace, runs) -> Callable[..., tuple[str, dict]]:
    """(run name, **write_report options) -> (the page's text, write_report's answer)."""
    made: dict[tuple, tuple[str, dict]] = {}

    def get(name: str, **options) -> tuple[str, dict]:
        key = (name, *sorted(options.items()))
        if key not in made:
            out = workspace / "pages" / f"{len(made)}.html"
            written = write_report(runs(name), str(out), **options)
            made[key] = (out.read_text(encoding="utf-8"), written)
        return made[key]

    return get


# ----------------------------------------------------------------------------------- tests


def test_a_run_report_has_every_section_and_the_run_facts(report, runs):
    page, written = report("base")
    run = runs("base")
    counts = summary(run)["counts"]
    assert written["bytes"] == len(page.encode()) < MAX_BYTES
    assert page.startswith("<!DOCTYPE html>")
    for ident in (
        "run",
        "importance",
        "slices",
        "distributions",
        "completeness",
        "dead-letters",
        "examples",
    ):
        section(page, ident)
    header = text_of(section(page, "run"))
    assert f"{counts['examples_attributed']:,}" in header
    assert f"{counts['records_read']:,}" in header
    attribution = summary(run)["fingerprint"]["attribution"]
    assert attribution["method"] in header and f"kind={attribution['baseline']['kind']}" in header
    assert summary(run)["fingerprint"]["model_sha256"] in header
    assert "tensorflow 2." in header and "apache_beam 2." in header
    # the top feature leads the chart and the table
    top = top_feature(run)
    importance = section(page, "importance")
    assert re.search(rf"<text[^>]*>\s*{top}\s*</text>", importance), "top feature not SVG text"
    first_row = re.search(r"<tbody><tr>(.*?)</tr>", importance).group(1)
    assert text_of(first_row).split()[:2] == ["1", top]
    # one chart per figure, every chart an inline SVG
    assert page.count("<svg") == page.count('<figure class="chart"') == written["charts"] >= 6


def test_the_page_is_self_contained(report):
    page, _ = report("base")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|href)\s*=\s*[\"'](?!#|data:)", page), "a link to another resource"
    assert (
        "<link" not in page
        and "@import" not in page
        and "url(" not in re.sub(r"url\(#[^)]*\)", "", page)
    )
    for call in ("fetch(", "XMLHttpRequest", "import(", "WebSocket", "sendBeacon"):
        assert call not in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "SVG ids collide between charts"


def test_slices_heatmap_names_each_slice_with_its_examples(report, runs):
    page, _ = report("base")
    slices = text_of(section(page, "slices"))
    table = pq.read_table(Path(runs("base")) / "statistics" / "slices.parquet").to_pylist()
    for row in table:
        if row["slice_name"] == "country":
            assert f"country={row['slice_value']} (n={row['examples']:,})" in slices


def test_completeness_reports_the_sample_and_advice(report, runs):
    page, _ = report("base")
    text = text_of(section(page, "completeness"))
    rows = pq.read_table(Path(runs("base")) / "attributions").to_pandas()
    ratio = rows.delta.abs() / (rows.prediction - rows.baseline_prediction).abs()
    above = float(np.mean(ratio > COMPLETENESS_TOLERANCE))
    assert f"Over 600 sampled examples: median relative error {np.median(ratio):.4g}" in text
    assert f"{above:.1%} above {COMPLETENESS_TOLERANCE:.0%}" in text
    assert ("raise attribution.steps" in text) == (above > 0.05)


def test_a_coarse_integral_gets_the_advice_to_raise_steps(workspace, demo_model):
    root = workspace / "coarse"
    write_demo_workspace(root, demo_model, 300, seed=5, shards=1)
    out = root / "out"
    config = workspace_config(root, out, attribution={"method": "riemann_left", "steps": 1})
    run_job(parse_config(config))
    page_path = workspace / "coarse.html"
    write_report(str(out), str(page_path))
    text = text_of(section(page_path.read_text(), "completeness"))
    assert "raise attribution.steps" in text


def test_the_sample_is_bounded(report):
    page, _ = report("base", sample_rows=50)
    assert "From the first 50 examples" in text_of(section(page, "examples"))
    assert "Over 50 sampled examples" in text_of(section(page, "completeness"))
    # the statistics still cover every example
    assert "600" in text_of(section(page, "importance"))


def test_examples_show_waterfalls_from_the_baseline_prediction(report, runs):
    page, _ = report("base")
    examples = section(page, "examples")
    attributions = pq.read_table(Path(runs("base")) / "attributions").to_pandas()
    highest = attributions.loc[attributions.prediction.idxmax()]
    assert f"highest prediction: {highest.key}" in text_of(examples)
    assert f"F(x) = {highest.prediction:.4g}" in text_of(examples)
    assert examples.count("<svg") >= 3


def test_a_run_with_zero_examples(report, runs):
    page, written = report("empty")
    assert summary(runs("empty"))["counts"]["records_read"] == 0
    text = text_of(page)
    assert "No attributions." in text and "No attributed examples." in text
    assert "No dead letters" in text
    assert written["bytes"] < MAX_BYTES


def test_a_run_of_only_dead_letters(report, runs):
    page, _ = report("dead")
    counts = summary(runs("dead"))["counts"]
    assert counts["examples_attributed"] == 0 and counts["dead_letters"] == 25
    dead = text_of(section(page, "dead-letters"))
    assert "25 records were not attributed" in dead
    assert "decode" in dead and "part-0.tfrecord.gz" in dead
    assert section(page, "dead-letters").count("<svg") == 1  # by stage
    assert "No attributions." in text_of(section(page, "importance"))


def test_a_report_with_a_comparison(report, runs):
    page, _ = report("shifted", compare=runs("base"))
    comparison = section(page, "comparison")
    text = text_of(comparison)
    assert "anomalies in" in text
    rows = re.findall(r'<tr class="breach">(.*?)</tr>', comparison)
    assert rows, "no breached row highlighted"
    assert any(text_of(r).split()[1:3] == ["f0", "attribution_jsd"] for r in rows)
    first = text_of(re.search(r"<tbody><tr[^>]*>(.*?)</tr>", comparison).group(1))
    assert first == text_of(rows[0])  # breaches come first
    assert "noise floor" in text
    # side by side importance, and overlays of the breached features' histograms
    assert comparison.count('data-chart="importance-comparison"') == 1
    assert comparison.count('data-chart="overlay"') >= 1
    assert "f0: attribution distribution" in text


def test_a_report_of_a_written_comparison(report, runs, workspace):
    out = workspace / "drift"
    code, _, stderr = cli(
        "compare", "--baseline", runs("base"), "--current", runs("shifted"), "--out", str(out)
    )
    assert code == 1, stderr
    page_path = workspace / "from_drift.html"
    code, stdout, stderr = cli(
        "report", runs("shifted"), "--drift", str(out), "--out", str(page_path)
    )
    assert code == 0, stderr
    assert str(page_path) in stdout
    page = page_path.read_text()
    verdict = json.loads((out / "drift.json").read_text())
    text = text_of(section(page, "comparison"))
    assert f"{verdict['breached']} anomalies in {verdict['measurements']:,} measurements" in text
    assert verdict["anomalies"][0]["reason"] in text


def test_a_report_compared_with_an_empty_run(report, runs):
    page, _ = report("base", compare=runs("empty"))
    text = text_of(section(page, "comparison"))
    assert "the baseline run has no examples" in text


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["report", "/nonexistent/run", "--out", "x.html"], "not an igbeam run"),
        (
            ["report", "RUN", "--drift", "/nonexistent/drift", "--out", "x.html"],
            "holds no readable comparison",
        ),
        (
            ["report", "RUN", "--compare", "/nonexistent/run", "--out", "x.html"],
            "not an igbeam run",
        ),
        (["report", "RUN", "--set", "min_examples=5", "--out", "x.html"], "only apply with"),
        (["report", "RUN", "--compare", "RUN", "--set", "nope=1", "--out", "x.html"], "nope"),
    ],
)
def test_errors_are_one_line(runs, tmp_path, argv, needle):
    argv = [runs("base") if a == "RUN" else a for a in argv]
    argv = [str(tmp_path / a) if a == "x.html" else a for a in argv]
    code, _, stderr = cli(*argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("igbeam: error: ") and needle in lines[0]
    assert not (tmp_path / "x.html").exists()


def test_api_refuses_two_comparisons(runs, tmp_path):
    with pytest.raises(ReportError, match="one of"):
        write_report(
            runs("base"), str(tmp_path / "x.html"), compare=runs("base"), drift_dir=str(tmp_path)
        )


# ------------------------------------------------------------------------- size and bounds

WIDE_FEATURES = [f"w{i:03d}" for i in range(120)]
WIDE_SLICES = 150


@pytest.fixture(scope="module")
def wide_run(workspace) -> str:
    """A linear model on 120 features, 1500 examples in 150 slices of `bucket`."""
    import keras

    root = workspace / "wide"
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    inputs = {name: keras.Input((1,), name=name) for name in WIDE_FEATURES}
    joined = keras.layers.Concatenate()(list(inputs.values()))
    model = keras.Model(inputs, keras.layers.Dense(1)(joined))
    model.save(root / "model.keras")
    x = rng.normal(size=(1500, len(WIDE_FEATURES))).astype(np.float32)
    rows = [
        {
            **{f: float(v) for f, v in zip(WIDE_FEATURES, row, strict=True)},
            "bucket": f"b{i % WIDE_SLICES:03d}".encode(),
            "example_id": f"e{i}".encode(),
        }
        for i, row in enumerate(x)
    ]
    write_examples(root / "data" / "part-0.tfrecord", rows)
    out = root / "out"
    config = {
        "model": {"path": str(root / "model.keras")},
        "input": {"pattern": str(root / "data" / "*.tfrecord"), "key": "example_id"},
        "passthrough": ["bucket"],
        "slices": [["bucket"]],
        "attribution": {"steps": 4},
        "output": {"path": str(out)},
    }
    run_job(parse_config(config))
    return str(out)


def test_many_slices_and_features_stay_small(wide_run, tmp_path):
    page_path = tmp_path / "wide.html"
    written = write_report(wide_run, str(page_path))
    page = page_path.read_text()
    assert written["bytes"] == page_path.stat().st_size < MAX_BYTES
    # the complete table lists every feature, the heatmap the first slices only
    table = section(page, "importance")
    assert len(re.findall(r"<tbody>.*?</tbody>", table, re.S)) == 1
    body = re.search(r"<tbody>(.*?)</tbody>", table, re.S).group(1)
    assert body.count("<tr") == len(WIDE_FEATURES)
    slices = text_of(section(page, "slices"))
    stored = pq.read_table(Path(wide_run) / "statistics" / "slices.parquet").to_pylist()
    others = [r for r in stored if r["slice_name"] != "all"]  # 150 buckets and target=0
    assert len(others) == WIDE_SLICES + 1
    assert f"The first {MAX_HEATMAP_SLICES} of {len(others)} slices" in slices
    assert sum(f"bucket=b{i:03d} (n=10)" in slices for i in range(WIDE_SLICES)) == (
        MAX_HEATMAP_SLICES
    )


def test_the_demo_writes_its_report_and_prints_its_path(tmp_path, capsys):
    assert demo.main(["--dir", str(tmp_path / "demo"), "--examples", "300"]) == 0
    out = capsys.readouterr().out
    page = tmp_path / "demo" / "report.html"
    assert f"Open the report in a browser (no server needed): {page}" in out
    assert top_feature(str(tmp_path / "demo" / "out")) in text_of(
        section(page.read_text(), "importance")
    )


def test_without_breaches_the_nearest_to_their_thresholds_come_first(report, runs):
    from pipeline.compare import METRICS, compare_runs

    page, _ = report("other", compare=runs("base"))
    comparison = section(page, "comparison")
    assert "0 anomalies in" in text_of(comparison)
    measured = compare_runs(runs("base"), runs("other")).measurements

    def nearness(m: dict) -> float:
        if m["threshold"] is None or np.isnan(m["value"]):
            return -1.0
        if METRICS[m["metric"]].direction == "below":
            return (1 - m["value"]) / (1 - m["threshold"])
        return abs(m["value"]) / m["threshold"]

    nearest = max(measured, key=nearness)
    assert nearness(nearest) > 0  # beyond a threshold is possible: below the noise, or few examples
    first = text_of(re.search(r"<tbody><tr[^>]*>(.*?)</tr>", comparison).group(1)).split()
    assert first[1:3] == [nearest["feature"], nearest["metric"]] or (
        nearest["feature"] == "" and first[1] == nearest["metric"]
    )
