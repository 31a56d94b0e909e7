"""Engine benchmark: igbeam's IG engine vs a plain batched IG kernel, same model, rows and data.

The model is the one of `bench_throughput.py` (built here, no downloads, reused when present):
a Keras 3 functional MLP 64 -> 256 relu -> 256 relu -> 10 softmax, 64 scalar inputs `f00`..`f63`
(each `(1,)`, concatenated inside the model), random weights from seed 0, saved as
`OUT/model.keras`. The data are N examples of standard-normal float32 features ([N, 64], seed 0)
held in memory. Every row uses the same model object, Gauss-Legendre with S points, a zeros
baseline and the predicted class (arg-max of F(x)), batches of 256 examples:

* ``plain kernel``: a straightforward batched IG `tf.function` as a strong engineer would write
  it: the [S * B, 64] path points of a batch in one tensor, one forward and backward pass under
  a `GradientTape` (the 64 columns fed as the model's 64 inputs), the weighted sum of the
  gradients over the steps times (x - baseline), and F(x) to choose the class. float32
  throughout. One call per batch of 256, i.e. 256 * S rows per call: as many as the engine's
  (its `examples_per_call` is 16384 // S >= 256 for S <= 64, so a batch is one call).
* ``igbeam engine``: `attribution.IntegratedGradients(load_model(path), steps=S,
  method="gausslegendre", max_rows_per_call=16384).attribute(inputs, keys=keys)` exactly as
  `bench_throughput.py` calls it (dict of 64 [B, 1] column views, string keys), float64 results,
  F(x), F(x') and completeness deltas included.
* ``plain kernel, XLA``: the same function with `jit_compile=True` (XLA), timed over all N
  batches on its own (issue 13 asks to try it; the engine itself does not use XLA).
* ``per-example loop``: what a TF tutorial reader writes: a Python loop over examples, one
  `tf.function` call per example (its S path points, one tape), on the first `--loop-examples`
  (500) examples; examples/s for scale.
* ``matmul peak``: a 2048 x 2048 @ 2048 x 2048 float32 `tf.matmul` (2 * 2048^3 FLOPs), the
  median of several calls: what this machine's TensorFlow reaches on dense fp32 work.
* ``engine GFLOP/s``: the engine's useful work per second. Counting convention: a multiply-add
  is 2 FLOPs; only the dense layers count (bias adds, relu, softmax, path construction and
  the concatenation are ignored). One forward pass of one row is
  F = 2 * (64*256 + 256*256 + 256*10) = 168,960 FLOPs. The backward pass for input gradients
  needs one matmul per layer with the transposed weights (no weight gradients), i.e. 1 x F:
  per example S * 2F + 2F (the path points, plus F(x) and F(x')) = 17.2 MFLOP at S = 50. The
  JSON also gives the figure under the "backward = 2 x forward" convention of training
  (S * 3F + 2F). Every row is credited with the same count (the plain kernel and the loop skip
  F(x'), ~1% less work). Fraction of peak = engine GFLOP/s / matmul GFLOP/s.

The plain kernel and the engine are timed in the same pass over the data, alternating batch by
batch (plain first on even batches, engine first on odd ones), so that a slow spell on a shared
machine hits both alike; repeats are interleaved (plain + engine, loop, matmul, plain + engine,
...). Medians over the repeats are reported, with the ratio engine / plain kernel in examples/s
on median wall time (target >= 0.95), the median of the per-repeat ratios and the ratio of the
best times. Every call of each row is warmed up (traced) before timing.

Correctness (on all N examples, outside the timings): the engine's attributions agree with the
plain kernel's (max |difference| relative to the largest |attribution|, and `np.allclose` with
rtol 1e-4), the explained classes agree, and the engine's completeness deltas are small.

  .venv/bin/python benchmarks/bench_engine.py [--examples N] [--steps S] [--repeats R]
      [--loop-examples M] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from bench_throughput import (  # noqa: E402
    CLASSES,
    FEATURES,
    HIDDEN,
    NUM_FEATURES,
    build_model,
    example_keys,
    make_features,
)

BATCH_SIZE = 256
MAX_ROWS_PER_CALL = 16384
METHOD = "gausslegendre"
MATMUL_N = 2048
MATMUL_CALLS = 3
TARGET_RATIO = 0.95
RTOL = 1e-4

PLAIN = "plain kernel"
ENGINE = "igbeam engine"
XLA = "plain kernel, XLA"
LOOP = "per-example loop"
MATMUL = "matmul peak"


def forward_flops() -> int:
    """Dense-layer FLOPs of one forward pass of one row (multiply-add = 2 FLOPs)."""
    widths = [NUM_FEATURES, *HIDDEN, CLASSES]
    return 2 * sum(a * b for a, b in itertools.pairwise(widths))


def flops_per_example(steps: int, backward: float = 1.0) -> float:
    """S path points x (forward + `backward` x forward) plus the F(x) and F(x') forwards."""
    f = forward_flops()
    return steps * (1 + backward) * f + 2 * f


def load_model_path(out: str) -> str:
    path = os.path.join(out, "model.keras")
    if not os.path.exists(path):
        os.makedirs(out, exist_ok=True)
        build_model(path)
        print(f"built {path}")
    return path


def plain_kernel(model: Any, steps: int, jit_compile: bool = False) -> Callable[[Any], Any]:
    """The plain batched IG kernel: x [B, 64] float32 -> (attributions [B, 64], F(x), class).

    With `jit_compile`, the same function compiled by XLA (the "plain kernel, XLA" row).
    """
    import tensorflow as tf

    from attribution.integration import integration_rule

    alphas_np, weights_np = integration_rule(METHOD, steps)
    alphas = tf.constant(alphas_np.reshape(-1, 1, 1), tf.float32)
    weights = tf.constant(weights_np.reshape(-1, 1, 1), tf.float32)

    def f(z: tf.Tensor) -> tf.Tensor:  # [R, 64] -> [R, 10]; each column one model input
        cols = tf.split(z, NUM_FEATURES, axis=1)
        return model(dict(zip(FEATURES, cols, strict=True)), training=False)

    @tf.function(
        input_signature=[tf.TensorSpec([None, NUM_FEATURES], tf.float32)], jit_compile=jit_compile
    )
    def kernel(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        b = tf.shape(x)[0]
        baseline = tf.zeros_like(x)
        fx = f(x)
        cls = tf.argmax(fx, axis=1, output_type=tf.int32)
        diff = x - baseline
        z = tf.reshape(baseline[None] + alphas * diff[None], [steps * b, NUM_FEATURES])
        with tf.GradientTape() as tape:
            tape.watch(z)
            out = f(z)
            picked = tf.gather(out, tf.tile(cls, [steps]), axis=1, batch_dims=1)
        g = tf.reshape(tape.gradient(picked, z), [steps, b, NUM_FEATURES])
        attr = diff * tf.reduce_sum(weights * g, axis=0)
        return attr, tf.gather(fx, cls, axis=1, batch_dims=1), cls

    return kernel


def per_example_fn(model: Any, steps: int) -> Callable[[Any], Any]:
    """The tutorial form: one example [64] at a time, its S path points under one tape."""
    import tensorflow as tf

    from attribution.integration import integration_rule

    alphas_np, weights_np = integration_rule(METHOD, steps)
    alphas = tf.constant(alphas_np.reshape(-1, 1), tf.float32)
    weights = tf.constant(weights_np.reshape(-1, 1), tf.float32)

    def f(z: tf.Tensor) -> tf.Tensor:
        return model(dict(zip(FEATURES, tf.split(z, NUM_FEATURES, axis=1), strict=True)))

    @tf.function(input_signature=[tf.TensorSpec([NUM_FEATURES], tf.float32)])
    def one(x: tf.Tensor) -> tf.Tensor:
        baseline = tf.zeros_like(x)
        cls = tf.argmax(f(x[None])[0], output_type=tf.int32)
        path = baseline[None] + alphas * (x - baseline)[None]  # [S, 64]
        with tf.GradientTape() as tape:
            tape.watch(path)
            picked = f(path)[:, cls]
        grads = tape.gradient(picked, path)
        return (x - baseline) * tf.reduce_sum(weights * grads, axis=0)

    return one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-examples", type=int, default=500)
    parser.add_argument("--out", default=os.path.join(HERE, "out", "engine"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    n, steps = args.examples, args.steps
    json_path = args.json or os.path.join(args.out, "results.json")

    import tensorflow as tf

    from attribution import IntegratedGradients, load_model

    model_path = load_model_path(args.out)
    adapter = load_model(model_path)
    engine = IntegratedGradients(
        adapter, steps=steps, method=METHOD, max_rows_per_call=MAX_ROWS_PER_CALL
    )
    keras_model = adapter.keras_model
    kernel = plain_kernel(keras_model, steps)
    xla = plain_kernel(keras_model, steps, jit_compile=True)
    one = per_example_fn(keras_model, steps)

    x = make_features(n)
    inputs = {name: x[:, j : j + 1] for j, name in enumerate(FEATURES)}
    keys = example_keys(n)
    batches = [slice(i, min(n, i + BATCH_SIZE)) for i in range(0, n, BATCH_SIZE)]
    m = min(args.loop_examples, n)
    a = tf.random.stateless_normal([MATMUL_N, MATMUL_N], seed=[1, 2])
    b = tf.random.stateless_normal([MATMUL_N, MATMUL_N], seed=[3, 4])
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))

    def run_pair() -> tuple[float, float]:
        """(plain, engine) seconds over all N, the two alternating batch by batch."""
        plain = engine_s = 0.0
        for i, s in enumerate(batches):
            for which in (0, 1) if i % 2 == 0 else (1, 0):
                start = time.perf_counter()
                if which == 0:
                    kernel(x[s])
                    plain += time.perf_counter() - start
                else:
                    engine.attribute({k: v[s] for k, v in inputs.items()}, keys=keys[s])
                    engine_s += time.perf_counter() - start
        return plain, engine_s

    def run_xla() -> float:
        start = time.perf_counter()
        for s in batches:
            xla(x[s])
        return time.perf_counter() - start

    def run_loop() -> float:
        start = time.perf_counter()
        for i in range(m):
            one(x[i])
        return time.perf_counter() - start

    def run_matmul() -> float:
        times = []
        for _ in range(MATMUL_CALLS):
            start = time.perf_counter()
            matmul().numpy()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    # Warm-up: trace every function (and the first full-size and last partial batch).
    for s in [batches[0], batches[-1]]:
        kernel(x[s])
        xla(x[s])
        engine.attribute({k: v[s] for k, v in inputs.items()}, keys=keys[s])
    one(x[0])
    matmul().numpy()

    # Correctness, outside the timings.
    plain_attr = np.concatenate([kernel(x[s])[0].numpy() for s in batches])
    plain_cls = np.concatenate([kernel(x[s])[2].numpy() for s in batches])
    results = [
        engine.attribute({k: v[s] for k, v in inputs.items()}, keys=keys[s]) for s in batches
    ]
    engine_attr = np.concatenate(
        [np.column_stack([r.attributions[f] for f in FEATURES]) for r in results]
    )
    engine_attr = engine_attr.reshape(n, NUM_FEATURES)
    deltas = np.concatenate([r.deltas for r in results])
    engine_cls = np.concatenate([r.targets for r in results])
    gaps = np.concatenate([r.predictions - r.baseline_predictions for r in results])
    scale = float(np.abs(engine_attr).max())
    max_diff = float(np.abs(engine_attr - plain_attr).max())
    loop_attr = np.stack([one(x[i]).numpy() for i in range(min(m, 50))])
    correctness = {
        "engine_vs_plain_max_abs_diff": max_diff,
        "engine_vs_plain_max_rel_to_scale": max_diff / scale,
        "engine_vs_plain_allclose_rtol_1e-4": bool(
            np.allclose(engine_attr, plain_attr, rtol=RTOL, atol=RTOL * scale)
        ),
        "loop_vs_engine_max_rel_to_scale": float(
            np.abs(loop_attr - engine_attr[: len(loop_attr)]).max() / scale
        ),
        "classes_agree": bool(np.array_equal(engine_cls, plain_cls)),
        "max_abs_attribution": scale,
        "completeness_max_abs_delta": float(np.abs(deltas).max()),
        "completeness_median_abs_delta": float(np.median(np.abs(deltas))),
        "median_abs_prediction_gap": float(np.median(np.abs(gaps))),
    }
    xla_attr = np.concatenate([xla(x[s])[0].numpy() for s in batches])
    xla_gap = float(np.abs(xla_attr - plain_attr).max() / scale)
    correctness["xla_vs_plain_max_rel_to_scale"] = xla_gap
    print("correctness:", json.dumps(correctness, indent=1))

    variants: list[tuple[str, Callable[[], float]]] = [
        (XLA, run_xla),
        (LOOP, run_loop),
        (MATMUL, run_matmul),
    ]
    runs: dict[str, list[float]] = {
        PLAIN: [],
        ENGINE: [],
        XLA: [],
        LOOP: [],
        MATMUL: [],
        "ratio": [],
    }
    for repeat in range(args.repeats):
        plain_s, engine_s = run_pair()
        runs[PLAIN].append(plain_s)
        runs[ENGINE].append(engine_s)
        runs["ratio"].append(plain_s / engine_s)
        for name, fn in variants:
            runs[name].append(fn())
        shown = "  ".join(
            f"{name} {runs[name][-1]:.3f}s" for name in (PLAIN, ENGINE, XLA, LOOP, MATMUL)
        )
        print(f"  repeat {repeat + 1}/{args.repeats}  {shown}")

    med = {name: statistics.median(t) for name, t in runs.items()}
    matmul_gflops = 2 * MATMUL_N**3 / med[MATMUL] / 1e9
    flops = flops_per_example(steps)
    rows = {
        PLAIN: {"examples": n, "seconds": runs[PLAIN], "median_seconds": med[PLAIN]},
        ENGINE: {"examples": n, "seconds": runs[ENGINE], "median_seconds": med[ENGINE]},
        XLA: {"examples": n, "seconds": runs[XLA], "median_seconds": med[XLA]},
        LOOP: {"examples": m, "seconds": runs[LOOP], "median_seconds": med[LOOP]},
    }
    for row in rows.values():
        row["examples_per_second"] = row["examples"] / row["median_seconds"]
        row["gflops"] = row["examples_per_second"] * flops / 1e9
        row["fraction_of_matmul_peak"] = row["gflops"] / matmul_gflops
    ratio = med[PLAIN] / med[ENGINE]
    engine_gflops = rows[ENGINE]["gflops"]

    print()
    print(
        f"N={n}, steps={steps}, method={METHOD}, batch={BATCH_SIZE}, "
        f"rows/call={BATCH_SIZE * steps}, cpus={os.cpu_count()}, repeats={args.repeats}"
    )
    print(f"{'row':<20} {'median s':>9} {'examples/s':>11} {'GFLOP/s':>8} {'of peak':>8}")
    for name, row in rows.items():
        print(
            f"{name:<20} {row['median_seconds']:9.3f} {row['examples_per_second']:11.1f} "
            f"{row['gflops']:8.1f} {row['fraction_of_matmul_peak']:8.2f}"
        )
    print(f"{MATMUL:<20} {med[MATMUL]:9.4f} {'':>11} {matmul_gflops:8.1f} {1:8.2f}")
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(
        f"\nengine / plain kernel: {ratio:.3f} on median wall time ({verdict} the {TARGET_RATIO} "
        f"target); median of per-repeat ratios {med['ratio']:.3f}; "
        f"best-time ratio {min(runs[PLAIN]) / min(runs[ENGINE]):.3f}"
    )
    print(
        f"engine: {engine_gflops:.1f} GFLOP/s = {engine_gflops / matmul_gflops:.2f} of the "
        f"{matmul_gflops:.1f} GFLOP/s matmul (fwd + 1x bwd convention, {flops / 1e6:.2f} "
        f"MFLOP/example)"
    )

    out = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "tensorflow": tf.__version__,
        "examples": n,
        "steps": steps,
        "repeats": args.repeats,
        "method": METHOD,
        "batch_size": BATCH_SIZE,
        "rows_per_call": BATCH_SIZE * steps,
        "max_rows_per_call": MAX_ROWS_PER_CALL,
        "engine_examples_per_call": engine.examples_per_call,
        "rows": rows,
        "ratio_engine_to_plain": {
            "median_time": ratio,
            "median_of_per_repeat": med["ratio"],
            "best_time": min(runs[PLAIN]) / min(runs[ENGINE]),
            "per_repeat": runs["ratio"],
        },
        "target_ratio": TARGET_RATIO,
        "matmul": {
            "n": MATMUL_N,
            "median_seconds": med[MATMUL],
            "seconds": runs[MATMUL],
            "gflops": matmul_gflops,
        },
        "flops": {
            "convention": "multiply-add = 2 FLOPs, dense layers only; backward for input "
            "gradients = 1 x forward (transposed-weight matmuls, no weight gradients)",
            "forward_per_row": forward_flops(),
            "per_example": flops,
            "per_example_backward_2x": flops_per_example(steps, 2.0),
        },
        "engine_gflops": engine_gflops,
        "engine_fraction_of_peak": engine_gflops / matmul_gflops,
        "engine_gflops_backward_2x": rows[ENGINE]["examples_per_second"]
        * flops_per_example(steps, 2.0)
        / 1e9,
        "correctness": correctness,
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"results: {json_path}")
    ok = correctness["engine_vs_plain_allclose_rtol_1e-4"] and correctness["classes_agree"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
