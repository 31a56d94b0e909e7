"""CNN benchmark: the raw IG engine vs the whole igbeam pipeline on a small image model.

The second model of the benchmarks (issue 13): where `bench_throughput.py` times a tabular MLP
with 64 scalar inputs, this one times a small CNN with one image input, so the engine's work
per example is large and the pipeline moves 3,072 values per example (in, and out unless the
images are PNGs: then it writes a sum and an 8x8 grid per example). One run
builds (no downloads; reused when already built for the same N and encoding) the model

  image (32, 32, 3) -> Conv2D 32 3x3 relu same -> MaxPool 2 -> Conv2D 64 3x3 relu same
      -> MaxPool 2 -> Flatten -> Dense 10 softmax

(Keras 3 functional, random weights from seed 0, saved as `.keras`) and N images (uniform
[0, 1) float32, seed 0) as gzip TFRecords of `tf.train.Example` in 4 shards (a BYTES key
`example_id` and the image) with a TFMD schema. `--encoding` says how the image is stored:

* ``floats`` (default): a `FloatList` of 3,072 values for `image`, the schema giving it the fixed
  shape [32, 32, 3] (under OUT/data);
* ``png``: the images quantised to uint8 (round(x * 255)) and stored as PNG bytes
  (`tf.io.encode_png`, one BYTES value for `image`; under OUT/data_png). The job config gets
  `images: {image: {encoding: png, height: 32, width: 32, channels: 3, scale: unit, grid:
  [8, 8]}}`, so the worker decodes them per batch, and `output.full_image_attributions` false
  (the default): the Parquet holds `attr_image` (signed sum) and `grid_image` (|attribution| per
  4x4 cell, summed over channels), what a run at scale writes.

It then measures, on the same model, steps and images:

* ``raw engine``: `attribution.IntegratedGradients` on in-memory numpy arrays in batches of the
  pipeline's batch size: the float images, or with png the pixels the pipeline sees after
  decoding (uint8 / 255 as float32; no decoding timed). Built and called once (tracing) before
  timing.
* ``pipeline``: `pipeline.job.run_job` (TFRecords -> Parquet attributions + statistics +
  summary.json) on the DirectRunner, in-process (``--direct_num_workers=1``), the whole call
  timed: planning, model loading and tracing included.

Repeats are interleaved (raw, pipeline, raw, ...); medians are reported with the ratio pipeline
/ raw engine (target >= 0.9), also with the raw engine's one model load and first (tracing) call
added to its time (the pipeline's time includes both), and the pipeline's busy time per stage
(`transforms.stages`). Each pipeline run is checked: all N attributed, no dead letters,
accounting balanced; after the timings the Parquet attributions of a few examples are compared
with the raw engine's (with png: `attr_image` and `grid_image` against the raw engine's
attributions reduced the same way, and the stored PNGs, decoded as the worker does, against the
raw engine's inputs). `--sweep` first times the raw engine alone at a few (batch size,
max_rows_per_call) settings, the evidence for the defaults. Everything goes to a JSON file
(default OUT/cnn.json; with png OUT/cnn_png.json, and the job writes to OUT/job_png instead of
OUT/job).

  .venv/bin/python benchmarks/bench_cnn.py [--examples N] [--steps S] [--repeats R]
      [--batch-size B] [--max-rows-per-call M] [--encoding {floats,png}] [--sweep]
      [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
from bench_throughput import (  # noqa: E402
    IN_PROCESS_ARGS,
    RUNNERS,
    Timer,
    _load,
    example_keys,
    print_breakdown,
    run_header,
    stage_breakdown,
)
from bench_throughput import job_config as throughput_job_config  # noqa: E402

from pipeline.examples import write_tfrecord_shards  # noqa: E402

FEATURE = "image"
SHAPE = (32, 32, 3)
SIZE = int(np.prod(SHAPE))
FILTERS = (32, 64)
CLASSES = 10
SEED = 0
SHARDS = 4
BATCH_SIZE = 32
MAX_ROWS_PER_CALL = 1600
METHOD = "gausslegendre"
TARGET_RATIO = 0.9
KEY_FEATURE = "example_id"
# (batch size, max_rows_per_call) pairs the raw engine is timed at with --sweep.
SWEEP = ((16, 800), (32, 800), (32, 1600), (64, 1600), (64, 3200), (128, 6400))
# Examples whose Parquet attributions are compared with the raw engine's.
CHECKED = 8
ENCODINGS = ("floats", "png")
# With --encoding png: the summary grid of `images.image` (4x4-pixel cells of the 32x32 image).
GRID = (8, 8)
# With png, the relative difference allowed between the pipeline's attr_/grid_ columns and the
# raw engine's attributions reduced the same way.
SUMMARY_RTOL = 1e-5

SCHEMA_TEXT = (
    f'feature {{ name: "{FEATURE}" type: FLOAT shape {{ '
    + " ".join(f"dim {{ size: {d} }}" for d in SHAPE)
    + " } }\n"
    + f'feature {{ name: "{KEY_FEATURE}" type: BYTES shape {{ dim {{ size: 1 }} }} }}\n'
)
PNG_SCHEMA_TEXT = (
    f'feature {{ name: "{FEATURE}" type: BYTES shape {{ dim {{ size: 1 }} }} }}\n'
    + f'feature {{ name: "{KEY_FEATURE}" type: BYTES shape {{ dim {{ size: 1 }} }} }}\n'
)


# --------------------------------------------------------------------------------------------
# Inputs: model and data
# --------------------------------------------------------------------------------------------


def make_images(n: int, seed: int = SEED) -> np.ndarray:
    """[n, 32, 32, 3] float32 uniform in [0, 1)."""
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def quantised_images(n: int, seed: int = SEED) -> np.ndarray:
    """`make_images` as 8-bit pixels: [n, 32, 32, 3] uint8, round(x * 255)."""
    return np.clip(np.round(make_images(n, seed) * 255.0), 0, 255).astype(np.uint8)


def model_images(n: int, encoding: str) -> np.ndarray:
    """The [n, 32, 32, 3] float32 images the model sees in the pipeline: the stored floats, or
    the decoded PNG pixels scaled as `images.image.scale: unit` does (uint8 / 255)."""
    if encoding == "png":
        return quantised_images(n).astype(np.float32) / np.float32(255.0)
    return make_images(n)


def png_column(pixels: np.ndarray) -> list[bytes]:
    """One PNG (`tf.io.encode_png`) per [32, 32, 3] uint8 image; checks each decodes back."""
    import tensorflow as tf

    out = []
    for image in pixels:
        data = tf.io.encode_png(image).numpy()
        if not np.array_equal(tf.io.decode_png(data, channels=3).numpy(), image):
            raise RuntimeError("a PNG did not decode to the pixels it was made from")
        out.append(data)
    return out


def build_model(path: str, seed: int = SEED) -> None:
    """Saves the untrained CNN (32x32x3 -> conv 32 -> pool -> conv 64 -> pool -> dense 10)."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input(SHAPE, name=FEATURE)
    h = image
    for filters in FILTERS:
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="probs")(h)
    keras.Model(image, out).save(path)


def prepare(out: str, n: int, encoding: str = "floats") -> dict[str, str]:
    """Creates (or reuses, when made with the same N and encoding) the model and TFRecords
    under `out`: float lists in `out/data` (manifest `inputs.json`), PNGs in `out/data_png`
    (manifest `inputs_png.json`), so that neither clobbers the other."""
    png = encoding == "png"
    data_dir = os.path.join(out, "data_png" if png else "data")
    model_path = os.path.join(out, "model.keras")
    manifest_path = os.path.join(out, "inputs_png.json" if png else "inputs.json")
    manifest = {"examples": n, "seed": SEED, "shards": SHARDS, "shape": list(SHAPE)}
    if png:
        manifest["encoding"] = "png"
    try:
        with open(manifest_path) as f:
            reusable = json.load(f) == manifest and os.path.exists(model_path)
    except (OSError, ValueError):
        reusable = False
    what = f"{n} {'PNG' if png else 'float'} images"
    if not reusable:
        shutil.rmtree(data_dir, ignore_errors=True)
        os.makedirs(out, exist_ok=True)
        start = time.perf_counter()
        # The model is the same for both encodings (seed 0): rebuilt only when missing, or for
        # the float data as before.
        if not png or not os.path.exists(model_path):
            build_model(model_path)
        if png:
            image_column: Any = png_column(quantised_images(n))
            schema_text = PNG_SCHEMA_TEXT
        else:
            image_column, schema_text = make_images(n).reshape(n, SIZE), SCHEMA_TEXT
        columns = {FEATURE: image_column, KEY_FEATURE: example_keys(n)}
        write_tfrecord_shards(data_dir, columns, shards=SHARDS, schema_text=schema_text)
        with open(manifest_path, "w") as f:
            json.dump(manifest, f)
        print(f"built model and {what} in {time.perf_counter() - start:.1f}s")
    else:
        print(f"reusing model and {what} in {out}")
    return {
        "model": model_path,
        "pattern": os.path.join(data_dir, "*.tfrecord.gz"),
        "schema": os.path.join(data_dir, "schema.pbtxt"),
    }


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


class RawEngine:
    """The engine on in-memory arrays: built and warmed up once, then timed over all N."""

    def __init__(
        self,
        model_path: str,
        steps: int,
        n: int,
        batch_size: int,
        max_rows: int,
        encoding: str = "floats",
    ):
        from attribution import IntegratedGradients, load_model

        self.images = model_images(n, encoding)
        self.keys = example_keys(n)
        self.n, self.batch_size = n, batch_size
        with Timer() as load:
            self.engine = IntegratedGradients(
                load_model(model_path), steps=steps, method=METHOD, max_rows_per_call=max_rows
            )
        self.load_seconds = load.wall
        with Timer() as warmup:
            self._call(slice(0, min(n, batch_size)))  # traces the compiled functions
        self.warmup_seconds = warmup.wall

    def _call(self, s: slice) -> Any:
        return self.engine.attribute({FEATURE: self.images[s]}, keys=self.keys[s])

    def run(self) -> tuple[float, float]:
        """(wall, CPU) seconds to attribute all N examples in batches."""
        with Timer() as t:
            for i in range(0, self.n, self.batch_size):
                self._call(slice(i, i + self.batch_size))
        return t.wall, t.cpu

    def attributions(self, index: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """([k, 32, 32, 3] attributions, [k] deltas) of the given examples, in one call."""
        idx = np.asarray(index)
        result = self.engine.attribute({FEATURE: self.images[idx]}, keys=self.keys[idx])
        attr = result.attributions
        attr = attr[FEATURE] if isinstance(attr, dict) else attr
        return np.asarray(attr), np.asarray(result.deltas)


def job_config(
    paths: dict[str, str],
    steps: int,
    output: str,
    batch: int,
    rows: int,
    encoding: str = "floats",
) -> Any:
    """The benchmark job: the image attributed, zeros baseline, predicted class; with png, the
    `images` section that has the worker decode the PNGs, and no full attributions."""
    config = throughput_job_config(paths, steps, output, paths["pattern"], batch, rows)
    if encoding != "png":
        return config
    from pipeline.config import JobConfig

    data = config.to_dict()
    data["images"] = {
        FEATURE: {
            "encoding": "png",
            "height": SHAPE[0],
            "width": SHAPE[1],
            "channels": SHAPE[2],
            "scale": "unit",
            "grid": list(GRID),
        }
    }
    data["output"] = {**data["output"], "full_image_attributions": False}
    return JobConfig.from_dict(data)


def run_pipeline(config: Any, n: int, snapshots: list) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole in-process `run_job` call; checks its counts."""
    from pipeline.job import run_job
    from transforms import stages

    stages.reset()
    with Timer() as t:
        summary = run_job(config, list(IN_PROCESS_ARGS))
    RUNNERS.mark_run(IN_PROCESS_ARGS)
    snapshots.append(stages.snapshot())
    counts = summary["counts"]
    if (
        counts["examples_attributed"] != n
        or counts["dead_letters"]
        or not summary["accounting"]["balanced"]
    ):
        raise RuntimeError(
            f"pipeline attributed {counts}, accounting {summary['accounting']}; "
            f"expected {n}, no dead letters, balanced"
        )
    return t.wall, t.cpu


def summaries(attributions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw engine's [k, 32, 32, 3] attributions reduced as the pipeline's `attr_image` and
    `grid_image` are: signed sums [k] and |attribution| per GRID cell (4x4 pixels) summed over
    the channels [k, GH * GW] (row-major), in float64. Written out here, not taken from
    `transforms.images`, so that the check is independent of the code it checks."""
    values = np.asarray(attributions, np.float64)
    k, (gh, gw) = len(values), GRID
    cell_h, cell_w = SHAPE[0] // gh, SHAPE[1] // gw
    cells = np.abs(values).reshape(k, gh, cell_h, gw, cell_w, SHAPE[2]).sum(axis=(2, 4, 5))
    return values.reshape(k, -1).sum(axis=1), cells.reshape(k, gh * gw)


def decoded_inputs_match(pattern: str, raw: RawEngine, index: Sequence[int]) -> bool:
    """Whether the stored PNGs of the given examples, decoded as the worker decodes them
    (`transforms.images.decode_image`), equal the raw engine's in-memory inputs exactly."""
    import tensorflow as tf

    from transforms.images import ImageSpec, decode_image

    spec = ImageSpec(FEATURE, "png", *SHAPE, "unit", GRID, SHAPE)
    wanted = {raw.keys[i]: i for i in index}
    found = 0
    for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern)), compression_type="GZIP"):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        key = features[KEY_FEATURE].bytes_list.value[0].decode()
        if key in wanted:
            pixels = decode_image(features[FEATURE].bytes_list.value[0], spec)
            if pixels.dtype != raw.images.dtype or not np.array_equal(
                pixels, raw.images[wanted[key]]
            ):
                return False
            found += 1
    return found == len(wanted)


def check_outputs(
    output: str, raw: RawEngine, n: int, encoding: str = "floats", pattern: str = ""
) -> dict[str, Any]:
    """Compares the pipeline's Parquet attributions of a few examples with the raw engine's:
    all of them with floats; with png the `attr_`/`grid_` summaries (and the decoded inputs)."""
    import pyarrow.parquet as pq

    from transforms.constants import ATTRIBUTION_PREFIX, GRID_PREFIX, KEY_COLUMN

    png = encoding == "png"
    column = ATTRIBUTION_PREFIX + FEATURE
    grid_column = GRID_PREFIX + FEATURE
    files = sorted(glob.glob(os.path.join(output, "attributions", "*.parquet")))
    columns = [KEY_COLUMN, column, "delta", "prediction"] + ([grid_column] if png else [])
    table = pq.ParquetDataset(files).read(columns=columns)
    keys = table.column(KEY_COLUMN).to_pylist()
    if len(keys) != n or len(set(keys)) != n:
        raise RuntimeError(f"attributions: {len(keys)} rows, {len(set(keys))} keys; expected {n}")
    row_of = {k: i for i, k in enumerate(keys)}
    index = sorted({int(i) for i in np.linspace(0, n - 1, min(CHECKED, n))})
    ours, raw_deltas = raw.attributions(index)
    rows = [row_of[raw.keys[i]] for i in index]
    deltas = np.abs(table.column("delta").to_numpy())
    if png:
        sums, grids = summaries(ours)
        their_sums = np.array([table.column(column)[r].as_py() for r in rows], np.float64)
        their_grids = np.array([table.column(grid_column)[r].as_py() for r in rows], np.float64)
        totals = grids.sum(axis=1)  # sum of |attribution| per example
        # Signed sums can cancel: their differences are taken relative to the example's total
        # |attribution|; each grid cell's relative to the cell.
        sum_rel = float((np.abs(their_sums - sums) / totals).max())
        grid_rel = float((np.abs(their_grids - grids) / np.maximum(grids, 1e-30)).max())
        compared: dict[str, Any] = {
            "attribution_column_type": str(table.schema.field(column).type),
            "grid_column_type": str(table.schema.field(grid_column).type),
            "full_attributions_stored": "full_" + FEATURE in pq.read_schema(files[0]).names,
            "checked_examples": len(index),
            "decoded_pngs_equal_raw_inputs": decoded_inputs_match(pattern, raw, index),
            "attr_max_relative_difference": sum_rel,
            "grid_max_relative_difference": grid_rel,
            "summaries_within_rtol": bool(max(sum_rel, grid_rel) <= SUMMARY_RTOL),
            "summary_rtol": SUMMARY_RTOL,
            "max_abs_attribution_sum": float(np.abs(sums).max()),
        }
    else:
        theirs = np.array([table.column(column)[r].as_py() for r in rows], dtype=np.float64)
        theirs = theirs.reshape(len(index), *SHAPE)
        compared = {
            "attribution_column_type": str(table.schema.field(column).type),
            "checked_examples": len(index),
            "max_abs_difference": float(np.abs(ours - theirs).max()),
            "max_abs_attribution": float(np.abs(ours).max()),
            "allclose_rtol_1e-4_atol_1e-6": bool(np.allclose(ours, theirs, rtol=1e-4, atol=1e-6)),
        }
    return {
        **compared,
        "completeness_abs_delta": {
            "median": float(np.median(deltas)),
            "max": float(deltas.max()),
            "max_raw_checked": float(np.abs(raw_deltas).max()),
        },
        "prediction_range": [
            float(np.min(table.column("prediction").to_numpy())),
            float(np.max(table.column("prediction").to_numpy())),
        ],
    }


def sweep(
    paths: dict[str, str], steps: int, n: int, repeats: int, encoding: str = "floats"
) -> list[dict[str, Any]]:
    """The raw engine's time at each (batch size, max_rows_per_call) in SWEEP, interleaved."""
    engines = [(b, m, RawEngine(paths["model"], steps, n, b, m, encoding)) for b, m in SWEEP]
    walls: dict[tuple[int, int], list[float]] = {(b, m): [] for b, m, _ in engines}
    for repeat in range(repeats):
        for b, m, engine in engines:
            wall, _ = engine.run()
            walls[(b, m)].append(wall)
            print(f"  sweep {repeat + 1}/{repeats}  batch {b:4d}  rows/call {m:5d}  {wall:7.2f}s")
    rows = []
    for (b, m), w in walls.items():
        med = statistics.median(w)
        rows.append(
            {
                "batch_size": b,
                "max_rows_per_call": m,
                "wall_seconds": [round(x, 3) for x in w],
                "median_seconds": round(med, 3),
                "examples_per_second": round(n / med, 1),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="images N (1000)")
    parser.add_argument("--steps", type=int, default=50, help="integration steps (50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (3)")
    parser.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, help=f"examples per batch ({BATCH_SIZE})"
    )
    parser.add_argument(
        "--max-rows-per-call",
        type=int,
        default=MAX_ROWS_PER_CALL,
        help=f"engine rows (examples x steps) per gradient call ({MAX_ROWS_PER_CALL})",
    )
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="floats",
        help="how the images are stored: float lists (floats, the default) or PNG bytes that "
        "the pipeline decodes, summarised as attr_/grid_ columns (png)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="first time the raw engine alone at a few (batch, max_rows_per_call) settings",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "benchmarks", "out", "cnn"),
        help="working directory for the model, data and job outputs (benchmarks/out/cnn)",
    )
    parser.add_argument(
        "--json", default=None, help="results file (default OUT/cnn.json; png: OUT/cnn_png.json)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.examples, args.steps, args.repeats, args.batch_size, args.max_rows_per_call) < 1:
        raise SystemExit("--examples, --steps, --repeats, --batch-size, --max-rows-per-call >= 1")
    out = os.path.abspath(args.out)
    name = "cnn_png.json" if args.encoding == "png" else "cnn.json"
    json_path = os.path.abspath(args.json or os.path.join(out, name))
    n, steps, batch, rows = args.examples, args.steps, args.batch_size, args.max_rows_per_call
    encoding = args.encoding
    load_before = _load()
    paths = prepare(out, n, encoding)
    output = os.path.join(out, "job_png" if encoding == "png" else "job")
    config = job_config(paths, steps, output, batch, rows, encoding)

    sweep_rows = None
    if args.sweep:
        print(f"raw engine sweep (steps={steps}, {args.repeats} interleaved repeats) ...")
        sweep_rows = sweep(paths, steps, n, args.repeats, encoding)

    print(f"raw engine: loading and warming up (steps={steps}, batch {batch}, rows {rows}) ...")
    raw = RawEngine(paths["model"], steps, n, batch, rows, encoding)
    print(f"  load {raw.load_seconds:.2f}s, first call (tracing) {raw.warmup_seconds:.2f}s")

    raw_name, pipe_name = f"raw engine, batch {batch}", "pipeline, in-process (1 worker)"
    runs: dict[str, list[tuple[float, float]]] = {raw_name: [], pipe_name: []}
    snapshots: list[dict[str, dict[str, float]]] = []
    # Interleaved, so that a slow spell on a shared machine hits both alike.
    for repeat in range(args.repeats):
        for name, fn in (
            (raw_name, raw.run),
            (pipe_name, lambda: run_pipeline(config, n, snapshots)),
        ):
            wall, cpu = fn()
            runs[name].append((wall, cpu))
            print(f"  repeat {repeat + 1}/{args.repeats}  {name:<34} {wall:7.2f}s  cpu {cpu:7.2f}s")

    checks = check_outputs(output, raw, n, encoding, paths["pattern"])
    variants = []
    for name, r in runs.items():
        walls, cpus = [w for w, _ in r], [c for _, c in r]
        med = statistics.median(walls)
        variants.append(
            {
                "variant": name,
                "examples": n,
                "wall_seconds": [round(w, 3) for w in walls],
                "cpu_seconds": [round(c, 3) for c in cpus],
                "median_seconds": round(med, 3),
                "min_seconds": round(min(walls), 3),
                "median_cpu_seconds": round(statistics.median(cpus), 3),
                "examples_per_second": round(n / med, 1),
            }
        )
    raw_row, pipe_row = variants
    ratio = {
        "median": round(raw_row["median_seconds"] / pipe_row["median_seconds"], 3),
        "min": round(raw_row["min_seconds"] / pipe_row["min_seconds"], 3),
        "cpu": round(raw_row["median_cpu_seconds"] / pipe_row["median_cpu_seconds"], 3),
        # The pipeline's time includes one model load and tracing; the raw loop's does not.
        "median_raw_incl_load_and_first_call": round(
            (raw_row["median_seconds"] + raw.load_seconds + raw.warmup_seconds)
            / pipe_row["median_seconds"],
            3,
        ),
    }
    wall = statistics.median(w for w, _ in runs[pipe_name])
    breakdown = stage_breakdown(snapshots, wall, None, n, None)

    print()
    print(
        f"N={n} images {SHAPE} stored as {encoding}, steps={steps}, method={METHOD}, "
        f"batch {batch}, "
        f"max_rows_per_call {rows}, cpus={os.cpu_count()}, "
        f"pipeline runner: {', '.join(sorted(RUNNERS.used))}"
    )
    if sweep_rows:
        print("raw engine sweep (median s, ex/s):")
        for r in sweep_rows:
            print(
                f"  batch {r['batch_size']:4d}  rows/call {r['max_rows_per_call']:5d}  "
                f"{r['median_seconds']:7.2f}s  {r['examples_per_second']:7.1f} ex/s"
            )
    header = f"{'variant':<34} {'median s':>8} {'min s':>7} {'cpu s':>7} {'ex/s':>7}"
    print(header)
    print("-" * len(header))
    for r in variants:
        print(
            f"{r['variant']:<34} {r['median_seconds']:8.2f} {r['min_seconds']:7.2f} "
            f"{r['median_cpu_seconds']:7.2f} {r['examples_per_second']:7.1f}"
        )
    verdict = "meets" if ratio["median"] >= TARGET_RATIO else "misses"
    print(
        f"\npipeline / raw engine: {ratio['median']:.2f} on median wall time ({verdict} the "
        f"{TARGET_RATIO} target); {ratio['min']:.2f} on best wall; {ratio['cpu']:.2f} on CPU; "
        f"{ratio['median_raw_incl_load_and_first_call']:.2f} with the raw engine's one model load "
        "and first (tracing) call counted too, as the pipeline's are"
    )
    print_breakdown(breakdown, n)
    cd = checks["completeness_abs_delta"]
    if encoding == "png":
        compared = (
            f"decoded PNGs == raw inputs {checks['decoded_pngs_equal_raw_inputs']}; "
            f"max relative diff attr_{FEATURE} {checks['attr_max_relative_difference']:.2e} "
            f"(of the example's sum |attr|), grid_{FEATURE} "
            f"{checks['grid_max_relative_difference']:.2e} (within {SUMMARY_RTOL:g}: "
            f"{checks['summaries_within_rtol']}); full attributions stored "
            f"{checks['full_attributions_stored']}"
        )
        column_types = (
            f"columns attr_{FEATURE} {checks['attribution_column_type']}, grid_{FEATURE} "
            f"{checks['grid_column_type']}"
        )
    else:
        compared = (
            f"max |diff| {checks['max_abs_difference']:.2e} (max |attr| "
            f"{checks['max_abs_attribution']:.2e}, allclose "
            f"{checks['allclose_rtol_1e-4_atol_1e-6']})"
        )
        column_types = f"column {checks['attribution_column_type']}"
    print(
        f"\nchecks: {n} attributed, no dead letters, accounting balanced; "
        f"{checks['checked_examples']} examples vs raw engine: {compared}; |completeness delta| "
        f"median {cd['median']:.2e}, max {cd['max']:.2e}; {column_types}"
    )

    results = {
        **run_header(load_before),
        "examples": n,
        "steps": steps,
        "encoding": encoding,
        "images_config": (config.to_dict()["images"].get(FEATURE) if encoding == "png" else None),
        "repeats": args.repeats,
        "method": METHOD,
        "batch_size": batch,
        "max_rows_per_call": rows,
        "model": {
            "input": {FEATURE: list(SHAPE)},
            "conv_filters": list(FILTERS),
            "classes": CLASSES,
        },
        "seed": SEED,
        "shards": SHARDS,
        "beam_args": IN_PROCESS_ARGS,
        "runners_used": sorted(RUNNERS.used),
        "raw_engine_load_seconds": round(raw.load_seconds, 3),
        "raw_engine_first_call_seconds": round(raw.warmup_seconds, 3),
        "variants": variants,
        "ratio_pipeline_to_raw": ratio,
        "target_ratio": TARGET_RATIO,
        "stages": breakdown,
        "checks": checks,
        "sweep": sweep_rows,
    }
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
