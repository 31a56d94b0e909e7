"""Typed, validated job configuration for igbeam.

A job is described by one YAML file (see `configs/README.md` for the full reference and
`configs/example.yaml` for a complete example). `load_config` reads it with `yaml.safe_load`,
applies `--set`-style overrides, resolves relative paths and validates everything into frozen
dataclasses, so the rest of the pipeline never sees a raw dict or an unchecked value.

The sections are settings dataclasses (`attribution.fields`): the engine's own (`model`,
`attribution`, `batching`, from `attribution.settings`) and the job's (`input`, `output`, the
top-level keys, below). Parsing, defaults, `to_dict`, the key tree used by overrides and every
error message are derived from their field declarations; nothing here repeats them.

Every problem raises `ConfigError` (a `ValueError`) whose message starts with the dotted key
that is wrong and shows the offending value, e.g.::

    attribution.steps: must be an integer >= 1, got 0

This module is pure Python (PyYAML and dataclasses only): it imports neither TensorFlow nor
Apache Beam, so it is cheap to import in a launcher and the objects pickle to any worker.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from attribution.errors import SettingsError
from attribution.fields import (
    LEAF,
    MAP,
    Boolean,
    Check,
    Choice,
    Integer,
    Names,
    Number,
    Section,
    Text,
    choices,
    parse,
    path_keys,
    schema,
    setting,
    show,
    to_dict,
)
from attribution.settings import (
    FEATURES,
    AttributionConfig,
    Baseline,
    BatchingConfig,
    ModelConfig,
    Target,
)
from transforms.images import ImageConfig, Images
from transforms.settings import StatisticsConfig

__all__ = [
    "BASELINE_KINDS",
    "METHODS",
    "TARGET_KINDS",
    "AttributionConfig",
    "BaselineConfig",
    "BatchingConfig",
    "ConfigError",
    "InputConfig",
    "JobConfig",
    "ModelConfig",
    "OutputConfig",
    "StatisticsConfig",
    "TargetConfig",
    "VertexOutputConfig",
    "WorkersConfig",
    "apply_override",
    "load_config",
    "load_settings",
    "parse_config",
    "parse_settings",
    "read_yaml",
]

T = TypeVar("T")

ConfigError = SettingsError
"""An invalid job config: `str(error)` is ``"<dotted.key>: <message>"``; `.key`, `.message`."""

BaselineConfig = Baseline
TargetConfig = Target

METHODS = choices(AttributionConfig, "method")
"""Integration methods accepted by `attribution.method`."""
BASELINE_KINDS = choices(Baseline, "kind")
"""Baseline kinds accepted by `attribution.baseline.kind` (the engine's, less Python-only ones)."""
TARGET_KINDS = choices(Target, "kind")
"""Target kinds accepted by `attribution.target.kind` (the engine's, less Python-only ones)."""


# --------------------------------------------------------------------------------------------
# The job's own sections
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The TFRecord input.

    Attributes:
      pattern: File pattern(s), comma-separated; a file is read as gzip when its name ends in
        `.gz`.
      schema: Optional TFMD schema (`.pbtxt`); inferred from the first records when None.
      key: Optional feature holding the example key; when None a stable id is derived from
        the file name and record index.
    """

    pattern: str = setting(check=Text(split=True), path=True)
    schema: str | None = setting(None, check=Text(), path=True)
    key: str | None = setting(None, check=Text())

    @property
    def patterns(self) -> tuple[str, ...]:
        """The individual file patterns of the comma-separated `pattern`."""
        return tuple(p.strip() for p in self.pattern.split(",") if p.strip())


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """How each worker process uses its machine.

    Attributes:
      threads: TensorFlow's intra- and inter-op threads per worker process. 0 (auto): the
        machine's cores divided among the worker processes igbeam knows will share it (one
        process: TensorFlow's default; DirectRunner `multi_processing` with N workers: cores / N;
        Dask: the worker's `nthreads`; Dataflow: 1, as it starts one SDK process per vCPU unless
        `no_use_multiple_sdk_containers` or an accelerator says one process).
    """

    threads: int = setting(0, check=Integer(0))


OUTPUT_FORMATS = ("parquet", "vertex_jsonl")
"""`output.format`: the attributions as Parquet only, or also as Vertex AI batch-explanation
JSON lines (`transforms.vertex_jsonl`)."""

COMPRESSIONS = ("none", "gzip")
"""`output.compression` of the JSON lines files."""


class _NamesMap(Check):
    """A {name: [name, ...]} map: each value a non-empty list of unique names."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping {{name: [names]}}, got {show(value)}", key)
        out = {}
        for name, names in value.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"keys must be non-empty strings, got {show(name)}", key)
            out[name] = Names(allow_empty=False)(names, f"{key}.{name}", api)
        return out


class _TextMap(Check):
    """A {name: non-empty string} map."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping {{name: name}}, got {show(value)}", key)
        out = {}
        for name, text in value.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"keys must be non-empty strings, got {show(name)}", key)
            out[name] = Text()(text, f"{key}.{name}", api)
        return out


@dataclasses.dataclass(frozen=True)
class VertexOutputConfig:
    """How `output.format: vertex_jsonl` names things as Vertex AI did (`igbeam import-vertex`
    fills it from an `ExplanationSpec`).

    Attributes:
      output_name: `outputName` of every attribution (the key of the spec's
        `metadata.outputs`); default `attribution.output`, else empty.
      feature_names: {feature: Vertex name}: the key of a feature's `featureAttributions` entry
        (Vertex keys them by its `metadata.inputs` key; igbeam by model input).
      index_feature_mapping: {feature: [name, ...]}: a vector feature's attributions as one
        `featureAttributions` entry per element, named (Vertex's `indexFeatureMapping`).
      groups: {group: [feature, ...]}: one `featureAttributions` entry per group, the sum of its
        features' attributions (Vertex's `groupName`).
    """

    output_name: str | None = setting(None, check=Text())
    feature_names: Mapping[str, str] = setting({}, check=_TextMap())
    index_feature_mapping: Mapping[str, tuple[str, ...]] = setting({}, check=_NamesMap())
    groups: Mapping[str, tuple[str, ...]] = setting({}, check=_NamesMap())


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where a run's outputs are written.

    Attributes:
      path: Output directory (local path or URI).
      shards: Number of attribution files; 0 writes one per block (a block is up to
        `row_group_rows` records of one input file), N > 0 shuffles the blocks into N files.
      row_group_rows: Records per block, at most: rows per attributions file (one row group)
        when `shards` is 0, and per row group otherwise.
      input_values: Also write each attributed feature's input value (`in_<feature>`).
      format: `parquet`, or `vertex_jsonl`: also one JSON line per example as Vertex AI's
        batch explanation writes it (`explanations/part-<file>-<block>.jsonl[.gz]`).
      compression: With `vertex_jsonl`: `none` or `gzip`.
      vertex: With `vertex_jsonl`: Vertex names (`VertexOutputConfig`).
      full_image_attributions: Also write each image feature's every attribution
        (`full_<feature>`, float16), not only its grid and sum (`transforms.images`).
    """

    path: str = setting(check=Text(), path=True)
    shards: int = setting(0, check=Integer(0))
    row_group_rows: int = setting(65536, check=Integer(1))
    input_values: bool = setting(False, check=Boolean())
    format: str = setting("parquet", check=Choice(OUTPUT_FORMATS, "output format"))
    compression: str = setting(
        "none", check=Choice(COMPRESSIONS, "compression"), when=("format", "vertex_jsonl")
    )
    vertex: VertexOutputConfig = setting(
        VertexOutputConfig(), check=Section(VertexOutputConfig), when=("format", "vertex_jsonl")
    )
    full_image_attributions: bool = setting(False, check=Boolean())


class _Slices(Check):
    """A list of slice specs, each a non-empty list of feature names; returned as tuples."""

    def __call__(self, value: Any, key: str, api: bool) -> tuple[tuple[str, ...], ...]:
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"must be a list of lists of passthrough features, got {show(value)}", key
            )
        slices: list[tuple[str, ...]] = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if isinstance(item, str):
                raise ConfigError(
                    f"must be a list of passthrough features, got {show(item)} (write [{item}])",
                    where,
                )
            names = Names(allow_empty=False)(item, where, api)
            if names in slices:
                raise ConfigError(f"duplicate slice {list(names)}", where)
            slices.append(names)
        return tuple(slices)


@dataclasses.dataclass(frozen=True, kw_only=True)
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
      statistics: What the run records for comparisons (replicates, histograms, inputs).
      workers: How worker processes use their machine (TensorFlow threads).
      output: The output location.
      max_dead_letter_fraction: The job fails when more than this fraction of records is
        dead-lettered.
      images: Image features (attributed model inputs) -> how they are decoded and summarised
        (`transforms.images.ImageConfig`).
    """

    model: ModelConfig = setting(check=Section(ModelConfig))
    input: InputConfig = setting(check=Section(InputConfig))
    features: tuple[str, ...] | None = setting(None, check=FEATURES)
    passthrough: tuple[str, ...] = setting((), check=Names())
    attribution: AttributionConfig = setting(AttributionConfig(), check=Section(AttributionConfig))
    batching: BatchingConfig = setting(BatchingConfig(), check=Section(BatchingConfig))
    slices: tuple[tuple[str, ...], ...] = setting((), check=_Slices())
    statistics: StatisticsConfig = setting(StatisticsConfig(), check=Section(StatisticsConfig))
    workers: WorkersConfig = setting(WorkersConfig(), check=Section(WorkersConfig))
    output: OutputConfig = setting(check=Section(OutputConfig))
    max_dead_letter_fraction: float = setting(0.01, check=Number(0.0, 1.0))
    images: Mapping[str, ImageConfig] = setting({}, check=Images())

    def cross_check(self, prefix: str) -> None:
        """Rules between sections: features vs passthrough, slices, baseline feature maps."""
        features, passthrough = self.features, self.passthrough
        if features is not None:
            both = [f for f in passthrough if f in features]
            if both:
                raise ConfigError(
                    f"{both[0]!r} is also in features; a feature is either attributed or "
                    "passed through",
                    "passthrough",
                )
        for i, names in enumerate(self.slices):
            for name in names:
                if name not in passthrough:
                    listed = ", ".join(passthrough) or "empty"
                    raise ConfigError(
                        f"feature {name!r} is not in passthrough ({listed})", f"slices[{i}]"
                    )
        if features is not None:
            self.attribution.baseline.check_features(features, "attribution.baseline")
            if self.attribution.smoothgrad is not None and self.attribution.layer is None:
                self.attribution.smoothgrad.check_features(features, "attribution.smoothgrad")
        for name in self.images:
            if name in passthrough or (features is not None and name not in features):
                raise ConfigError(
                    "an image feature must be an attributed feature (in features, not passthrough)",
                    f"images.{name}",
                )

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
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobConfig:
        """Validates a dict (e.g. from `to_dict`) into a `JobConfig`; paths are kept as is.

        Raises:
          ConfigError: If `data` is invalid.
        """
        return parse_config(data)


_SCHEMA: dict[str, Any] = schema(JobConfig)
"""The key tree of a config file (sections are dicts; values `LEAF` or `MAP`), derived."""


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
    return load_settings(JobConfig, path, overrides)


def load_settings(cls: type[T], path: str, overrides: Sequence[str] = ()) -> T:
    """Reads a YAML file into any settings dataclass, as `load_config` reads a job config.

    `yaml.safe_load` only; relative paths (`path=True` fields) resolved against the file's
    directory; `--set`-style overrides applied; every error names the dotted key.

    Raises:
      ConfigError: If the file cannot be read or parsed, or the settings are invalid.
    """
    return parse_settings(cls, read_yaml(path), overrides, os.path.dirname(os.path.abspath(path)))


def read_yaml(path: str) -> dict[str, Any]:
    """A YAML mapping from a file, with `yaml.safe_load` (a config never constructs objects).

    Raises:
      ConfigError: the file cannot be read, is not YAML, or is not a mapping.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping at top level, got {show(data)}")
    return data


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
    return parse_settings(JobConfig, data, overrides, base_dir)


def parse_settings(
    cls: type[T],
    data: Mapping[str, Any],
    overrides: Sequence[str] = (),
    base_dir: str | None = None,
) -> T:
    """Validates a raw mapping into settings dataclass `cls` (see `parse_config`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a mapping at top level, got {show(data)}")
    raw = copy.deepcopy(dict(data))
    if base_dir is not None:
        _resolve_paths(raw, base_dir, cls)
    for override in overrides:
        apply_override(raw, override, schema(cls))
    return parse(cls, raw)


def apply_override(
    data: dict[str, Any], override: str, tree: Mapping[str, Any] | None = None
) -> None:
    """Applies one ``"dotted.key=yaml_value"`` override to a raw config dict in place.

    The value is parsed with `yaml.safe_load` (``"64"`` is an int, ``"[a,b]"`` a list,
    ``"null"`` None). Missing or null intermediate sections are created.

    Args:
      data: The raw config dict.
      override: The override string.
      tree: The key tree the override must name a key of (default: the job config's).

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

    node_schema: Any = _SCHEMA if tree is None else tree
    for i, part in enumerate(parts):
        prefix = ".".join(parts[: i + 1])
        if node_schema == MAP:  # any entry name of a free-form map
            node_schema = LEAF
        elif isinstance(node_schema, dict) and part in node_schema:
            node_schema = node_schema[part]
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
                f"cannot apply override {override!r}: not a mapping, got {show(child)}", where
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


def _resolve_paths(raw: dict[str, Any], base_dir: str, cls: type = JobConfig) -> None:
    """Resolves the path values of a raw config in place, skipping malformed ones."""
    for dotted, comma_separated in path_keys(cls):
        *sections, key = dotted.split(".")
        node: Any = raw
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        if comma_separated:
            parts = [p.strip() for p in node[key].split(",")]
            node[key] = ",".join(_resolve_path(p, base_dir) for p in parts)
        else:
            node[key] = _resolve_path(node[key], base_dir)
