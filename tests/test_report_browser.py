"""The report in a real browser: headless Chromium renders it, offline, with no request made.

Chromium is Debian's `chromium` package (`make test` installs it when it is missing and it can);
`IGBEAM_CHROMIUM` names another binary. Without one, these tests skip with the reason printed
(`pytest -rs`, as `make test` runs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import workspace_config, write_demo_workspace

from pipeline import demo
from pipeline.config import parse_config
from pipeline.job import run_job
from pipeline.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    named = os.environ.get("IGBEAM_CHROMIUM")
    if named:
        return shutil.which(named) or (named if os.path.isfile(named) else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


BROWSER = _browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless Chromium: `apt-get install -y chromium` (make test does it when it "
    "can) or set IGBEAM_CHROMIUM",
)


def chromium(tmp: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs headless Chromium on a local page with a fresh profile; returns the process."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # as root in CI containers
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={profile}",
        *args,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dom(tmp: Path, page: Path) -> str:
    """The page's DOM once loaded and its scripts have run."""
    return chromium(tmp, page, "--virtual-time-budget=2000", "--dump-dom").stdout


def page_requests(tmp: Path, page: Path) -> list[str]:
    """The URLs the page itself asked for while loading (Chromium's NetLog).

    Chromium's own background requests (updates, time sync) have no initiator and are left out;
    a page's requests are initiated by its origin ("null" for a file).
    """
    log = tmp / f"netlog-{page.stem}.json"
    chromium(tmp, page, f"--log-net-log={log}", "--virtual-time-budget=2000", "--dump-dom")
    events = json.loads(log.read_text())
    names = {v: k for k, v in events["constants"]["logEventTypes"].items()}
    urls = []
    for event in events["events"]:
        params = event.get("params") or {}
        started = names.get(event["type"]) == "URL_REQUEST_START_JOB" and "url" in params
        if started and params.get("initiator") != "not an origin":
            urls.append(params["url"])
    return urls


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def run(workspace, demo_model) -> str:
    root = workspace / "base"
    write_demo_workspace(root, demo_model, 400, seed=2, shards=2)
    run_job(parse_config(workspace_config(root, root / "out", slices=[["country"]])))
    return str(root / "out")


@pytest.fixture(scope="module")
def shifted(workspace, demo_model) -> str:
    root = workspace / "shifted"
    data = write_demo_workspace(root, demo_model, 400, seed=2, shards=2)
    data["x"][:, 0] += 2.0
    shutil.rmtree(root / "data")
    demo.write_tfrecords(str(root / "data"), data, shards=2)
    run_job(parse_config(workspace_config(root, root / "out", slices=[["country"]])))
    return str(root / "out")


@pytest.fixture(scope="module")
def page(workspace, run) -> tuple[Path, dict]:
    path = workspace / "report.html"
    return path, write_report(run, str(path))


def top_feature(run: str) -> str:
    table = pq.read_table(Path(run) / "statistics" / "features.parquet").to_pylist()
    return min((r for r in table if r["slice_name"] == "all"), key=lambda r: r["rank"])["feature"]


# ----------------------------------------------------------------------------------- tests


def test_screenshot_is_not_blank(page, tmp_path):
    import matplotlib.image

    path, _ = page
    shot = tmp_path / "shot.png"
    chromium(tmp_path, path, "--window-size=1280,2400", f"--screenshot={shot}")
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    ink = np.mean(np.any(pixels < 0.9, axis=-1))
    assert ink > 0.03, f"only {ink:.1%} of the screenshot is not white"
    # the importance bars (#3366aa) are drawn
    bars = np.all(np.abs(pixels - np.array([0x33, 0x66, 0xAA]) / 255) < 0.06, axis=-1)
    assert bars.sum() > 2000


def test_dom_holds_the_charts_top_feature_and_counts(page, run, tmp_path):
    path, written = page
    loaded = dom(tmp_path, path)
    assert loaded.count("<svg") == written["charts"]
    assert len(re.findall(r'<figure class="chart"', loaded)) == written["charts"]
    top = top_feature(run)
    assert re.search(rf"<text[^>]*>\s*{top}\s*</text>", loaded)
    counts = json.loads((Path(run) / "summary.json").read_text())["counts"]
    header = re.search(r'<section id="run">(.*?)</section>', loaded, re.S).group(1)
    assert f">{counts['examples_attributed']:,}<" in header
    assert f">{counts['records_read']:,}<" in header


def test_the_table_sorts_when_a_header_is_clicked(page, run, tmp_path):
    """Clicks "feature" then "mean |attribution|" twice in the loaded page; reads the order."""
    path, _ = page
    probe = tmp_path / "probe.html"
    clicks = """<script>
    var heads = document.querySelectorAll("#importance table.sortable th");
    function column(i) {
      var rows = document.querySelectorAll("#importance table.sortable tbody tr");
      return Array.from(rows).map(function (r) { return r.cells[i].textContent; });
    }
    heads[1].click(); var byName = column(1);
    heads[2].click(); heads[2].click(); var byValue = column(1);
    document.body.setAttribute("data-by-name", byName.join(","));
    document.body.setAttribute("data-by-value", byValue.join(","));
    </script></body>"""
    probe.write_text(path.read_text().replace("</body>", clicks))
    loaded = dom(tmp_path, probe)
    by_name = re.search(r'data-by-name="([^"]*)"', loaded).group(1).split(",")
    by_value = re.search(r'data-by-value="([^"]*)"', loaded).group(1).split(",")
    table = pq.read_table(Path(run) / "statistics" / "features.parquet").to_pylist()
    overall = [r for r in table if r["slice_name"] == "all"]
    assert by_name == sorted(r["feature"] for r in overall)
    assert by_value == [
        r["feature"] for r in sorted(overall, key=lambda r: -r["mean_absolute_attributions"])
    ]


def test_the_page_makes_no_request(page, tmp_path):
    path, _ = page
    requests = page_requests(tmp_path, path)
    assert all(url == path.resolve().as_uri() for url in requests), requests


def test_the_request_check_sees_requests(tmp_path):
    """The check above can fail: a page with an image and a fetch is caught making both."""
    control = tmp_path / "control.html"
    control.write_text(
        '<!DOCTYPE html><html><body><img src="https://example.com/x.png">'
        '<script>fetch("https://example.org/a").catch(function () {});</script></body></html>'
    )
    requests = page_requests(tmp_path, control)
    assert "https://example.com/x.png" in requests
    assert "https://example.org/a" in requests


def test_a_comparison_renders(workspace, run, shifted, tmp_path):
    path = workspace / "comparison.html"
    written = write_report(shifted, str(path), compare=run)
    loaded = dom(tmp_path, path)
    section = re.search(r'<section id="comparison">(.*?)</section>', loaded, re.S).group(1)
    assert '<tr class="breach">' in section
    assert section.count("<svg") >= 2  # side by side, and at least one overlay
    assert loaded.count("<svg") == written["charts"]
    assert page_requests(tmp_path, path) in ([], [path.resolve().as_uri()])
