"""Adaptive steps benchmark: fixed steps vs `steps: auto`, engine only (no Beam).

On the MLP of `bench_throughput.py` (64 -> 256 -> 256 -> 10 softmax, relu, random weights from
a fixed seed; its `prepare(out, n)` builds or reuses the model) and N standard-normal examples,
the explained class the predicted one, Gauss-Legendre points, batches of 256, for two baselines:
zeros (the throughput benchmark's; with the model's zero biases every relu is positively
homogeneous, so the logits are linear along the path from 0 and 8 points are already exact to
float32) and constant 1.0 (the path crosses relu kinks: the integrand is piecewise smooth and
Gauss-Legendre converges slowly, the case adaptive steps are for):

* ``fixed 50``, ``fixed 200``: `IntegratedGradients(steps=S)`;
* ``auto tol T``: `AdaptiveIntegratedGradients` with `steps: auto`, `tolerance` T (0.01 and
  0.001 by default), `min_steps` 8, `max_steps` 256.

Per variant: examples/s over all N (median of R repeats, interleaved: every variant once, then
again, so a slow spell on a shared machine hits all alike; each engine is built and every level
traced before timing), the share of examples whose relative completeness error
|delta| / max(|F(x) - F(x')|, tiny) is within 0.01 and within 0.001, and the mean steps used
(with the distribution for auto). Results go to a JSON file (default OUT/adaptive.json).

  .venv/bin/python benchmarks/bench_adaptive.py [--examples N] [--repeats R]
      [--tolerances 0.01,0.001] [--baselines 0,1] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))
for path in (ROOT, BENCH):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
from bench_throughput import (  # noqa: E402
    BATCH_SIZE,
    FEATURES,
    MAX_ROWS_PER_CALL,
    example_keys,
    make_features,
    prepare,
)

FIXED_STEPS = (50, 200)
CHECKED_TOLERANCES = (0.01, 0.001)
MIN_STEPS, MAX_STEPS = 8, 256


class Variant:
    """One engine over the N examples: built, every level traced, then timed per pass."""

    def __init__(self, name: str, engine: Any, inputs: dict, keys: np.ndarray) -> None:
        self.name, self.engine, self.inputs, self.keys = name, engine, inputs, keys
        self.n = len(keys)
        self.seconds: list[float] = []
        small = slice(0, 8)
        levels = [engine.engine(s) for s in engine.levels] if hasattr(engine, "levels") else []
        for e in [engine, *levels]:  # trace every compiled function before timing
            e.attribute({k: v[small] for k, v in inputs.items()}, keys=keys[small])
        self.result: dict[str, np.ndarray] = {}

    def run(self) -> None:
        parts = []
        start = time.perf_counter()
        for i in range(0, self.n, BATCH_SIZE):
            s = slice(i, i + BATCH_SIZE)
            parts.append(
                self.engine.attribute({k: v[s] for k, v in self.inputs.items()}, keys=self.keys[s])
            )
        self.seconds.append(time.perf_counter() - start)
        from attribution.adaptive import relative_errors

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        self.result = {
            "errors": relative_errors(
                cat("deltas"), cat("predictions"), cat("baseline_predictions")
            ),
            "steps": cat("steps_used")
            if hasattr(parts[0], "steps_used")
            else np.full(self.n, self.engine.steps),
        }

    def summary(self) -> dict[str, Any]:
        errors, steps = self.result["errors"], self.result["steps"]
        values, counts = np.unique(steps, return_counts=True)
        median = statistics.median(self.seconds)
        return {
            "variant": self.name,
            "examples_per_second": round(self.n / median, 1),
            "seconds": [round(s, 3) for s in self.seconds],
            "within": {str(t): round(float(np.mean(errors <= t)), 4) for t in CHECKED_TOLERANCES},
            "relative_error_p50": float(np.median(errors)),
            "relative_error_p95": float(np.quantile(errors, 0.95)),
            "mean_steps": round(float(steps.mean()), 2),
            "steps_used": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerances", default="0.01,0.001")
    parser.add_argument("--baselines", default="0,1", help="constant baseline values (0: zeros)")
    parser.add_argument("--out", default=os.path.join(BENCH, "out"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    tolerances = [float(t) for t in args.tolerances.split(",") if t]
    values = [float(v) for v in args.baselines.split(",") if v]

    from attribution import AttributionConfig, Baseline, IntegratedGradients, load_model
    from attribution.adaptive import AdaptiveIntegratedGradients

    paths = prepare(args.out, args.examples)
    model = load_model(paths["model"])
    x = make_features(args.examples)
    inputs = {name: x[:, j : j + 1] for j, name in enumerate(FEATURES)}
    keys = example_keys(args.examples)
    variants = []
    for value in values:
        baseline = Baseline() if value == 0 else Baseline("constant", value=value)
        label = "zeros" if value == 0 else f"constant {value:g}"
        base = AttributionConfig(method="gausslegendre", baseline=baseline)
        for steps in FIXED_STEPS:
            engine = IntegratedGradients(
                model,
                settings=base.with_steps(steps),
                max_rows_per_call=MAX_ROWS_PER_CALL,
            )
            variants.append(Variant(f"{label}: fixed {steps}", engine, inputs, keys))
        for tolerance in tolerances:
            settings = dataclasses.replace(
                base, steps="auto", tolerance=tolerance, min_steps=MIN_STEPS, max_steps=MAX_STEPS
            )
            engine = AdaptiveIntegratedGradients(
                model, settings=settings, max_rows_per_call=MAX_ROWS_PER_CALL
            )
            variants.append(Variant(f"{label}: auto tol {tolerance:g}", engine, inputs, keys))
    for repeat in range(args.repeats):
        for variant in variants:
            variant.run()
            print(f"  repeat {repeat + 1}: {variant.name}: {variant.seconds[-1]:.2f}s", flush=True)

    rows = [v.summary() for v in variants]
    print(f"\n{args.examples} examples, median of {args.repeats}, batches of {BATCH_SIZE}")
    print("| variant | examples/s | within 0.01 | within 0.001 | mean steps | steps used |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['examples_per_second']:.0f} | {r['within']['0.01']:.1%} "
            f"| {r['within']['0.001']:.1%} | {r['mean_steps']:.1f} | {r['steps_used']} |"
        )
    record = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "examples": args.examples,
        "repeats": args.repeats,
        "batch_size": BATCH_SIZE,
        "min_steps": MIN_STEPS,
        "max_steps": MAX_STEPS,
        "baselines": values,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "variants": rows,
    }
    path = args.json or os.path.join(args.out, "adaptive.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
