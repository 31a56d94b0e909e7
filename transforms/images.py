"""Images at dataset scale: settings, decoding, grid pooling, masks and overlays.

An image feature is named in the job config's `images` section (`ImageConfig`, one entry per
feature). Its examples hold either encoded bytes (PNG/JPEG, one value per example), decoded in
the worker per batch with TensorFlow and resized to the model's input size, or a flat float
list of H*W*C values (row-major HWC). Attributions are taken with respect to the decoded pixels.

Per example, an image feature's results are summarised for use at scale (`image_columns`):

* `attr_<F>`  float64, the signed sum of the attributions over every pixel and channel;
* `grid_<F>`  list<float32> of GH*GW cells (row-major), each the sum over the cell's pixels and
  channels of |attribution|; cell (i, j) covers rows floor(i*H/GH) .. floor((i+1)*H/GH) - 1 and
  likewise columns (adaptive pooling: every pixel in exactly one cell);
* `full_<F>`  list<float16> of H*W*C values (row-major HWC), only with
  `output.full_image_attributions`.

The mask and overlay (`attribution_mask`, `overlay`) follow the TensorFlow IG tutorial: the
mask is |attribution| summed over channels, clipped at a high percentile and normalised to
[0, 1]; the overlay draws it over the dimmed grayscale image.

Pure: numpy and the settings machinery at import; TensorFlow only inside the functions that
decode or encode images. No Beam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from attribution.errors import SettingsError, one_line
from attribution.fields import Check, Choice, Integer, Section, setting, show
from transforms.constants import FULL_PREFIX, GRID_PREFIX

__all__ = [
    "ENCODINGS",
    "FULL_PREFIX",
    "GRID_PREFIX",
    "SCALES",
    "ImageConfig",
    "ImageSpec",
    "Images",
    "attribution_mask",
    "cell_bounds",
    "decode_column",
    "decode_image",
    "encode_png",
    "image_columns",
    "overlay",
    "pool_grid",
    "resolve_image",
    "upsample_grid",
]

ENCODINGS = ("auto", "png", "jpeg", "floats")
"""How an image is stored: encoded bytes (`png`, `jpeg`, or `auto`: whatever TensorFlow's
`decode_image` reads, or float lists when the schema says FLOAT) or a float list (`floats`)."""
SCALES = ("unit", "none")
"""Decoded 8-bit pixels scaled to [0, 1] (`unit`) or kept as 0..255 floats (`none`)."""
DEFAULT_GRID = (14, 14)
ENCODED = ("auto", "png", "jpeg")

_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


class _Grid(Check):
    """[GH, GW]: two integers >= 1; returned as a tuple."""

    def __call__(self, value: Any, key: str, api: bool) -> tuple[int, int]:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise SettingsError(
                f"must be a list of two integers [rows, columns], got {show(value)}", key
            )
        return tuple(Integer(1)(v, f"{key}[{i}]", api) for i, v in enumerate(value))


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How one image feature is read and summarised (`images.<feature>` in a job config).

    Attributes:
      encoding: One of `ENCODINGS`.
      height, width: The size the model sees; an encoded image of another size is resized to
        it (bilinear). None: the model input's size.
      channels: Channels decoded (1 gray, 3 RGB, 4 RGBA); None: the model input's.
      scale: One of `SCALES` (encoded images only; float lists are used as stored).
      grid: [GH, GW] cells of the per-example summary grid (each <= the image's size); None:
        `DEFAULT_GRID`, or the image's size where that is smaller.
    """

    encoding: str = setting("auto", check=Choice(ENCODINGS, "image encoding"))
    height: int | None = setting(None, check=Integer(1))
    width: int | None = setting(None, check=Integer(1))
    channels: int | None = setting(None, check=Integer(1))
    scale: str = setting("unit", check=Choice(SCALES, "scale"))
    grid: tuple[int, int] | None = setting(None, check=_Grid())

    def cross_check(self, prefix: str) -> None:
        """Encoded images have 1, 3 or 4 channels; the grid fits a given size."""
        where = prefix + "." if prefix else ""
        if self.encoding in ENCODED and self.channels not in (None, 1, 3, 4):
            raise SettingsError(
                f"must be 1, 3 or 4 for encoded images, got {self.channels}", where + "channels"
            )
        grid = self.grid or (0, 0)
        for axis, size, cells in (("height", self.height, grid[0]), ("width", self.width, grid[1])):
            if size is not None and self.grid is not None and cells > size:
                raise SettingsError(
                    f"{list(self.grid)} has more cells than the image has pixels "
                    f"({cells} > {axis} {size})",
                    where + "grid",
                )


class Images(Check):
    """The `images` section: a {feature: ImageConfig mapping} map (an empty map: no images)."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> dict[str, ImageConfig]:
        if not isinstance(value, Mapping):
            raise SettingsError(
                f"must be a {{feature: image settings}} map, got {show(value)}", key
            )
        out = {}
        for name, entry in value.items():
            if not isinstance(name, str) or not name.strip():
                raise SettingsError(
                    f"feature names must be non-empty strings, got {show(name)}", key
                )
            out[name] = Section(ImageConfig)({} if entry is None else entry, f"{key}.{name}", api)
        return out


class ImageSpec(NamedTuple):
    """An image feature resolved against the model and the schema (what the workers use).

    Attributes:
      name: The feature (a model input).
      encoding: `png`, `jpeg`, `auto` (encoded bytes) or `floats`.
      height, width, channels: The decoded image the model sees.
      scale: `unit` or `none`.
      grid: (GH, GW).
      model_shape: The model input's per-example shape ((H, W, C) or (H, W) for one channel).
      decode: Whether the worker decodes it (False: a preprocessing model or an export does).
    """

    name: str
    encoding: str
    height: int
    width: int
    channels: int
    scale: str
    grid: tuple[int, int]
    model_shape: tuple[int, ...]
    decode: bool = True

    @property
    def cells(self) -> int:
        """Cells of the summary grid."""
        return self.grid[0] * self.grid[1]

    @property
    def size(self) -> int:
        """Values per example (H * W * C)."""
        return self.height * self.width * self.channels

    def summary(self) -> dict[str, Any]:
        """What summary.json records of the image."""
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "grid": list(self.grid),
            "encoding": self.encoding,
            "scale": self.scale,
            "decoded_by": "igbeam" if self.decode else "model",
        }


def resolve_image(
    name: str,
    config: ImageConfig,
    model_shape: Sequence[int | None],
    stored_type: str | None,
    decode: bool,
) -> ImageSpec:
    """Checks an image's settings against its model input and schema type.

    Args:
      name: The feature.
      config: Its `images.<name>` settings.
      model_shape: The model input's (or attributed tensor's) per-example shape.
      stored_type: The schema type of the feature ("FLOAT", "BYTES", "INT") or None when the
        examples do not hold it (a preprocessing model makes it).
      decode: Whether igbeam reads the feature from the examples.

    Raises:
      SettingsError: naming `images.<name>.<key>`.
    """
    prefix = f"images.{name}"
    shape = tuple(model_shape)
    if len(shape) not in (2, 3) or any(d is None for d in shape):
        raise SettingsError(
            f"the model's {name!r} has per-example shape {list(shape)}; an image needs a fixed "
            "[height, width, channels] or [height, width]",
            prefix,
        )
    height, width = int(shape[0]), int(shape[1])
    channels = int(shape[2]) if len(shape) == 3 else 1
    for key, given, actual in (
        ("height", config.height, height),
        ("width", config.width, width),
        ("channels", config.channels, channels),
    ):
        if given is not None and given != actual:
            raise SettingsError(
                f"{given} differs from the model input's {actual} (shape {list(shape)})",
                f"{prefix}.{key}",
            )
    grid = config.grid or (min(DEFAULT_GRID[0], height), min(DEFAULT_GRID[1], width))
    if grid[0] > height or grid[1] > width:
        raise SettingsError(
            f"{list(grid)} has more cells than the image has pixels ({height}x{width})",
            f"{prefix}.grid",
        )
    encoding = config.encoding
    if decode:
        if encoding == "auto":
            encoding = "floats" if stored_type == "FLOAT" else "auto"
        wanted = "FLOAT" if encoding == "floats" else "BYTES"
        if stored_type != wanted:
            raise SettingsError(
                f"{config.encoding} needs a {wanted} feature; the schema has {stored_type}",
                f"{prefix}.encoding",
            )
        if encoding != "floats" and channels not in (1, 3, 4):
            raise SettingsError(
                f"the model input has {channels} channels; encoded images decode to 1, 3 or 4",
                f"{prefix}.channels",
            )
    return ImageSpec(
        name, encoding, height, width, channels, config.scale, tuple(grid), shape, decode
    )


# ----------------------------------------------------------------------------------- decoding


def decode_image(data: bytes, spec: ImageSpec) -> np.ndarray:
    """One encoded image as the float32 [H, W, C] array the model sees.

    Raises:
      ValueError: the bytes are not an image of the expected encoding (one line).
    """
    import tensorflow as tf

    magic = _MAGIC.get(spec.encoding)
    if magic is not None and not data.startswith(magic):
        raise ValueError(f"not a {spec.encoding.upper()} image (starts with {data[:8]!r})")
    try:
        image = tf.io.decode_image(
            data, channels=spec.channels, expand_animations=False, dtype=tf.uint8
        )
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        raise ValueError(one_line(err, limit=200, with_type=False)) from err
    pixels = tf.cast(image, tf.float32)
    if tuple(image.shape[:2]) != (spec.height, spec.width):
        pixels = tf.image.resize(pixels, (spec.height, spec.width), method="bilinear")
    out = pixels.numpy()
    return out / np.float32(255.0) if spec.scale == "unit" else out


def decode_column(
    values: Sequence[Any], spec: ImageSpec
) -> tuple[np.ndarray, list[str], list[str]]:
    """Decodes a batch's column of encoded images (`values[i]`: the list of bytes of row i).

    Returns:
      (pixels, missing, broken): pixels [N, H, W, C] float32 (zeros for unusable rows); per row
      "" or why the value is unusable (missing or several values: a validation problem), and ""
      or why the bytes do not decode (a decoding problem).
    """
    n = len(values)
    pixels = np.zeros((n, spec.height, spec.width, spec.channels), np.float32)
    missing, broken = [""] * n, [""] * n
    for i, value in enumerate(values):
        if not value:
            missing[i] = f"image feature {spec.name!r} is missing"
            continue
        if len(value) != 1:
            missing[i] = f"image feature {spec.name!r} has {len(value)} values, expected 1"
            continue
        try:
            pixels[i] = decode_image(value[0], spec)
        except ValueError as err:
            broken[i] = f"image feature {spec.name!r} cannot be decoded: {err}"
    return pixels, missing, broken


# ------------------------------------------------------------------------------------ pooling


def cell_bounds(size: int, cells: int) -> np.ndarray:
    """The `cells + 1` boundaries floor(i * size / cells) of adaptive pooling along one axis."""
    return (np.arange(cells + 1) * size) // cells


def pool_grid(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Sums [N, H, W] values over the cells of a (GH, GW) grid: [N, GH, GW]."""
    values = np.asarray(values)
    rows = cell_bounds(values.shape[1], grid[0])
    cols = cell_bounds(values.shape[2], grid[1])
    by_rows = np.add.reduceat(values, rows[:-1], axis=1)
    return np.add.reduceat(by_rows, cols[:-1], axis=2)


def upsample_grid(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [GH, GW] grid as an [H, W] image: each pixel takes its cell's value per pixel (the
    cell's sum divided by its area), so the picture does not favour the larger cells."""
    gh, gw = grid.shape
    rows, cols = cell_bounds(height, gh), cell_bounds(width, gw)
    row_cell = np.repeat(np.arange(gh), np.diff(rows))
    col_cell = np.repeat(np.arange(gw), np.diff(cols))
    area = np.outer(np.diff(rows), np.diff(cols))
    return (grid / area)[row_cell][:, col_cell]


def image_columns(attributions: np.ndarray, spec: ImageSpec, full: bool) -> dict[str, np.ndarray]:
    """The per-example columns of one image feature from its attributions [N, *model_shape].

    Returns:
      {"attr": [N] float64 signed sums, "grid": [N, GH*GW] float32 sums of |attribution| per
      cell, and with `full` "full": [N, H*W*C] float16}.
    """
    n = len(attributions)
    values = np.asarray(attributions, np.float64).reshape(n, spec.height, spec.width, spec.channels)
    out = {
        "attr": values.reshape(n, -1).sum(axis=1),
        "grid": pool_grid(np.abs(values).sum(axis=3), spec.grid).reshape(n, -1).astype(np.float32),
    }
    if full:
        out["full"] = values.reshape(n, -1).astype(np.float16)
    return out


# --------------------------------------------------------------------------------- rendering


def attribution_mask(attributions: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """The TensorFlow IG tutorial's mask: |attribution| summed over channels ([H, W, C] or
    [H, W]), clipped at the `percentile`-th value and normalised to [0, 1]."""
    values = np.abs(np.asarray(attributions, np.float64))
    if values.ndim == 3:
        values = values.sum(axis=2)
    top = float(np.percentile(values, percentile)) if values.size else 0.0
    if not top > 0:
        top = float(values.max()) if values.size else 0.0
    if not top > 0:
        return np.zeros(values.shape, np.float32)
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def _heat(mask: np.ndarray) -> np.ndarray:
    """A black -> red -> yellow -> white colour map (inferno-like) of a [H, W] mask in [0, 1]."""
    m = np.clip(mask, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 0], [0.55, 0.05, 0.25], [0.95, 0.45, 0.05], [1, 1, 0.85]])
    x = m * (len(stops) - 1)
    low = np.clip(np.floor(x).astype(int), 0, len(stops) - 2)
    frac = x - low
    return (stops[low[..., 0]] * (1 - frac) + stops[low[..., 0] + 1] * frac).astype(np.float32)


def to_rgb(image: np.ndarray, scale: str = "unit") -> np.ndarray:
    """An image ([H, W, C] or [H, W]) as float RGB in [0, 1] for display."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if scale != "unit":
        high = float(image.max()) if image.size else 0.0
        image = image / (255.0 if high > 1.0 else max(high, 1e-12))
    image = np.clip(image, 0.0, 1.0)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[..., :3]


def overlay(image_rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The mask (colour-mapped) over the grayscale image, as the tutorial draws it (the mask,
    then the image at 1 - `alpha` opacity); RGB in [0, 1]."""
    gray = image_rgb.mean(axis=2, keepdims=True)
    return np.clip((1 - alpha) * gray + alpha * _heat(mask), 0.0, 1.0)


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    """The mask colour-mapped to RGB in [0, 1]."""
    return _heat(mask)


def encode_png(rgb: np.ndarray, scale_to: int | None = None) -> bytes:
    """RGB in [0, 1] ([H, W, 3]) as PNG bytes; `scale_to` enlarges (nearest) to that height."""
    import tensorflow as tf

    pixels = np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)
    if scale_to and pixels.shape[0] < scale_to:
        factor = max(1, scale_to // pixels.shape[0])
        pixels = pixels.repeat(factor, axis=0).repeat(factor, axis=1)
    return tf.io.encode_png(pixels).numpy()
