"""Compare two runs: attribution skew and drift, input drift, IG health, with noise floors.

`compare_runs(baseline, current, settings)` reads only the two runs' `summary.json` and
`statistics/` tables (never their rows) and measures, per slice present in either run:

* per attributed feature: the change of its share of total mean |attribution|
  (``share_shift``), the relative change of its mean |attribution| (``mean_abs_change``), the
  Jensen-Shannon divergence (``attribution_jsd``) and PSI (``attribution_psi``) of its
  attribution histograms, and its rank change (``rank_change``);
* per input feature: ``input_jsd`` (numeric histograms) or ``input_linf`` (categorical value
  frequencies), TFDV's definitions, and ``impact``, that input drift times the feature's larger
  attribution share, so that a moved but unimportant feature does not page anyone;
* per slice: the L1 and L-infinity distances of the share vectors (``share_l1``,
  ``share_linf``), the nDCG of the current importance ranking against the baseline's (``ndcg``,
  SageMaker Clarify's attribution-drift measure), and IG health: the change of the |delta| p95
  (``abs_delta_p95_change``) and of the mean prediction (``prediction_mean_change``).

Every measurement is written every time (`drift.parquet`), with its threshold and its **noise
floor**: the same metric computed between pairs of key-hash replicates within each run (disjoint
random sub-samples of the same data, `statistics.replicates`), scaled from the replicates' size to
the comparison's sizes by how the metric shrinks with the sample (`drift.noise_floor`), the
largest over all pairs of both runs. A measurement **breaches** only when (1) both sides of its
slice have at least `min_examples` examples, (2) it is beyond its threshold (above; for ``ndcg``
below), and (3) it is clearly above its noise floor: ``|value| > noise_margin * floor`` (for
``ndcg``, on ``1 - ndcg``). Without replicates the floor is unknown and (3) is skipped (said as a
note); with replicates but no finite floor (too few examples per replicate) nothing breaches.

Before anything, the runs' attribution fingerprints (`pipeline.fingerprint`) are compared: a
changed model, signature, preprocessing model, attribution settings or set of attributed features
is reported first and makes the comparison incompatible (`IncompatibleRunsError`) unless
`allow_config_change`.

Pure Python with pyarrow and numpy: no TensorFlow, no Beam (remote runs are read through Beam's
FileSystems, imported only then).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from attribution.errors import SettingsError, one_line
from attribution.fields import Check, Integer, Number, setting, show
from pipeline import drift
from pipeline.fingerprint import differences

__all__ = [
    "DRIFT_SCHEMA",
    "METRICS",
    "CompareError",
    "Comparison",
    "ComparisonConfig",
    "IncompatibleRunsError",
    "Metric",
    "compare_runs",
    "is_run",
    "write_comparison",
]

ALL_DATA = -1  # transforms.statistics.ALL_DATA (not imported: that module imports Beam)
OFF = "off"


class CompareError(ValueError):
    """A run cannot be read or compared (one line)."""


class IncompatibleRunsError(CompareError):
    """The runs' attribution fingerprints differ: their attributions do not compare."""

    def __init__(self, message: str, comparison: Comparison) -> None:
        super().__init__(message)
        self.comparison = comparison


# ----------------------------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class Metric:
    """One measurement of a comparison.

    Attributes:
      name: Its name in `drift.parquet` and in the thresholds.
      scope: "feature" (attributed features), "input" (input features) or "slice".
      rate: How its no-change value shrinks with the sample size (`drift.noise_floor`):
        "inverse" (divergences) or "inverse_sqrt" (differences).
      direction: "above" (breach when |value| > threshold) or "below" (value < threshold).
      threshold: Default threshold, or None: reported, never breaches.
      what: A short description for the one-line reasons.
    """

    name: str
    scope: str
    rate: str
    direction: str
    threshold: float | None
    what: str


METRICS = {
    m.name: m
    for m in (
        Metric("share_shift", "feature", "inverse_sqrt", "above", 0.1, "attribution share shift"),
        Metric(
            "mean_abs_change",
            "feature",
            "inverse_sqrt",
            "above",
            None,
            "relative change of mean |attribution|",
        ),
        Metric(
            "attribution_jsd",
            "feature",
            "inverse",
            "above",
            0.1,
            "Jensen-Shannon divergence of attributions",
        ),
        Metric("attribution_psi", "feature", "inverse", "above", None, "PSI of attributions"),
        Metric("rank_change", "feature", "inverse_sqrt", "above", None, "importance rank change"),
        Metric(
            "input_jsd",
            "input",
            "inverse",
            "above",
            None,
            "Jensen-Shannon divergence of input values",
        ),
        Metric(
            "input_linf",
            "input",
            "inverse_sqrt",
            "above",
            None,
            "L-infinity distance of input value frequencies",
        ),
        Metric(
            "impact",
            "input",
            "inverse_sqrt",
            "above",
            0.01,
            "input drift x attribution share (impact)",
        ),
        Metric("share_l1", "slice", "inverse_sqrt", "above", 0.2, "L1 distance of shares"),
        Metric(
            "share_linf", "slice", "inverse_sqrt", "above", None, "L-infinity distance of shares"
        ),
        Metric("ndcg", "slice", "inverse_sqrt", "below", 0.9, "nDCG of the importance ranking"),
        Metric(
            "abs_delta_p95_change",
            "slice",
            "inverse_sqrt",
            "above",
            0.05,
            "change of the completeness |delta| p95",
        ),
        Metric(
            "prediction_mean_change",
            "slice",
            "inverse_sqrt",
            "above",
            None,
            "change of the mean prediction",
        ),
    )
}
"""Every metric of a comparison, with its default threshold (`configs/README.md` lists them)."""


# ---------------------------------------------------------------------------------- settings


class _Threshold(Check):
    """A threshold: a number >= 0, or off (reported, never breaches).

    YAML 1.1 reads a bare ``off`` (and ``no``, ``false``) as False: that means off too.
    """

    def __call__(self, value: Any, key: str, api: bool) -> float | str:
        if value is False or value == OFF:
            return OFF
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            raise SettingsError(f"must be a number >= 0 or 'off', got {show(value)}", key)
        return float(value)


class _MetricThresholds(Check):
    """{metric: threshold or "off"}, metrics from `METRICS`."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> dict[str, float | str]:
        if not isinstance(value, Mapping):
            raise SettingsError(f"must be a {{metric: threshold}} map, got {show(value)}", key)
        out = {}
        for metric, threshold in value.items():
            if metric not in METRICS:
                raise SettingsError(
                    f"unknown metric; choose among {', '.join(METRICS)}", f"{key}.{metric}"
                )
            out[metric] = _Threshold()(threshold, f"{key}.{metric}", api)
        return out


class _FeatureThresholds(Check):
    """{feature: {metric: threshold or "off"}}."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> dict[str, dict[str, float | str]]:
        if not isinstance(value, Mapping):
            raise SettingsError(
                f"must be a {{feature: {{metric: threshold}}}} map, got {show(value)}", key
            )
        return {
            str(feature): _MetricThresholds()(thresholds, f"{key}.{feature}", api)
            for feature, thresholds in value.items()
        }


class _SliceCounts(Check):
    """{slice name, or "name=value": minimum examples}."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> dict[str, int]:
        if not isinstance(value, Mapping):
            raise SettingsError(f"must be a {{slice: examples}} map, got {show(value)}", key)
        return {str(k): Integer(0)(v, f"{key}.{k}", api) for k, v in value.items()}


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
    """How two runs are compared (`igbeam compare --config`, or a monitor's `compare` section).

    Attributes:
      thresholds: Per metric: a threshold overriding `METRICS`' default, or "off".
      features: Per feature: thresholds overriding those, e.g. {f0: {share_shift: 0.2}}.
      min_examples: A slice with fewer examples on either side is reported, never breaches.
      slice_min_examples: Per slice name ("country") or slice ("country=DE"): its minimum.
      noise_margin: A value breaches only above `noise_margin` times its noise floor.
      top_k: Features the nDCG and the rank changes look at.
      psi_epsilon: PSI's floor for empty buckets (`drift.population_stability_index`).
    """

    thresholds: dict[str, float | str] = setting({}, check=_MetricThresholds())
    features: dict[str, dict[str, float | str]] = setting({}, check=_FeatureThresholds())
    min_examples: int = setting(200, check=Integer(0))
    slice_min_examples: dict[str, int] = setting({}, check=_SliceCounts())
    noise_margin: float = setting(2.0, check=Number(0.0, 1e6))
    top_k: int = setting(10, check=Integer(1))
    psi_epsilon: float = setting(1e-4, check=Number(1e-12, 1.0))

    def threshold(self, metric: str, feature: str) -> float | None:
        """The threshold of `metric` for `feature` ("" for slice metrics); None: never breaches."""
        value: float | str | None = METRICS[metric].threshold
        if metric in self.thresholds:
            value = self.thresholds[metric]
        if metric in self.features.get(feature, {}):
            value = self.features[feature][metric]
        return None if value in (None, OFF) else float(value)

    def minimum(self, slice_name: str, slice_value: str) -> int:
        """The minimum examples of a slice on each side."""
        for key in (f"{slice_name}={slice_value}", slice_name):
            if key in self.slice_min_examples:
                return self.slice_min_examples[key]
        return self.min_examples


# ------------------------------------------------------------------------------------- runs


_TABLES = {
    "features": "features.parquet",
    "slices": "slices.parquet",
    "histograms": "histograms.parquet",
    "inputs": "inputs.parquet",
    "feature_replicates": "features_replicates.parquet",
    "slice_replicates": "slices_replicates.parquet",
}  # transforms.constants / transforms.outputs.STATISTICS_FILES (those modules import Beam)

SliceKey = tuple[str, str]


def _open(path: str) -> Any:
    if "://" not in path:
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _exists(path: str) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts) if "://" in parts[0] else os.path.join(*parts)


def is_run(path: str) -> bool:
    """Whether `path` holds a run (its summary.json)."""
    return _exists(_join(path, "summary.json"))


class Run:
    """The statistics and summary of one run, indexed for the metrics."""

    def __init__(self, path: str, *, replicates: bool = True) -> None:
        """Reads the run at `path`; `replicates=False` reads the all-data rows only (a report's
        view: quicker on runs with many slices and features, no noise floors)."""
        self.path = path
        summary_path = _join(path, "summary.json")
        if not _exists(summary_path):
            raise CompareError(f"{path!r} is not an igbeam run: it has no summary.json")
        try:
            with _open(summary_path) as f:
                self.summary = json.loads(f.read())
        except (OSError, ValueError) as err:
            raise CompareError(f"run {path!r}: unreadable summary.json: {one_line(err)}") from err
        if not isinstance(self.summary, dict):
            raise CompareError(f"run {path!r}: summary.json is not a JSON object")
        self.fingerprint = self.summary.get("fingerprint")
        stats = self.summary.get("config", {}).get("statistics", {})
        self.replicates = int(stats.get("replicates", 0) or 0)
        tables = {}
        for name, file in _TABLES.items():
            if not replicates and name in ("feature_replicates", "slice_replicates"):
                tables[name] = []
                continue
            full = _join(path, "statistics", file)
            if not _exists(full):
                if name in ("features", "slices"):
                    raise CompareError(f"run {path!r} has no statistics/{file}")
                tables[name] = []  # a run made before igbeam recorded it
                continue
            try:
                with _open(full) as f:
                    table = pq.read_table(io.BytesIO(f.read()))
                if not replicates and "replicate" in table.column_names:
                    table = table.filter(pc.equal(table.column("replicate"), ALL_DATA))
                tables[name] = table.to_pylist()
            except (OSError, pa.ArrowException) as err:
                raise CompareError(
                    f"run {path!r}: unreadable statistics/{file}: {one_line(err)}"
                ) from err
        self.features: dict[tuple[int, str, str], dict[str, dict]] = {}
        for replicate, rows in (
            (ALL_DATA, tables["features"]),
            (None, tables["feature_replicates"]),
        ):
            for row in rows:
                r = row.get("replicate", replicate)
                self.features.setdefault((r, row["slice_name"], row["slice_value"]), {})[
                    row["feature"]
                ] = row
        self.slices: dict[tuple[int, str, str], dict] = {}
        for replicate, rows in ((ALL_DATA, tables["slices"]), (None, tables["slice_replicates"])):
            for row in rows:
                self.slices[
                    (row.get("replicate", replicate), row["slice_name"], row["slice_value"])
                ] = row
        self.histograms = {
            (r["replicate"], r["slice_name"], r["slice_value"], r["feature"], r["source"]): r
            for r in tables["histograms"]
        }
        self.inputs: dict[tuple[int, str, str], dict[str, dict]] = {}
        for row in tables["inputs"]:
            self.inputs.setdefault((row["replicate"], row["slice_name"], row["slice_value"]), {})[
                row["feature"]
            ] = row
        self.slice_order = list(dict.fromkeys((n, v) for (r, n, v) in self.slices if r == ALL_DATA))
        present = sorted({r for (r, _, _) in self.slices if r != ALL_DATA})
        self.replicate_ids = present

    def examples(self, key: SliceKey, replicate: int = ALL_DATA) -> int:
        row = self.slices.get((replicate, *key))
        return int(row["examples"]) if row else 0


class _Side(NamedTuple):
    """A run seen at one replicate (ALL_DATA: every example)."""

    run: Run
    replicate: int

    def features(self, key: SliceKey) -> dict[str, dict]:
        return self.run.features.get((self.replicate, *key), {})

    def slice(self, key: SliceKey) -> dict | None:
        return self.run.slices.get((self.replicate, *key))

    def histogram(self, key: SliceKey, feature: str, source: str) -> drift.Histogram | None:
        row = self.run.histograms.get((self.replicate, *key, feature, source))
        if row is None or (row["count"] == 0 and row["nan_count"] == 0):
            return None
        return drift.histogram_from_quantiles(row["boundaries"], row["count"], row["nan_count"])

    def input(self, key: SliceKey, feature: str) -> dict | None:
        return self.run.inputs.get((self.replicate, *key), {}).get(feature)

    def examples(self, key: SliceKey) -> int:
        return self.run.examples(key, self.replicate)


# --------------------------------------------------------------------------------- measuring


class Measure(NamedTuple):
    value: float
    baseline: float = math.nan
    current: float = math.nan
    why: str = ""  # why the value is NaN, when it is


Measurer = Callable[[_Side, _Side, SliceKey, str], Measure]
NAN = Measure(math.nan, why="no data on one side")


def _num(row: dict | None, name: str) -> float:
    if row is None:
        return math.nan
    value = row.get(name)
    return math.nan if value is None else float(value)


def _share(side: _Side, key: SliceKey, feature: str) -> float:
    return _num(side.features(key).get(feature), "share")


def _share_shift(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
    sb, sc = _share(b, key, feature), _share(c, key, feature)
    return Measure(sc - sb, sb, sc)


def _mean_abs_change(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
    mb = _num(b.features(key).get(feature), "mean_absolute_attributions")
    mc = _num(c.features(key).get(feature), "mean_absolute_attributions")
    if mb > 0:
        return Measure((mc - mb) / mb, mb, mc)
    why = "the baseline's mean |attribution| is 0" if mb == 0 else "no data on one side"
    return Measure(math.nan, mb, mc, why)


def _divergence(
    function: Callable[[drift.Histogram, drift.Histogram], float], source: str
) -> Measurer:
    def measure(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
        hb, hc = b.histogram(key, feature, source), c.histogram(key, feature, source)
        if hb is None or hc is None:
            return NAN
        return Measure(function(hb, hc))

    return measure


def _rank_change(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
    rb = _num(b.features(key).get(feature), "rank")
    rc = _num(c.features(key).get(feature), "rank")
    return Measure(rc - rb, rb, rc)


def _input_linf(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
    ib, ic = b.input(key, feature), c.input(key, feature)
    if ib is None or ic is None or ib["kind"] != "categorical" or ic["kind"] != "categorical":
        return NAN
    counts_b = {t["value"]: t["count"] for t in ib["top_values"]}
    counts_c = {t["value"]: t["count"] for t in ic["top_values"]}
    if not sum(counts_b.values()) or not sum(counts_c.values()):
        return NAN
    return Measure(drift.l_infinity_distance(counts_b, counts_c)[1])


def _input_drift(b: _Side, c: _Side, key: SliceKey, feature: str) -> float:
    ib = b.input(key, feature)
    if ib is not None and ib["kind"] == "categorical":
        return _input_linf(b, c, key, feature).value
    return _divergence(drift.jensen_shannon_divergence, "input")(b, c, key, feature).value


def _impact(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
    share = max(_share(b, key, feature), _share(c, key, feature))
    if math.isnan(share):
        if not b.features(key) and not c.features(key):
            return NAN
        return Measure(math.nan, why="not an attributed feature: no attribution share")
    return Measure(_input_drift(b, c, key, feature) * share)


def _importance(side: _Side, key: SliceKey) -> dict[str, float]:
    return {
        f: float(r["mean_absolute_attributions"])
        for f, r in side.features(key).items()
        if r["count"] > 0 and not math.isnan(r["mean_absolute_attributions"])
    }


def _share_distance(which: int) -> Measurer:
    def measure(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
        sb = {f: _share(b, key, f) for f in b.features(key)}
        sc = {f: _share(c, key, f) for f in c.features(key)}
        if not sb or not sc:
            return NAN
        return Measure(drift.share_distances(sb, sc)[which])

    return measure


def _slice_change(column: str) -> Measurer:
    def measure(b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
        vb, vc = _num(b.slice(key), column), _num(c.slice(key), column)
        return Measure(vc - vb, vb, vc)

    return measure


class Comparison(NamedTuple):
    """The result of `compare_runs`.

    Attributes:
      measurements: One dict per (slice, feature, metric), `DRIFT_SCHEMA`'s columns.
      anomalies: The breached measurements, each with a one-line `reason`: attribution drift
        first, then IG health, then input drift; most severe first within each.
      fingerprint_differences: One line per differing fingerprint field (empty: comparable).
      notes: Other things worth saying (no replicates, other igbeam version, empty runs...).
      baseline, current: The runs' paths.
    """

    measurements: list[dict]
    anomalies: list[dict]
    fingerprint_differences: list[str]
    notes: list[str]
    baseline: str
    current: str


DRIFT_SCHEMA = pa.schema(
    [
        pa.field("slice_name", pa.string(), nullable=False),
        pa.field("slice_value", pa.string(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("baseline_value", pa.float64(), nullable=False),
        pa.field("current_value", pa.float64(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=True),
        pa.field("noise_floor", pa.float64(), nullable=False),
        pa.field("breached", pa.bool_(), nullable=False),
        pa.field("severity", pa.float64(), nullable=False),
        pa.field("baseline_examples", pa.int64(), nullable=False),
        pa.field("current_examples", pa.int64(), nullable=False),
        pa.field("note", pa.string(), nullable=False),
    ]
)
"""Schema of `drift.parquet`: every measurement of a comparison, breached or not.

``value`` is signed where a direction means something (shares, ranks, changes: current minus
baseline); ``baseline_value``/``current_value`` are the compared quantities when there are two;
``threshold`` is null for report-only metrics; ``noise_floor`` is NaN when unknown; ``severity``
(0 when not breached) is how far a breach goes: the smaller of ``|value| / threshold`` and
``|value| / (noise_margin * noise_floor)`` (``1 - value`` and ``1 - threshold`` for nDCG).
"""


_ATTRIBUTION_METRICS = {
    "share_shift",
    "mean_abs_change",
    "attribution_jsd",
    "attribution_psi",
    "rank_change",
    "share_l1",
    "share_linf",
    "ndcg",
}
_HEALTH_METRICS = {"abs_delta_p95_change", "prediction_mean_change"}
_PRIORITY = {
    name: 0 if name in _ATTRIBUTION_METRICS else 1 if name in _HEALTH_METRICS else 2
    for name in METRICS
}
"""Anomalies are listed attribution drift first, then IG health, then input drift."""


class _Comparer:
    def __init__(self, baseline: Run, current: Run, settings: ComparisonConfig) -> None:
        self.b, self.c, self.settings = baseline, current, settings
        epsilon = settings.psi_epsilon
        self.measurers: dict[str, Measurer] = {
            "share_shift": _share_shift,
            "mean_abs_change": _mean_abs_change,
            "attribution_jsd": _divergence(drift.jensen_shannon_divergence, "attribution"),
            "attribution_psi": _divergence(
                lambda x, y: drift.population_stability_index(x, y, epsilon), "attribution"
            ),
            "rank_change": _rank_change,
            "input_jsd": _divergence(drift.jensen_shannon_divergence, "input"),
            "input_linf": _input_linf,
            "impact": _impact,
            "share_l1": _share_distance(0),
            "share_linf": _share_distance(1),
            "ndcg": self._ndcg,
            "abs_delta_p95_change": _slice_change("abs_delta_p95"),
            "prediction_mean_change": _slice_change("prediction_mean"),
        }
        self.has_replicates = bool(baseline.replicate_ids) and bool(current.replicate_ids)

    def _ndcg(self, b: _Side, c: _Side, key: SliceKey, feature: str) -> Measure:
        ib, ic = _importance(b, key), _importance(c, key)
        if not ib or not ic:
            return NAN
        return Measure(drift.ndcg(ib, ic, self.settings.top_k))

    def _floor(self, metric: Metric, key: SliceKey, feature: str) -> float:
        """The largest scaled score between replicate pairs within each run (NaN: unknown)."""
        measure = self.measurers[metric.name]
        full = (self.b.examples(key), self.c.examples(key))
        floors = []
        for run in (self.b, self.c):
            if len(run.replicate_ids) < 2:
                continue
            sizes = [run.examples(key, r) for r in run.replicate_ids]
            if min(sizes) == 0:
                continue
            scores = []
            for i, j in itertools.combinations(run.replicate_ids, 2):
                value = measure(_Side(run, i), _Side(run, j), key, feature).value
                scores.append(1.0 - value if metric.direction == "below" else abs(value))
            floors.append(
                drift.noise_floor(
                    scores,
                    rate=metric.rate,
                    replicate_size=float(np.mean(sizes)),
                    full_sizes=(float(max(full[0], 1)), float(max(full[1], 1))),
                )
            )
        finite = [f for f in floors if not math.isnan(f)]
        return max(finite) if finite else math.nan

    def measure(self, metric: Metric, key: SliceKey, feature: str) -> dict:
        result = self.measurers[metric.name](
            _Side(self.b, ALL_DATA), _Side(self.c, ALL_DATA), key, feature
        )
        threshold = self.settings.threshold(metric.name, feature)
        nb, nc = self.b.examples(key), self.c.examples(key)
        floor = self._floor(metric, key, feature) if not math.isnan(result.value) else math.nan
        note = ""
        breached = False
        severity = 0.0
        minimum = self.settings.minimum(*key)
        if math.isnan(result.value):
            note = f"not measurable: {result.why or 'no data on one side'}"
        elif min(nb, nc) < minimum:
            note = f"fewer than {minimum} examples on a side: reported, not alerted"
        elif threshold is not None:
            if metric.direction == "below":
                beyond, size = result.value < threshold, 1.0 - result.value
                over_threshold = size / max(1.0 - threshold, 1e-12)
            else:
                beyond, size = abs(result.value) > threshold, abs(result.value)
                over_threshold = size / max(threshold, 1e-12)
            if beyond:
                if not self.has_replicates:
                    breached, severity = True, over_threshold
                elif math.isnan(floor):
                    note = "beyond its threshold, but its noise floor is unknown"
                elif size > self.settings.noise_margin * floor:
                    over_floor = size / max(self.settings.noise_margin * floor, 1e-12)
                    breached, severity = True, min(over_threshold, over_floor)
                else:
                    note = "beyond its threshold but within its noise floor"
        return {
            "slice_name": key[0],
            "slice_value": key[1],
            "feature": feature,
            "scope": metric.scope,
            "metric": metric.name,
            "value": float(result.value),
            "baseline_value": float(result.baseline),
            "current_value": float(result.current),
            "threshold": threshold,
            "noise_floor": float(floor),
            "breached": breached,
            "severity": float(severity),
            "baseline_examples": nb,
            "current_examples": nc,
            "note": note,
        }


def _slice_keys(baseline: Run, current: Run) -> list[SliceKey]:
    return list(dict.fromkeys([*baseline.slice_order, *current.slice_order]))


def compare_runs(
    baseline: str,
    current: str,
    settings: ComparisonConfig | None = None,
    *,
    allow_config_change: bool = False,
) -> Comparison:
    """Compares two runs from their statistics (see the module docstring).

    Args:
      baseline: The baseline run's `output.path` (the training data's run, last week's...).
      current: The current run's `output.path`.
      settings: Thresholds and rules (defaults: `ComparisonConfig()`).
      allow_config_change: Compare even when the attribution fingerprints differ.

    Returns:
      The comparison.

    Raises:
      CompareError: a run cannot be read.
      IncompatibleRunsError: the fingerprints differ and `allow_config_change` is False (the
        exception carries the comparison, with no measurements).
    """
    settings = settings or ComparisonConfig()
    runs = Run(baseline), Run(current)
    b, c = runs
    diffs = differences(b.fingerprint, c.fingerprint)
    notes = []
    if diffs and not allow_config_change:
        comparison = Comparison([], [], diffs, notes, baseline, current)
        raise IncompatibleRunsError(
            f"the runs were attributed differently ({diffs[0]}"
            f"{f'; and {len(diffs) - 1} more' if len(diffs) > 1 else ''}): a changed "
            "explanation setup is not data drift (--allow-config-change compares anyway)",
            comparison,
        )
    if diffs:
        notes.append("compared although the attribution setups differ: " + "; ".join(diffs))
    versions = [(r.fingerprint or {}).get("igbeam") for r in runs]
    if versions[0] != versions[1]:
        notes.append(f"made by igbeam {versions[0]} and {versions[1]}")
    for name, run in (("baseline", b), ("current", c)):
        if not run.slices:
            notes.append(f"the {name} run has no examples: nothing to compare")
        elif not run.replicate_ids:
            notes.append(
                f"the {name} run has no replicates (statistics.replicates: 0): noise floors "
                "are unknown, only thresholds decide"
            )
    comparer = _Comparer(b, c, settings)
    measurements = []
    for key in _slice_keys(b, c):
        attributed = list(
            dict.fromkeys([*_Side(b, ALL_DATA).features(key), *_Side(c, ALL_DATA).features(key)])
        )
        inputs = list(
            dict.fromkeys(
                [*b.inputs.get((ALL_DATA, *key), {}), *c.inputs.get((ALL_DATA, *key), {})]
            )
        )
        for metric in METRICS.values():
            names = {"feature": attributed, "input": inputs, "slice": [""]}[metric.scope]
            for feature in names:
                if metric.name == "input_jsd" and _kind(b, c, key, feature) != "numeric":
                    continue
                if metric.name == "input_linf" and _kind(b, c, key, feature) != "categorical":
                    continue
                measurements.append(comparer.measure(metric, key, feature))
    anomalies = sorted(
        (dict(m, reason=_reason(m)) for m in measurements if m["breached"]),
        key=lambda m: (_PRIORITY[m["metric"]], -m["severity"]),
    )
    return Comparison(measurements, anomalies, diffs, notes, baseline, current)


def _kind(b: Run, c: Run, key: SliceKey, feature: str) -> str | None:
    for run in (b, c):
        row = run.inputs.get((ALL_DATA, *key), {}).get(feature)
        if row is not None:
            return row["kind"]
    return None


def _reason(m: dict) -> str:
    where = "" if m["slice_name"] == "all" else f"[{m['slice_name']}={m['slice_value']}] "
    what = METRICS[m["metric"]].what
    subject = f"{m['feature']}: " if m["feature"] else ""
    values = ""
    if not (math.isnan(m["baseline_value"]) or math.isnan(m["current_value"])):
        values = f" ({m['baseline_value']:.4g} -> {m['current_value']:.4g})"
    side = "below" if METRICS[m["metric"]].direction == "below" else "above"
    floor = "" if math.isnan(m["noise_floor"]) else f", noise floor {m['noise_floor']:.3g}"
    return (
        f"{where}{subject}{what} {m['value']:.4g}{values} is {side} its threshold "
        f"{m['threshold']:.4g}{floor}; {m['baseline_examples']} vs {m['current_examples']} "
        "examples"
    )


# ----------------------------------------------------------------------------------- writing


def _anomalies_proto(comparison: Comparison) -> Any:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    proto = anomalies_pb2.Anomalies()
    proto.anomaly_name_format = anomalies_pb2.Anomalies.SERIALIZED_PATH
    kinds = {
        "attribution_jsd": (
            anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE,
            anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
        ),
        "input_jsd": (
            anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE,
            anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
        ),
        "input_linf": (
            anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY,
            anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
        ),
    }
    infos: dict[tuple[str, ...], Any] = {}
    for m in comparison.measurements:
        path = _path(m)
        if m["metric"] in kinds and not math.isnan(m["value"]):
            info = infos.get(path)
            if info is None:
                info = infos[path] = proto.drift_skew_info.add()
                info.path.step.extend(path)
            measurement = info.drift_measurements.add()
            measurement.type = kinds[m["metric"]][0]
            measurement.value = m["value"]
            measurement.threshold = m["threshold"] if m["threshold"] is not None else 0.0
    for m in comparison.anomalies:
        path = _path(m)
        info = proto.anomaly_info["/".join(path)]
        info.severity = anomalies_pb2.AnomalyInfo.ERROR
        info.path.step[:] = list(path)
        reason = info.reason.add()
        reason.type = kinds.get(m["metric"], (None, anomalies_pb2.AnomalyInfo.CUSTOM_VALIDATION))[1]
        reason.short_description = METRICS[m["metric"]].what
        reason.description = m["reason"]
        info.short_description = reason.short_description
        info.description = "; ".join(r.description for r in info.reason)
    return proto


def _path(m: dict) -> tuple[str, ...]:
    """A measurement's TFMD path: [slice,] attr_<feature> | <input feature> | "slice"."""
    if m["scope"] == "feature":
        leaf = "attr_" + m["feature"]
    elif m["scope"] == "input":
        leaf = m["feature"]
    else:
        leaf = "slice"
    if m["slice_name"] == "all":
        return (leaf,)
    return (f"{m['slice_name']}={m['slice_value']}", leaf)


def write_comparison(comparison: Comparison, out: str) -> dict[str, str]:
    """Writes `drift.parquet`, `drift.json` and `anomalies.pbtxt` into `out`; returns their paths.

    `drift.json` holds the verdict, the fingerprint differences and notes, then the anomalies,
    most severe first, each with a one-line reason.
    """
    from google.protobuf import text_format

    if "://" not in out:
        os.makedirs(out, exist_ok=True)
    paths = {
        "parquet": _join(out, "drift.parquet"),
        "json": _join(out, "drift.json"),
        "anomalies": _join(out, "anomalies.pbtxt"),
    }
    table = pa.Table.from_pylist(comparison.measurements, schema=DRIFT_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    report = {
        "baseline": comparison.baseline,
        "current": comparison.current,
        "comparable": not comparison.fingerprint_differences,
        "fingerprint_differences": comparison.fingerprint_differences,
        "notes": comparison.notes,
        "anomalies": [{k: _json_value(v) for k, v in m.items()} for m in comparison.anomalies],
        "measurements": len(comparison.measurements),
        "breached": len(comparison.anomalies),
    }
    files = {
        paths["parquet"]: buffer.getvalue(),
        paths["json"]: json.dumps(report, indent=2).encode(),
        paths["anomalies"]: text_format.MessageToString(_anomalies_proto(comparison)).encode(),
    }
    for path, data in files.items():
        _write(path, data)
    return paths


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write(path: str, data: bytes) -> None:
    if "://" not in path:
        with open(path, "wb") as f:
            f.write(data)
        return
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(data)


def iter_breaches(comparison: Comparison) -> Iterable[str]:
    """The one-line reasons of the anomalies, most severe first."""
    return (m["reason"] for m in comparison.anomalies)
