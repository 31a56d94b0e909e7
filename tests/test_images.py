"""Images at dataset scale: PNG/float decoding, grid summaries, grid statistics, the CNN demo
and `igbeam visualize` (`transforms/images.py`, `pipeline/demo_images.py`,
`pipeline/visualize.py`)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from helpers import read_attributions, read_parquet, write_records

from pipeline.config import ConfigError, parse_config
from pipeline.examples import to_example
from pipeline.job import JobError, plan_job, run_job
from transforms.images import cell_bounds, pool_grid, upsample_grid
from transforms.statistics import IMAGE_GRIDS_SCHEMA

H, W, C = 8, 6, 3
GRID = (3, 4)  # uneven cells: rows 0,2,5,8; columns 0,1,3,4,6


def _png(pixels: np.ndarray) -> bytes:
    return tf.io.encode_png(pixels.astype(np.uint8)).numpy()


def _example(key: str, image: bytes | None, label: int = 0, name: str = "img", **more) -> bytes:
    features = {"key": key, "label": label, **more}
    if image is not None:
        features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    return to_example(features).SerializeToString()


def _linear_model(path, weights: np.ndarray, bias: float = 0.5) -> str:
    import keras

    inp = keras.Input((H, W, C), name="img")
    flat = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(1, name="y")(flat)
    model = keras.Model(inp, out)
    model.get_layer("y").set_weights([weights.reshape(-1, 1).astype(np.float32), np.array([bias])])
    model.save(str(path))
    return str(path)


def _block_sums(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per-cell sums of [N, H, W] values, written out with explicit loops (the reference)."""
    rows, cols = cell_bounds(values.shape[1], grid[0]), cell_bounds(values.shape[2], grid[1])
    out = np.zeros((len(values), grid[0], grid[1]))
    for i in range(grid[0]):
        for j in range(grid[1]):
            out[:, i, j] = values[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].sum(axis=(1, 2))
    return out


@pytest.fixture(scope="module")
def linear_png(tmp_path_factory):
    """A model linear in the pixels and 24 PNG examples (two classes for slicing)."""
    root = tmp_path_factory.mktemp("linear_png")
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(H, W, C)).astype(np.float32)
    model = _linear_model(root / "model.keras", weights)
    pixels = rng.integers(0, 256, size=(24, H, W, C), dtype=np.uint8)
    labels = np.arange(24) % 2
    payloads = [
        _example(f"k{i:02d}", _png(pixels[i]), int(labels[i]), group=["a", "b", "c"][i % 3])
        for i in range(24)
    ]
    write_records(root / "data.tfrecord", payloads)
    return root, model, weights, pixels, labels


def _linear_config(root, model, out, **more) -> dict:
    config = {
        "model": {"path": model},
        "input": {"pattern": str(root / "data.tfrecord"), "key": "key"},
        "features": ["img"],
        "passthrough": ["label", "group"],
        "slices": [["group"]],
        "attribution": {
            "method": "gausslegendre",
            "steps": 4,
            "baseline": {"kind": "constant", "value": 1.0},  # white
            "target": {"kind": "scalar"},
        },
        "batching": {"batch_size": 5, "max_rows_per_call": 64},
        "images": {"img": {"encoding": "png", "scale": "unit", "grid": list(GRID)}},
        "output": {"path": str(out), "full_image_attributions": True},
    }
    config.update(more)
    return config


def test_linear_model_from_png_bytes_through_the_pipeline(linear_png, tmp_path):
    root, model, weights, pixels, _ = linear_png
    out = tmp_path / "run"
    summary = run_job(parse_config(_linear_config(root, model, out)))
    assert summary["counts"]["examples_attributed"] == 24
    assert summary["counts"]["dead_letters"] == 0
    assert summary["images"]["img"]["grid"] == list(GRID)
    assert (summary["images"]["img"]["height"], summary["images"]["img"]["width"]) == (H, W)

    frame = read_attributions(out).set_index("key").sort_index()
    index = np.array([int(k[1:]) for k in frame.index])
    x = pixels[index].astype(np.float64) / 255.0
    exact = weights[None].astype(np.float64) * (x - 1.0)  # IG of a linear model, white baseline
    full = np.stack(frame["full_img"].to_numpy()).reshape(-1, H, W, C)
    assert full.dtype == np.float16
    np.testing.assert_allclose(full, exact, rtol=2e-3, atol=2e-3)  # float16 storage
    grid = np.stack(frame["grid_img"].to_numpy()).reshape(-1, *GRID)
    np.testing.assert_allclose(grid, _block_sums(np.abs(exact).sum(axis=3), GRID), rtol=1e-5)
    np.testing.assert_allclose(frame["attr_img"], exact.reshape(len(x), -1).sum(1), atol=1e-5)
    np.testing.assert_allclose(frame["delta"], 0.0, atol=1e-4)  # completeness
    prediction = (weights[None] * x).reshape(len(x), -1).sum(1) + 0.5
    np.testing.assert_allclose(frame["prediction"], prediction, atol=1e-4)

    schema = pq.read_schema(next((out / "attributions").glob("*.parquet")))
    assert str(schema.field("grid_img").type) == "list<element: float>"
    assert str(schema.field("full_img").type) == "list<element: halffloat>"
    assert str(schema.field("attr_img").type) == "double"
    assert "in_img" not in schema.names

    # image_grids.parquet: mean of the examples' grid cells per slice (all, group, target).
    table = pq.read_table(out / "statistics" / "image_grids.parquet")
    assert table.schema.equals(IMAGE_GRIDS_SCHEMA)
    stats = table.to_pandas()
    cells = np.stack(frame["grid_img"].to_numpy()).astype(np.float64)
    expected = {("all", ""): np.ones(len(frame), bool)}
    for value in "abc":
        expected[("group", value)] = (frame["group"] == value).to_numpy()
    expected[("target", "-1")] = np.ones(len(frame), bool)
    assert {(r.slice_name, r.slice_value) for r in stats.itertuples()} == set(expected)
    for row in stats.itertuples():
        member = expected[(row.slice_name, row.slice_value)]
        assert row.count == member.sum()
        assert (row.grid_height, row.grid_width) == GRID
        np.testing.assert_allclose(row.mean_abs, cells[member].mean(axis=0), rtol=1e-9)


def test_without_full_attributions_only_the_grid_and_sum(linear_png, tmp_path):
    root, model, weights, pixels, _ = linear_png
    out = tmp_path / "run"
    config = _linear_config(root, model, out)
    config["output"]["full_image_attributions"] = False
    config["images"]["img"] = {"grid": [2, 2]}  # encoding auto (BYTES: decoded), default scale
    run_job(parse_config(config))
    frame = read_attributions(out).set_index("key").sort_index()
    assert "full_img" not in frame.columns
    index = np.array([int(k[1:]) for k in frame.index])
    exact = weights[None] * (pixels[index] / 255.0 - 1.0)
    grid = np.stack(frame["grid_img"].to_numpy()).reshape(-1, 2, 2)
    np.testing.assert_allclose(grid, _block_sums(np.abs(exact).sum(3), (2, 2)), rtol=1e-5)


# ------------------------------------------------------------------------------- the CNN demo


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The image demo's CNN (briefly trained) and 30 of its PNG examples."""
    from pipeline import demo_images

    root = tmp_path_factory.mktemp("cnn")
    paths = demo_images.build(str(root), n=30, seed=2, epochs=2)
    return root, paths


def _cnn_config(paths, out, **attribution) -> dict:
    return {
        "model": {"path": paths["model"]},
        "input": {"pattern": paths["data"], "schema": paths["schema"], "key": "key"},
        "features": ["image"],
        "passthrough": ["label"],
        "attribution": {"method": "gausslegendre", "steps": 64, **attribution},
        "batching": {"batch_size": 8, "max_rows_per_call": 512},
        "images": {"image": {"encoding": "png", "grid": [4, 4]}},
        "output": {"path": str(out)},
    }


def test_cnn_completeness_gausslegendre(cnn, tmp_path):
    _, paths = cnn
    out = tmp_path / "run"
    summary = run_job(parse_config(_cnn_config(paths, out)))
    assert summary["counts"]["examples_attributed"] == 30
    frame = read_attributions(out)
    gap = np.abs(frame["prediction"] - frame["baseline_prediction"])
    assert (gap > 1e-3).all()  # black images score differently: the check below is not vacuous
    np.testing.assert_array_less(np.abs(frame["delta"]), 0.05 * gap + 1e-4)
    # attr_image is the signed sum the delta is computed from
    np.testing.assert_allclose(
        frame["attr_image"],
        frame["prediction"] - frame["baseline_prediction"] + frame["delta"],
        atol=1e-6,
    )


NOISE = {"kind": "random_uniform", "low": 0.0, "high": 1.0, "samples": 2, "seed": 7}
IMAGE_BASELINES = {
    "noise": NOISE,
    "blur": {"kind": "blur", "sigma": 2.0},
    "black, white, blur and noise averaged": {
        "kind": "average",
        "baselines": [
            {"kind": "constant", "value": 0.0},
            {"kind": "constant", "value": 1.0},
            {"kind": "blur", "sigma": 3.0},
            NOISE,
        ],
    },
}


@pytest.mark.parametrize("baseline", list(IMAGE_BASELINES))
def test_cnn_baselines_are_reproducible_per_key(cnn, tmp_path, baseline):
    """Noise, blur and averaged image baselines: the same attributions for an example in any
    batch (sizes 4 and 11), and complete for the averaged path."""
    _, paths = cnn
    frames = []
    for batch_size in (4, 11):
        config = _cnn_config(
            paths, tmp_path / f"b{batch_size}", steps=8, baseline=IMAGE_BASELINES[baseline]
        )
        config["batching"]["batch_size"] = batch_size
        config["output"]["full_image_attributions"] = True
        run_job(parse_config(config))
        frames.append(read_attributions(tmp_path / f"b{batch_size}").set_index("key").sort_index())
    first, second = frames
    assert list(first.index) == list(second.index)
    np.testing.assert_allclose(
        first["baseline_prediction"], second["baseline_prediction"], atol=1e-6
    )
    np.testing.assert_allclose(
        np.stack(first["full_image"].to_numpy()).astype(np.float32),
        np.stack(second["full_image"].to_numpy()).astype(np.float32),
        atol=1e-3,
    )
    # baselines differ between keys (a baseline of constants would pass the check above too)
    assert first["baseline_prediction"].nunique() > 1
    # completeness: the sum of attributions is F(x) minus the (averaged) baseline output
    np.testing.assert_allclose(
        first["attr_image"] - first["delta"],
        first["prediction"] - first["baseline_prediction"],
        atol=1e-6,
    )


def test_corrupt_image_is_a_dead_letter_and_neighbours_are_attributed(cnn, tmp_path):
    from pipeline import demo_images

    _, paths = cnn
    images, labels = demo_images.make_images(6, seed=9)
    payloads = [
        _example(f"img-{i}", demo_images.png_bytes(images[i]), int(labels[i]), "image")
        for i in range(6)
    ]
    payloads.insert(2, _example("bad-bytes", b"definitely not a PNG", 0, "image"))
    payloads.insert(5, _example("no-image", None, 0, "image"))
    data = tmp_path / "mixed.tfrecord"
    write_records(data, payloads)
    config = _cnn_config({**paths, "data": str(data)}, tmp_path / "run")
    config["input"]["schema"] = None  # inferred: `image` present in most records
    config["passthrough"] = []
    config["max_dead_letter_fraction"] = 0.5
    summary = run_job(parse_config(config))
    assert summary["counts"]["examples_attributed"] == 6
    assert summary["counts"]["dead_letters_by_stage"]["decode"] == 1
    assert summary["counts"]["dead_letters_by_stage"]["validate"] == 1
    dead = read_parquet(tmp_path / "run" / "dead_letter").set_index("key")
    assert dead.loc["bad-bytes", "stage"] == "decode"
    assert "cannot be decoded" in dead.loc["bad-bytes", "reason"]
    assert "not a PNG" in dead.loc["bad-bytes", "reason"]
    assert dead.loc["no-image", "stage"] == "validate"
    assert "missing" in dead.loc["no-image", "reason"]
    frame = read_attributions(tmp_path / "run")
    assert sorted(frame["key"]) == [f"img-{i}" for i in range(6)]


# ------------------------------------------------------------------ pooling and settings units


def test_pool_grid_is_adaptive_pooling_with_floor_boundaries():
    values = np.random.default_rng(0).normal(size=(3, 7, 5))
    np.testing.assert_array_equal(cell_bounds(7, 3), [0, 2, 4, 7])
    np.testing.assert_allclose(pool_grid(values, (3, 2)), _block_sums(values, (3, 2)))
    np.testing.assert_allclose(pool_grid(values, (7, 5)), values)  # one pixel per cell
    # upsampling spreads each cell's sum evenly over its pixels: the sums come back
    grid = pool_grid(values, (3, 2))[0]
    np.testing.assert_allclose(pool_grid(upsample_grid(grid, 7, 5)[None], (3, 2))[0], grid)


@pytest.mark.parametrize(
    ("images", "key", "message"),
    [
        ({"img": {"grid": [0, 2]}}, "images.img.grid[0]", "integer >= 1"),
        ({"img": {"grid": 14}}, "images.img.grid", "two integers"),
        ({"img": {"encoding": "gif"}}, "images.img.encoding", "png"),
        ({"img": {"scale": "half"}}, "images.img.scale", "unit"),
        ({"img": {"channels": 2}}, "images.img.channels", "1, 3 or 4"),
        ({"img": {"height": 4, "grid": [5, 2]}}, "images.img.grid", "more cells"),
        ({"img": {"size": 3}}, "images.img.size", "unknown key"),
        ({"label": {}}, "images.label", "attributed feature"),
        ([1], "images", "map"),
    ],
)
def test_image_settings_errors_name_the_key(images, key, message):
    config = {
        "model": {"path": "m.keras"},
        "input": {"pattern": "d.tfrecord"},
        "features": ["img"],
        "passthrough": ["label"],
        "images": images,
        "output": {"path": "out"},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert caught.value.key == key
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            {"img": {"height": 9, "grid": [2, 2]}},
            "images.img.height: 9 differs from the model input's 8",
        ),
        ({"img": {"grid": [9, 2]}}, "images.img.grid: [9, 2] has more cells"),
        ({"img": {"encoding": "floats"}}, "images.img.encoding: floats needs a FLOAT feature"),
    ],
)
def test_image_settings_checked_against_the_model_before_beam(
    linear_png, tmp_path, images, message
):
    root, model, *_ = linear_png
    config = _linear_config(root, model, tmp_path / "run", images=images)
    with pytest.raises(JobError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_job(parse_config(config))


def test_float_list_images(linear_png, tmp_path):
    root, model, weights, pixels, _ = linear_png
    values = pixels[:5].astype(np.float32) / 255.0
    payloads = [_example(f"f{i}", None, 0, img=values[i].reshape(-1), group="a") for i in range(5)]
    write_records(tmp_path / "floats.tfrecord", payloads)
    config = _linear_config(root, model, tmp_path / "run")
    config["input"]["pattern"] = str(tmp_path / "floats.tfrecord")
    config["images"] = {"img": {"encoding": "floats", "grid": [2, 3]}}
    run_job(parse_config(config))
    frame = read_attributions(tmp_path / "run").set_index("key").sort_index()
    exact = weights[None] * (values - 1.0)
    np.testing.assert_allclose(
        np.stack(frame["full_img"].to_numpy()).reshape(-1, H, W, C), exact, atol=2e-3
    )
    grid = np.stack(frame["grid_img"].to_numpy()).reshape(-1, 2, 3)
    np.testing.assert_allclose(grid, _block_sums(np.abs(exact).sum(3), (2, 3)), rtol=1e-5)


# ---------------------------------------------------------------------------------- visualize


def _decode_png(path) -> np.ndarray:
    return tf.io.decode_png(open(path, "rb").read()).numpy()


def test_visualize_writes_pngs_and_index_for_a_sample_and_for_keys(linear_png, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.visualize import DISPLAY_HEIGHT

    root, model, weights, pixels, _ = linear_png
    run = tmp_path / "run"
    run_job(parse_config(_linear_config(root, model, run)))

    assert main(["visualize", str(run), "--examples", "3", "--out", str(tmp_path / "v")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "v").glob("*.png"))
    assert len(pngs) == 9  # original, mask, overlay for 3 examples
    page = (tmp_path / "v" / "index.html").read_text()
    assert page.count("<tr>") == 3
    assert "stored attributions" in page

    keys = "k05,k17"
    out = tmp_path / "keys"
    assert main(["visualize", str(run), "--keys", keys, "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert page.index("k05") < page.index("k17") and page.count("<tr>") == 2
    # the original is the example's own image (enlarged by a whole factor, nearest neighbour)
    original = _decode_png(out / "0000_img_original.png")
    factor = original.shape[0] // H
    assert original.shape[0] >= DISPLAY_HEIGHT - H
    np.testing.assert_array_equal(original[::factor, ::factor], pixels[5])
    # the mask is the tutorial's: |w (x - 1)| summed over channels, normalised at p99
    mask = _decode_png(out / "0000_img_mask.png")[::factor, ::factor]
    strength = np.abs(weights * (pixels[5] / 255.0 - 1.0)).sum(axis=2)
    brightest = np.unravel_index(np.argmax(mask.astype(int).sum(axis=2)), (H, W))
    assert strength[brightest] >= np.percentile(strength, 90)


def test_visualize_from_the_grid_and_errors(linear_png, tmp_path, capsys):
    from pipeline.cli import main

    root, model, *_ = linear_png
    run = tmp_path / "run"
    config = _linear_config(root, model, run)
    config["output"]["full_image_attributions"] = False
    run_job(parse_config(config))
    out = tmp_path / "v"
    assert main(["visualize", str(run), "--examples", "2", "--out", str(out)]) == 0
    assert "upsampled" in (out / "index.html").read_text()
    assert len(list(out.glob("*_overlay.png"))) == 2

    capsys.readouterr()
    code = main(["visualize", str(run), "--keys", "k01,nope", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "igbeam: error: unknown key(s) in the run's attributions: nope"
    assert not (tmp_path / "x").exists()


def test_report_embeds_the_mean_grid_per_class(linear_png, tmp_path):
    from pipeline.report import write_report
    from pipeline.report_images import read_image_grids

    root, model, *_ = linear_png
    run = tmp_path / "run"
    run_job(parse_config(_linear_config(root, model, run)))
    written = write_report(str(run), str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert '<section id="images">' in page
    assert page.count('data-chart="image-grid-img"') == 1
    assert written["charts"] >= 1
    grids = read_image_grids(str(run))
    assert {r["slice_name"] for r in grids} == {"all", "group", "target"}
    # a few examples drawn as igbeam visualize draws them: original, mask, overlay each
    assert page.count('class="example-image"') == 3 * 3
    pictures = page.split('<div class="example-images">', 1)[1].split("</div>", 1)[0]
    assert pictures.count('src="data:image/png;base64,') == 3 * 3


def test_report_example_pictures_say_why_when_the_input_is_gone(linear_png, tmp_path):
    import json
    import shutil

    from pipeline.report_images import example_overlays

    root, model, *_ = linear_png
    run = tmp_path / "run"
    run_job(parse_config(_linear_config(root, model, run)))
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    summary = json.loads((moved / "summary.json").read_text())
    summary["config"]["input"]["pattern"] = str(tmp_path / "gone" / "*.tfrecord")
    (moved / "summary.json").write_text(json.dumps(summary))
    html = example_overlays(str(moved))
    assert html.startswith('<p class="note">Example pictures unavailable: ')
    assert "example-image" not in html


def test_images_decoded_by_a_preprocessing_model(linear_png, tmp_path):
    root, model, weights, pixels, _ = linear_png

    class Decode(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def parse(self, examples):
            parsed = tf.io.parse_example(examples, {"img": tf.io.FixedLenFeature([], tf.string)})
            images = tf.map_fn(
                lambda b: tf.io.decode_png(b, channels=C),
                parsed["img"],
                fn_output_signature=tf.TensorSpec([H, W, C], tf.uint8),
            )
            return {"img": tf.cast(images, tf.float32) / 255.0}

    module = Decode()
    tf.saved_model.save(module, str(tmp_path / "pre"), signatures={"serving_default": module.parse})
    config = _linear_config(root, model, tmp_path / "run")
    config["model"]["preprocess_path"] = str(tmp_path / "pre")
    config["images"] = {"img": {"grid": list(GRID)}}
    config["output"]["full_image_attributions"] = False
    summary = run_job(parse_config(config))
    assert summary["images"]["img"]["grid"] == list(GRID)
    frame = read_attributions(tmp_path / "run").set_index("key").sort_index()
    index = np.array([int(k[1:]) for k in frame.index])
    exact = weights[None] * (pixels[index] / 255.0 - 1.0)
    grid = np.stack(frame["grid_img"].to_numpy()).reshape(-1, *GRID)
    np.testing.assert_allclose(grid, _block_sums(np.abs(exact).sum(3), GRID), rtol=1e-5)
    assert summary["images"]["img"]["decoded_by"] == "model"
    # visualize re-reads the PNG itself (from the grid: no full attributions stored here)
    from pipeline.visualize import visualize

    shown = visualize(str(tmp_path / "run"), str(tmp_path / "v"), keys=["k03"])
    assert shown.source == {"img": "grid"} and len(shown.files) == 3
    original = _decode_png(tmp_path / "v" / "0000_img_original.png")
    factor = original.shape[0] // H
    np.testing.assert_array_equal(original[::factor, ::factor], pixels[3])


def test_decode_resizes_scales_and_checks_the_format():
    from transforms.images import ImageSpec, decode_column

    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    spec = ImageSpec("img", "png", 5, 6, 3, "none", (2, 2), (5, 6, 3))
    jpeg = tf.io.encode_jpeg(big).numpy()
    pixels, missing, broken = decode_column([[_png(big)], [jpeg], [], [b"a", b"b"]], spec)
    expected = tf.image.resize(big.astype(np.float32), (5, 6), method="bilinear").numpy()
    np.testing.assert_allclose(pixels[0], expected, atol=1e-4)  # resized, 0..255 (scale none)
    assert broken[1].startswith("image feature 'img' cannot be decoded: not a PNG image")
    assert missing[2] == "image feature 'img' is missing"
    assert missing[3] == "image feature 'img' has 2 values, expected 1"
    assert (missing[0], broken[0], missing[1]) == ("", "", "")
    as_jpeg = spec._replace(encoding="jpeg", scale="unit", height=10, width=12)
    decoded, _, broken = decode_column([[jpeg]], as_jpeg)
    assert broken == [""]
    np.testing.assert_allclose(decoded[0], tf.io.decode_jpeg(jpeg).numpy() / 255.0, atol=1e-6)
    gray = spec._replace(channels=1, height=10, width=12, scale="unit")
    decoded, _, _ = decode_column([[_png(big)]], gray)
    assert decoded.shape == (1, 10, 12, 1) and decoded.max() <= 1.0


def test_image_settings_round_trip_and_override(tmp_path):
    import yaml

    from pipeline.config import JobConfig, load_config

    config = {
        "model": {"path": "m.keras"},
        "input": {"pattern": "d.tfrecord"},
        "images": {"img": {"encoding": "jpeg", "height": 32, "grid": [4, 8]}, "other": None},
        "output": {"path": "out", "full_image_attributions": True},
    }
    job = parse_config(config)
    assert job.images["img"].grid == (4, 8) and job.images["other"].grid is None
    assert job.output.full_image_attributions is True
    assert JobConfig.from_dict(job.to_dict()) == job
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    changed = load_config(str(path), ["images={img: {grid: [2, 2], scale: none}}"])
    assert changed.images["img"].grid == (2, 2) and changed.images["img"].scale == "none"
    assert set(changed.images) == {"img"}


def test_grid_statistics_merge_in_any_grouping():
    import pyarrow as pa

    from transforms.statistics import AttributionStatsCombineFn

    rng = np.random.default_rng(4)
    n, cells = 12, 6
    grids = rng.random((n, cells)).astype(np.float32)
    batch = pa.record_batch(
        {
            "key": [f"k{i}" for i in range(n)],
            "target": pa.array(np.arange(n) % 3, pa.int64()),
            "prediction": rng.random(n),
            "delta": np.zeros(n),
            "attr_img": rng.normal(size=n),
            "grid_img": pa.array(list(grids), pa.list_(pa.float32())),
        }
    )
    fn = AttributionStatsCombineFn(features=["img"], replicates=3, image_grids={"img": (2, 3)})
    whole = fn.extract_output(fn.add_input(fn.create_accumulator(), batch)).image_grids
    parts = [fn.add_input(fn.create_accumulator(), batch.slice(i, 4)) for i in (8, 0, 4)]
    merged = fn.extract_output(fn.merge_accumulators(parts)).image_grids
    assert whole.schema.equals(IMAGE_GRIDS_SCHEMA) and whole.num_rows == 4  # all + 3 classes
    for table in (whole, merged):
        rows = {(r["slice_name"], r["slice_value"]): r for r in table.to_pylist()}
        np.testing.assert_allclose(rows[("all", "")]["mean_abs"], grids.mean(0), rtol=1e-6)
        for c in range(3):
            row = rows[("target", str(c))]
            assert row["count"] == 4
            np.testing.assert_allclose(row["mean_abs"], grids[c::3].mean(0), rtol=1e-6)


def test_images_from_an_igbeam_export(linear_png, tmp_path):
    import yaml

    from pipeline.cli import main

    root, model, weights, pixels, _ = linear_png
    config = _linear_config(root, model, tmp_path / "run")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["export", "--config", str(path), "--out", str(tmp_path / "exp")]) == 0
    exported = tmp_path / "exp"
    config["model"] = {"path": str(exported), "signature": "integrated_gradients"}
    summary = run_job(parse_config(config))
    assert summary["counts"]["examples_attributed"] == 24
    frame = read_attributions(tmp_path / "run").set_index("key").sort_index()
    index = np.array([int(k[1:]) for k in frame.index])
    exact = weights[None] * (pixels[index] / 255.0 - 1.0)
    grid = np.stack(frame["grid_img"].to_numpy()).reshape(-1, *GRID)
    np.testing.assert_allclose(grid, _block_sums(np.abs(exact).sum(3), GRID), rtol=1e-4)
    full = np.stack(frame["full_img"].to_numpy()).reshape(-1, H, W, C)
    np.testing.assert_allclose(full, exact, rtol=2e-3, atol=2e-3)
