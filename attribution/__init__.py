"""igbeam's Integrated Gradients engine: TensorFlow only, importable and testable without Beam.

Settings (`Baseline`, `Target`, `METHODS`, ...) and `integration_rule` load without TensorFlow;
the engine, the model adapters and the SavedModel export load TensorFlow on first use (PEP 562),
so reading a config or validating settings stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attribution.errors import ModelLoadError, SettingsError
from attribution.integration import integration_rule
from attribution.lazy import lazy_exports
from attribution.settings import (
    BASELINE_KINDS,
    METHODS,
    TARGET_KINDS,
    AttributionConfig,
    Baseline,
    BatchingConfig,
    ModelConfig,
    SmoothGrad,
    Target,
)

_LAZY = {
    "Attribution": "attribution.engine",
    "IntegratedGradients": "attribution.engine",
    "ModelAdapter": "attribution.models",
    "load_model": "attribution.models",
    "ExportedAttributor": "attribution.savedmodel",
    "export_integrated_gradients": "attribution.savedmodel",
}

__all__ = [
    "BASELINE_KINDS",
    "METHODS",
    "TARGET_KINDS",
    "Attribution",
    "AttributionConfig",
    "Baseline",
    "BatchingConfig",
    "ExportedAttributor",
    "IntegratedGradients",
    "ModelAdapter",
    "ModelConfig",
    "ModelLoadError",
    "SettingsError",
    "SmoothGrad",
    "Target",
    "export_integrated_gradients",
    "integration_rule",
    "load_model",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from attribution.engine import Attribution, IntegratedGradients
    from attribution.models import ModelAdapter, load_model
    from attribution.savedmodel import ExportedAttributor, export_integrated_gradients


__getattr__, __dir__ = lazy_exports("attribution", _LAZY, globals())
