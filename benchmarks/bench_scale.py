"""Scale-out benchmark: one in-process worker vs worker processes that share the machine.

Same model, data and settings as `bench_throughput.py` (its `prepare` and `job_config`: the
64-input MLP, 50 steps, N examples in 8 gzip shards). Each variant runs the whole job
(`pipeline.job.run_job`) on the full data and on 2 of the 8 shards, R times, interleaved:

* ``in-process``: the DirectRunner's in-process FnApiRunner, one worker using every core
  (TensorFlow's default thread pools);
* ``multi_processing x W``: the DirectRunner with W worker processes (default W = cores),
  each with `cores / W` TensorFlow threads (igbeam's default, `workers.threads: 0`);
* ``multi_processing x W, TF default threads``: the same with every process sizing its pools
  to all cores, as before igbeam sized them (`workers.threads` forced to the core count);
* ``Dask LocalCluster x W``: `--runner DaskRunner`, igbeam's LocalCluster (W processes, one
  thread each), started and stopped inside each run.

Reported per variant: median wall seconds of the full and the subset runs, examples/s over the
whole run (start-up included), and the marginal rate (N - n_subset) / (full - subset), the rate
once worker start-up, model loads and tracing are paid, which is what a long job sees; and the
ratios of both to the in-process worker. JSON in `OUT/scale.json`.

  .venv/bin/python benchmarks/bench_scale.py [--examples N] [--repeats R] [--workers W]
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
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)

import dataclasses  # noqa: E402

from bench_throughput import SHARDS, SUBSET_SHARDS, job_config, prepare, shard_examples  # noqa: E402


def _run(config, beam_args: list[str], n: int) -> float:
    from pipeline.job import run_job

    started = time.perf_counter()
    summary = run_job(config, beam_args)
    wall = time.perf_counter() - started
    counts = summary["counts"]
    if counts["examples_attributed"] != n or not summary["accounting"]["balanced"]:
        raise RuntimeError(f"attributed {counts}, accounting {summary['accounting']}")
    return wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    n, w, cores = args.examples, args.workers, os.cpu_count() or 1
    paths = prepare(out, n)
    n_sub = shard_examples(n, SUBSET_SHARDS)

    def configs(name: str, threads: int = 0) -> tuple:
        full = job_config(paths, args.steps, os.path.join(out, "scale", name), paths["pattern"])
        sub = job_config(
            paths, args.steps, os.path.join(out, "scale", name + "_sub"), paths["subset_pattern"]
        )
        if threads:
            full, sub = (
                dataclasses.replace(c, workers=dataclasses.replace(c.workers, threads=threads))
                for c in (full, sub)
            )
        return full, sub

    mp = ["--direct_running_mode=multi_processing", f"--direct_num_workers={w}"]
    variants = {
        "in-process (1 worker, all cores)": (configs("inprocess"), ["--direct_num_workers=1"]),
        f"multi_processing x{w} ({max(1, cores // w)} TF threads each)": (configs("mp"), mp),
        f"multi_processing x{w}, TF default threads ({cores} each)": (configs("mp_tf", cores), mp),
    }
    if not args.no_dask:
        variants[f"Dask LocalCluster x{cores} (1 thread each)"] = (
            configs("dask"),
            ["--runner", "DaskRunner"],
        )
    seconds: dict[str, dict[str, list[float]]] = {k: {"full": [], "sub": []} for k in variants}
    for repeat in range(args.repeats):
        for name, ((full, sub), beam_args) in variants.items():
            for kind, config, count in (("full", full, n), ("sub", sub, n_sub)):
                wall = _run(config, beam_args, count)
                seconds[name][kind].append(wall)
                print(f"  repeat {repeat + 1}/{args.repeats}  {name:<48} {kind:<4} {wall:7.2f}s")
    rows = {}
    for name, runs in seconds.items():
        full, sub = statistics.median(runs["full"]), statistics.median(runs["sub"])
        rows[name] = {
            "full_seconds": full,
            "subset_seconds": sub,
            "examples_per_second": n / full,
            "marginal_examples_per_second": (n - n_sub) / (full - sub) if full > sub else None,
            "runs": runs,
        }
    base = rows["in-process (1 worker, all cores)"]
    print(f"\nN={n} ({SHARDS} shards; subset {n_sub}), steps={args.steps}, cores={cores}")
    print(f"{'variant':<52}{'full s':>8}{'ex/s':>9}{'ratio':>7}{'marginal':>10}{'ratio':>7}")
    for name, row in rows.items():
        row["ratio"] = row["examples_per_second"] / base["examples_per_second"]
        marginal = row["marginal_examples_per_second"]
        row["marginal_ratio"] = (
            marginal / base["marginal_examples_per_second"]
            if marginal and base["marginal_examples_per_second"]
            else None
        )
        print(
            f"{name:<52}{row['full_seconds']:>8.2f}{row['examples_per_second']:>9.0f}"
            f"{row['ratio']:>7.2f}{(marginal or float('nan')):>10.0f}"
            f"{(row['marginal_ratio'] or float('nan')):>7.2f}"
        )
    with open(os.path.join(out, "scale.json"), "w") as f:
        json.dump(
            {"examples": n, "subset": n_sub, "steps": args.steps, "cores": cores, "rows": rows},
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
