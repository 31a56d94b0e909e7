"""The image demo: a small CNN on generated pictures of shapes, written as PNG tf.Examples.

`build(out_dir)` makes, with no downloads and in a few seconds:

  out_dir/data/shapes.tfrecord   `N_IMAGES` tf.Examples: `image` (PNG bytes, 32x32 RGB),
                                 `label` (0 circle, 1 square, 2 triangle), `key` (`img-000042`)
  out_dir/data/schema.pbtxt      their TFMD schema
  out_dir/model.keras            32x32x3 -> conv -> pool -> conv -> pool -> dense softmax (3)

`configs/demo_images.yaml` runs igbeam on them (`make demo` calls `build` first):

    igbeam run --config configs/demo_images.yaml
    igbeam visualize demo_out/images/out --examples 8 --out demo_out/images/visualize
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle")
N_IMAGES = 200
SCHEMA_TEXT = (
    'feature { name: "image" type: BYTES shape { dim { size: 1 } } }\n'
    'feature { name: "label" type: INT shape { dim { size: 1 } } }\n'
    'feature { name: "key" type: BYTES shape { dim { size: 1 } } }\n'
)


def draw(kind: int, center: Sequence[float], radius: float, colour: Sequence[float], noise):
    """One [SIZE, SIZE, 3] uint8 image: a filled shape of `colour` on a dark noisy background."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    cy, cx = center
    if kind == 0:
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    elif kind == 1:
        inside = (np.abs(x - cx) <= radius * 0.85) & (np.abs(y - cy) <= radius * 0.85)
    else:  # a triangle pointing up: apex at cy - radius, base at cy + radius
        top = cy - radius
        inside = (y >= top) & (y <= cy + radius) & (np.abs(x - cx) <= (y - top) * 0.6)
    image = noise.copy()
    image[inside] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


def make_images(n: int = N_IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` images [n, SIZE, SIZE, 3] uint8 of random shapes, colours and positions, and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPES)
    rng.shuffle(labels)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, kind in enumerate(labels):
        radius = rng.uniform(6, 10)
        center = rng.uniform(radius + 1, SIZE - radius - 1, size=2)
        colour = rng.uniform(120, 255, size=3)
        noise = rng.uniform(0, 50, size=(SIZE, SIZE, 3)).astype(np.float32)
        images[i] = draw(int(kind), center, radius, colour, noise)
    return images, labels


def png_bytes(image: np.ndarray) -> bytes:
    """A [H, W, C] uint8 image as PNG bytes (TensorFlow's encoder)."""
    import tensorflow as tf

    return tf.io.encode_png(image).numpy()


def write_tfrecords(directory: str, images: np.ndarray, labels: np.ndarray) -> str:
    """Writes the images as PNG tf.Examples (image, label, key) and `schema.pbtxt`; returns the
    TFRecord path."""
    import tensorflow as tf

    from pipeline.examples import to_example

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "shapes.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            features = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(image)])),
                "label": int(label),
                "key": f"img-{i:06d}",
            }
            writer.write(to_example(features).SerializeToString())
    with open(os.path.join(directory, "schema.pbtxt"), "w", encoding="utf-8") as f:
        f.write(SCHEMA_TEXT)
    return path


def build_model(images: np.ndarray, labels: np.ndarray, epochs: int = 12, seed: int = 0):
    """The demo CNN (input `image`, [32, 32, 3] in [0, 1]) trained for a few seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(len(SHAPES), activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(images.astype(np.float32) / 255.0, labels, epochs=epochs, batch_size=32, verbose=0)
    return model


def build(out_dir: str, n: int = N_IMAGES, seed: int = 0, epochs: int = 12) -> dict[str, str]:
    """Writes the demo's images, schema and trained model under `out_dir`.

    Returns:
      {"data": the TFRecord file, "schema": schema.pbtxt, "model": model.keras}.
    """
    images, labels = make_images(n, seed)
    data = write_tfrecords(os.path.join(out_dir, "data"), images, labels)
    model_path = os.path.join(out_dir, "model.keras")
    build_model(images, labels, epochs=epochs, seed=seed).save(model_path)
    return {
        "data": data,
        "schema": os.path.join(out_dir, "data", "schema.pbtxt"),
        "model": model_path,
    }
