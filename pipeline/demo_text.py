"""The text demo: a small sentiment classifier on generated sentences (no downloads).

`build(out_dir)` writes under `out_dir`:

* `data/`: gzip TFRecords of `tf.train.Example`s with `token_ids` (INT, `MAX_TOKENS` ids, padded
  with 0), `tokens` (BYTES, the sentence's words, unpadded), `label` (1 positive, 0 negative) and
  `example_id`, plus `schema.pbtxt`;
* `model.keras`: token ids -> Embedding (`mask_zero=True`) -> masked average -> Dense softmax,
  trained for a few seconds.

Sentences mix sentiment words with filler words; the label is the sign of (positive words -
negative words), so a good attribution puts the scores on the sentiment words. `make demo` calls
`build(demo_out/text)`; `configs/demo_text.yaml` runs igbeam on it:

    igbeam run --config configs/demo_text.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from pipeline.examples import write_tfrecord_shards

PAD = "<pad>"
POSITIVE = ["good", "great", "excellent", "love", "wonderful", "happy"]
NEGATIVE = ["bad", "awful", "terrible", "hate", "boring", "sad"]
FILLER = [
    "the", "a", "movie", "film", "was", "is", "this", "plot", "acting", "really", "very",
    "and", "it", "story", "quite", "so",
]  # fmt: skip
VOCABULARY = [PAD, *POSITIVE, *NEGATIVE, *FILLER]
"""Token id = position in this list; id 0 is padding."""
MAX_TOKENS = 12
"""Positions per sentence (shorter sentences are padded with id 0)."""
LAYER = "embedding"
"""The attributed layer: the model's Embedding."""

SCHEMA_TEXT = (
    f'feature {{ name: "token_ids" type: INT shape {{ dim {{ size: {MAX_TOKENS} }} }} }}\n'
    'feature { name: "tokens" type: BYTES }\n'
    'feature { name: "label" type: INT shape { dim { size: 1 } } }\n'
    'feature { name: "example_id" type: BYTES shape { dim { size: 1 } } }\n'
)


def make_sentences(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` sentences of 3..MAX_TOKENS words with 1..3 sentiment words and no tie.

    Returns:
      ids [n, MAX_TOKENS] int64 (0-padded), tokens (object array of word lists), label [n].
    """
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, MAX_TOKENS), np.int64)
    tokens, labels = [], []
    index = {w: i for i, w in enumerate(VOCABULARY)}
    for i in range(n):
        length = int(rng.integers(3, MAX_TOKENS + 1))
        while True:
            k = int(rng.integers(1, min(3, length) + 1))
            polarity = rng.random(k) < 0.5
            if 2 * polarity.sum() != k:  # no tie: the label is defined
                break
        words = [str(w) for w in rng.choice(FILLER, size=length)]
        slots = rng.choice(length, size=k, replace=False)
        for slot, positive in zip(slots, polarity, strict=True):
            words[slot] = str(rng.choice(POSITIVE if positive else NEGATIVE))
        ids[i, :length] = [index[w] for w in words]
        tokens.append(words)
        labels.append(int(2 * polarity.sum() > k))
    return {"ids": ids, "tokens": np.array(tokens, dtype=object), "label": np.array(labels)}


def write_tfrecords(directory: str, data: dict[str, np.ndarray], shards: int = 2) -> list[str]:
    """Writes the sentences as gzip TFRecord shards plus `schema.pbtxt`; returns the shards."""
    n = len(data["label"])
    columns = {
        "token_ids": data["ids"],
        "tokens": data["tokens"],
        "label": data["label"],
        "example_id": np.array([f"s-{i:05d}" for i in range(n)]),
    }
    return write_tfrecord_shards(directory, columns, shards=shards, schema_text=SCHEMA_TEXT)


def build_model(data: dict[str, np.ndarray], epochs: int = 8, seed: int = 0):
    """Token ids -> Embedding(mask_zero) -> masked average -> Dense(2, softmax), trained."""
    import keras

    keras.utils.set_random_seed(seed)
    ids = keras.Input((MAX_TOKENS,), dtype="int64", name="token_ids")
    h = keras.layers.Embedding(len(VOCABULARY), 8, mask_zero=True, name=LAYER)(ids)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(2, activation="softmax", name="probs")(h)
    model = keras.Model({"token_ids": ids}, out)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit({"token_ids": data["ids"]}, data["label"], epochs=epochs, batch_size=64, verbose=0)
    return model


def build(out_dir: str, n: int = 1000, seed: int = 0) -> str:
    """Writes the text demo's data and trained model under `out_dir`; returns `out_dir`."""
    data = make_sentences(n, seed)
    write_tfrecords(os.path.join(out_dir, "data"), data)
    build_model(data).save(os.path.join(out_dir, "model.keras"))
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Builds the text demo's inputs (the job runs with `igbeam run --config ...`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=os.path.join("demo_out", "text"))
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args(argv)
    build(args.dir, args.examples)
    print(f"text demo inputs in {args.dir}/; run: igbeam run --config configs/demo_text.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
