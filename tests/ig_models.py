"""Small Keras models with known structure, shared by the engine and export tests."""

from __future__ import annotations

import keras
import numpy as np


def linear_model(weights: np.ndarray, bias: float = 0.25) -> keras.Model:
    """y = weights . x + bias, one input "x": IG is weights * (x - baseline) exactly."""
    inp = keras.Input((len(weights),), name="x")
    out = keras.layers.Dense(1, name="y")(inp)
    model = keras.Model(inp, out)
    model.get_layer("y").set_weights([weights[:, None].astype(np.float32), np.array([bias])])
    return model


def classifier(n_in: int = 6, n_out: int = 4, seed: int = 0) -> keras.Model:
    """A smooth (tanh) softmax classifier with one input "x"."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,), name="x")
    h = keras.layers.Dense(16, activation="tanh")(inp)
    out = keras.layers.Dense(n_out, activation="softmax", name="probs")(h)
    return keras.Model(inp, out)


def embedding_model(seed: int = 0) -> keras.Model:
    """Dict inputs: int token ids "ids" (through Embedding "emb") and floats "num"."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((5,), dtype="int32", name="ids")
    num = keras.Input((3,), name="num")
    emb = keras.layers.Embedding(20, 4, name="emb")(ids)
    h = keras.layers.GlobalAveragePooling1D()(emb)
    h = keras.layers.Concatenate()([h, num])
    h = keras.layers.Dense(8, activation="tanh")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    return keras.Model({"ids": ids, "num": num}, out)
