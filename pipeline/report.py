"""`igbeam report`: one self-contained HTML page for a run, and for a comparison of two runs.

`write_report(run, out)` reads only the run's `summary.json`, its `statistics/` tables and a
bounded sample of rows (the first `sample_rows` attributions and dead letters), so a report on
100 million examples is as quick and as small as one on a thousand. Everything is inlined: the
charts are matplotlib SVG (text kept as text, so feature names are in the page's DOM), the style
sheet, and a few lines of script that sort the tables. Nothing is fetched: the page opens from
disk, offline, and prints.

Sections: the run (model, data, counts, wall time, the attribution fingerprint, versions);
global importance (mean |attribution| with the signed mean, and the complete sortable table);
importance per slice (a heatmap with each slice's examples); the attribution distribution of the
top features; completeness (|delta| relative to |F(x) - F(x')| over the sample, with advice);
dead letters; a few example rows as waterfalls; and, with a comparison (`compare=` a baseline
run, or `drift=` a directory written by `igbeam compare`/`monitor`), the drift table sorted by
severity, importance side by side, and the histograms of the breached features overlaid.

No TensorFlow, no Beam (remote runs are read through Beam's FileSystems only then).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from attribution.errors import one_line
from pipeline import drift
from pipeline.compare import (
    ALL_DATA,
    METRICS,
    CompareError,
    Comparison,
    ComparisonConfig,
    Run,
    compare_runs,
)

__all__ = [
    "DEFAULT_SAMPLE_ROWS",
    "REPORT_FILE",
    "TOP_FEATURES",
    "ReportError",
    "write_report",
]

DEFAULT_SAMPLE_ROWS = 10_000
REPORT_FILE = "report.html"  # igbeam monitor's, next to drift.json
TOP_FEATURES = 20  # in the importance chart (the table below lists them all)
TOP_DISTRIBUTIONS = 8
TOP_HEATMAP_FEATURES = 12
MAX_HEATMAP_SLICES = 40
EXAMPLES_PER_KIND = 2
WATERFALL_FEATURES = 8
MAX_DRIFT_ROWS = 300
MAX_OVERLAYS = 6
COMPLETENESS_TOLERANCE = 0.05  # Vertex AI's guidance: raise the steps above 5% error
SMALL_OUTPUT_CHANGE = 0.05  # ... and change the baseline when |F(x) - F(x')| is this small


class ReportError(ValueError):
    """A report cannot be made (one line)."""


# -------------------------------------------------------------------------------- reading


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts) if "://" in parts[0] else os.path.join(*parts)


def _parquet_files(directory: str) -> list[str]:
    if "://" in directory:
        from apache_beam.io.filesystems import FileSystems

        matches = FileSystems.match([_join(directory, "*.parquet")])
        return sorted(m.path for r in matches for m in r.metadata_list)
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".parquet")
    )


def _read_head(directory: str, limit: int, columns: Sequence[str] | None = None) -> pa.Table:
    """The first `limit` rows of a directory of Parquet files (row group by row group)."""
    batches: list[pa.RecordBatch] = []
    schema = None
    count = 0
    for path in _parquet_files(directory):
        if "://" in path:
            from apache_beam.io.filesystem import CompressionTypes
            from apache_beam.io.filesystems import FileSystems

            source = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        else:
            source = open(path, "rb")  # noqa: SIM115 - closed below
        with source:
            parquet = pq.ParquetFile(source)
            names = [
                c
                for c in (columns or parquet.schema_arrow.names)
                if c in parquet.schema_arrow.names
            ]
            schema = schema or parquet.schema_arrow
            for batch in parquet.iter_batches(batch_size=min(limit, 65536), columns=names):
                batches.append(batch.slice(0, limit - count))
                count += batches[-1].num_rows
                if count >= limit:
                    break
        if count >= limit:
            break
    if not batches:
        return pa.table({})
    return pa.Table.from_batches(batches).combine_chunks()


class _RunData:
    """What a report reads of a run: summary, statistics, and bounded samples of rows."""

    def __init__(self, path: str, sample_rows: int) -> None:
        try:
            self.run = Run(path, replicates=False)
        except CompareError as err:
            raise ReportError(str(err)) from err
        self.path = path
        self.summary = self.run.summary
        self.sample = _read_head(_join(path, "attributions"), sample_rows)
        if "output_rank" in self.sample.column_names:  # top_k/indices: one row per example
            self.sample = self.sample.filter(pc.equal(self.sample.column("output_rank"), 0))
        self.dead = _read_head(
            _join(path, "dead_letter"),
            sample_rows,
            columns=["file", "record_index", "offset", "stage", "reason", "key"],
        )

    def features(self, key: tuple[str, str] = ("all", "")) -> list[dict]:
        rows = self.run.features.get((ALL_DATA, *key), {})
        return sorted(rows.values(), key=lambda r: r["rank"])


# ------------------------------------------------------------------------------------ charts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: searchable, selectable, in the DOM
            "svg.hashsalt": "igbeam",  # deterministic ids
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
        }
    )
    return plt


class _Charts:
    """Renders matplotlib figures as inline SVG with ids unique in the page."""

    def __init__(self) -> None:
        self.plt = _pyplot()
        self.count = 0

    def svg(self, figure: Any, name: str) -> str:
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight")
        self.plt.close(figure)
        self.count += 1
        text = buffer.getvalue()
        text = text[text.index("<svg") :]
        text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF links: not needed
        text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)  # HTML's parser knows inline SVG
        prefix = f"c{self.count}-"
        text = re.sub(r'id="([^"]+)"', rf'id="{prefix}\1"', text)
        text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", text)
        text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', text)
        return f'<figure class="chart" data-chart="{html.escape(name)}">{text}</figure>'

    def importance(self, rows: list[dict], title: str) -> str:
        rows = rows[:TOP_FEATURES]
        names = [r["feature"] for r in rows][::-1]
        mean_abs = [r["mean_absolute_attributions"] for r in rows][::-1]
        signed = [r["mean_attributions"] for r in rows][::-1]
        fig, ax = self.plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.0))
        y = np.arange(len(rows))
        ax.barh(y - 0.18, mean_abs, height=0.36, color="#3366aa", label="mean |attribution|")
        ax.barh(y + 0.18, signed, height=0.36, color="#dd8833", label="mean attribution")
        ax.set_yticks(y, names)
        ax.axvline(0, color="#444", linewidth=0.6)
        ax.set_title(title)
        ax.legend(loc="lower right", frameon=False)
        return self.svg(fig, "importance")

    def side_by_side(self, baseline: list[dict], current: list[dict]) -> str:
        order = [r["feature"] for r in current[:TOP_FEATURES]]
        for r in baseline[:TOP_FEATURES]:
            if r["feature"] not in order:
                order.append(r["feature"])
        share_b = {r["feature"]: r["share"] for r in baseline}
        share_c = {r["feature"]: r["share"] for r in current}
        names = order[::-1]
        y = np.arange(len(names))
        fig, ax = self.plt.subplots(figsize=(7.5, 0.32 * len(names) + 1.0))
        ax.barh(
            y + 0.18,
            [share_b.get(n, 0.0) for n in names],
            height=0.36,
            color="#999999",
            label="baseline share",
        )
        ax.barh(
            y - 0.18,
            [share_c.get(n, 0.0) for n in names],
            height=0.36,
            color="#3366aa",
            label="current share",
        )
        ax.set_yticks(y, names)
        ax.set_title("Attribution share, baseline vs current (all examples)")
        ax.legend(loc="lower right", frameon=False)
        return self.svg(fig, "importance-comparison")

    def heatmap(self, slices: list[tuple[str, int, dict[str, float]]], features: list[str]) -> str:
        data = np.array([[row.get(f, np.nan) for f in features] for _, _, row in slices])
        fig, ax = self.plt.subplots(figsize=(1.0 + 0.55 * len(features), 0.32 * len(slices) + 1.4))
        image = ax.imshow(data, aspect="auto", cmap="Blues", vmin=0.0)
        ax.set_xticks(range(len(features)), features, rotation=45, ha="right")
        ax.set_yticks(range(len(slices)), [f"{name} (n={n:,})" for name, n, _ in slices])
        fig.colorbar(image, ax=ax, label="attribution share")
        ax.set_title("Attribution share per slice")
        return self.svg(fig, "slice-heatmap")

    def distributions(self, histograms: list[tuple[str, drift.Histogram]], title: str) -> str:
        cols = 4
        rows = max(1, math.ceil(len(histograms) / cols))
        fig, axes = self.plt.subplots(rows, cols, figsize=(9.5, 2.0 * rows), squeeze=False)
        for ax, (name, hist) in _padded(axes.flat, histograms):
            if name is None:
                ax.axis("off")
                continue
            _density(ax, hist, "#3366aa", None)
            ax.set_title(name)
        fig.suptitle(title)
        fig.tight_layout()
        return self.svg(fig, "distributions")

    def overlay(
        self,
        name: str,
        baseline: drift.Histogram | None,
        current: drift.Histogram | None,
        what: str,
    ) -> str:
        fig, ax = self.plt.subplots(figsize=(4.6, 2.4))
        if baseline is not None:
            _density(ax, baseline, "#999999", "baseline")
        if current is not None:
            _density(ax, current, "#3366aa", "current")
        ax.set_title(f"{name}: {what}")
        ax.legend(frameon=False)
        return self.svg(fig, "overlay")

    def completeness(self, ratios: np.ndarray) -> str:
        fig, ax = self.plt.subplots(figsize=(6.0, 2.6))
        finite = ratios[np.isfinite(ratios)]
        positive = np.clip(finite, 1e-9, None)
        bins = np.logspace(-9, max(1.0, math.log10(positive.max() * 1.1)), 50)
        ax.hist(positive, bins=bins, color="#3366aa")
        ax.set_xscale("log")
        ax.axvline(COMPLETENESS_TOLERANCE, color="#cc3333", linewidth=1)
        ax.set_xlabel("|delta| / |F(x) - F(baseline)|")
        ax.set_ylabel("examples")
        ax.set_title("Completeness error over the sample")
        return self.svg(fig, "completeness")

    def bars(self, labels: list[str], values: list[float], title: str, name: str) -> str:
        fig, ax = self.plt.subplots(figsize=(6.0, 0.3 * len(labels) + 1.0))
        y = np.arange(len(labels))
        ax.barh(y, values, color="#aa3333")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_title(title)
        return self.svg(fig, name)

    def waterfall(self, row: Mapping[str, Any], attributed: list[str], title: str) -> str:
        # Per-token scores hold nulls at padding positions (docs/text.md): not scores, left out.
        values = {f: _attribution_total(row["attr_" + f]) for f in attributed}
        top = sorted(values, key=lambda f: -abs(values[f]))[:WATERFALL_FEATURES]
        rest = sum(v for f, v in values.items() if f not in top)
        steps = [(f, values[f]) for f in top]
        if len(values) > len(top):
            steps.append((f"{len(values) - len(top)} others", rest))
        start = float(row["baseline_prediction"])
        fig, ax = self.plt.subplots(figsize=(4.6, 0.3 * len(steps) + 1.4))
        level = start
        for i, (_name, value) in enumerate(steps):
            ax.barh(i, value, left=level, color="#3366aa" if value >= 0 else "#cc5533")
            level += value
        ax.set_yticks(range(len(steps)), [s[0] for s in steps])
        ax.invert_yaxis()
        ax.axvline(start, color="#888", linewidth=0.6, linestyle=":")
        ax.axvline(float(row["prediction"]), color="#222", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel(f"F(baseline) = {start:.4g}  ->  F(x) = {float(row['prediction']):.4g}")
        return self.svg(fig, "waterfall")


def _padded(a: Iterable[Any], b: Sequence[tuple[str, Any]]) -> Iterable[Any]:
    items = list(b)
    for i, ax in enumerate(a):
        yield ax, (items[i] if i < len(items) else (None, None))


def _density(ax: Any, hist: drift.Histogram, color: str, label: str | None) -> None:
    """An equal-mass histogram drawn as a density (point masses as spikes)."""
    bounds, counts = hist.boundaries, hist.counts
    total = max(float(counts.sum()), 1e-300)
    xs, ys, spikes = [], [], []
    for lo, hi, mass in zip(bounds[:-1], bounds[1:], counts, strict=True):
        if hi > lo:
            xs += [lo, hi]
            ys += [mass / total / (hi - lo)] * 2
        else:
            spikes.append((lo, mass / total))
    if xs:
        ax.plot(xs, ys, color=color, label=label)
        ax.fill_between(xs, ys, color=color, alpha=0.15)
    for x, share in spikes:
        ax.axvline(x, color=color, linewidth=1.5, alpha=0.6 + 0.4 * min(share, 1.0))
    ax.set_yticks([])


# ------------------------------------------------------------------------------------- page

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5;cursor:pointer;user-select:none}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.breach td{background:#fde8e6}.note{color:#666;font-size:12.5px}.warn{color:#a33;font-weight:600}
.example-images{display:flex;flex-wrap:wrap;gap:6px}.example-image{margin:0;font-size:11px;color:#666}
figure.chart{margin:8px 0}figure.chart svg{max-width:100%;height:auto}
.kv td.n{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}.kv td:first-child{color:#666}
@media print{th{cursor:auto}main{max-width:none}h2{break-after:avoid}figure{break-inside:avoid}}
"""

_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.v || a.cells[column].textContent;
      var y = b.cells[column].dataset.v || b.cells[column].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if 1e3 <= abs(value) < 1e15:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    css: str = "sortable",
    row_classes: Iterable[str] | None = None,
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = []
    classes = list(row_classes) if row_classes is not None else None
    for i, row in enumerate(rows):
        cells = []
        for value in row:
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric:
                data = "" if value is None else f' data-v="{value}"'
                cells.append(f'<td class="n"{data}>{html.escape(_fmt(value))}</td>')
            else:
                cells.append(f"<td>{html.escape(_fmt(value))}</td>")
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<table class="{css}">{head}<tbody>{"".join(body)}</tbody></table>'


def _p(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{html.escape(text)}</p>'


class _Page:
    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def section(self, ident: str, title: str, *content: str) -> None:
        body = "".join(content)
        self.parts.append(f'<section id="{ident}"><h2>{html.escape(title)}</h2>{body}</section>')

    def render(self) -> str:
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body><main>"
            f"<h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</main>"
            f"<script>{_SCRIPT}</script></body></html>"
        )


# ---------------------------------------------------------------------------------- sections


def _setting(value: Any) -> str:
    """A setting as short text: {"kind": "zeros"} -> kind=zeros (unset values left out)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_setting(v)}" for k, v in value.items() if v not in (None, {}, []))
    return json.dumps(value) if isinstance(value, list) else str(value)


def _header(page: _Page, data: _RunData) -> None:
    s = data.summary
    counts = s.get("counts", {})
    config = s.get("config", {})
    model = config.get("model", {})
    fp = s.get("fingerprint") or {}
    attribution = fp.get("attribution") or config.get("attribution", {})
    by_stage = counts.get("dead_letters_by_stage") or {}
    versions = {"igbeam": fp.get("igbeam"), **(s.get("versions") or {})}
    rows: list[tuple[str, Any]] = [
        ("run", data.path),
        ("status", s.get("status", "")),
        ("model", f"{model.get('path', '')} (signature {model.get('signature', '')})"),
        ("model sha256", fp.get("model_sha256") or "(not recorded)"),
        ("data", config.get("input", {}).get("pattern", "")),
        ("records read", counts.get("records_read", 0)),
        ("examples attributed", counts.get("examples_attributed", 0)),
        ("dead letters", counts.get("dead_letters", 0)),
        ("dead letters by stage", ", ".join(f"{k} {v:,}" for k, v in by_stage.items()) or "-"),
        ("duplicate keys", counts.get("duplicate_keys", 0)),
        ("wall time", f"{s.get('wall_seconds') or 0.0:.1f} s (model load and tracing included)"),
        ("examples/s", s.get("examples_per_second") or 0.0),
        ("method", attribution.get("method", "")),
        ("steps", attribution.get("steps", "")),
        ("baseline", _setting(attribution.get("baseline", {}))),
        ("target", _setting(attribution.get("target", {}))),
    ]
    for name in ("layer", "output"):
        if attribution.get(name) is not None:
            rows.append((name, attribution[name]))
    rows += [
        ("attributed", ", ".join(fp.get("attributed") or []) or "(not recorded)"),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
    ]
    page.section("run", "Run", _table(["", ""], rows, css="kv"))


def _importance(page: _Page, data: _RunData, charts: _Charts) -> list[dict]:
    rows = data.features()
    if not rows:
        page.section("importance", "Global feature importance", _p("No attributions."))
        return rows
    table = _table(
        [
            "rank",
            "feature",
            "mean |attribution|",
            "mean attribution",
            "share",
            "std",
            "min",
            "max",
            "count",
        ],
        [
            (
                r["rank"],
                r["feature"],
                r["mean_absolute_attributions"],
                r["mean_attributions"],
                r["share"],
                r["std"],
                r["min"],
                r["max"],
                r["count"],
            )
            for r in rows
        ],
    )
    page.section(
        "importance",
        "Global feature importance (all examples)",
        charts.importance(rows, f"Top {min(TOP_FEATURES, len(rows))} features"),
        _p("Every feature (click a column to sort):"),
        table,
    )
    return rows


def _slices(page: _Page, data: _RunData, charts: _Charts, top: list[str]) -> None:
    keys = [k for k in data.run.slice_order if k[0] != "all"]
    if not keys or not top:
        page.section("slices", "Importance per slice", _p("No slices besides all examples."))
        return
    shown = keys[:MAX_HEATMAP_SLICES]
    slices = []
    for key in shown:
        shares = {r["feature"]: r["share"] for r in data.features(key)}
        slices.append((f"{key[0]}={key[1]}", data.run.examples(key), shares))
    note = (
        ""
        if len(keys) <= len(shown)
        else _p(
            f"The first {len(shown)} of {len(keys)} slices; all are in statistics/features.parquet."
        )
    )
    page.section(
        "slices", "Importance per slice", charts.heatmap(slices, top[:TOP_HEATMAP_FEATURES]), note
    )


def _hist(run: Run, key: tuple[str, str], feature: str, source: str) -> drift.Histogram | None:
    row = run.histograms.get((ALL_DATA, *key, feature, source))
    if row is None or row["count"] == 0:
        return None
    return drift.histogram_from_quantiles(row["boundaries"], row["count"], row["nan_count"])


def _distributions(page: _Page, data: _RunData, charts: _Charts, top: list[str]) -> None:
    hists = []
    for feature in top[:TOP_DISTRIBUTIONS]:
        hist = _hist(data.run, ("all", ""), feature, "attribution")
        if hist is None:  # a run made before histograms: the stored quantiles
            row = next((r for r in data.features() if r["feature"] == feature), None)
            if row is not None and row["count"]:
                hist = drift.histogram_from_quantiles(row["quantiles"], row["count"])
        if hist is not None:
            hists.append((feature, hist))
    if not hists:
        page.section("distributions", "Attribution distributions", _p("No attributions."))
        return
    page.section(
        "distributions",
        "Attribution distributions of the top features",
        charts.distributions(hists, "density of per-example attributions (all examples)"),
    )


def _completeness(page: _Page, data: _RunData, charts: _Charts) -> None:
    sample = data.sample
    if sample.num_rows == 0 or "delta" not in sample.column_names:
        page.section("completeness", "Completeness", _p("No attributed examples."))
        return
    delta = np.abs(sample.column("delta").to_numpy(zero_copy_only=False).astype(float))
    change = np.abs(
        sample.column("prediction").to_numpy(zero_copy_only=False).astype(float)
        - sample.column("baseline_prediction").to_numpy(zero_copy_only=False).astype(float)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = delta / change
    above = float(np.mean(ratio > COMPLETENESS_TOLERANCE))
    small = float(np.mean(change < SMALL_OUTPUT_CHANGE))
    advice = []
    if above > 0.05:
        advice.append(
            _p(
                f"{above:.1%} of the sampled examples have a completeness error above "
                f"{COMPLETENESS_TOLERANCE:.0%}: raise attribution.steps (or use gausslegendre).",
                "warn",
            )
        )
    if small > 0.05:
        advice.append(
            _p(
                f"For {small:.1%} of the sampled examples F(x) is within {SMALL_OUTPUT_CHANGE} of "
                "F(baseline): their attributions explain little; consider another baseline.",
                "warn",
            )
        )
    slices = data.run.slices.get((ALL_DATA, "all", ""))
    p95 = _fmt(slices["abs_delta_p95"]) if slices else "NaN"
    page.section(
        "completeness",
        "Completeness",
        charts.completeness(ratio),
        _p(
            f"Over {sample.num_rows:,} sampled examples: median relative error "
            f"{_fmt(float(np.nanmedian(ratio)))}, {above:.1%} above {COMPLETENESS_TOLERANCE:.0%}; "
            f"|delta| p95 over all examples: {p95}."
        ),
        *(advice or [_p("Completeness is good: the attributions add up to the output change.")]),
    )


def _dead_letters(page: _Page, data: _RunData, charts: _Charts) -> None:
    by_stage = data.summary.get("counts", {}).get("dead_letters_by_stage") or {}
    total = data.summary.get("counts", {}).get("dead_letters", 0)
    if not total:
        page.section(
            "dead-letters", "Dead letters", _p("No dead letters: every record was attributed.")
        )
        return
    dead = data.dead
    reasons = (
        Counter(
            zip(dead.column("stage").to_pylist(), dead.column("reason").to_pylist(), strict=True)
        )
        if dead.num_rows
        else Counter()
    )
    first = dead.slice(0, 10).to_pylist() if dead.num_rows else []
    stages = [s for s in by_stage if by_stage[s]] or ["(unknown)"]
    page.section(
        "dead-letters",
        "Dead letters",
        charts.bars(
            stages, [by_stage.get(s, 0) for s in stages], "dead letters by stage", "dead-letters"
        ),
        _p(f"{total:,} records were not attributed. Reasons in the first {dead.num_rows:,}:"),
        _table(
            ["stage", "reason", "count"],
            [(stage, reason, n) for (stage, reason), n in reasons.most_common(20)],
        ),
        _p("The first dead letters:"),
        _table(
            ["file", "record", "offset", "stage", "reason"],
            [(r["file"], r["record_index"], r["offset"], r["stage"], r["reason"]) for r in first],
            css="plain",
        ),
    )


def _attribution_total(value: Any) -> float:
    """One example's attribution of a feature: the value, or the sum of a list's non-nulls."""
    if isinstance(value, list | tuple | np.ndarray):
        return float(sum(v for v in value if v is not None))
    return float(value)


def _examples(page: _Page, data: _RunData, charts: _Charts, attributed: list[str]) -> None:
    sample = data.sample
    names = [f for f in attributed if "attr_" + f in sample.column_names]
    if sample.num_rows == 0 or not names:
        page.section("examples", "Example rows", _p("No attributed examples."))
        return
    prediction = sample.column("prediction").to_numpy(zero_copy_only=False).astype(float)
    delta = np.abs(sample.column("delta").to_numpy(zero_copy_only=False).astype(float))
    picks: list[tuple[str, int]] = []
    for label, order in (
        ("highest prediction", np.argsort(-prediction, kind="stable")),
        ("lowest prediction", np.argsort(prediction, kind="stable")),
        ("largest |delta|", np.argsort(-delta, kind="stable")),
    ):
        for i in order[:EXAMPLES_PER_KIND]:
            if int(i) not in [p for _, p in picks]:
                picks.append((label, int(i)))
    rows = sample.take(pa.array([i for _, i in picks])).to_pylist()
    figures = [
        charts.waterfall(row, names, f"{label}: {row['key']}")
        for (label, _), row in zip(picks, rows, strict=True)
    ]
    page.section(
        "examples",
        "Example rows",
        _p(
            f"From the first {sample.num_rows:,} examples: each bar moves the output from "
            "F(baseline) by one feature's attribution, to F(x) (minus the completeness error)."
        ),
        f'<div class="grid">{"".join(figures)}</div>',
    )


def _comparison(
    page: _Page, comparison: Comparison, baseline: Run, current: _RunData, charts: _Charts
) -> None:
    notes = [_p(n) for n in comparison.notes]
    if comparison.fingerprint_differences:
        notes.insert(
            0,
            _p(
                "The runs were attributed differently: "
                + "; ".join(comparison.fingerprint_differences),
                "warn",
            ),
        )
    anomalies = comparison.anomalies
    verdict = _p(
        f"{len(anomalies)} anomalies in {len(comparison.measurements):,} measurements.",
        "warn" if anomalies else "note",
    )
    ranked = sorted(
        comparison.measurements,
        key=lambda m: (not m["breached"], -m["severity"], -_closeness(m)),
    )[:MAX_DRIFT_ROWS]
    table = _table(
        [
            "slice",
            "feature",
            "metric",
            "value",
            "threshold",
            "noise floor",
            "breached",
            "severity",
            "examples (baseline / current)",
            "reason or note",
        ],
        [
            (
                f"{m['slice_name']}={m['slice_value']}" if m["slice_name"] != "all" else "all",
                m["feature"],
                m["metric"],
                m["value"],
                m["threshold"],
                m["noise_floor"],
                "yes" if m["breached"] else "",
                m["severity"],
                f"{m['baseline_examples']:,} / {m['current_examples']:,}",
                next((a["reason"] for a in anomalies if a is m or _same(a, m)), m["note"]),
            )
            for m in ranked
        ],
        row_classes=["breach" if m["breached"] else "" for m in ranked],
    )
    side = ""
    base_rows = sorted(
        baseline.features.get((ALL_DATA, "all", ""), {}).values(), key=lambda r: r["rank"]
    )
    if base_rows and current.features():
        side = charts.side_by_side(base_rows, current.features())
    overlays = []
    seen = set()
    for m in sorted(anomalies, key=lambda m: m["slice_name"] != "all"):  # all data first
        source = {"feature": "attribution", "input": "input"}.get(m["scope"])
        if source is None or (m["feature"], source) in seen or len(overlays) >= MAX_OVERLAYS:
            continue
        seen.add((m["feature"], source))
        key = (m["slice_name"], m["slice_value"])
        overlays.append(
            charts.overlay(
                m["feature"] if m["slice_name"] == "all" else f"{m['feature']} [{key[0]}={key[1]}]",
                _hist(baseline, key, m["feature"], source),
                _hist(current.run, key, m["feature"], source),
                f"{source} distribution",
            )
        )
    page.section(
        "comparison",
        f"Comparison with {comparison.baseline}",
        verdict,
        *notes,
        side,
        f'<div class="grid">{"".join(overlays)}</div>' if overlays else "",
        _p(
            f"Measurements: breaches first, most severe first, then the nearest to their "
            f"thresholds (at most {MAX_DRIFT_ROWS}; all are in drift.parquet). A breach is beyond "
            "its threshold, above noise_margin times its noise floor, with enough examples:"
        ),
        table,
    )


def _closeness(m: Mapping[str, Any]) -> float:
    """How near a measurement is to its threshold (1: at it); -1 when it has none or is NaN."""
    value, threshold = m["value"], m["threshold"]
    if threshold is None or value is None or math.isnan(value):
        return -1.0
    if METRICS[m["metric"]].direction == "below":  # nDCG: 1 is no change
        return (1.0 - value) / max(1.0 - threshold, 1e-12)
    return abs(value) / max(threshold, 1e-12)


def _same(a: Mapping[str, Any], m: Mapping[str, Any]) -> bool:
    return all(a[k] == m[k] for k in ("slice_name", "slice_value", "feature", "metric"))


def _read_drift(directory: str) -> Comparison:
    """A comparison written by `igbeam compare` / `monitor` (drift.json + drift.parquet)."""
    try:
        with open(_join(directory, "drift.json"), encoding="utf-8") as f:
            report = json.load(f)
        measurements = pq.read_table(_join(directory, "drift.parquet")).to_pylist()
    except (OSError, ValueError, pa.ArrowException) as err:
        raise ReportError(f"{directory!r} holds no readable comparison: {err}") from err
    anomalies = []
    for a in report.get("anomalies", []):
        anomalies.append(
            {
                k: (math.nan if v is None and k in ("value", "noise_floor") else v)
                for k, v in a.items()
            }
        )
    return Comparison(
        measurements,
        anomalies,
        report.get("fingerprint_differences", []),
        report.get("notes", []),
        report.get("baseline", ""),
        report.get("current", ""),
    )


# ------------------------------------------------------------------------------------ entry


def _images(page: _Page, data: _RunData, charts: _Charts) -> None:
    """Mean |attribution| grids per class of the run's image features (`report_images`)."""
    from pipeline.report_images import image_section

    content = image_section(data.path, charts.plt, charts.svg)
    if content is not None:
        page.section("images", "Image attributions", content)


def write_report(
    run: str,
    out: str,
    *,
    compare: str | None = None,
    drift_dir: str | None = None,
    comparison: Comparison | None = None,
    settings: ComparisonConfig | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
) -> dict[str, Any]:
    """Writes the HTML report of `run` (optionally compared with a baseline run) to `out`.

    At most one of `compare`, `drift_dir` and `comparison` is given.

    Args:
      run: The run's `output.path` (the current run of a comparison).
      out: The HTML file to write (local, or a Beam FileSystems path).
      compare: A baseline run to compare `run` with, now, with `settings` (a changed attribution
        setup is compared anyway and said at the top of the comparison).
      drift_dir: A comparison already written by `igbeam compare` or `igbeam monitor`.
      comparison: A comparison already made (`compare_runs`), whose current run is `run`.
      settings: The comparison's settings with `compare` (defaults: `ComparisonConfig()`).
      sample_rows: Rows read from the attributions and from the dead letters, at most.

    Returns:
      {"path", "bytes", "seconds", "charts"}: what was written and how long it took.

    Raises:
      ReportError: the run or the comparison cannot be read, or `out` cannot be written.
    """
    if sum(x is not None for x in (compare, drift_dir, comparison)) > 1:
        raise ReportError("give one of a baseline run (--compare) and a comparison (--drift)")
    if sample_rows < 0:
        raise ReportError(f"sample_rows must be >= 0, got {sample_rows}")
    started = time.perf_counter()
    data = _RunData(run, sample_rows)
    if compare is not None:
        try:
            comparison = compare_runs(compare, run, settings, allow_config_change=True)
        except CompareError as err:
            raise ReportError(f"baseline: {err}") from err
    elif drift_dir is not None:
        comparison = _read_drift(drift_dir)
    baseline = None
    if comparison is not None:
        try:
            baseline = Run(comparison.baseline)
        except CompareError as err:
            raise ReportError(f"the comparison's baseline: {err}") from err
    charts = _Charts()
    page = _Page(
        f"igbeam report: {_name(run)}" + (f" vs {_name(baseline.path)}" if baseline else "")
    )
    _header(page, data)
    if comparison is not None and baseline is not None:
        _comparison(page, comparison, baseline, data, charts)
    rows = _importance(page, data, charts)
    top = [r["feature"] for r in rows if r["count"]]
    _slices(page, data, charts, top)
    _distributions(page, data, charts, top)
    _images(page, data, charts)
    _completeness(page, data, charts)
    _dead_letters(page, data, charts)
    _examples(page, data, charts, [r["feature"] for r in rows])
    text = page.render().encode("utf-8")
    try:
        if "://" in out:
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.create(out) as f:
                f.write(text)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "wb") as f:
                f.write(text)
    except OSError as err:
        raise ReportError(f"cannot write {out}: {one_line(err)}") from err
    return {
        "path": out,
        "bytes": len(text),
        "seconds": time.perf_counter() - started,
        "charts": charts.count,
    }


def _name(path: str) -> str:
    parts = [p for p in re.split(r"[/\\]", path.rstrip("/\\")) if p]
    return "/".join(parts[-2:]) if parts else path
