"""Vertex Explainable AI -> igbeam: an `ExplanationSpec` translated into a job config.

`igbeam import-vertex --spec SPEC.json ... --out job.yaml` reads what Vertex AI prints for a
Model (`gcloud ai models describe MODEL --format=json`, the REST `Model` resource, camelCase):
the whole Model (its `explanationSpec` and `artifactUri`), an `ExplanationSpec`
(`{parameters, metadata}`), or its `parameters` and `metadata` objects in separate files.
`translate` turns them into an igbeam job config (a plain dict) plus one comment per translated
field; `render_yaml` writes the two as a commented YAML file.

Fields follow `google.cloud.aiplatform.v1` `ExplanationParameters` / `ExplanationMetadata`
(`explanation.proto`, `explanation_metadata.proto`); snake_case spellings (the protos' own, as
the Python SDK's `to_dict` prints them) are read too. A field igbeam cannot honour (XRAI,
Sampled Shapley, example-based explanations, sparse inputs, display names read from the
predictions, ...) raises `VertexSpecError` naming it, and so does a field it does not know: a
spec is never translated with something silently dropped. The few fields that describe only how
Vertex draws or documents explanations (`visualization`, `featureValueDomain`,
`featureAttributionsSchemaUri`) are listed as not carried over in the file's header.

Pure Python (no TensorFlow, no Beam): the translation is unit-testable on its own, and the CLI
validates its result with `pipeline.config.parse_config` before writing. See
docs/vertex-migration.md for the table of every field.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

__all__ = [
    "INPUT_PLACEHOLDER",
    "MODEL_PLACEHOLDER",
    "OUTPUT_PLACEHOLDER",
    "Translation",
    "VertexSpecError",
    "read_documents",
    "render_yaml",
    "translate",
]

MODEL_PLACEHOLDER = "<MODEL_PATH>"
INPUT_PLACEHOLDER = "<INPUT_PATTERN>"
OUTPUT_PLACEHOLDER = "<OUTPUT_DIR>"


class VertexSpecError(ValueError):
    """A spec igbeam cannot translate: `str(error)` is ``"<vertex.field.path>: <why>"``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass
class Translation:
    """A translated spec.

    Attributes:
      config: The igbeam job config, as its YAML file holds it.
      comments: Dotted igbeam key -> where its value came from (one per translated field).
      notes: Lines for the file's header (fields not carried over, placeholders to fill in).
    """

    config: dict[str, Any]
    comments: dict[str, str]
    notes: list[str]


# Fields of each message (camelCase, as REST/JSON prints them).
_SPEC = ("parameters", "metadata")
_PARAMETERS = (
    "integratedGradientsAttribution",
    "sampledShapleyAttribution",
    "xraiAttribution",
    "examples",
    "topK",
    "outputIndices",
)
_IG = ("stepCount", "smoothGradConfig", "blurBaselineConfig")
_SMOOTHGRAD = ("noiseSigma", "featureNoiseSigma", "noisySampleCount")
_NOISE_FOR_FEATURE = ("name", "sigma")
_BLUR = ("maxBlurSigma",)
_METADATA = ("inputs", "outputs", "featureAttributionsSchemaUri", "latentSpaceSource")
_INPUT = (
    "inputBaselines",
    "inputTensorName",
    "encoding",
    "modality",
    "featureValueDomain",
    "indicesTensorName",
    "denseShapeTensorName",
    "indexFeatureMapping",
    "encodedTensorName",
    "encodedBaselines",
    "visualization",
    "groupName",
)
_OUTPUT = ("indexDisplayNameMapping", "displayNameMappingKey", "outputTensorName")

_UNSUPPORTED = {
    "sampledShapleyAttribution": "Sampled Shapley is not Integrated Gradients; igbeam computes "
    "only IG (use integratedGradientsAttribution)",
    "xraiAttribution": "XRAI (IG redistributed over image segments) is not supported; use "
    "integratedGradientsAttribution (with blurBaselineConfig for images)",
    "examples": "example-based explanations (nearest neighbours) are not supported",
    "latentSpaceSource": "example-based explanations (nearest neighbours) are not supported",
    "indicesTensorName": "sparse input tensors are not supported; igbeam reads dense features",
    "denseShapeTensorName": "sparse input tensors are not supported; igbeam reads dense features",
    "displayNameMappingKey": "igbeam does not read display names from the predictions; give "
    "indexDisplayNameMapping (attribution.display_names) instead",
}
"""Fields igbeam does not do: each is a one-line error naming it."""

_NOT_CARRIED = {
    "featureValueDomain": "describes the feature's range for display; attributions do not use it",
    "visualization": "how Vertex draws image attributions; igbeam writes numbers (and image grid "
    "statistics), not pictures",
    "featureAttributionsSchemaUri": "a schema of Vertex's own output; igbeam's is documented in "
    "configs/README.md",
}
"""Fields that change no attribution: listed in the header as not carried over."""

_IDENTITY = ("IDENTITY", "ENCODING_UNSPECIFIED")
_BAGS = ("BAG_OF_FEATURES", "BAG_OF_FEATURES_SPARSE", "INDICATOR")
_EMBEDDINGS = ("COMBINED_EMBEDDING", "CONCAT_EMBEDDING")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _message(value: Any, where: str, fields: Sequence[str]) -> dict[str, Any]:
    """A message's fields, camelCased; an unknown field is an error naming it."""
    if not isinstance(value, Mapping):
        raise VertexSpecError(where, f"must be an object, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _camel(str(key))
        path = f"{where}.{name}" if where else name
        if name not in fields:
            raise VertexSpecError(path, f"unknown field; expected one of {', '.join(fields)}")
        if name in _UNSUPPORTED:
            raise VertexSpecError(path, _UNSUPPORTED[name])
        if item is not None:
            out[name] = item
    return out


def read_documents(texts: Sequence[str]) -> list[dict[str, Any]]:
    """Parses JSON documents (a Model, an ExplanationSpec, its parameters or metadata).

    Raises:
      VertexSpecError: a document is not a JSON object.
    """
    documents = []
    for i, text in enumerate(texts):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise VertexSpecError(f"spec[{i}]", f"not JSON: {err}") from err
        if not isinstance(document, dict):
            raise VertexSpecError(f"spec[{i}]", "must be a JSON object")
        documents.append(document)
    return documents


def _split(documents: Sequence[Mapping[str, Any]]) -> tuple[dict, dict, str | None]:
    """(parameters, metadata, artifactUri) from any mix of Model / spec / part documents."""
    parameters: dict | None = None
    metadata: dict | None = None
    artifact: str | None = None

    def put(kind: str, value: Any) -> None:
        nonlocal parameters, metadata
        if kind == "parameters":
            if parameters is not None:
                raise VertexSpecError("parameters", "given twice")
            parameters = value
        else:
            if metadata is not None:
                raise VertexSpecError("metadata", "given twice")
            metadata = value

    for document in documents:
        keys = {_camel(k) for k in document}
        if "explanationSpec" in keys:  # a Model resource
            spec = document.get("explanationSpec", document.get("explanation_spec"))
            spec = _message(spec, "explanationSpec", _SPEC)
            for kind in _SPEC:
                if kind in spec:
                    put(kind, spec[kind])
            uri = document.get("artifactUri", document.get("artifact_uri"))
            if isinstance(uri, str) and uri:
                artifact = uri
        elif keys & {"artifactUri", "displayName", "containerSpec", "versionId"}:
            raise VertexSpecError(
                "explanationSpec", "missing: this Model resource has no explanation spec"
            )
        elif keys & set(_SPEC):
            spec = _message(document, "", _SPEC)
            for kind in _SPEC:
                if kind in spec:
                    put(kind, spec[kind])
        elif keys & {"inputs", "outputs"}:
            put("metadata", document)
        else:
            put("parameters", document)
    if parameters is None:
        raise VertexSpecError("parameters", "missing (no ExplanationParameters in the spec)")
    if metadata is None:
        raise VertexSpecError("metadata", "missing (no ExplanationMetadata in the spec)")
    return parameters, metadata, artifact


def _tensor_name(name: str) -> str:
    """A TensorFlow tensor name without its output index (`dense_input:0` -> `dense_input`)."""
    return re.sub(r":\d+$", "", name)


def _flat_numbers(value: Any, where: str) -> float | list[float]:
    """A baseline value: a number, or a (nested) list of numbers flattened row-major."""
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        raise VertexSpecError(
            where, f"igbeam baselines are numbers or arrays of numbers, got {value!r}"
        )
    if not isinstance(value, list):
        return float(value)
    flat: list[float] = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for x in item:
                walk(x)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            flat.append(float(item))
        else:
            raise VertexSpecError(
                where, f"igbeam baselines are numbers or arrays of numbers, got {item!r}"
            )

    walk(value)
    if not flat:
        raise VertexSpecError(where, "an empty baseline")
    return flat


def _int(value: Any, where: str, low: int | None = None) -> int:
    """An int32 field (JSON may print it as a number or, for int64, a string)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise VertexSpecError(where, f"must be an integer, got {value!r}") from None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise VertexSpecError(where, f"must be an integer, got {value!r}")
    if low is not None and number < low:
        raise VertexSpecError(where, f"must be >= {low}, got {number}")
    return number


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise VertexSpecError(where, f"must be a number > 0, got {value!r}")
    return float(value)


def translate(
    documents: Sequence[Mapping[str, Any]],
    *,
    model: str | None = None,
    input_pattern: str | None = None,
    output: str | None = None,
    key: str | None = None,
) -> Translation:
    """Translates a Vertex explanation spec into an igbeam job config.

    Args:
      documents: Parsed JSON: a Model, an ExplanationSpec, or its parameters and metadata.
      model: `model.path` (default: the Model's `artifactUri`, else `MODEL_PLACEHOLDER`).
      input_pattern: `input.pattern` (default `INPUT_PLACEHOLDER`).
      output: `output.path` (default `OUTPUT_PLACEHOLDER`).
      key: `input.key` (Vertex batch prediction's `instanceConfig.keyField`): lines then carry
        `key` instead of `instance`.

    Returns:
      The config dict, a comment per translated key and header notes.

    Raises:
      VertexSpecError: a field igbeam does not do, an unknown field, or an invalid value.
    """
    parameters, metadata, artifact = _split(documents)
    comments: dict[str, str] = {}
    notes: list[str] = []
    config: dict[str, Any] = {}

    # model, input -----------------------------------------------------------------------
    if model is not None:
        config["model"] = {"path": model}
        comments["model.path"] = "--model"
    elif artifact is not None:
        config["model"] = {"path": artifact}
        comments["model.path"] = "the Model's artifactUri (the SavedModel directory)"
    else:
        config["model"] = {"path": MODEL_PLACEHOLDER}
        notes.append(f"model.path is {MODEL_PLACEHOLDER}: give --model (or edit it)")
    config["input"] = {"pattern": input_pattern or INPUT_PLACEHOLDER}
    if input_pattern is None:
        notes.append(f"input.pattern is {INPUT_PLACEHOLDER}: give --input (or edit it)")
    if key is not None:
        config["input"]["key"] = key
        comments["input.key"] = "batch prediction's instanceConfig.keyField: lines carry `key`"

    # parameters ---------------------------------------------------------------------------
    params = _message(parameters, "parameters", _PARAMETERS)
    if "integratedGradientsAttribution" not in params:
        raise VertexSpecError(
            "parameters", "no integratedGradientsAttribution: igbeam computes Integrated Gradients"
        )
    where_ig = "parameters.integratedGradientsAttribution"
    ig = _message(params["integratedGradientsAttribution"], where_ig, _IG)
    if "stepCount" not in ig:
        raise VertexSpecError(f"{where_ig}.stepCount", "required")
    attribution: dict[str, Any] = {
        "method": "gausslegendre",
        "steps": _int(ig["stepCount"], f"{where_ig}.stepCount", 1),
    }
    comments["attribution.method"] = "Vertex integrates with a Gaussian quadrature rule"
    comments["attribution.steps"] = "integratedGradientsAttribution.stepCount"

    # metadata: inputs ---------------------------------------------------------------------
    meta = _message(metadata, "metadata", _METADATA)
    for name in ("featureAttributionsSchemaUri",):
        if name in meta:
            notes.append(f"not carried over: metadata.{name} ({_NOT_CARRIED[name]})")
    inputs = meta.get("inputs")
    if not isinstance(inputs, Mapping) or not inputs:
        raise VertexSpecError("metadata.inputs", "required: a map of feature name -> metadata")
    features: list[str] = []
    vertex_names: dict[str, str] = {}
    index_mapping: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    baselines: dict[str, list[Any]] = {}
    fields: dict[str, str] = {}  # attributed name -> the Vertex field its baselines came from
    layers: list[tuple[str, str]] = []  # (vertex key, layer), in spec order
    for vertex_name, raw in inputs.items():
        where = f"metadata.inputs.{vertex_name}"
        item = _message(raw if raw is not None else {}, where, _INPUT)
        for field in ("featureValueDomain", "visualization"):
            if field in item:
                notes.append(f"not carried over: {where}.{field} ({_NOT_CARRIED[field]})")
        name = _tensor_name(item.get("inputTensorName") or vertex_name)
        encoding = item.get("encoding", "IDENTITY")
        modality = item.get("modality", "numeric")
        if modality not in ("numeric", "image"):
            raise VertexSpecError(
                f"{where}.modality", f"{modality!r}: igbeam reads numeric and image features"
            )
        if modality == "image":
            comments[f"features.{name}"] = (
                f"{vertex_name}: an image (a dense [H, W, C] float feature is attributed as is; "
                "for PNG/JPEG bytes add an images: section)"
            )
        if "encodedTensorName" in item:
            if encoding not in _EMBEDDINGS and encoding not in _IDENTITY:
                raise VertexSpecError(
                    f"{where}.encoding", f"{encoding} does not go with encodedTensorName"
                )
            layer_name = _tensor_name(item["encodedTensorName"])
            for other, listed in layers:
                if listed == layer_name:
                    raise VertexSpecError(
                        f"{where}.encodedTensorName",
                        f"{layer_name!r} is also metadata.inputs.{other}'s; igbeam attributes "
                        "each layer once (one encoded tensor per input)",
                    )
            layers.append((vertex_name, layer_name))
            encoded = item.get("encodedBaselines", [])
            if not isinstance(encoded, list):
                raise VertexSpecError(f"{where}.encodedBaselines", "must be a list")
            baselines[layer_name] = [
                _flat_numbers(v, f"{where}.encodedBaselines[{i}]") for i, v in enumerate(encoded)
            ]
            fields[layer_name] = f"{where}.encodedBaselines"
            if "inputBaselines" in item:
                notes.append(
                    f"not carried over: {where}.inputBaselines (baselines of the raw input; "
                    "the layer's are encodedBaselines)"
                )
            if "groupName" in item or "indexFeatureMapping" in item:
                field = "groupName" if "groupName" in item else "indexFeatureMapping"
                raise VertexSpecError(
                    f"{where}.{field}", "not supported on an encoded (layer) input"
                )
            continue
        if encoding in _EMBEDDINGS:
            raise VertexSpecError(f"{where}.encodedTensorName", f"required for encoding {encoding}")
        if "encodedBaselines" in item:
            raise VertexSpecError(f"{where}.encodedBaselines", "only used with encodedTensorName")
        if encoding in _BAGS:
            mapping = item.get("indexFeatureMapping")
            if not isinstance(mapping, list) or not mapping:
                raise VertexSpecError(
                    f"{where}.indexFeatureMapping", f"required for encoding {encoding}"
                )
            index_mapping[name] = [str(x) for x in mapping]
        elif encoding not in _IDENTITY:
            raise VertexSpecError(f"{where}.encoding", f"unknown encoding {encoding!r}")
        elif "indexFeatureMapping" in item:
            raise VertexSpecError(
                f"{where}.indexFeatureMapping", f"only used with encoding {' or '.join(_BAGS)}"
            )
        if name in features:
            raise VertexSpecError(f"{where}.inputTensorName", f"{name!r} is named twice")
        features.append(name)
        if name != vertex_name:
            vertex_names[name] = vertex_name
        if "groupName" in item:
            groups.setdefault(str(item["groupName"]), []).append(name)
            if index_mapping.pop(name, None) is not None:
                notes.append(
                    f"not carried over: {where}.indexFeatureMapping (the feature is in group "
                    f"{item['groupName']!r}, whose attribution is one number)"
                )
        values = item.get("inputBaselines", [])
        if not isinstance(values, list):
            raise VertexSpecError(f"{where}.inputBaselines", "must be a list")
        baselines[name] = [
            _flat_numbers(v, f"{where}.inputBaselines[{i}]") for i, v in enumerate(values)
        ]
        fields[name] = f"{where}.inputBaselines"

    layer_names = {layer_name: vertex_name for vertex_name, layer_name in layers}
    for vertex_name, layer_name in layers:
        if layer_name in features:
            raise VertexSpecError(
                f"metadata.inputs.{vertex_name}.encodedTensorName",
                f"{layer_name!r} is also the name of a (not encoded) input",
            )
    if not layers:
        config["features"] = features
        comments["features"] = "the keys of metadata.inputs (their inputTensorName when given)"
    elif len(layers) == 1 and not features:
        attribution["layer"] = layers[0][1]
        comments["attribution.layer"] = (
            f"metadata.inputs.{layers[0][0]}.encodedTensorName (check that it names a Keras layer)"
        )
    else:
        # A layer list: `features` cannot be given with a layer (the engine refuses both), and
        # is not needed: every float model input that feeds none of the listed layers is
        # attributed automatically (attr_<input>), on the same path as the layers.
        attribution["layer"] = [layer_name for _, layer_name in layers]
        comments["attribution.layer"] = (
            "metadata.inputs.*.encodedTensorName (check that each names a Keras layer); the "
            "float model inputs feeding none of these layers are attributed automatically"
            + (f" (the spec's plain inputs: {', '.join(features)})" if features else "")
        )

    # baselines ------------------------------------------------------------------------------
    blur = ig.get("blurBaselineConfig")
    sigma = None
    if blur is not None:
        blur = _message(blur, f"{where_ig}.blurBaselineConfig", _BLUR)
        if blur.get("maxBlurSigma"):
            sigma = _positive(blur["maxBlurSigma"], f"{where_ig}.blurBaselineConfig.maxBlurSigma")
    per_baseline = _combine_baselines(baselines, fields)
    if len(layers) == 1 and not features:
        source = f"metadata.inputs.{layers[0][0]}.encodedBaselines"
    elif layers:
        source = "metadata.inputs.*.encodedBaselines and inputBaselines"
    else:
        source = "metadata.inputs.*.inputBaselines"
    if sigma is not None:
        if per_baseline:
            raise VertexSpecError(
                f"{where_ig}.blurBaselineConfig",
                f"cannot be combined with {source} (the blurred input is the baseline)",
            )
        attribution["baseline"] = {"kind": "blur", "sigma": sigma}
        comments["attribution.baseline"] = "blurBaselineConfig.maxBlurSigma"
    elif not per_baseline:
        attribution["baseline"] = {"kind": "zeros"}
        comments["attribution.baseline"] = (
            "no baselines in the spec: Vertex chose them; igbeam uses zeros (check)"
        )
    else:
        kinds = [{"kind": "per_feature", "values": values} for values in per_baseline]
        if len(kinds) == 1:
            attribution["baseline"] = kinds[0]
            comments["attribution.baseline"] = source
        else:
            attribution["baseline"] = {"kind": "average", "baselines": kinds}
            comments["attribution.baseline"] = (
                f"{source}: {len(kinds)} baselines, attributions averaged over them (as Vertex)"
            )
        missing = [n for n in features if not baselines.get(n)]
        if missing:
            notes.append(
                f"features {missing} had no inputBaselines (Vertex chose them); igbeam uses 0"
            )
        missing = [n for _, n in layers if not baselines.get(n)]
        if missing:
            notes.append(
                f"layers {missing} had no encodedBaselines (Vertex chose them); igbeam uses 0"
            )

    # SmoothGrad -----------------------------------------------------------------------------
    if "smoothGradConfig" in ig:
        attribution["smoothgrad"] = _smoothgrad(
            ig["smoothGradConfig"],
            f"{where_ig}.smoothGradConfig",
            inputs,
            {**vertex_names, **layer_names},
        )
        comments["attribution.smoothgrad"] = "integratedGradientsAttribution.smoothGradConfig"

    # outputs ----------------------------------------------------------------------------------
    outputs = meta.get("outputs")
    if not isinstance(outputs, Mapping) or len(outputs) != 1:
        raise VertexSpecError("metadata.outputs", "required: exactly one output (as in Vertex)")
    output_name, raw_output = next(iter(outputs.items()))
    where_out = f"metadata.outputs.{output_name}"
    out_meta = _message(raw_output if raw_output is not None else {}, where_out, _OUTPUT)
    if "outputTensorName" in out_meta:
        attribution["output"] = _tensor_name(out_meta["outputTensorName"])
        comments["attribution.output"] = f"{where_out}.outputTensorName"
    display = out_meta.get("indexDisplayNameMapping")
    if display is not None:
        if not isinstance(display, list) or not all(isinstance(x, str) for x in display):
            raise VertexSpecError(
                f"{where_out}.indexDisplayNameMapping",
                "igbeam takes a flat list of names (one output dimension)",
            )
        attribution["display_names"] = list(display)
        comments["attribution.display_names"] = f"{where_out}.indexDisplayNameMapping"

    # target ------------------------------------------------------------------------------------
    attribution["target"] = _target(params, display)
    comments["attribution.target"] = (
        "parameters.outputIndices"
        if "outputIndices" in params
        else "parameters.topK"
        if "topK" in params
        else "no topK/outputIndices: Vertex explains the arg-max output"
    )
    if "outputIndices" in params and "topK" in params:
        notes.append("parameters.topK is not used: outputIndices takes precedence (as in Vertex)")
    config["attribution"] = attribution

    # output ------------------------------------------------------------------------------------
    vertex: dict[str, Any] = {"output_name": output_name}
    comments["output.vertex.output_name"] = "the key of metadata.outputs (each line's outputName)"
    if len(layers) > 1 or (layers and features):  # Vertex keys a layer by its input's key
        vertex_names = {**layer_names, **vertex_names}
        vertex_names = {n: v for n, v in vertex_names.items() if n != v}
    if vertex_names:
        vertex["feature_names"] = vertex_names
        comments["output.vertex.feature_names"] = (
            "model input (or layer) -> the metadata.inputs key Vertex keyed featureAttributions by"
        )
    if index_mapping:
        vertex["index_feature_mapping"] = index_mapping
        comments["output.vertex.index_feature_mapping"] = "metadata.inputs.*.indexFeatureMapping"
    if groups:
        vertex["groups"] = groups
        comments["output.vertex.groups"] = "metadata.inputs.*.groupName"
    config["output"] = {
        "path": output or OUTPUT_PLACEHOLDER,
        "format": "vertex_jsonl",
        "vertex": vertex,
    }
    comments["output.format"] = "one JSON line per example, as Vertex batch explanation writes"
    if output is None:
        notes.append(f"output.path is {OUTPUT_PLACEHOLDER}: give --output (or edit it)")
    return Translation(config, comments, notes)


def _combine_baselines(
    baselines: Mapping[str, list[Any]], fields: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Per-feature baseline lists -> a list of {feature: value} baselines (Vertex pairs the
    i-th baseline of every feature; a feature with one baseline uses it in each, one with none
    uses 0). A feature is a model input or a layer (encodedBaselines); `fields` names the
    Vertex field each came from (`metadata.inputs.<key>.inputBaselines`)."""
    counts = {n: len(v) for n, v in baselines.items() if v}
    if not counts:
        return []
    k = max(counts.values())
    largest = next(n for n, c in counts.items() if c == k)
    most = fields[largest].removeprefix("metadata.inputs.").rsplit(".", 1)[0]  # its key
    for name, count in counts.items():
        if count not in (1, k):
            raise VertexSpecError(
                fields[name], f"{count} baselines while {most} has {k}: give 1 or {k}"
            )
    combined = []
    for i in range(k):
        combined.append(
            {n: (v[i] if len(v) == k else v[0]) if v else 0.0 for n, v in baselines.items()}
        )
    return combined


def _smoothgrad(
    raw: Any, where: str, inputs: Mapping[str, Any], vertex_names: Mapping[str, str]
) -> dict[str, Any]:
    config = _message(raw, where, _SMOOTHGRAD)
    samples = _int(config.get("noisySampleCount", 3), f"{where}.noisySampleCount", 1)
    out: dict[str, Any] = {"samples": samples}
    if "featureNoiseSigma" in config:
        if "noiseSigma" in config:
            raise VertexSpecError(f"{where}.noiseSigma", "give noiseSigma or featureNoiseSigma")
        feature_noise = _message(
            config["featureNoiseSigma"], f"{where}.featureNoiseSigma", ("noiseSigma",)
        )
        entries = feature_noise.get("noiseSigma", [])
        if not isinstance(entries, list) or not entries:
            raise VertexSpecError(f"{where}.featureNoiseSigma.noiseSigma", "a non-empty list")
        by_vertex = {v: n for n, v in vertex_names.items()}
        sigmas: dict[str, float] = {}
        for i, entry in enumerate(entries):
            at = f"{where}.featureNoiseSigma.noiseSigma[{i}]"
            entry = _message(entry, at, _NOISE_FOR_FEATURE)
            name = entry.get("name")
            if name not in inputs:
                raise VertexSpecError(f"{at}.name", f"{name!r} is not in metadata.inputs")
            sigmas[by_vertex.get(name, name)] = _positive(entry.get("sigma", 0.1), f"{at}.sigma")
        out["feature_sigma"] = sigmas
    else:
        out["sigma"] = _positive(config.get("noiseSigma", 0.1), f"{where}.noiseSigma")
    return out


def _target(params: Mapping[str, Any], display: list[str] | None) -> dict[str, Any]:
    if "outputIndices" in params:
        indices = params["outputIndices"]
        where = "parameters.outputIndices"
        if not isinstance(indices, list) or not indices:
            raise VertexSpecError(where, "must be a non-empty list of output indices")
        if any(isinstance(x, list) for x in indices):
            raise VertexSpecError(where, "igbeam explains outputs of one dimension (a flat list)")
        values = [_int(x, f"{where}[{i}]", 0) for i, x in enumerate(indices)]
        if len(values) == 1:
            return {"kind": "index", "value": values[0]}
        return {"kind": "indices", "values": values}
    if "topK" not in params:
        return {"kind": "predicted"}
    top_k = _int(params["topK"], "parameters.topK")
    if top_k == -1:
        if display is None:
            raise VertexSpecError(
                "parameters.topK",
                "-1 (every output) needs the number of outputs: give indexDisplayNameMapping "
                "or outputIndices",
            )
        top_k = len(display)
    elif top_k < 0:
        raise VertexSpecError("parameters.topK", f"must be -1 or >= 0, got {top_k}")
    if top_k <= 1:  # 0 is proto3's unset: Vertex's default, the arg-max output
        return {"kind": "predicted"}
    return {"kind": "top_k", "k": top_k}


# ------------------------------------------------------------------------------------ YAML


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _emit(node: Mapping[str, Any], prefix: str, indent: int, comments: Mapping[str, str]) -> list:
    """Block YAML of a mapping, a `# comment` line above each key that has one."""
    lines = []
    pad = " " * indent
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else key
        comment = comments.get(dotted)
        if comment:
            lines.append(f"{pad}# {comment}")
        scalars = isinstance(value, list | tuple) and all(
            not isinstance(x, Mapping | list | tuple) for x in value
        )
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{_flow(key)}:")
            lines.extend(_emit(value, dotted, indent + 2, comments))
        elif isinstance(value, list | tuple) and value and not scalars:
            lines.append(f"{pad}{_flow(key)}:")
            block = yaml.safe_dump(list(value), default_flow_style=None, sort_keys=False)
            lines.extend(f"{pad}  {line}" for line in block.splitlines())
        else:
            lines.append(f"{pad}{_flow(key)}: {_flow(value)}")
            for item in value if scalars else ():  # a comment per feature, where there is one
                note = comments.get(f"{dotted}.{item}")
                if note:
                    lines.append(f"{pad}  # {item}: {note}")
    return lines


def render_yaml(translation: Translation, source: str = "") -> str:
    """The config as a YAML file, with a comment above each translated key.

    `yaml.safe_load(render_yaml(t)) == t.config`.
    """
    header = [
        "# igbeam job config translated from a Vertex AI ExplanationSpec"
        + (f" ({source})" if source else "")
        + " by `igbeam import-vertex`.",
        "# Every key is described in configs/README.md; the Vertex fields in "
        "docs/vertex-migration.md.",
    ]
    header += [f"# NOTE: {note}" for note in translation.notes]
    body = _emit(translation.config, "", 0, translation.comments)
    return "\n".join([*header, "", *body]) + "\n"
