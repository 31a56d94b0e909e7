"""Report benchmark: `igbeam report` on a small run, a run 100 times larger, and a wide run.

The report reads a run's summary, its statistics and a bounded sample of rows, so its time and
size should not grow with the number of examples. This measures it: one run builds (no
downloads; reused when already built) the demo's model and three runs of it on the
DirectRunner:

* ``small``: N examples of the demo data (default 1,000), 8 steps, slices by country;
* ``large``: 100 x N examples (default 100,000), same settings;
* ``wide``: a linear model on 120 scalar features, 3,000 examples in 300 slices (plus the
  predicted-class slice): the statistics grow with features x slices, which the report bounds
  (the heatmap shows 40 slices, the table every feature).

Then `write_report` runs R times on each (interleaved: small, large, wide, small, ...), and on
the large run once with a comparison to the small one (`compare=`). Medians of the seconds, the
page's bytes, and the ratio large / small are printed and written as JSON (`OUT/report.json`).

  .venv/bin/python benchmarks/bench_report.py [--examples N] [--repeats R] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from pipeline import demo  # noqa: E402
from pipeline.examples import write_tfrecord_shards  # noqa: E402

WIDE_FEATURES = [f"w{i:03d}" for i in range(120)]
WIDE_EXAMPLES = 3000
WIDE_SLICES = 300


def _job(model: str, data: str, out: str, passthrough: list[str], slices: list[str]) -> None:
    from pipeline.config import parse_config
    from pipeline.job import run_job

    config = {
        "model": {"path": model},
        "input": {
            "pattern": os.path.join(data, "*.tfrecord.gz"),
            "schema": os.path.join(data, "schema.pbtxt"),
            "key": "example_id",
        },
        "passthrough": passthrough,
        "slices": [slices],
        "attribution": {"steps": 8},
        "batching": {"batch_size": 1024, "max_rows_per_call": 16384},
        "output": {"path": out},
    }
    run_job(parse_config(config), ["--direct_num_workers=1"])


def prepare(out: str, n: int) -> dict[str, str]:
    """Builds (or reuses) the model, data and the three runs; returns the runs' paths."""
    stamp = os.path.join(out, "report_inputs.json")
    runs = {name: os.path.join(out, "runs", name) for name in ("small", "large", "wide")}
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f).get("examples") == n:
                return runs
    os.makedirs(out, exist_ok=True)
    model = os.path.join(out, "demo_model.keras")
    demo.build_model(demo.make_data(2000, seed=0), epochs=2).save(model)
    for name, count in (("small", n), ("large", 100 * n)):
        data = os.path.join(out, "report_data", name)
        demo.write_tfrecords(data, demo.make_data(count, seed=1), shards=8)
        started = time.perf_counter()
        _job(model, data, runs[name], ["label", "country"], ["country"])
        print(f"  run {name}: {count:,} examples in {time.perf_counter() - started:.1f} s")
    import keras

    inputs = {f: keras.Input((1,), name=f) for f in WIDE_FEATURES}
    joined = keras.layers.Concatenate()(list(inputs.values()))
    keras.utils.set_random_seed(0)
    wide_model = os.path.join(out, "wide_model.keras")
    keras.Model(inputs, keras.layers.Dense(1)(joined)).save(wide_model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(WIDE_EXAMPLES, len(WIDE_FEATURES))).astype(np.float32)
    columns = {f: x[:, j] for j, f in enumerate(WIDE_FEATURES)}
    columns["bucket"] = np.array([f"b{i % WIDE_SLICES:03d}" for i in range(WIDE_EXAMPLES)])
    columns["example_id"] = np.array([f"e{i:06d}" for i in range(WIDE_EXAMPLES)])
    schema = "".join(
        f'feature {{ name: "{f}" type: FLOAT shape {{ dim {{ size: 1 }} }} }}\n'
        for f in WIDE_FEATURES
    )
    schema += 'feature { name: "bucket" type: BYTES shape { dim { size: 1 } } }\n'
    schema += 'feature { name: "example_id" type: BYTES shape { dim { size: 1 } } }\n'
    data = os.path.join(out, "report_data", "wide")
    write_tfrecord_shards(data, columns, shards=2, schema_text=schema)
    _job(wide_model, data, runs["wide"], ["bucket"], ["bucket"])
    with open(stamp, "w") as f:
        json.dump({"examples": n}, f)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="the small run's examples")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    args = parser.parse_args(argv)
    from pipeline.report import write_report

    print(f"bench_report: runs of {args.examples:,} and {100 * args.examples:,} examples ...")
    runs = prepare(args.out, args.examples)
    pages = os.path.join(args.out, "pages")
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    sizes: dict[str, int] = {}
    write_report(runs["small"], os.path.join(pages, "warmup.html"))  # imports, fonts
    for _ in range(args.repeats):
        for name, run in runs.items():
            written = write_report(run, os.path.join(pages, f"{name}.html"))
            seconds[name].append(written["seconds"])
            sizes[name] = written["bytes"]
    compared = write_report(
        runs["large"], os.path.join(pages, "compared.html"), compare=runs["small"]
    )
    results = {
        name: {"median_seconds": statistics.median(s), "bytes": sizes[name], "seconds": s}
        for name, s in seconds.items()
    }
    results["large_with_comparison"] = {"seconds": compared["seconds"], "bytes": compared["bytes"]}
    ratio = results["large"]["median_seconds"] / results["small"]["median_seconds"]
    results["ratio_large_to_small"] = ratio
    print(f"{'run':<24}{'median s':>10}{'MB':>8}")
    for name in ("small", "large", "wide"):
        r = results[name]
        print(f"{name:<24}{r['median_seconds']:>10.2f}{r['bytes'] / 1e6:>8.2f}")
    print(f"{'large, compared':<24}{compared['seconds']:>10.2f}{compared['bytes'] / 1e6:>8.2f}")
    print(f"time ratio large / small (100x the examples): {ratio:.2f}")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
