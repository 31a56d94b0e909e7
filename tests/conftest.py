"""Test-wide settings (quiet TensorFlow, no GPU) and the fixtures shared between test files.

Plain helpers (models, example writers, job configs, Parquet readers) are in `helpers.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest
from helpers import train_demo_model


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> str:
    """The demo's Keras model trained one epoch on `demo.make_data(300, seed=1)` (a `.keras` path).

    Trained once per session and only read: a test that needs it in its own workspace copies it
    (`helpers.write_demo_workspace`).
    """
    return train_demo_model(tmp_path_factory.mktemp("demo_model") / "model.keras", 300, seed=1)
