"""The attribution fingerprint of a run: what must match for two runs' attributions to compare.

A run writes it into `summary.json` (`fingerprint`). `igbeam compare` checks the fields in
`COMPARED_FIELDS` first: a different model file, signature, preprocessing model, attribution
settings (method, steps, baseline and its parameters, target, layer, output) or set of attributed
features changes the explanation itself, so its differences must not be reported as data drift.
The model path and igbeam's version are recorded but not compared: the same model file may live
elsewhere, and a new igbeam version gives the same attributions (they are tested against closed
forms), which is said as a note.

Pure Python (hashlib); Beam's FileSystems is imported only to read a remote model.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from attribution.fields import to_dict
from attribution.settings import AttributionConfig, ModelConfig

__all__ = ["COMPARED_FIELDS", "FINGERPRINT_VERSION", "differences", "fingerprint", "path_digest"]

FINGERPRINT_VERSION = 1
COMPARED_FIELDS = (
    "model_sha256",
    "model_signature",
    "preprocess_sha256",
    "attribution",
    "attributed",
)
"""Fields that must be equal for two runs to be compared (unless explicitly allowed)."""

_BLOCK = 1 << 20


def path_digest(path: str) -> str:
    """SHA-256 of a model file, or of a directory's files (relative names and contents, sorted).

    Local paths are read directly; others (gs://...) through Beam's FileSystems.
    """
    digest = hashlib.sha256()
    if "://" not in path:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    full = os.path.join(root, name)
                    digest.update(os.path.relpath(full, path).encode() + b"\0")
                    _update_from(digest, open(full, "rb"))  # noqa: SIM115 - closed by the helper
        else:
            _update_from(digest, open(path, "rb"))  # noqa: SIM115 - closed by the helper
        return digest.hexdigest()
    from apache_beam.io.filesystems import FileSystems

    matches = [m.path for r in FileSystems.match([path]) for m in r.metadata_list]
    if not matches or matches == [path.rstrip("/") + "/"]:
        prefix = path.rstrip("/") + "/"
        matches = sorted(
            m.path for r in FileSystems.match([prefix + "**"]) for m in r.metadata_list
        )
        for full in matches:
            digest.update(full[len(prefix) :].encode() + b"\0")
            _update_from(digest, FileSystems.open(full))
    else:
        _update_from(digest, FileSystems.open(matches[0]))
    return digest.hexdigest()


def _update_from(digest: Any, stream: Any) -> None:
    with stream:
        while block := stream.read(_BLOCK):
            digest.update(block)


def fingerprint(
    model: ModelConfig,
    attribution: AttributionConfig,
    attributed: list[str],
    igbeam_version: str,
    *,
    from_export: bool = False,
) -> dict[str, Any]:
    """The fingerprint of a run (see the module docstring).

    Args:
      model: The run's model section.
      attribution: The run's attribution settings.
      attributed: The attributed features (or layer), as resolved against the model.
      igbeam_version: igbeam's version.
      from_export: The model is an igbeam export: its settings are baked into the model file,
        so the hash covers them and the (ignored) attribution section is not recorded.
    """
    return {
        "version": FINGERPRINT_VERSION,
        "model_sha256": path_digest(model.path),
        "model_signature": model.signature,
        "preprocess_sha256": path_digest(model.preprocess_path) if model.preprocess_path else None,
        "attribution": None if from_export else _compared_settings(attribution),
        "attributed": list(attributed),
        "model_path": model.path,
        "igbeam": igbeam_version,
    }


def _compared_settings(attribution: AttributionConfig) -> dict[str, Any]:
    """The attribution settings that change attributions: display names only rename outputs."""
    settings = to_dict(attribution)
    settings.pop("display_names", None)
    return settings


def differences(baseline: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """One line per compared field that differs between two fingerprints (empty: comparable).

    A missing fingerprint (a run made before igbeam recorded one) is a difference.
    """
    if not baseline or not current:
        side = "baseline" if not baseline else "current"
        return [f"the {side} run has no attribution fingerprint (made by an older igbeam)"]
    lines = []
    for field in COMPARED_FIELDS:
        for where, a, b in _leaf_differences(field, baseline.get(field), current.get(field)):
            lines.append(f"{where} differs: baseline {_short(a)}, current {_short(b)}")
    return lines


def _leaf_differences(where: str, a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """The differing leaves of two JSON values, by dotted path (so a line names what changed)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in dict.fromkeys([*a, *b]):
            out.extend(_leaf_differences(f"{where}.{key}", a.get(key), b.get(key)))
        return out
    return [] if a == b else [(where, a, b)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
