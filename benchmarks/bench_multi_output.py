"""Several outputs per example: expanded rows vs a batch Jacobian, and the engine's cost per K.

The model is `bench_throughput.py`'s MLP 64 -> 256 relu -> 256 relu -> 10 softmax (built here,
no downloads, reused when present), data N standard-normal examples, Gauss-Legendre with S
points, zeros baseline, the top K classes of each example, batches of 256 examples. Two plain
`tf.function` kernels compute the same K attributions per example:

* ``expand rows``: each example repeated K times, each copy with one class (what the engine
  does): one forward and one backward pass over [S * B * K, 64] path points.
* ``jacobian``: one forward pass over [S * B, 64] path points, then the K picked outputs'
  input gradients (`GradientTape.batch_jacobian`, vectorised by pfor: K backward passes
  batched into one).
* ``jacobian, K tapes``: one forward pass under a persistent tape, K `tape.gradient` calls.

Plus the engine itself: `IntegratedGradients(..., target=top_k k=K)` as it runs (``engine``:
one forward pass per example's path, K backward passes, `shared_paths`), the same engine made
to expand rows (``engine_expand``: `shared_paths` off), and `predicted` (``engine_k1``, K = 1),
examples/s over the same data (so the cost per explained output shows).

The kernels run in the same pass over the data, rotating their order batch by batch, repeats
interleaved; medians are reported. Correctness (outside the timings): every kernel's
attributions equal the expanded-rows kernel's (max |difference| / max |attribution|) and the
engine's equal the expanded-rows kernel's.

  .venv/bin/python benchmarks/bench_multi_output.py [--examples N] [--steps S] [--repeats R]
      [--ks 2,3] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
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
    FEATURES,
    NUM_FEATURES,
    build_model,
    example_keys,
    make_features,
)

BATCH_SIZE = 256
METHOD = "gausslegendre"
EXPAND = "expand rows"
JACOBIAN = "jacobian"
TAPES = "jacobian, K tapes"


def _model_fn(model: Any) -> Callable[[Any], Any]:
    import tensorflow as tf

    def f(z: tf.Tensor) -> tf.Tensor:  # [R, 64] -> [R, 10]; each column one model input
        return model(dict(zip(FEATURES, tf.split(z, NUM_FEATURES, axis=1), strict=True)))

    return f


def kernels(model: Any, steps: int, k: int) -> dict[str, Callable[[Any], Any]]:
    """The three kernels: x [B, 64] -> attributions [B, K, 64] of the top K classes."""
    import tensorflow as tf

    from attribution.integration import integration_rule

    alphas_np, weights_np = integration_rule(METHOD, steps)
    alphas = tf.constant(alphas_np.reshape(-1, 1, 1), tf.float32)
    weights = tf.constant(weights_np.reshape(-1, 1, 1), tf.float32)
    f = _model_fn(model)
    spec = [tf.TensorSpec([None, NUM_FEATURES], tf.float32)]

    @tf.function(input_signature=spec, autograph=False)
    def expand(x: tf.Tensor) -> tf.Tensor:
        b = tf.shape(x)[0]
        classes = tf.math.top_k(f(x), k).indices  # [B, K]
        xs = tf.repeat(x, k, axis=0)  # [B * K, 64], rows of an example consecutive
        cls = tf.reshape(classes, [-1])
        z = tf.reshape(alphas * xs[None], [steps * b * k, NUM_FEATURES])
        with tf.GradientTape() as tape:
            tape.watch(z)
            picked = tf.gather(f(z), tf.tile(cls, [steps]), axis=1, batch_dims=1)
        g = tf.reshape(tape.gradient(picked, z), [steps, b * k, NUM_FEATURES])
        return tf.reshape(xs * tf.reduce_sum(weights * g, axis=0), [b, k, NUM_FEATURES])

    @tf.function(input_signature=spec, autograph=False)
    def jacobian(x: tf.Tensor) -> tf.Tensor:
        b = tf.shape(x)[0]
        classes = tf.math.top_k(f(x), k).indices  # [B, K]
        z = tf.reshape(alphas * x[None], [steps * b, NUM_FEATURES])
        with tf.GradientTape() as tape:
            tape.watch(z)
            picked = tf.gather(f(z), tf.tile(classes, [steps, 1]), axis=1, batch_dims=1)
        g = tape.batch_jacobian(picked, z)  # [S * B, K, 64]
        g = tf.reshape(g, [steps, b, k, NUM_FEATURES])
        return x[:, None] * tf.reduce_sum(weights[..., None] * g, axis=0)

    @tf.function(input_signature=spec, autograph=False)
    def tapes(x: tf.Tensor) -> tf.Tensor:
        b = tf.shape(x)[0]
        classes = tf.math.top_k(f(x), k).indices
        z = tf.reshape(alphas * x[None], [steps * b, NUM_FEATURES])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(z)
            out = f(z)
            picked = [
                tf.gather(out, tf.tile(classes[:, j], [steps]), axis=1, batch_dims=1)
                for j in range(k)
            ]
        grads = [tape.gradient(p, z) for p in picked]
        del tape
        g = tf.reshape(tf.stack(grads, axis=1), [steps, b, k, NUM_FEATURES])
        return x[:, None] * tf.reduce_sum(weights[..., None] * g, axis=0)

    return {EXPAND: expand, JACOBIAN: jacobian, TAPES: tapes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ks", default="2,3")
    parser.add_argument("--out", default=os.path.join(HERE, "out", "multi_output"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    n, steps = args.examples, args.steps
    ks = [int(k) for k in args.ks.split(",")]

    import tensorflow as tf

    from attribution import IntegratedGradients, Target, load_model

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.keras")
    if not os.path.exists(path):
        build_model(path)
    adapter = load_model(path)
    model = adapter.keras_model
    x = make_features(n)
    keys = example_keys(n)
    batches = [x[i : i + BATCH_SIZE] for i in range(0, n, BATCH_SIZE)]
    columns = {name: x[:, j : j + 1] for j, name in enumerate(FEATURES)}
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "examples": n,
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "k": {},
    }
    engines = {
        1: IntegratedGradients(adapter, steps=steps, method=METHOD, max_rows_per_call=16384),
        **{
            k: IntegratedGradients(
                adapter,
                steps=steps,
                method=METHOD,
                max_rows_per_call=16384,
                target=Target(kind="top_k", k=k),
            )
            for k in ks
        },
    }
    expanded = {
        k: IntegratedGradients(
            adapter,
            steps=steps,
            method=METHOD,
            max_rows_per_call=16384,
            target=Target(kind="top_k", k=k),
        )
        for k in ks
    }
    for engine in expanded.values():
        engine.shared_paths = False  # read when the engine traces: expanded rows
    for engine in [*engines.values(), *expanded.values()]:  # traced before timing
        engine.attribute({k: v[:BATCH_SIZE] for k, v in columns.items()}, keys=keys[:BATCH_SIZE])

    def engine_time(engine: IntegratedGradients) -> float:
        start = time.perf_counter()
        for i in range(0, n, BATCH_SIZE):
            engine.attribute(
                {k: v[i : i + BATCH_SIZE] for k, v in columns.items()},
                keys=keys[i : i + BATCH_SIZE],
            )
        return time.perf_counter() - start

    for k in ks:
        fns = kernels(model, steps, k)
        outputs = {
            name: np.concatenate([fn(b).numpy() for b in batches]) for name, fn in fns.items()
        }
        reference = outputs[EXPAND]
        scale = float(np.abs(reference).max())
        agreement = {
            name: float(np.abs(out - reference).max() / scale) for name, out in outputs.items()
        }
        engine_out = engines[k].attribute(columns, keys=keys)
        engine_attr = np.stack([engine_out.attributions[name][:, 0] for name in FEATURES], axis=1)
        agreement["engine"] = float(
            np.abs(engine_attr.reshape(n, k, NUM_FEATURES) - reference).max() / scale
        )
        expand_out = expanded[k].attribute(columns, keys=keys)
        agreement["engine_expand_vs_engine"] = float(
            np.abs(expand_out.deltas - engine_out.deltas).max()
        )
        runs = ["engine", "engine_expand", "engine_k1"]
        times: dict[str, list[float]] = {name: [] for name in [*fns, *runs]}
        names = list(fns)
        for _ in range(args.repeats):
            spent = dict.fromkeys(names, 0.0)
            for j, batch in enumerate(batches):
                order = names[j % len(names) :] + names[: j % len(names)]
                for name in order:
                    start = time.perf_counter()
                    fns[name](batch).numpy()
                    spent[name] += time.perf_counter() - start
            for name in names:
                times[name].append(spent[name])
            times["engine"].append(engine_time(engines[k]))
            times["engine_expand"].append(engine_time(expanded[k]))
            times["engine_k1"].append(engine_time(engines[1]))
        median = {name: statistics.median(t) for name, t in times.items()}
        rate = {name: round(n / t, 1) for name, t in median.items()}
        results["k"][str(k)] = {
            "examples_per_second": rate,
            "seconds_median": {name: round(t, 4) for name, t in median.items()},
            "jacobian_over_expand": round(median[EXPAND] / median[JACOBIAN], 3),
            "tapes_over_expand": round(median[EXPAND] / median[TAPES], 3),
            "engine_cost_vs_k1": round(median["engine"] / median["engine_k1"], 3),
            "engine_expand_cost_vs_k1": round(median["engine_expand"] / median["engine_k1"], 3),
            "engine_speedup_vs_expand": round(median["engine_expand"] / median["engine"], 3),
            "max_rel_difference_vs_expand": agreement,
        }
        print(f"K={k}: examples/s {rate}")
        print(f"  agreement (max |diff| / max |attr|) vs expand rows: {agreement}")
    text = json.dumps(results, indent=2)
    json_path = args.json or os.path.join(args.out, "results.json")
    with open(json_path, "w") as fh:
        fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
