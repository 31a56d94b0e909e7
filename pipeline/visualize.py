"""`igbeam visualize RUN --examples K --out DIR [--keys k1,k2]`: image attributions as pictures.

For a sample of a run's examples (or the given keys) and each image feature, writes the original
image, the attribution mask and the overlay as PNGs, as the TensorFlow IG tutorial shows them
(`transforms.images.attribution_mask`, `overlay`), and an `index.html` page that shows them.

The originals are re-read from the run's input (the resolved config in summary.json) by key and
decoded as the run decoded them. The mask comes from the run's `full_<feature>` column when the
run stored it (`output.full_image_attributions`), else from its `grid_<feature>` upsampled (each
pixel gets its cell's sum over the cell's area); the page says which.

The sample is deterministic: the K keys with the smallest crc32 hash.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.constants import (
    ATTRIBUTION_PREFIX,
    ATTRIBUTIONS_DIR,
    FULL_PREFIX,
    GRID_PREFIX,
    KEY_COLUMN,
    SUMMARY_FILE,
)
from transforms.images import (
    ImageSpec,
    attribution_mask,
    decode_image,
    encode_png,
    mask_rgb,
    overlay,
    to_rgb,
    upsample_grid,
)

__all__ = ["INDEX_FILE", "VisualizeError", "Visualized", "visualize"]

INDEX_FILE = "index.html"
DISPLAY_HEIGHT = 160
"""Pixels of the height the PNGs are enlarged to (nearest neighbour), at least."""


class VisualizeError(ValueError):
    """The run cannot be visualised as asked (one line: unknown keys, no images, no summary)."""


@dataclasses.dataclass
class Visualized:
    """What `visualize` wrote.

    Attributes:
      index: The index.html path.
      keys: The examples shown, in page order.
      files: Every PNG written.
      source: Per image feature: "full" (stored attributions) or "grid" (upsampled).
    """

    index: str
    keys: list[str]
    files: list[str]
    source: dict[str, str]


def _summary(run: str) -> dict[str, Any]:
    path = os.path.join(run, SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise VisualizeError(f"{run} is not an igbeam run: cannot read {path}: {err}") from err


def image_specs(summary: dict[str, Any]) -> dict[str, ImageSpec]:
    """The run's image features as its workers decoded them (from summary.json)."""
    images = summary.get("images") or {}
    config = summary.get("config", {}).get("images") or {}
    specs = {}
    for name, info in images.items():
        given = config.get(name) or {}
        encoding = info.get("encoding", given.get("encoding") or "auto")
        shape = (info["height"], info["width"], info["channels"])
        specs[name] = ImageSpec(
            name,
            encoding,
            info["height"],
            info["width"],
            info["channels"],
            info.get("scale", given.get("scale") or "unit"),
            tuple(info["grid"]),
            shape,
            info.get("decoded_by", "igbeam") == "igbeam",
        )
    return specs


def _pick(keys: Sequence[str], count: int, wanted: Sequence[str] | None) -> list[str]:
    if wanted:
        known = set(keys)
        unknown = [k for k in wanted if k not in known]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise VisualizeError(f"unknown key(s) in the run's attributions: {shown}")
        return list(dict.fromkeys(wanted))
    if count < 1:
        raise VisualizeError(f"--examples must be >= 1, got {count}")
    return sorted(keys, key=lambda k: (zlib.crc32(k.encode()), k))[:count]


def _originals(
    config: dict[str, Any], keys: Sequence[str], features: Sequence[str]
) -> dict[str, dict[str, list[bytes] | list[float]]]:
    """key -> {feature: its values} for `keys`, read from the run's input files."""
    import tensorflow as tf

    from transforms.records import match_files, read_tfrecord_file
    from transforms.tfrecords import Record

    patterns = [p.strip() for p in config["input"]["pattern"].split(",") if p.strip()]
    key_feature = config["input"].get("key")
    wanted, found = set(keys), {}
    for path in match_files(patterns):
        for item in read_tfrecord_file(path):
            if not isinstance(item, Record):
                continue
            try:
                example = tf.train.Example.FromString(item.data)
            except Exception:  # noqa: BLE001 - a record the run dead-lettered
                continue
            feature = example.features.feature
            if key_feature is None:
                key = f"{item.file}:{item.index}"
            else:
                values = feature[key_feature].bytes_list.value if key_feature in feature else []
                key = values[0].decode("utf-8", "replace") if values else None
            if key not in wanted or key in found:
                continue
            found[key] = {
                name: list(feature[name].bytes_list.value or feature[name].float_list.value)
                for name in features
                if name in feature
            }
            if len(found) == len(wanted):
                return found
    return found


def _original_pixels(values: list, spec: ImageSpec) -> np.ndarray:
    """The image as the model saw it; one a preprocessing model decoded is decoded here as
    encoding `auto`, scale `unit` (a float list as stored)."""
    if not spec.decode:
        spec = spec._replace(encoding="auto", scale="unit")
        if values and not isinstance(values[0], bytes):
            spec = spec._replace(encoding="floats")
    if spec.encoding == "floats":
        return np.asarray(values, np.float32).reshape(spec.height, spec.width, spec.channels)
    return decode_image(values[0], spec)


def visualize(
    run: str, out: str, *, examples: int = 8, keys: Sequence[str] | None = None
) -> Visualized:
    """Writes original / mask / overlay PNGs and index.html for examples of a run.

    Args:
      run: The run's output.path.
      out: The directory to write into (created).
      examples: How many examples, when `keys` is not given.
      keys: The examples to show.

    Raises:
      VisualizeError: not a run, a run without image features, unknown keys, or originals that
        cannot be found or decoded.
    """
    import pyarrow.parquet as pq

    summary = _summary(run)
    specs = image_specs(summary)
    if not specs:
        raise VisualizeError(f"{run} has no image features (no `images` in its summary.json)")
    directory = os.path.join(run, ATTRIBUTIONS_DIR)
    # Only the key column of the whole run is read; then only the chosen examples' rows.
    chosen = _pick(
        pq.read_table(directory, columns=[KEY_COLUMN]).column(0).to_pylist(), examples, keys
    )
    table = pq.read_table(directory, filters=[(KEY_COLUMN, "in", list(chosen))])
    names = table.schema.names
    position = {k: i for i, k in enumerate(table.column(KEY_COLUMN).to_pylist())}
    originals = _originals(summary["config"], chosen, list(specs))
    missing = [k for k in chosen if k not in originals]
    if missing:
        raise VisualizeError(f"cannot find the original records of key(s) {', '.join(missing[:5])}")
    os.makedirs(out, exist_ok=True)
    source = {name: "full" if FULL_PREFIX + name in names else "grid" for name in specs}
    rows, files = [], []
    for n, key in enumerate(chosen):
        i = position[key]
        cells = []
        for name, spec in specs.items():
            if source[name] == "full":
                values = np.asarray(table.column(FULL_PREFIX + name)[i].as_py(), np.float32)
                attributions = values.reshape(spec.height, spec.width, spec.channels)
            else:
                grid = np.asarray(table.column(GRID_PREFIX + name)[i].as_py(), np.float64)
                attributions = upsample_grid(grid.reshape(spec.grid), spec.height, spec.width)
            try:
                pixels = _original_pixels(originals[key][name], spec)
            except (ValueError, KeyError, IndexError) as err:
                how = "" if spec.decode else " (the run's preprocessing model decoded it)"
                raise VisualizeError(f"key {key}: cannot decode {name!r}{how}: {err}") from err
            image = to_rgb(pixels, spec.scale)
            mask = attribution_mask(attributions)
            pictures = {
                "original": image,
                "mask": mask_rgb(mask),
                "overlay": overlay(image, mask),
            }
            written = {}
            for kind, rgb in pictures.items():
                filename = f"{n:04d}_{name}_{kind}.png"
                with open(os.path.join(out, filename), "wb") as f:
                    f.write(encode_png(rgb, DISPLAY_HEIGHT))
                files.append(os.path.join(out, filename))
                written[kind] = filename
            total = table.column(ATTRIBUTION_PREFIX + name)[i].as_py()
            cells.append((name, written, total))
        row = {c: table.column(c)[i].as_py() for c in ("target", "prediction", "delta")}
        rows.append((key, row, cells))
    index = os.path.join(out, INDEX_FILE)
    with open(index, "w", encoding="utf-8") as f:
        f.write(_page(run, rows, source))
    return Visualized(index, list(chosen), files, source)


def _page(run: str, rows: list, source: dict[str, str]) -> str:
    notes = []
    for name, kind in source.items():
        if kind == "grid":
            notes.append(
                f"<p><b>{html.escape(name)}</b>: the run did not store full attributions "
                "(output.full_image_attributions: false): the masks are its summary grid "
                "upsampled (each pixel shows its cell's |attribution| per pixel).</p>"
            )
        else:
            notes.append(
                f"<p><b>{html.escape(name)}</b>: masks from the stored attributions (float16).</p>"
            )
    body = []
    for key, row, cells in rows:
        for name, written, total in cells:
            imgs = "".join(
                f'<figure><img src="{html.escape(written[k])}" alt="{k}"><figcaption>{k}'
                "</figcaption></figure>"
                for k in ("original", "mask", "overlay")
            )
            body.append(
                f"<tr><td><code>{html.escape(key)}</code><br>{html.escape(name)}<br>"
                f"target {row['target']}<br>F(x) {row['prediction']:.4g}<br>"
                f"sum attr {total:.4g}<br>delta {row['delta']:.2g}</td><td>{imgs}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>igbeam visualize</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;"
        "margin:0 .5em}img{image-rendering:pixelated;height:160px}td{vertical-align:top;"
        "padding:.4em;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>Image attributions</h1><p>Run: <code>{html.escape(run)}</code>. Mask: "
        "|attribution| summed over channels, clipped at the 99th percentile, normalised; "
        "overlay: the mask over the dimmed grayscale image.</p>"
        + "".join(notes)
        + "<table>"
        + "".join(body)
        + "</table></body></html>\n"
    )
