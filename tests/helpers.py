"""Plain helper functions shared by the tests (the fixtures built from them live in conftest.py).

* tiny Keras models with known structure (the engine and export tests);
* serialized `tf.train.Example`s and TFRecord files (written with TensorFlow's own writer);
* the demo's data, a workspace holding it and a model, and job configs for such a workspace;
* reading a run's Parquet outputs;
* Beam pipelines on the FnApiRunner and their counters.

TensorFlow and Keras are imported only by the functions that need them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import demo
from pipeline.examples import to_example
from transforms.constants import ATTRIBUTIONS_DIR, METRICS_NAMESPACE

if TYPE_CHECKING:
    import keras
    import pandas as pd
    from apache_beam.runners.runner import PipelineResult
    from apache_beam.testing.test_pipeline import TestPipeline

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------- models


def linear_model(weights: np.ndarray, bias: float = 0.25) -> keras.Model:
    """y = weights . x + bias, one input "x": IG is weights * (x - baseline) exactly."""
    import keras

    inp = keras.Input((len(weights),), name="x")
    out = keras.layers.Dense(1, name="y")(inp)
    model = keras.Model(inp, out)
    model.get_layer("y").set_weights([weights[:, None].astype(np.float32), np.array([bias])])
    return model


def classifier(n_in: int = 6, n_out: int = 4, seed: int = 0) -> keras.Model:
    """A smooth (tanh) softmax classifier with one input "x"."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,), name="x")
    h = keras.layers.Dense(16, activation="tanh")(inp)
    out = keras.layers.Dense(n_out, activation="softmax", name="probs")(h)
    return keras.Model(inp, out)


def embedding_model(seed: int = 0) -> keras.Model:
    """Dict inputs: int token ids "ids" (through Embedding "emb") and floats "num"."""
    import keras

    keras.utils.set_random_seed(seed)
    ids = keras.Input((5,), dtype="int32", name="ids")
    num = keras.Input((3,), name="num")
    emb = keras.layers.Embedding(20, 4, name="emb")(ids)
    h = keras.layers.GlobalAveragePooling1D()(emb)
    h = keras.layers.Concatenate()([h, num])
    h = keras.layers.Dense(8, activation="tanh")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    return keras.Model({"ids": ids, "num": num}, out)


# ------------------------------------------------------------------- examples and TFRecords

RECORD_HEADER = 12
"""TFRecord framing before the payload: uint64 length + uint32 masked CRC of the length."""
RECORD_FOOTER = 4
"""TFRecord framing after the payload: uint32 masked CRC of the data."""


def example_bytes(**features: Any) -> bytes:
    """A serialized `tf.train.Example` of `features`, as `pipeline.examples.to_example` builds it.

    Values: scalars, sequences or arrays (floats -> FloatList, ints -> Int64List, str/bytes ->
    BytesList), or ready `tf.train.Feature`s.
    """
    return to_example(features).SerializeToString()


def write_records(path: PathLike, payloads: Iterable[bytes], *, gzip: bool = False) -> PathLike:
    """Writes framed records with TensorFlow's own `TFRecordWriter`; returns `path`."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP") if gzip else None
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for payload in payloads:
            writer.write(payload)
    return path


def record_offsets(payloads: Sequence[bytes], start: int = 0) -> list[int]:
    """The uncompressed offset of each record when the payloads are written back to back."""
    offsets, offset = [], start
    for payload in payloads:
        offsets.append(offset)
        offset += RECORD_HEADER + len(payload) + RECORD_FOOTER
    return offsets


def write_examples(
    path: PathLike, rows: Iterable[Mapping[str, Any]], *, gzip: bool = False
) -> PathLike:
    """Writes one `tf.train.Example` per row (feature name -> value, as `example_bytes`)."""
    return write_records(path, (example_bytes(**row) for row in rows), gzip=gzip)


# ---------------------------------------------------------------------- demo data and jobs


def write_demo_workspace(
    root: Path, model: PathLike, n: int, *, seed: int, shards: int
) -> dict[str, np.ndarray]:
    """Fills `root` as the demo lays it out: `model.keras` (a copy of `model`) and `data/`
    (the demo's `n` examples in `shards` gzip shards and `schema.pbtxt`).

    Returns:
      The data written (`demo.make_data(n, seed)`).
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, root / "model.keras")
    data = demo.make_data(n, seed=seed)
    demo.write_tfrecords(str(root / "data"), data, shards=shards)  # with data/schema.pbtxt
    return data


def train_demo_model(path: PathLike, n: int = 300, *, seed: int = 1, epochs: int = 1) -> str:
    """Trains the demo's model on `demo.make_data(n, seed)` and saves it at `path`."""
    data = demo.make_data(n, seed=seed)
    demo.build_model(data, epochs=epochs).save(str(path))
    return str(path)


def with_overrides(config: dict, **overrides: Any) -> dict:
    """Applies `section__field=value` (a key inside a section) and `key=value` (top level)."""
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            config.setdefault(section, {})[field] = value
        else:
            config[section] = value
    return config


def demo_job_config(
    model: PathLike,
    pattern: PathLike,
    schema: PathLike | None,
    out: PathLike,
    *,
    key: str | None = "example_id",
    passthrough: Sequence[str] = ("label", "country"),
    steps: int = 16,
    batch_size: int = 32,
    max_rows_per_call: int = 256,
    **overrides: Any,
) -> dict:
    """A job config dict (as the YAML file holds it) for the demo's examples.

    Args:
      model, pattern, schema, out: `model.path`, `input.pattern`, `input.schema`, `output.path`.
      key, passthrough, steps, batch_size, max_rows_per_call: The usual test settings.
      **overrides: Applied last, as `with_overrides` does (`slices=[["country"]]`,
        `model__preprocess_path=...`, `max_dead_letter_fraction=0.5`).
    """
    config = {
        "model": {"path": str(model)},
        "input": {
            "pattern": str(pattern),
            "schema": None if schema is None else str(schema),
            "key": key,
        },
        "passthrough": list(passthrough),
        "attribution": {"steps": steps},
        "batching": {"batch_size": batch_size, "max_rows_per_call": max_rows_per_call},
        "output": {"path": str(out)},
    }
    return with_overrides(config, **overrides)


def workspace_config(root: PathLike, out: PathLike, **settings: Any) -> dict:
    """`demo_job_config` for the layout `write_demo_workspace` makes at `root` ("": relative)."""
    root = str(root)
    return demo_job_config(
        os.path.join(root, "model.keras"),
        os.path.join(root, "data", "*.tfrecord.gz"),
        os.path.join(root, "data", "schema.pbtxt"),
        out,
        **settings,
    )


# --------------------------------------------------------------------------------- outputs


def read_parquet(path: PathLike) -> pd.DataFrame:
    """A Parquet file or a directory of Parquet parts as one DataFrame."""
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pandas()


def read_attributions(out: PathLike) -> pd.DataFrame:
    """The per-example attributions of a run whose `output.path` is `out`."""
    return read_parquet(os.path.join(out, ATTRIBUTIONS_DIR))


# ------------------------------------------------------------------------------------ Beam


def local_pipeline() -> TestPipeline:
    """A TestPipeline on the in-process FnApiRunner (never the default, which may fetch Prism)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline

    return TestPipeline(runner=FnApiRunner())


def counter_totals(result: PipelineResult, namespace: str = METRICS_NAMESPACE) -> dict[str, int]:
    """The committed counters of a finished run in `namespace`, summed over steps: name -> value."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + counter.committed
    return totals
