"""igbeam's Integrated Gradients engine: TensorFlow only, importable and testable without Beam."""

from attribution.baselines import BASELINE_KINDS, Baseline
from attribution.engine import Attribution, IntegratedGradients
from attribution.integration import METHODS, integration_rule
from attribution.models import ModelAdapter, ModelLoadError, load_model
from attribution.targets import TARGET_KINDS, Target

__all__ = [
    "BASELINE_KINDS",
    "METHODS",
    "TARGET_KINDS",
    "Attribution",
    "Baseline",
    "IntegratedGradients",
    "ModelAdapter",
    "ModelLoadError",
    "Target",
    "integration_rule",
    "load_model",
]
