"""`make demo`: builds a small model and dataset (no downloads), then runs the igbeam job on them.

The dataset is tabular: eight float features `f0`..`f7`, a label and a country, written as gzip
TFRecords of `tf.train.Example` with a TFMD schema. The label depends on f0, f1 and f2 (with
opposite signs in country "DE"), so the top features of a good attribution are known in advance.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from pipeline.examples import write_tfrecord_shards

FEATURES = [f"f{i}" for i in range(8)]
COUNTRIES = ["DE", "FR", "US"]
SCHEMA_TEXT = (
    "".join(
        f'feature {{ name: "{f}" type: FLOAT shape {{ dim {{ size: 1 }} }} }}\n' for f in FEATURES
    )
    + 'feature { name: "label" type: INT shape { dim { size: 1 } } }\n'
    + 'feature { name: "country" type: BYTES shape { dim { size: 1 } } }\n'
    + 'feature { name: "example_id" type: BYTES shape { dim { size: 1 } } }\n'
)


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic examples: features [n, 8] float32, label [n], country [n]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    country = rng.choice(COUNTRIES, size=n)
    sign = np.where(country == "DE", -1.0, 1.0)
    logits = np.stack([2 * x[:, 0] * sign, 1.5 * x[:, 1], x[:, 2] - 0.5 * x[:, 0]], axis=1)
    label = logits.argmax(axis=1)
    return {"x": x, "label": label, "country": country}


def write_tfrecords(directory: str, data: dict[str, np.ndarray], shards: int = 4) -> list[str]:
    """Writes the examples as gzip TFRecord shards plus `schema.pbtxt`; returns the shards.

    Each example holds f0..f7, label, country and example_id (`ex-000042`), in that order.
    """
    n = len(data["label"])
    columns: dict[str, np.ndarray] = {name: data["x"][:, j] for j, name in enumerate(FEATURES)}
    columns["label"] = data["label"]
    columns["country"] = data["country"]
    columns["example_id"] = np.array([f"ex-{i:06d}" for i in range(n)])
    return write_tfrecord_shards(directory, columns, shards=shards, schema_text=SCHEMA_TEXT)


def build_model(data: dict[str, np.ndarray], epochs: int = 8, seed: int = 0):
    """A dict-input Keras MLP (one [B, 1] input per feature), trained for a few seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = {name: keras.Input((1,), name=name) for name in FEATURES}
    h = keras.layers.Concatenate()(list(inputs.values()))
    h = keras.layers.Dense(32, activation="relu")(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = {name: data["x"][:, j : j + 1] for j, name in enumerate(FEATURES)}
    model.fit(x, data["label"], epochs=epochs, batch_size=64, verbose=0)
    return model


DEMO_CONFIG = """\
# The demo job (written by `make demo`); every key is documented in configs/README.md.
model: {path: model.keras}
input: {pattern: "data/*.tfrecord.gz", schema: data/schema.pbtxt, key: example_id}
features: null                 # every model input: f0..f7
passthrough: [label, country]
attribution:
  method: gausslegendre
  steps: 50
  baseline: {kind: zeros}
  target: {kind: predicted}
batching: {batch_size: 256, max_rows_per_call: 16384}
slices: [[country]]
output: {path: out}
"""


def prepare(directory: str, n: int = 4000) -> str:
    """Creates the model, data and config under `directory`; returns the config path."""
    data = make_data(n)
    write_tfrecords(os.path.join(directory, "data"), data)
    model = build_model(data)
    model.save(os.path.join(directory, "model.keras"))
    config_path = os.path.join(directory, "config.yaml")
    with open(config_path, "w") as f:
        f.write(DEMO_CONFIG)
    return config_path


def main(argv: Sequence[str] | None = None) -> int:
    """Builds the demo inputs, runs the job and prints where the outputs are and what they say."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="demo_out", help="where to put the demo's files")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--verbose", action="store_true", help="TensorFlow's native logs too")
    args, beam_args = parser.parse_known_args(argv)
    import pyarrow.parquet as pq

    from pipeline.cli import main as cli_main
    from pipeline.console import quiet_native_logs
    from transforms.constants import FEATURE_STATISTICS_FILE, STATISTICS_DIR

    print(f"igbeam demo: building a model and {args.examples} examples in {args.dir}/ ...")
    with quiet_native_logs(enabled=not args.verbose):
        config_path = prepare(args.dir, args.examples)
        from pipeline import demo_images

        demo_images.build(os.path.join(args.dir, "images"))  # configs/demo_images.yaml
    verbose = ["--verbose"] if args.verbose else []
    code = cli_main(["run", "--config", config_path, *verbose, *beam_args])
    if code:
        return code
    out = os.path.join(args.dir, "out")
    stats = pq.read_table(os.path.join(out, STATISTICS_DIR, FEATURE_STATISTICS_FILE)).to_pandas()
    overall = stats[stats.slice_name == "all"].sort_values("rank")
    print("\nTop features by mean |attribution| (all examples):")
    for row in overall.head(5).itertuples():
        print(
            f"  {row.rank}. {row.feature:<4} mean|attr|={row.mean_absolute_attributions:.4f} "
            f"share={row.share:.1%}"
        )
    report = os.path.join(args.dir, "report.html")
    code = cli_main(["report", out, "--out", report])
    if code:
        return code
    print(f"\nOpen the report in a browser (no server needed): {os.path.abspath(report)}")
    from pipeline import demo_text

    with quiet_native_logs(enabled=not args.verbose):
        text_dir = demo_text.build(os.path.join(args.dir, "text"))
    print(f"Text demo inputs in {text_dir}/: igbeam run --config configs/demo_text.yaml")
    print(
        "Image demo (a CNN on generated shapes, data in "
        f"{os.path.join(args.dir, 'images')}/): igbeam run --config configs/demo_images.yaml"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
