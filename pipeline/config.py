"""Typed, validated job configuration for igbeam.

A job is described by one YAML file (see `configs/README.md` for the full reference and
`configs/example.yaml` for a complete example). `load_config` reads it with `yaml.safe_load`,
applies `--set`-style overrides, resolves relative paths and validates everything into frozen
dataclasses, so the rest of the pipeline never sees a raw dict or an unchecked value.

Every problem raises `ConfigError` (a `ValueError`) whose message starts with the dotted key
that is wrong and shows the offending value, e.g.::

    attribution.steps: must be an integer >= 1, got 0

This module is pure Python (PyYAML and dataclasses only): it imports neither TensorFlow nor
Apache Beam, so it is cheap to import in a launcher and the objects pickle to any worker.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)
"""Integration methods accepted by `attribution.method`."""

BASELINE_KINDS = ("zeros", "constant", "per_feature", "random_uniform")
"""Baseline kinds accepted by `attribution.baseline.kind`."""

TARGET_KINDS = ("predicted", "index", "label", "scalar")
"""Target kinds accepted by `attribution.target.kind`."""

# Fields each baseline / target kind requires and may optionally carry. Any other field of
# the section (apart from `kind`) is forbidden for that kind.
_BASELINE_REQUIRED = {
    "zeros": (),
    "constant": ("value",),
    "per_feature": ("values",),
    "random_uniform": ("low", "high"),
}
_BASELINE_OPTIONAL = {
    "zeros": (),
    "constant": (),
    "per_feature": (),
    "random_uniform": ("seed", "samples"),
}
_TARGET_REQUIRED = {"predicted": (), "index": ("value",), "label": ("feature",), "scalar": ()}

# Defaults for the optional random_uniform fields.
_DEFAULT_SEED = 0
_DEFAULT_SAMPLES = 1

# The shape of a config file. A nested dict is a section; `_LEAF` is a value; `_MAP` is a
# value that may itself be a free-form {name: value} map, so an override may address one
# entry of it (`attribution.baseline.values.f0=1.5`).
_LEAF = "leaf"
_MAP = "map"
_SCHEMA: dict[str, Any] = {
    "model": {"path": _LEAF, "preprocess_path": _LEAF, "signature": _LEAF, "safe_mode": _LEAF},
    "input": {"pattern": _LEAF, "schema": _LEAF, "key": _LEAF},
    "features": _LEAF,
    "passthrough": _LEAF,
    "attribution": {
        "method": _LEAF,
        "steps": _LEAF,
        "layer": _LEAF,
        "output": _LEAF,
        "baseline": {
            "kind": _LEAF,
            "value": _LEAF,
            "values": _MAP,
            "low": _MAP,
            "high": _MAP,
            "seed": _LEAF,
            "samples": _LEAF,
        },
        "target": {"kind": _LEAF, "value": _LEAF, "feature": _LEAF},
    },
    "batching": {"batch_size": _LEAF, "max_rows_per_call": _LEAF},
    "slices": _LEAF,
    "output": {"path": _LEAF, "shards": _LEAF, "row_group_rows": _LEAF},
    "max_dead_letter_fraction": _LEAF,
}

# (section, key) of every value that is a filesystem path or pattern.
_PATH_KEYS = (
    ("model", "path"),
    ("model", "preprocess_path"),
    ("input", "pattern"),
    ("input", "schema"),
    ("output", "path"),
)


class ConfigError(ValueError):
    """An invalid job config.

    `str(error)` is ``"<dotted.key>: <message>"`` (or just the message when no single key is
    at fault, e.g. unreadable YAML).

    Attributes:
      message: What is wrong, including the offending value.
      key: The dotted key at fault (``"attribution.steps"``, ``"slices[0]"``), or None.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message, key)
        self.message = message
        self.key = key

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """The model to explain.

    Attributes:
      path: A `.keras` file or a SavedModel directory.
      preprocess_path: Optional SavedModel/`.keras` mapping serialized `tf.Example` strings
        to model inputs; when None, features are parsed from the examples by name.
      signature: SavedModel signature to call.
      safe_mode: Keras `safe_mode` when loading a `.keras` file.
    """

    path: str
    preprocess_path: str | None = None
    signature: str = "serving_default"
    safe_mode: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Returns the section as a plain dict."""
        return {
            "path": self.path,
            "preprocess_path": self.preprocess_path,
            "signature": self.signature,
            "safe_mode": self.safe_mode,
        }


@dataclass(frozen=True)
class InputConfig:
    """The TFRecord input.

    Attributes:
      pattern: File pattern(s), comma-separated; a file is read as gzip when its name ends in
        `.gz`.
      schema: Optional TFMD schema (`.pbtxt`); inferred from the first records when None.
      key: Optional feature holding the example key; when None a stable id is derived from
        the file name and record index.
    """

    pattern: str
    schema: str | None = None
    key: str | None = None

    @property
    def patterns(self) -> tuple[str, ...]:
        """The individual file patterns of the comma-separated `pattern`."""
        return tuple(p.strip() for p in self.pattern.split(",") if p.strip())

    def to_dict(self) -> dict[str, Any]:
        """Returns the section as a plain dict."""
        return {"pattern": self.pattern, "schema": self.schema, "key": self.key}


BaselineNumber = float | dict[str, float]
"""A `low`/`high` bound: one number for every feature, or a {feature: number} map."""

FeatureBaseline = float | tuple[float, ...]
"""One feature's `per_feature` baseline: a number (broadcast) or a flat list of numbers."""


@dataclass(frozen=True)
class BaselineConfig:
    """The Integrated Gradients baseline.

    Only the fields of `kind` are set; the others are None.

    Attributes:
      kind: One of `BASELINE_KINDS`.
      value: `constant`: the baseline value of every feature.
      values: `per_feature`: {feature: number or tuple of numbers}.
      low: `random_uniform`: lower bound, a number or a {feature: number} map.
      high: `random_uniform`: upper bound, a number or a {feature: number} map.
      seed: `random_uniform`: random seed (default 0), so runs are reproducible.
      samples: `random_uniform`: baselines drawn per example; attributions are averaged over
        them (default 1).
    """

    kind: str = "zeros"
    value: float | None = None
    values: dict[str, FeatureBaseline] | None = None
    low: BaselineNumber | None = None
    high: BaselineNumber | None = None
    seed: int | None = None
    samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Returns the section as a plain dict holding `kind` and the fields it uses."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.value is not None:
            out["value"] = self.value
        if self.values is not None:
            out["values"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.values.items()
            }
        for name in ("low", "high"):
            bound = getattr(self, name)
            if bound is not None:
                out[name] = dict(bound) if isinstance(bound, dict) else bound
        if self.seed is not None:
            out["seed"] = self.seed
        if self.samples is not None:
            out["samples"] = self.samples
        return out


@dataclass(frozen=True)
class TargetConfig:
    """Which scalar of the model output is explained.

    Attributes:
      kind: One of `TARGET_KINDS`: `predicted` (the argmax class), `index` (a fixed class),
        `label` (the class in a label feature of each example) or `scalar` (a single-unit
        output: regression or sigmoid).
      value: `index`: the class index, >= 0.
      feature: `label`: the feature holding each example's class index.
    """

    kind: str = "predicted"
    value: int | None = None
    feature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Returns the section as a plain dict holding `kind` and the fields it uses."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.value is not None:
            out["value"] = self.value
        if self.feature is not None:
            out["feature"] = self.feature
        return out


@dataclass(frozen=True)
class AttributionConfig:
    """How attributions are computed.

    Attributes:
      method: One of `METHODS`.
      steps: Number of points on the integration path (>= 1; >= 2 for `riemann_trapezoid`).
      layer: Attribute to the output of this named layer instead of the model inputs.
      output: Name of the model output to explain (multi-output models).
      baseline: The baseline.
      target: The explained output scalar.
    """

    method: str = "gausslegendre"
    steps: int = 50
    layer: str | None = None
    output: str | None = None
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    target: TargetConfig = field(default_factory=TargetConfig)

    def to_dict(self) -> dict[str, Any]:
        """Returns the section as a plain dict."""
        return {
            "method": self.method,
            "steps": self.steps,
            "layer": self.layer,
            "output": self.output,
            "baseline": self.baseline.to_dict(),
            "target": self.target.to_dict(),
        }


@dataclass(frozen=True)
class BatchingConfig:
    """Batch sizes.

    Attributes:
      batch_size: Examples per model call.
      max_rows_per_call: Upper bound on rows (interpolation steps x examples) per gradient
        call; at least `attribution.steps`.
    """

    batch_size: int = 256
    max_rows_per_call: int = 16384

    def to_dict(self) -> dict[str, Any]:
        """Returns the section as a plain dict."""
        return {"batch_size": self.batch_size, "max_rows_per_call": self.max_rows_per_call}


@dataclass(frozen=True)
class OutputConfig:
    """Where attributions are written.

    Attributes:
      path: Output directory (local path or URI).
      shards: Number of Parquet shards; 0 lets the runner decide.
      row_group_rows: Rows per Parquet row group.
    """

    path: str
    shards: int = 0
    row_group_rows: int = 65536

    def to_dict(self) -> dict[str, Any]:
        """Returns the section as a plain dict."""
        return {"path": self.path, "shards": self.shards, "row_group_rows": self.row_group_rows}


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """A complete, validated job config.

    Build one with `load_config`, `parse_config` or `JobConfig.from_dict`; constructing it
    directly skips validation.

    Attributes:
      model: The model.
      input: The input data.
      features: Attributed features (model input names), or None for every model input.
      passthrough: Features copied unchanged to the output.
      attribution: Attribution settings.
      batching: Batch sizes.
      slices: Slice keys; each a tuple of passthrough features.
      output: The output location.
      max_dead_letter_fraction: The job fails when more than this fraction of records is
        dead-lettered.
    """

    model: ModelConfig
    input: InputConfig
    features: tuple[str, ...] | None = None
    passthrough: tuple[str, ...] = ()
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    slices: tuple[tuple[str, ...], ...] = ()
    output: OutputConfig
    max_dead_letter_fraction: float = 0.01

    def input_features(self) -> tuple[str, ...] | None:
        """Returns every feature the job must read from the examples.

        That is the attributed features, the passthrough features, the example key feature
        and the target label feature, in that order without duplicates.

        Returns:
          The feature names, or None when `features` is None (every model input is attributed,
          so the full set is only known once the model is loaded).
        """
        if self.features is None:
            return None
        names: list[str] = [*self.features, *self.passthrough]
        if self.input.key is not None:
            names.append(self.input.key)
        if self.attribution.target.feature is not None:
            names.append(self.attribution.target.feature)
        return tuple(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain JSON-able dict (lists, dicts, str, numbers, None).

        `JobConfig.from_dict(config.to_dict()) == config`.
        """
        return {
            "model": self.model.to_dict(),
            "input": self.input.to_dict(),
            "features": list(self.features) if self.features is not None else None,
            "passthrough": list(self.passthrough),
            "attribution": self.attribution.to_dict(),
            "batching": self.batching.to_dict(),
            "slices": [list(s) for s in self.slices],
            "output": self.output.to_dict(),
            "max_dead_letter_fraction": self.max_dead_letter_fraction,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobConfig:
        """Validates a dict (e.g. from `to_dict`) into a `JobConfig`; paths are kept as is.

        Args:
          data: A dict with the config file's shape.

        Returns:
          The validated config.

        Raises:
          ConfigError: If `data` is invalid.
        """
        return parse_config(data)


# --------------------------------------------------------------------------------------------
# Loading, overrides and path resolution
# --------------------------------------------------------------------------------------------


def load_config(path: str, overrides: Sequence[str] = ()) -> JobConfig:
    """Reads, overrides, resolves and validates a YAML job config.

    Relative paths in the file (`model.path`, `model.preprocess_path`, every pattern of
    `input.pattern`, `input.schema`, `output.path`) are resolved against the directory of the
    config file. Values given in `overrides` are taken as given (relative to the working
    directory of whoever reads them).

    Args:
      path: The YAML file.
      overrides: `--set`-style ``"dotted.key=yaml_value"`` strings, applied in order.

    Returns:
      The validated config.

    Raises:
      ConfigError: If the file cannot be read or parsed, or the config is invalid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e}") from e
    try:
        # safe_load only: a config must never be able to construct Python objects.
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping at top level, got {_show(data)}")
    base_dir = os.path.dirname(os.path.abspath(path))
    return parse_config(data, overrides, base_dir=base_dir)


def parse_config(
    data: Mapping[str, Any], overrides: Sequence[str] = (), base_dir: str | None = None
) -> JobConfig:
    """Validates a raw config dict into a `JobConfig`.

    Args:
      data: The parsed YAML (not modified).
      overrides: `--set`-style ``"dotted.key=yaml_value"`` strings, applied in order after
        path resolution.
      base_dir: When given, relative paths in `data` are resolved against it.

    Returns:
      The validated config.

    Raises:
      ConfigError: If an override is malformed or names an unknown key, or the config is
        invalid.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a mapping at top level, got {_show(data)}")
    raw = copy.deepcopy(dict(data))
    if base_dir is not None:
        _resolve_paths(raw, base_dir)
    for override in overrides:
        apply_override(raw, override)
    return _parse_job(raw)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Applies one ``"dotted.key=yaml_value"`` override to a raw config dict in place.

    The value is parsed with `yaml.safe_load` (``"64"`` is an int, ``"[a,b]"`` a list,
    ``"null"`` None). Missing or null intermediate sections are created.

    Args:
      data: The raw config dict.
      override: The override string.

    Raises:
      ConfigError: If the override is malformed, its value is not valid YAML, or its path is
        not a key of the config schema.
    """
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. attribution.steps=64")
    dotted, _, text = override.partition("=")
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. attribution.steps=64")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML value in override {override!r}: {e}", dotted) from e

    schema: Any = _SCHEMA
    for i, part in enumerate(parts):
        prefix = ".".join(parts[: i + 1])
        if schema == _MAP:  # any entry name of a free-form map
            schema = _LEAF
        elif isinstance(schema, dict) and part in schema:
            schema = schema[part]
        else:
            raise ConfigError(f"unknown key (in override {override!r})", prefix)

    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"cannot apply override {override!r}: not a mapping, got {_show(child)}", where
            )
        node = child
    node[parts[-1]] = value


def _resolve_path(path: str, base_dir: str) -> str:
    """Resolves one relative path against `base_dir`; absolute paths and URIs are kept."""
    if not path or "://" in path:
        return path
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return expanded
    return os.path.normpath(os.path.join(base_dir, expanded))


def _resolve_paths(raw: dict[str, Any], base_dir: str) -> None:
    """Resolves the path values of a raw config in place, skipping malformed ones."""
    for section, key in _PATH_KEYS:
        sec = raw.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get(key), str):
            continue
        if (section, key) == ("input", "pattern"):
            parts = [p.strip() for p in sec[key].split(",")]
            sec[key] = ",".join(_resolve_path(p, base_dir) for p in parts)
        else:
            sec[key] = _resolve_path(sec[key], base_dir)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _get(sec: Mapping[str, Any], name: str, default: Any) -> Any:
    """Returns `sec[name]`, or `default` when it is absent or null."""
    value = sec.get(name)
    return default if value is None else value


def _show(value: Any) -> str:
    """Returns a short repr of `value` for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number_hint(value: Any) -> str:
    """Explains a YAML 1.1 pitfall: `1e-3` (no dot) is read as a string."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (a string; YAML reads numbers like 1e-3 as strings, write 1.0e-3)"
    return ""


def _req_int(value: Any, key: str, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {_show(value)}", key)
    return value


def _req_number(value: Any, key: str) -> float:
    if not _is_number(value):
        raise ConfigError(f"must be a number, got {_show(value)}{_number_hint(value)}", key)
    return float(value)


def _req_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {_show(value)}", key)
    return value


def _opt_str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be a non-empty string, got {_show(value)}", key)
    return value


def _req_str(value: Any, key: str) -> str:
    if value is None:
        raise ConfigError("required", key)
    result = _opt_str(value, key)
    assert result is not None
    return result


def _section(raw: Mapping[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
    """Returns section `name` of `raw` ({} when absent or null), rejecting unknown keys."""
    key = f"{prefix}.{name}" if prefix else name
    schema = _SCHEMA
    for part in key.split("."):
        schema = schema[part]
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"must be a mapping, got {_show(value)}", key)
    _check_keys(value, schema, key)
    return value


def _check_keys(value: Mapping[Any, Any], schema: Mapping[str, Any], prefix: str) -> None:
    """Rejects keys of `value` that `schema` does not list."""
    for k in value:
        if k not in schema:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown key; expected one of {', '.join(schema)}", where)


def _name_list(
    value: Any, key: str, *, allow_none: bool, allow_empty: bool, empty_hint: str = ""
) -> tuple[str, ...]:
    """Validates a list of unique, non-empty feature names."""
    if not isinstance(value, list):
        expected = "a list of feature names" + (" or null" if allow_none else "")
        raise ConfigError(f"must be {expected}, got {_show(value)}", key)
    if not value and not allow_empty:
        raise ConfigError(f"must not be an empty list{empty_hint}", key)
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"must be a non-empty string, got {_show(name)}", f"{key}[{i}]")
        if name in seen:
            raise ConfigError(f"duplicate feature {name!r}", key)
        seen.add(name)
    return tuple(value)


# --------------------------------------------------------------------------------------------
# Section parsers
# --------------------------------------------------------------------------------------------


def _parse_model(raw: Mapping[str, Any]) -> ModelConfig:
    sec = _section(raw, "model")
    return ModelConfig(
        path=_req_str(sec.get("path"), "model.path"),
        preprocess_path=_opt_str(sec.get("preprocess_path"), "model.preprocess_path"),
        signature=_req_str(_get(sec, "signature", "serving_default"), "model.signature"),
        safe_mode=_req_bool(_get(sec, "safe_mode", True), "model.safe_mode"),
    )


def _parse_input(raw: Mapping[str, Any]) -> InputConfig:
    sec = _section(raw, "input")
    pattern = _req_str(sec.get("pattern"), "input.pattern")
    parts = [p.strip() for p in pattern.split(",")]
    if any(not p for p in parts):
        raise ConfigError(
            f"empty pattern in comma-separated list, got {_show(pattern)}", "input.pattern"
        )
    return InputConfig(
        pattern=",".join(parts),
        schema=_opt_str(sec.get("schema"), "input.schema"),
        key=_opt_str(sec.get("key"), "input.key"),
    )


def _parse_bound(value: Any, key: str) -> BaselineNumber:
    """Validates a random_uniform bound: a number or a {feature: number} map."""
    if isinstance(value, dict):
        if not value:
            raise ConfigError("must be a number or a non-empty {feature: number} map", key)
        out: dict[str, float] = {}
        for name, v in value.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(
                    f"feature names must be non-empty strings, got {_show(name)}", key
                )
            out[name] = _req_number(v, f"{key}.{name}")
        return out
    if not _is_number(value):
        raise ConfigError(
            f"must be a number or a {{feature: number}} map, got {_show(value)}"
            f"{_number_hint(value)}",
            key,
        )
    return float(value)


def _parse_feature_values(value: Any, key: str) -> dict[str, FeatureBaseline]:
    """Validates per_feature values: {feature: number or flat list of numbers}."""
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            f"must be a non-empty {{feature: number or list}} map, got {_show(value)}", key
        )
    out: dict[str, FeatureBaseline] = {}
    for name, v in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"feature names must be non-empty strings, got {_show(name)}", key)
        where = f"{key}.{name}"
        if isinstance(v, list):
            if not v or not all(_is_number(x) for x in v):
                raise ConfigError(
                    f"must be a number or a non-empty list of numbers, got {_show(v)}", where
                )
            out[name] = tuple(float(x) for x in v)
        elif _is_number(v):
            out[name] = float(v)
        else:
            raise ConfigError(
                f"must be a number or a non-empty list of numbers, got {_show(v)}{_number_hint(v)}",
                where,
            )
    return out


def _kind(sec: Mapping[str, Any], prefix: str, what: str, kinds: Sequence[str]) -> str:
    """The section's required `kind`, one of `kinds`."""
    kind = sec.get("kind")
    if kind is None:
        raise ConfigError(f"required; choose one of {', '.join(kinds)}", f"{prefix}.kind")
    if kind not in kinds:
        raise ConfigError(
            f"unknown {what} kind {_show(kind)}; choose one of {', '.join(kinds)}",
            f"{prefix}.kind",
        )
    return kind


def _parse_baseline(raw: Mapping[str, Any]) -> BaselineConfig:
    prefix = "attribution.baseline"
    if raw.get("baseline") is None:
        return BaselineConfig()
    sec = _section(raw, "baseline", "attribution")
    kind = _kind(sec, prefix, "baseline", BASELINE_KINDS)
    required = _BASELINE_REQUIRED[kind]
    allowed = {"kind", *required, *_BASELINE_OPTIONAL[kind]}
    for name in _SCHEMA["attribution"]["baseline"]:
        if sec.get(name) is not None and name not in allowed:
            raise ConfigError(f"not allowed for baseline kind {kind!r}", f"{prefix}.{name}")
    for name in required:
        if sec.get(name) is None:
            raise ConfigError(f"required for baseline kind {kind!r}", f"{prefix}.{name}")

    if kind == "constant":
        return BaselineConfig(kind=kind, value=_req_number(sec["value"], f"{prefix}.value"))
    if kind == "per_feature":
        return BaselineConfig(
            kind=kind, values=_parse_feature_values(sec["values"], f"{prefix}.values")
        )
    if kind == "random_uniform":
        low = _parse_bound(sec["low"], f"{prefix}.low")
        high = _parse_bound(sec["high"], f"{prefix}.high")
        _check_bounds(low, high, prefix)
        seed = sec.get("seed")
        samples = sec.get("samples")
        return BaselineConfig(
            kind=kind,
            low=low,
            high=high,
            seed=_req_int(_DEFAULT_SEED if seed is None else seed, f"{prefix}.seed", 0),
            samples=_req_int(
                _DEFAULT_SAMPLES if samples is None else samples, f"{prefix}.samples", 1
            ),
        )
    return BaselineConfig(kind=kind)


def _check_bounds(low: BaselineNumber, high: BaselineNumber, prefix: str) -> None:
    """Checks low <= high wherever both bounds are known, and that two maps agree on keys."""
    if isinstance(low, dict) and isinstance(high, dict) and set(low) != set(high):
        diff = sorted(set(low) ^ set(high))
        raise ConfigError(
            f"low and high maps must name the same features; differ on {diff}", f"{prefix}.high"
        )
    names = (
        low.keys() if isinstance(low, dict) else high.keys() if isinstance(high, dict) else [None]
    )
    for name in names:
        lo = low[name] if isinstance(low, dict) else low
        hi = high[name] if isinstance(high, dict) else high
        if lo > hi:
            where = f"{prefix}.high" + (f".{name}" if isinstance(high, dict) else "")
            raise ConfigError(f"must be >= low ({lo}), got {hi}", where)


def _parse_target(raw: Mapping[str, Any]) -> TargetConfig:
    prefix = "attribution.target"
    if raw.get("target") is None:
        return TargetConfig()
    sec = _section(raw, "target", "attribution")
    kind = _kind(sec, prefix, "target", TARGET_KINDS)
    required = _TARGET_REQUIRED[kind]
    for name in ("value", "feature"):
        if sec.get(name) is not None and name not in required:
            raise ConfigError(f"not allowed for target kind {kind!r}", f"{prefix}.{name}")
        if sec.get(name) is None and name in required:
            raise ConfigError(f"required for target kind {kind!r}", f"{prefix}.{name}")
    if kind == "index":
        return TargetConfig(kind=kind, value=_req_int(sec["value"], f"{prefix}.value", 0))
    if kind == "label":
        return TargetConfig(kind=kind, feature=_req_str(sec["feature"], f"{prefix}.feature"))
    return TargetConfig(kind=kind)


def _parse_attribution(raw: Mapping[str, Any]) -> AttributionConfig:
    sec = _section(raw, "attribution")
    method = _get(sec, "method", "gausslegendre")
    if method not in METHODS:
        raise ConfigError(
            f"unknown method {_show(method)}; choose one of {', '.join(METHODS)}",
            "attribution.method",
        )
    steps = _req_int(_get(sec, "steps", 50), "attribution.steps", 1)
    if method == "riemann_trapezoid" and steps < 2:
        raise ConfigError(
            f"must be an integer >= 2 for method riemann_trapezoid, got {steps}",
            "attribution.steps",
        )
    return AttributionConfig(
        method=method,
        steps=steps,
        layer=_opt_str(sec.get("layer"), "attribution.layer"),
        output=_opt_str(sec.get("output"), "attribution.output"),
        baseline=_parse_baseline(sec),
        target=_parse_target(sec),
    )


def _parse_batching(raw: Mapping[str, Any]) -> BatchingConfig:
    sec = _section(raw, "batching")
    return BatchingConfig(
        batch_size=_req_int(_get(sec, "batch_size", 256), "batching.batch_size", 1),
        max_rows_per_call=_req_int(
            _get(sec, "max_rows_per_call", 16384), "batching.max_rows_per_call", 1
        ),
    )


def _parse_output(raw: Mapping[str, Any]) -> OutputConfig:
    sec = _section(raw, "output")
    return OutputConfig(
        path=_req_str(sec.get("path"), "output.path"),
        shards=_req_int(_get(sec, "shards", 0), "output.shards", 0),
        row_group_rows=_req_int(_get(sec, "row_group_rows", 65536), "output.row_group_rows", 1),
    )


def _parse_slices(value: Any, passthrough: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(
            f"must be a list of lists of passthrough features, got {_show(value)}", "slices"
        )
    slices: list[tuple[str, ...]] = []
    for i, item in enumerate(value):
        key = f"slices[{i}]"
        if isinstance(item, str):
            raise ConfigError(
                f"must be a list of passthrough features, got {_show(item)} (write [{item}])", key
            )
        names = _name_list(item, key, allow_none=False, allow_empty=False)
        for name in names:
            if name not in passthrough:
                listed = ", ".join(passthrough) or "empty"
                raise ConfigError(f"feature {name!r} is not in passthrough ({listed})", key)
        if names in slices:
            raise ConfigError(f"duplicate slice {list(names)}", key)
        slices.append(names)
    return tuple(slices)


def _check_feature_map(names: Iterable[str], features: tuple[str, ...], key: str) -> None:
    """Checks that a {feature: ...} map names exactly the attributed features."""
    names = list(names)
    for name in names:
        if name not in features:
            raise ConfigError(
                f"not an attributed feature (features: {', '.join(features)})", f"{key}.{name}"
            )
    missing = [f for f in features if f not in names]
    if missing:
        raise ConfigError(f"missing entries for features {missing}", key)


def _parse_job(raw: dict[str, Any]) -> JobConfig:
    _check_keys(raw, _SCHEMA, "")
    model = _parse_model(raw)
    input_ = _parse_input(raw)
    features_raw = raw.get("features")
    features = (
        None
        if features_raw is None
        else _name_list(
            features_raw,
            "features",
            allow_none=True,
            allow_empty=False,
            empty_hint=" (use null for every model input)",
        )
    )
    passthrough_raw = raw.get("passthrough")
    passthrough = (
        ()
        if passthrough_raw is None
        else _name_list(passthrough_raw, "passthrough", allow_none=False, allow_empty=True)
    )
    if features is not None:
        both = [f for f in passthrough if f in features]
        if both:
            raise ConfigError(
                f"{both[0]!r} is also in features; a feature is either attributed or passed "
                "through",
                "passthrough",
            )
    attribution = _parse_attribution(raw)
    batching = _parse_batching(raw)
    slices = _parse_slices(raw.get("slices"), passthrough)
    output = _parse_output(raw)
    fraction = _get(raw, "max_dead_letter_fraction", 0.01)
    if not _is_number(fraction) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(
            f"must be a number in [0, 1], got {_show(fraction)}{_number_hint(fraction)}",
            "max_dead_letter_fraction",
        )

    if features is not None:
        baseline = attribution.baseline
        prefix = "attribution.baseline"
        if baseline.values is not None:
            _check_feature_map(baseline.values, features, f"{prefix}.values")
        for name in ("low", "high"):
            bound = getattr(baseline, name)
            if isinstance(bound, dict):
                _check_feature_map(bound, features, f"{prefix}.{name}")

    return JobConfig(
        model=model,
        input=input_,
        features=features,
        passthrough=passthrough,
        attribution=attribution,
        batching=batching,
        slices=slices,
        output=output,
        max_dead_letter_fraction=float(fraction),
    )
