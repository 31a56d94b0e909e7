"""Memory benchmark: peak RSS of a whole in-process run at N and 10·N examples.

Same model, data and settings as `bench_throughput.py` (its `prepare` and `job_config`: the
64-input MLP, 50 steps, 8 gzip shards, statistics and comparison records on). Each size runs
`pipeline.job.run_job` in a fresh Python process (so that one run's peak cannot hide in
another's), on the in-process DirectRunner, and reports that process's peak resident set size
(`ru_maxrss`) and wall time. The ratio peak(10·N) / peak(N) is what issue 13's "flat memory"
target reads (<= 1.2). Optionally (`--variants`) the same with the comparison records off
(`statistics.replicates: 0`, `statistics.inputs: false`) and with `output.row_group_rows`
lowered, to show what the growth comes from.

  .venv/bin/python benchmarks/bench_memory.py [--examples N] [--factor 10] [--repeats R]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_throughput import IN_PROCESS_ARGS, job_config, prepare  # noqa: E402

VARIANTS = {
    "default": {},
    "no comparison records": {"replicates": 0, "inputs": False},
    "blocks of 4,096 rows": {"row_group_rows": 4096},
}


def _child(out: str, n: int, steps: int, variant: str, result: str) -> None:
    """Runs one job in this (fresh) process and writes its peak RSS and wall time."""
    paths = prepare(out, n)
    config = job_config(paths, steps, os.path.join(out, "memory", f"n{n}"), paths["pattern"])
    change = VARIANTS[variant]
    if "row_group_rows" in change:
        config = dataclasses.replace(
            config,
            output=dataclasses.replace(config.output, row_group_rows=change["row_group_rows"]),
        )
    stats_change = {k: v for k, v in change.items() if k != "row_group_rows"}
    if stats_change:
        config = dataclasses.replace(
            config, statistics=dataclasses.replace(config.statistics, **stats_change)
        )
    from pipeline.job import run_job

    started = time.perf_counter()
    summary = run_job(config, IN_PROCESS_ARGS)
    wall = time.perf_counter() - started
    if summary["counts"]["examples_attributed"] != n or not summary["accounting"]["balanced"]:
        raise SystemExit(f"bad run: {summary['counts']}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with open(result, "w") as f:
        json.dump({"peak_rss_mb": peak_mb, "wall_seconds": wall}, f)


def _measure(out: str, n: int, steps: int, variant: str) -> dict[str, float]:
    result = os.path.join(out, "memory", f"result-{n}.json")
    os.makedirs(os.path.dirname(result), exist_ok=True)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        variant,
        "--examples",
        str(n),
        "--steps",
        str(steps),
        "--out",
        out,
        "--result",
        result,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(result) as f:
        return json.load(f)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", action="store_true", help="also the variants (see doc)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "memory"))
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    if args.child:
        _child(out, args.examples, args.steps, args.child, args.result)
        return 0
    small, large = args.examples, args.examples * args.factor
    for n in (small, large):  # data first, outside the measured processes
        prepare(os.path.join(out, f"n{n}"), n)
    variants = list(VARIANTS) if args.variants else ["default"]
    rows = {}
    for variant in variants:
        runs: dict[int, list[dict[str, float]]] = {small: [], large: []}
        for repeat in range(args.repeats):
            for n in (small, large):
                run = _measure(os.path.join(out, f"n{n}"), n, args.steps, variant)
                runs[n].append(run)
                print(
                    f"  {variant:24s} N={n:>8,}  repeat {repeat + 1}/{args.repeats}  "
                    f"peak {run['peak_rss_mb']:8.0f} MB  wall {run['wall_seconds']:6.1f}s",
                    flush=True,
                )
        peak = {n: statistics.median(r["peak_rss_mb"] for r in runs[n]) for n in runs}
        rows[variant] = {
            "peak_rss_mb": {str(n): round(v, 1) for n, v in peak.items()},
            "ratio": round(peak[large] / peak[small], 3),
            "wall_seconds": {
                str(n): round(statistics.median(r["wall_seconds"] for r in runs[n]), 2)
                for n in runs
            },
        }
    print(f"\npeak RSS of a whole in-process run, N={small:,} vs {large:,} (target ratio <= 1.2)")
    for variant, row in rows.items():
        a, b = (row["peak_rss_mb"][str(n)] for n in (small, large))
        print(f"  {variant:24s} {a:8.0f} MB  {b:8.0f} MB  ratio {row['ratio']:.2f}")
    report = {
        "examples": [small, large],
        "steps": args.steps,
        "cores": os.cpu_count(),
        "rows": rows,
    }
    with open(os.path.join(out, "memory.json"), "w") as f:
        json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
