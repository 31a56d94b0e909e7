"""The HTML report's image section: the run's mean |attribution| grid per class, as heatmaps,
and a few examples drawn as `igbeam visualize` draws them.

The heatmaps read only `statistics/image_grids.parquet` (per slice and image feature, the mean of
each cell of the examples' `grid_<feature>`): one small heatmap for all examples and one per
target class (the `target` slices), per image feature. The examples (`EXAMPLE_OVERLAYS`) re-read
their originals from the run's input, decoded with TensorFlow as the run decoded them. Runs
without image features get no section.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from transforms.constants import IMAGE_GRIDS_FILE, STATISTICS_DIR

__all__ = [
    "EXAMPLE_OVERLAYS",
    "MAX_CLASS_PANELS",
    "example_overlays",
    "image_section",
    "read_image_grids",
]

MAX_CLASS_PANELS = 12
"""Heatmaps per image feature besides `all`: the classes with the most examples."""

EXAMPLE_OVERLAYS = 3
"""Examples drawn in the report (original, mask, overlay), chosen as `igbeam visualize` does."""


def read_image_grids(run: str) -> list[dict[str, Any]]:
    """The rows of a run's image_grids.parquet ([] when the run has none)."""
    path = os.path.join(run, STATISTICS_DIR, IMAGE_GRIDS_FILE)
    if "://" in run:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        path = f"{run.rstrip('/')}/{STATISTICS_DIR}/{IMAGE_GRIDS_FILE}"
        if not FileSystems.exists(path):
            return []
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return pq.read_table(f).to_pylist()
    if not os.path.exists(path):
        return []
    return pq.read_table(path).to_pylist()


def image_section(run: str, plt: Any, svg: Any) -> str | None:
    """The section's HTML, or None when the run has no image grids.

    Args:
      run: The run's output.path.
      plt: matplotlib.pyplot (the report's, configured for SVG).
      svg: `(figure, name) -> str`, the report's inline SVG renderer.
    """
    rows = [r for r in read_image_grids(run) if r["slice_name"] in ("all", "target")]
    if not rows:
        return None
    parts = []
    for feature in dict.fromkeys(r["feature"] for r in rows):
        mine = [r for r in rows if r["feature"] == feature]
        overall = [r for r in mine if r["slice_name"] == "all"]
        classes = sorted(
            (r for r in mine if r["slice_name"] == "target"), key=lambda r: -r["count"]
        )[:MAX_CLASS_PANELS]
        classes.sort(key=lambda r: (len(r["slice_value"]), r["slice_value"]))
        panels = overall + classes
        fig, axes = plt.subplots(
            1, len(panels), figsize=(1.6 * len(panels) + 0.4, 1.9), squeeze=False
        )
        for ax, row in zip(axes[0], panels, strict=True):
            grid = np.asarray(row["mean_abs"], np.float64).reshape(
                row["grid_height"], row["grid_width"]
            )
            ax.imshow(grid, cmap="inferno", vmin=0.0)
            label = "all" if row["slice_name"] == "all" else f"class {row['slice_value']}"
            ax.set_title(f"{label} (n={row['count']:,})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{feature}: mean |attribution| per grid cell", fontsize=9)
        parts.append(svg(fig, f"image-grid-{feature}"))
    note = (
        "Mean over the examples of each cell's |attribution| (summed over the cell's pixels and "
        "channels), for all examples and per explained class; from "
        "statistics/image_grids.parquet. More examples: igbeam visualize RUN --examples K."
    )
    return f'<p class="note">{html.escape(note)}</p>' + "".join(parts) + example_overlays(run)


def example_overlays(run: str, count: int = EXAMPLE_OVERLAYS) -> str:
    """A few examples as `igbeam visualize` draws them (original, mask, overlay), inline PNGs.

    The originals are re-read from the run's input by key; when that is not possible (moved
    input, another machine) the section says so in one line instead.
    """
    from pipeline.visualize import VisualizeError, visualize

    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = visualize(run, tmp, examples=count)
        except (VisualizeError, OSError, ValueError) as err:
            reason = html.escape(str(err).splitlines()[0] if str(err) else type(err).__name__)
            return f'<p class="note">Example pictures unavailable: {reason}</p>'
        figures = []
        for path in done.files:
            with open(path, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            name = html.escape(os.path.basename(path))
            figures.append(
                f'<figure class="example-image"><img alt="{name}" '
                f'src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'
            )
    keys = html.escape(", ".join(done.keys))
    how = ", ".join(f"{k}: {v}" for k, v in done.source.items())
    return (
        f'<p class="note">{len(done.keys)} examples ({keys}): original, |attribution| mask and '
        f"overlay, as igbeam visualize draws them (mask from {html.escape(how)}).</p>"
        f'<div class="example-images">{"".join(figures)}</div>'
    )
