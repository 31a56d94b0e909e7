"""Throughput benchmark: the raw IG engine vs the whole igbeam pipeline, same model and data.

One run builds (no downloads; reused when already built for the same N) a 64-feature tabular
MLP (64 -> 256 -> 256 -> 10 softmax, dict input `f00`..`f63`, each [B, 1], random weights from a
fixed seed, saved as `.keras`) and N gzip TFRecord examples in 8 shards with a TFMD schema, then
measures, on the same model, steps and data:

* ``raw engine``: `attribution.IntegratedGradients` on in-memory numpy arrays in batches of 256
  (the pipeline's batch size) and, as a variant, 1024. The engine is built and called once
  (which traces its compiled functions) before timing; examples/s over all N examples.
* ``pipeline``: `pipeline.job.run_job` (TFRecords -> Parquet attributions + statistics +
  summary.json) on the DirectRunner, in-process (``--direct_num_workers=1``) and with two worker
  processes (``--direct_running_mode=multi_processing --direct_num_workers=2``). The wall time of
  the whole `run_job` call is measured: planning, model loading and tracing included.
* a smaller in-process pipeline run (2 of the 8 shards): the difference to the full run gives
  the pipeline's marginal (per-example) rate and its fixed cost per run.
* a one-batch in-process pipeline run (256 examples in their own file): the fixed cost of a run
  measured directly, and with it the ceiling raw / (raw + fixed) that no per-example speed-up
  can lift the ratio at N above.

Repeats are interleaved (raw, raw 1024, pipeline, pipeline x2, subset, raw, ...) so that a slow
spell on a shared machine hits every variant alike; medians are reported, with the ratio
pipeline / raw engine (issue 13: >= 0.85 at 200,000 examples). Everything goes to a JSON file
(default OUT/results.json).

  .venv/bin/python benchmarks/bench_throughput.py [--examples N] [--steps S] [--repeats R]
      [--out DIR] [--json PATH] [--no-multiprocess] [--no-marginal] [--no-fixed]
      [--profile PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from pipeline.examples import shard_path, write_tfrecord_shards  # noqa: E402
from pipeline.job import library_versions  # noqa: E402

NUM_FEATURES = 64
FEATURES = [f"f{i:02d}" for i in range(NUM_FEATURES)]
HIDDEN = (256, 256)
CLASSES = 10
SEED = 0
SHARDS = 8
BATCH_SIZE = 256
MAX_ROWS_PER_CALL = 16384
METHOD = "gausslegendre"
TARGET_RATIO = 0.85
KEY_FEATURE = "example_id"
# The shards of the smaller pipeline run used to separate fixed from per-example costs.
SUBSET_SHARDS = (0, 1)
# The one-batch pipeline run that measures the fixed cost of a run directly.
TINY_EXAMPLES = BATCH_SIZE

IN_PROCESS_ARGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
MULTI_PROCESS_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

SCHEMA_TEXT = (
    "".join(
        f'feature {{ name: "{f}" type: FLOAT shape {{ dim {{ size: 1 }} }} }}\n' for f in FEATURES
    )
    + f'feature {{ name: "{KEY_FEATURE}" type: BYTES shape {{ dim {{ size: 1 }} }} }}\n'
)


# --------------------------------------------------------------------------------------------
# Inputs: model and data
# --------------------------------------------------------------------------------------------


def make_features(n: int, seed: int = SEED) -> np.ndarray:
    """[n, 64] float32 standard normal features."""
    return np.random.default_rng(seed).normal(size=(n, NUM_FEATURES)).astype(np.float32)


def example_keys(n: int) -> np.ndarray:
    return np.array([f"ex-{i:07d}" for i in range(n)], dtype=object)


def build_model(path: str, seed: int = SEED) -> None:
    """Saves the untrained dict-input MLP 64 -> 256 -> 256 -> 10 (softmax) as `.keras`."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = {name: keras.Input((1,), name=name) for name in FEATURES}
    h = keras.layers.Concatenate()(list(inputs.values()))
    for units in HIDDEN:
        h = keras.layers.Dense(units, activation="relu")(h)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="probs")(h)
    keras.Model(inputs, out).save(path)


def write_tfrecords(directory: str, x: np.ndarray, keys: np.ndarray, shards: int) -> list[str]:
    """Writes the examples as gzip TFRecord shards plus `schema.pbtxt`; returns the shards."""
    columns: dict[str, np.ndarray] = {name: x[:, j] for j, name in enumerate(FEATURES)}
    columns[KEY_FEATURE] = keys
    return write_tfrecord_shards(directory, columns, shards=shards, schema_text=SCHEMA_TEXT)


def shard_examples(n: int, shards: Sequence[int]) -> int:
    """Examples in the given shards (example i goes to shard i % SHARDS)."""
    return sum(len(range(s, n, SHARDS)) for s in shards)


def prepare(out: str, n: int) -> dict[str, str]:
    """Creates (or reuses, when made with the same N) the model and TFRecords under `out`."""
    data_dir = os.path.join(out, "data")
    model_path = os.path.join(out, "model.keras")
    manifest_path = os.path.join(out, "inputs.json")
    tiny_dir = os.path.join(out, "data_tiny")
    manifest = {
        "examples": n,
        "seed": SEED,
        "shards": SHARDS,
        "features": NUM_FEATURES,
        "tiny": TINY_EXAMPLES,
    }
    try:
        with open(manifest_path) as f:
            reusable = json.load(f) == manifest and os.path.exists(model_path)
    except (OSError, ValueError):
        reusable = False
    if not reusable:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(tiny_dir, ignore_errors=True)
        os.makedirs(out, exist_ok=True)
        start = time.perf_counter()
        build_model(model_path)
        x, keys = make_features(n), example_keys(n)
        write_tfrecords(data_dir, x, keys, SHARDS)
        write_tfrecords(tiny_dir, x[:TINY_EXAMPLES], keys[:TINY_EXAMPLES], 1)
        with open(manifest_path, "w") as f:
            json.dump(manifest, f)
        print(f"built model and {n} examples in {time.perf_counter() - start:.1f}s")
    else:
        print(f"reusing model and {n} examples in {out}")
    return {
        "model": model_path,
        "pattern": os.path.join(data_dir, "*.tfrecord.gz"),
        "subset_pattern": ",".join(shard_path(data_dir, s) for s in SUBSET_SHARDS),
        "tiny_pattern": shard_path(tiny_dir, 0),
        "schema": os.path.join(data_dir, "schema.pbtxt"),
    }


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


class Timer:
    """Wall and CPU time (this process, all threads) of a block."""

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


class RawEngine:
    """The engine on in-memory arrays: built and warmed up once, then timed over all N."""

    def __init__(self, model_path: str, steps: int, n: int) -> None:
        from attribution import IntegratedGradients, load_model

        x = make_features(n)
        self.inputs = {name: x[:, j : j + 1] for j, name in enumerate(FEATURES)}
        self.keys = example_keys(n)
        self.n = n
        with Timer() as load:
            self.engine = IntegratedGradients(
                load_model(model_path),
                steps=steps,
                method=METHOD,
                max_rows_per_call=MAX_ROWS_PER_CALL,
            )
        self.load_seconds = load.wall
        with Timer() as warmup:
            self._call(slice(0, min(n, BATCH_SIZE)))  # traces the compiled functions
        self.warmup_seconds = warmup.wall

    def _call(self, s: slice) -> Any:
        return self.engine.attribute({k: v[s] for k, v in self.inputs.items()}, keys=self.keys[s])

    def run(self, batch_size: int) -> tuple[float, float | None]:
        """(wall, CPU) seconds to attribute all N examples in batches of `batch_size`."""
        with Timer() as t:
            for i in range(0, self.n, batch_size):
                self._call(slice(i, i + batch_size))
        return t.wall, t.cpu


def job_config(
    paths: dict[str, str],
    steps: int,
    output: str,
    pattern: str,
    batch: int = BATCH_SIZE,
    rows: int = MAX_ROWS_PER_CALL,
) -> Any:
    """The benchmark job: every model input attributed, zeros baseline, predicted class."""
    from pipeline.config import parse_config

    return parse_config(
        {
            "model": {"path": paths["model"]},
            "input": {"pattern": pattern, "schema": paths["schema"], "key": KEY_FEATURE},
            "features": None,
            "passthrough": [],
            "attribution": {
                "method": METHOD,
                "steps": steps,
                "baseline": {"kind": "zeros"},
                "target": {"kind": "predicted"},
            },
            "batching": {"batch_size": batch, "max_rows_per_call": rows},
            "output": {"path": output},
        }
    )


class RunnerLog(logging.Handler):
    """Notes which runner the DirectRunner picked: it tries Prism first (downloading its binary
    from GitHub) and falls back to the in-process FnApiRunner when that fails, e.g. offline."""

    LOGGER = "apache_beam.runners.direct.direct_runner"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.used: set[str] = set()
        self._prism = False
        logger = logging.getLogger(self.LOGGER)
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Running pipeline with PrismRunner" in message:
            self._prism = True
        elif "Falling back" in message or "failed on PrismRunner" in message:
            self._prism = False

    def mark_run(self, beam_args: Sequence[str]) -> None:
        """Records the runner of the run that just finished, then resets."""
        named = [a.split("=", 1)[1] for a in beam_args if a.startswith("--runner=")]
        if named and named[-1] not in ("DirectRunner", "SwitchingDirectRunner"):
            self.used.add(named[-1])
        else:
            self.used.add("PrismRunner" if self._prism else "FnApiRunner (via DirectRunner)")
        self._prism = False


RUNNERS = RunnerLog()
STAGES: dict[int, list[dict[str, dict[str, float]]]] = {}
"""Per job config: each in-process run's busy seconds per stage (`transforms.stages`)."""

STAGE_ORDER = ("read", "decode", "engine", "results", "statistics", "parquet", "totals")


def print_breakdown(breakdown: dict[str, Any], n: int) -> None:
    """Prints a `stage_breakdown`: seconds and µs per example per stage, the rest, host work."""
    print(f"\nwhere the in-process run's time goes (medians, N={n}; stages in the worker thread):")
    for stage, secs in breakdown["stage_seconds"].items():
        per = breakdown["stage_us_per_example"][stage]
        print(f"  {stage:<12} {secs:7.2f}s  {per:9.1f} us/example")
    print(f"  {'Beam, other':<12} {breakdown['beam_and_other_seconds']:7.2f}s  (wall less stages)")
    cpu = breakdown.get("host_cpu_us_per_example")
    beyond = f"; {cpu} us/example of CPU beyond the raw engine's" if cpu is not None else ""
    wall = breakdown["host_wall_us_per_example"]
    print(f"  host work: {wall:.1f} us/example of wall outside the engine{beyond}")


def run_header(load_before: list[float] | None) -> dict[str, Any]:
    """The part of a results JSON that says when, how and where it was measured."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
        "versions": library_versions(),
    }


def stage_breakdown(
    snapshots: list[dict[str, dict[str, float]]],
    wall: float,
    cpu: float | None,
    n: int,
    raw_cpu: float | None,
) -> dict[str, Any]:
    """Median busy seconds per stage of the in-process runs, per example and as shares.

    `host_wall_us_per_example` is the run's median wall time less the engine stage, per example:
    what the engine waits for. `host_cpu_us_per_example` is the run's CPU time less the raw
    engine's CPU time on the same examples (the issue-13 measure: CPU of everything but the
    engine). Stages are measured in the worker thread: decoding runs in a background thread
    while the engine attributes the previous batch, so stage times can add up to more than the
    wall time.
    """
    names = [s for s in STAGE_ORDER if any(s in snap for snap in snapshots)]
    seconds = {
        s: statistics.median(snap.get(s, {}).get("seconds", 0.0) for snap in snapshots)
        for s in names
    }
    other = wall - sum(v for k, v in seconds.items() if k != "decode")
    return {
        "stage_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "stage_us_per_example": {k: round(v / n * 1e6, 1) for k, v in seconds.items()},
        "beam_and_other_seconds": round(other, 3),
        "host_wall_us_per_example": round((wall - seconds.get("engine", 0.0)) / n * 1e6, 1),
        "host_cpu_us_per_example": (
            round((cpu - raw_cpu) / n * 1e6, 1) if cpu is not None and raw_cpu else None
        ),
    }


def run_pipeline(config: Any, beam_args: Sequence[str], n: int) -> tuple[float, float | None]:
    """(wall, CPU) seconds of one whole `run_job` call; checks every example was attributed.

    CPU time is this process's only, so it is None for multi_processing (workers are children).
    """
    from pipeline.job import run_job
    from transforms import stages

    stages.reset()
    with Timer() as t:
        summary = run_job(config, list(beam_args))
    RUNNERS.mark_run(beam_args)
    STAGES.setdefault(id(config), []).append(stages.snapshot())
    counts = summary["counts"]
    if counts["examples_attributed"] != n or counts["dead_letters"]:
        raise RuntimeError(f"pipeline attributed {counts}; expected {n} and no dead letters")
    in_process = "--direct_running_mode=multi_processing" not in beam_args
    return t.wall, t.cpu if in_process else None


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

RAW = f"raw engine, batch {BATCH_SIZE}"
RAW_1024 = "raw engine, batch 1024"
RAW_COLD = f"raw engine, batch {BATCH_SIZE}, incl. load + first call (derived)"
PIPE = "pipeline, in-process (1 worker)"
PIPE_MP = "pipeline, multi_processing (2 workers)"
PIPE_SUB = "pipeline, in-process, {shards} of {total} shards"
PIPE_MARGINAL = "pipeline, in-process, marginal (derived)"
PIPE_TINY = "pipeline, in-process, {n} examples (one batch)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="examples N (20000)")
    parser.add_argument("--steps", type=int, default=50, help="integration steps (50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (3)")
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "benchmarks", "out"),
        help="working directory for the model, data and job outputs (benchmarks/out)",
    )
    parser.add_argument("--json", default=None, help="results file (default OUT/results.json)")
    parser.add_argument(
        "--runner",
        default=None,
        help="Beam --runner for the pipeline runs (default: none, i.e. the DirectRunner, "
        "which uses Prism when it can download it and the FnApiRunner otherwise; "
        "FnApiRunner pins the latter)",
    )
    parser.add_argument(
        "--no-multiprocess",
        action="store_true",
        help="skip the multi_processing DirectRunner variant",
    )
    parser.add_argument(
        "--no-marginal",
        action="store_true",
        help="skip the smaller pipeline run that separates fixed from per-example costs",
    )
    parser.add_argument(
        "--no-fixed",
        action="store_true",
        help="skip the one-batch pipeline run that measures the fixed cost of a run",
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="PATH",
        help="after the timings, run the in-process pipeline once more under cProfile and "
        "dump the stats to PATH (the top functions also go to the JSON)",
    )
    return parser


ESTIMATES = ("median", "min", "cpu")
"""Per variant: median wall seconds (the headline), best (min) wall seconds, which a shared
machine disturbs least, and median CPU seconds of this process (in-process variants only)."""


def _row(name: str, runs: list[tuple[float, float | None]], n: int) -> dict[str, Any]:
    walls = [w for w, _ in runs]
    cpus = [c for _, c in runs if c is not None]
    seconds = {
        "median": statistics.median(walls),
        "min": min(walls),
        "cpu": statistics.median(cpus) if cpus else None,
    }
    return {
        "variant": name,
        "examples": n,
        "wall_seconds": [round(w, 3) for w in walls],
        "cpu_seconds": [round(c, 3) for c in cpus] or None,
        "seconds": seconds,
    }


def _derived(name: str, n: int, seconds: dict[str, float | None], how: str) -> dict[str, Any]:
    return {"variant": name, "examples": n, "derived": how, "seconds": seconds}


def _finish(rows: list[dict[str, Any]], raw: dict[str, Any]) -> None:
    """Adds examples/s and the ratio to the raw engine for every estimate; rounds seconds."""
    for r in rows:
        eps, ratio = {}, {}
        for est in ESTIMATES:
            s, s_raw = r["seconds"][est], raw["seconds"][est]
            eps[est] = round(r["examples"] / s, 1) if s and s > 0 else None
            ratio[est] = (
                round((r["examples"] / s) / (raw["examples"] / s_raw), 3)
                if s and s > 0 and s_raw
                else None
            )
        r["examples_per_second"] = eps
        r["ratio_to_raw"] = ratio
    for r in rows:
        r["seconds"] = {k: None if v is None else round(v, 3) for k, v in r["seconds"].items()}


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{value:{spec}f}" if value is not None else f"{'-':>{width}}"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'variant':<60} {'median s':>8} {'min s':>7} {'cpu s':>7} {'ex/s':>7} "
        f"{'/raw':>5} {'/raw':>5} {'/raw':>5}"
    )
    print(header)
    print(f"{'':<60} {'':>8} {'':>7} {'':>7} {'median':>7} {'med':>5} {'min':>5} {'cpu':>5}")
    print("-" * len(header))
    for r in rows:
        s, eps, ratio = r["seconds"], r["examples_per_second"], r["ratio_to_raw"]
        print(
            f"{r['variant']:<60} {_fmt(s['median'], '8.2')} {_fmt(s['min'], '7.2')} "
            f"{_fmt(s['cpu'], '7.2')} {_fmt(eps['median'], '7.0')} "
            f"{_fmt(ratio['median'], '5.2')} {_fmt(ratio['min'], '5.2')} "
            f"{_fmt(ratio['cpu'], '5.2')}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.examples < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("--examples, --steps and --repeats must be >= 1")
    out = os.path.abspath(args.out)
    json_path = os.path.abspath(args.json or os.path.join(out, "results.json"))
    n, steps = args.examples, args.steps
    load_before = _load()
    paths = prepare(out, n)
    config = job_config(paths, steps, os.path.join(out, "job"), paths["pattern"])
    n_sub = shard_examples(n, SUBSET_SHARDS)
    sub_name = PIPE_SUB.format(shards=len(SUBSET_SHARDS), total=SHARDS)
    marginal = not args.no_marginal and 0 < n_sub < n
    sub_config = job_config(paths, steps, os.path.join(out, "job_subset"), paths["subset_pattern"])
    n_tiny = min(TINY_EXAMPLES, n)
    tiny_name = PIPE_TINY.format(n=n_tiny)
    tiny_config = job_config(paths, steps, os.path.join(out, "job_tiny"), paths["tiny_pattern"])
    runner = [f"--runner={args.runner}"] if args.runner else []
    in_args, mp_args = [*runner, *IN_PROCESS_ARGS], [*runner, *MULTI_PROCESS_ARGS]

    print(f"raw engine: loading and warming up (steps={steps}) ...")
    raw = RawEngine(paths["model"], steps, n)
    print(f"  load {raw.load_seconds:.2f}s, first call (tracing) {raw.warmup_seconds:.2f}s")

    variants: list[tuple[str, int, Callable[[], tuple[float, float | None]]]] = [
        (RAW, n, lambda: raw.run(BATCH_SIZE)),
        (RAW_1024, n, lambda: raw.run(1024)),
        (PIPE, n, lambda: run_pipeline(config, in_args, n)),
    ]
    if not args.no_multiprocess:
        variants.append((PIPE_MP, n, lambda: run_pipeline(config, mp_args, n)))
    if marginal:
        variants.append((sub_name, n_sub, lambda: run_pipeline(sub_config, in_args, n_sub)))
    if not args.no_fixed:
        variants.append((tiny_name, n_tiny, lambda: run_pipeline(tiny_config, in_args, n_tiny)))
    runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name, _, _ in variants}
    # Interleaved, so that a slow spell on a shared machine hits every variant alike.
    for repeat in range(args.repeats):
        for name, _, fn in variants:
            wall, cpu = fn()
            runs[name].append((wall, cpu))
            shown = f"  cpu {cpu:7.2f}s" if cpu is not None else ""
            print(f"  repeat {repeat + 1}/{args.repeats}  {name:<44} {wall:7.2f}s{shown}")

    rows = [_row(name, runs[name], count) for name, count, _ in variants]
    by_name = {r["variant"]: r for r in rows}
    fixed_raw = raw.load_seconds + raw.warmup_seconds
    rows.insert(
        2,
        _derived(
            RAW_COLD,
            n,
            {k: v + fixed_raw for k, v in by_name[RAW]["seconds"].items()},
            "raw batch-256 seconds + the one model load + the first (tracing) call",
        ),
    )
    if marginal:
        full, sub = by_name[PIPE]["seconds"], by_name[sub_name]["seconds"]
        extra = {k: full[k] - sub[k] for k in ESTIMATES}
        rows.append(
            _derived(
                PIPE_MARGINAL,
                n - n_sub,
                extra,
                f"(N - {n_sub}) examples / (full run - {n_sub}-example run): the per-example "
                "rate once the fixed costs (model loads, tracing, Beam start) are paid; "
                "implied_fixed_seconds = full run - N / that rate",
            )
        )
        rows[-1]["implied_fixed_seconds"] = {
            k: round(full[k] - extra[k] * n / (n - n_sub), 3) for k in ESTIMATES
        }
    ceiling = None
    if not args.no_fixed:
        # The fixed cost of a run: the one-batch run less its examples at the raw engine's
        # rate (so the estimate errs low). With it, the best ratio a pipeline could reach at N
        # if its per-example work cost no more than the raw engine's.
        tiny, raw_s = by_name[tiny_name]["seconds"], by_name[RAW]["seconds"]
        fixed = {k: tiny[k] - raw_s[k] * n_tiny / n for k in ESTIMATES}
        ceiling = {
            "fixed_seconds": {k: round(v, 3) for k, v in fixed.items()},
            "ceiling_ratio": {k: round(raw_s[k] / (raw_s[k] + fixed[k]), 3) for k in ESTIMATES},
            "how": f"fixed = {n_tiny}-example run - {n_tiny} examples at the raw rate; "
            "ceiling = raw / (raw + fixed): the ratio at N if per-example work were free",
        }
    _finish(rows, by_name[RAW])
    ratio = by_name[PIPE]["ratio_to_raw"]
    pipe_s, raw_s = by_name[PIPE]["seconds"], by_name[RAW]["seconds"]
    breakdown = stage_breakdown(
        STAGES[id(config)], pipe_s["median"], pipe_s["cpu"], n, raw_s["cpu"]
    )

    profile_top = _profile(config, n, in_args, args.profile) if args.profile else None

    print()
    print(
        f"N={n} examples, steps={steps}, method={METHOD}, cpus={os.cpu_count()}, "
        f"pipeline runner: {', '.join(sorted(RUNNERS.used))}"
    )
    print_table(rows)
    verdict = "meets" if ratio["median"] >= TARGET_RATIO else "misses"
    print(
        f"\npipeline (in-process) / raw engine (batch {BATCH_SIZE}): {ratio['median']:.2f} "
        f"on median wall time ({verdict} the {TARGET_RATIO} target); {ratio['min']:.2f} on "
        f"best wall time; {ratio['cpu']:.2f} on CPU time"
    )
    print_breakdown(breakdown, n)
    if ceiling:
        fixed, top = ceiling["fixed_seconds"], ceiling["ceiling_ratio"]
        print(
            f"fixed cost of a run: {fixed['median']:.2f}s (median; {n_tiny}-example run less "
            f"its examples at the raw rate); with per-example work free, the ratio at N={n} "
            f"could reach at most {top['median']:.2f} (median), {top['min']:.2f} (best)"
        )

    results = {
        **run_header(load_before),
        "examples": n,
        "steps": steps,
        "repeats": args.repeats,
        "method": METHOD,
        "batch_size": BATCH_SIZE,
        "max_rows_per_call": MAX_ROWS_PER_CALL,
        "model": {"features": NUM_FEATURES, "hidden": list(HIDDEN), "classes": CLASSES},
        "seed": SEED,
        "shards": SHARDS,
        "beam_args": {"in_process": in_args, "multi_processing": mp_args},
        "runners_used": sorted(RUNNERS.used),
        "estimates": {
            "median": "median wall seconds over the repeats (headline)",
            "min": "best wall seconds over the repeats",
            "cpu": "median CPU seconds of this process, all threads (in-process variants only)",
        },
        "raw_engine_load_seconds": round(raw.load_seconds, 3),
        "raw_engine_first_call_seconds": round(raw.warmup_seconds, 3),
        "variants": rows,
        "ratio_pipeline_to_raw": ratio,
        "fixed_cost": ceiling,
        "stages": breakdown,
        "target_ratio": TARGET_RATIO,
        "profile_top_cumulative": profile_top,
    }
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {json_path}")
    return 0


def _profile(config: Any, n: int, beam_args: Sequence[str], path: str) -> list[dict[str, Any]]:
    """Runs the in-process pipeline once under cProfile; returns the top functions."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    wall, _ = run_pipeline(config, beam_args, n)
    profiler.disable()
    profiler.dump_stats(path)
    print(f"profiled pipeline run: {wall:.2f}s (slower under cProfile); stats in {path}")
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    top = sorted(stats.items(), key=lambda item: item[1][3], reverse=True)[:60]
    return [
        {
            "function": f"{file}:{line}({func})",
            "calls": calls,
            "tottime": round(tottime, 3),
            "cumtime": round(cumtime, 3),
        }
        for (file, line, func), (_, calls, tottime, cumtime, _) in top
    ]


if __name__ == "__main__":
    sys.exit(main())
