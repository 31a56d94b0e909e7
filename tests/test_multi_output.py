"""Several explained outputs per example: target kinds top_k and indices, and display names.

Each output's row must equal a run with that output as a fixed target (`index`), complete
(sum of attributions = F_t(x) - F_t(x')) per output; top_k rows follow the scores (ties to the
lower index); the pipeline writes K consecutive rows per example while its accounting, duplicate
key check and overall statistics count examples once.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    classifier,
    example_bytes,
    read_attributions,
    workspace_config,
    write_demo_workspace,
    write_records,
)

from attribution import (
    AttributionConfig,
    Baseline,
    IntegratedGradients,
    ModelAdapter,
    ModelConfig,
    SettingsError,
    Target,
    export_integrated_gradients,
    load_model,
)
from attribution.multi_output import display_names_of, requested_rows
from pipeline import demo
from pipeline.config import ConfigError, parse_config
from pipeline.job import JobError, plan_job, run_job
from transforms.statistics import compute_statistics

STEPS = 32


@pytest.fixture(scope="module")
def model() -> ModelAdapter:
    return ModelAdapter.from_keras(classifier(6, 4, seed=3))


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(9, 6)).astype(np.float32)


def _scores(model: ModelAdapter, x: np.ndarray) -> np.ndarray:
    return model({"x": x})["probs"].numpy()


def _fixed(model: ModelAdapter, x: np.ndarray, cls: int):
    ig = IntegratedGradients(model, steps=STEPS, target=Target(kind="index", value=cls))
    return ig.attribute(x)


# ------------------------------------------------------------------------------- engine


def test_top_k_rows_equal_fixed_index_runs_and_are_complete(model, x):
    k = 3
    result = IntegratedGradients(model, steps=STEPS, target=Target(kind="top_k", k=k)).attribute(x)
    n = len(x)
    assert len(result) == n * k
    np.testing.assert_array_equal(result.output_ranks, np.tile(np.arange(k), n))
    order = np.argsort(-_scores(model, x), axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(result.targets.reshape(n, k), order)
    # Highest score first within each example.
    scores = result.predictions.reshape(n, k)
    assert (np.diff(scores, axis=1) <= 0).all()
    fixed = {c: _fixed(model, x, c) for c in range(4)}
    for row in range(n * k):
        example, cls = row // k, int(result.targets[row])
        np.testing.assert_allclose(
            result.attributions[row], fixed[cls].attributions[example], atol=1e-6
        )
        assert result.predictions[row] == pytest.approx(fixed[cls].predictions[example], abs=1e-6)
        assert result.baseline_predictions[row] == pytest.approx(
            fixed[cls].baseline_predictions[example], abs=1e-6
        )
    # Completeness per output: sum of attributions = F_t(x) - F_t(x'), t the row's class.
    gap = result.predictions - result.baseline_predictions
    np.testing.assert_allclose(result.attributions.sum(axis=1), gap, atol=1e-5)
    np.testing.assert_allclose(result.deltas, result.attributions.sum(axis=1) - gap, atol=1e-12)
    assert np.abs(gap).max() > 1e-3  # the check is not vacuous


def test_indices_rows_follow_list_order_and_equal_fixed_runs(model, x):
    values = (3, 0)
    ig = IntegratedGradients(model, steps=STEPS, target=Target(kind="indices", values=values))
    result = ig.attribute(x)
    n = len(x)
    np.testing.assert_array_equal(result.targets, np.tile(values, n))
    np.testing.assert_array_equal(result.output_ranks, np.tile([0, 1], n))
    for rank, cls in enumerate(values):
        fixed = _fixed(model, x, cls)
        np.testing.assert_allclose(result.attributions[rank::2], fixed.attributions, atol=1e-6)
        np.testing.assert_allclose(result.deltas[rank::2], fixed.deltas, atol=1e-6)


def test_linear_model_closed_form_per_output():
    """Two linear outputs: IG of output j is w_j * (x - x') exactly, for each explained j."""
    inp = keras.Input((3,), name="x")
    layer = keras.layers.Dense(2, name="y")
    net = keras.Model(inp, layer(inp))
    w = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]], np.float32)
    layer.set_weights([w, np.array([0.1, -0.2], np.float32)])
    xs = np.array([[1.0, 2.0, -1.0], [0.5, -0.5, 2.0]], np.float32)
    ig = IntegratedGradients(
        ModelAdapter.from_keras(net), steps=4, target=Target(kind="indices", values=(1, 0))
    )
    result = ig.attribute(xs)
    expected = np.stack([xs * w[:, 1], xs * w[:, 0]], axis=1).reshape(4, 3)
    np.testing.assert_allclose(result.attributions, expected, atol=1e-6)
    np.testing.assert_allclose(result.deltas, 0.0, atol=1e-6)


def test_random_baselines_are_those_of_the_fixed_run(model, x):
    """Rows of one example share its key, hence its random baselines."""
    base = dict(kind="random_uniform", low=-1.0, high=1.0, samples=3, seed=5)

    keys = np.array([f"k{i}" for i in range(len(x))], dtype=object)
    ig = IntegratedGradients(
        model, steps=STEPS, baseline=Baseline(**base), target=Target(kind="top_k", k=2)
    )
    result = ig.attribute(x, keys=keys)
    for rank in range(2):
        rows = slice(rank, None, 2)
        for cls in range(4):
            mine = result.targets[rows] == cls
            if not mine.any():
                continue
            fixed = IntegratedGradients(
                model,
                steps=STEPS,
                baseline=Baseline(**base),
                target=Target(kind="index", value=cls),
            ).attribute(x, keys=keys)
            np.testing.assert_allclose(
                result.attributions[rows][mine], fixed.attributions[mine], atol=1e-6
            )
            np.testing.assert_allclose(
                result.baseline_predictions[rows][mine], fixed.baseline_predictions[mine], atol=1e-6
            )


@pytest.mark.parametrize(
    "options",
    [
        {"jit_compile": True},  # XLA pads calls: expanded rows, one path per row
        {"max_rows_per_call": 8},  # the path split over several gradient calls
        {"max_rows_per_call": 40},  # fewer examples per call than outputs per example
    ],
)
def test_shared_and_expanded_paths_agree(model, x, options):
    """One forward pass per example for its K outputs (`shared_paths`) = K expanded rows."""
    target = Target(kind="top_k", k=3)
    shared = IntegratedGradients(model, steps=STEPS, target=target)
    assert shared.shared_paths
    other = IntegratedGradients(model, steps=STEPS, target=target, **options)
    assert other.shared_paths == ("jit_compile" not in options)
    a, b = shared.attribute(x), other.attribute(x)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_allclose(a.attributions, b.attributions, atol=1e-6)
    np.testing.assert_allclose(a.deltas, b.deltas, atol=1e-6)
    with_samples = IntegratedGradients(
        model,
        steps=4,
        target=target,
        baseline=Baseline(kind="random_uniform", low=0.0, high=1.0, samples=2),
    )
    assert not with_samples.shared_paths  # rows of an example differ by baseline sample


def test_top_k_ties_go_to_the_lower_index():
    """A model whose outputs tie exactly: ranks follow the index."""
    inp = keras.Input((2,), name="x")
    layer = keras.layers.Dense(4, name="y")
    net = keras.Model(inp, layer(inp))
    # outputs: [s, 2s, 2s, s] for s = x0 + x1 > 0: ranks 1, 2, 0, 3.
    w = np.array([[1.0, 2.0, 2.0, 1.0], [1.0, 2.0, 2.0, 1.0]], np.float32)
    layer.set_weights([w, np.zeros(4, np.float32)])
    ig = IntegratedGradients(ModelAdapter.from_keras(net), steps=2, target=Target("top_k", k=4))
    result = ig.attribute(np.array([[1.0, 0.5], [0.25, 0.25]], np.float32))
    np.testing.assert_array_equal(result.targets, [1, 2, 0, 3, 1, 2, 0, 3])


def test_requested_rows():
    requested, ranks = requested_rows(Target(kind="top_k", k=2), 3)
    np.testing.assert_array_equal(requested, [-1, -2, -1, -2, -1, -2])
    np.testing.assert_array_equal(ranks, [0, 1, 0, 1, 0, 1])
    requested, ranks = requested_rows(Target(kind="indices", values=(4, 1, 2)), 2)
    np.testing.assert_array_equal(requested, [4, 1, 2, 4, 1, 2])
    np.testing.assert_array_equal(ranks, [0, 1, 2, 0, 1, 2])


def test_one_compiled_function_and_empty_batch(model, x):
    ig = IntegratedGradients(model, steps=8, target=Target(kind="top_k", k=2))
    for size in (1, 4, 9):
        assert len(ig.attribute(x[:size])) == 2 * size
    assert ig.trace_counts()["attribute"] == 1
    empty = ig.attribute(x[:0])
    assert len(empty) == 0 and empty.output_ranks is not None and len(empty.output_ranks) == 0


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "target, key, words",
    [
        ({"kind": "top_k"}, "attribution.target.k", "required"),
        ({"kind": "top_k", "k": 0}, "attribution.target.k", ">= 1"),
        ({"kind": "indices"}, "attribution.target.values", "required"),
        ({"kind": "indices", "values": []}, "attribution.target.values", "non-empty"),
        ({"kind": "indices", "values": [1, 1]}, "attribution.target.values", "distinct"),
        ({"kind": "indices", "values": [0, -1]}, "attribution.target.values[1]", ">= 0"),
        ({"kind": "indices", "values": [0, 1.5]}, "attribution.target.values[1]", "1.5"),
        ({"kind": "index", "value": 1, "k": 2}, "attribution.target.k", "not allowed"),
    ],
)
def test_bad_target_settings_name_the_key(tmp_path, target, key, words):
    config = workspace_config(tmp_path, tmp_path / "out")
    config["attribution"]["target"] = target
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert err.value.key == key and words in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "names, key, words",
    [
        ([], "attribution.display_names", "non-empty list"),
        ("cat", "attribution.display_names", "non-empty list"),
        (["a", 3], "attribution.display_names[1]", "must be a string"),
    ],
)
def test_bad_display_names_name_the_key(tmp_path, names, key, words):
    config = workspace_config(tmp_path, tmp_path / "out")
    config["attribution"]["display_names"] = names
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert err.value.key == key and words in str(err.value)


def test_settings_round_trip(tmp_path):
    config = workspace_config(tmp_path, tmp_path / "out")
    config["attribution"]["target"] = {"kind": "indices", "values": [2, 0]}
    config["attribution"]["display_names"] = ["a", "b", "c"]
    job = parse_config(config)
    assert job.attribution.target.values == (2, 0)
    assert job.attribution.display_names == ("a", "b", "c")
    again = parse_config(
        json.loads(json.dumps({**config, "attribution": job.to_dict()["attribution"]}))
    )
    assert again.attribution == job.attribution


def test_steps_auto_is_refused_with_several_outputs():
    with pytest.raises(SettingsError) as err:
        AttributionConfig(steps="auto", target=Target(kind="top_k", k=2)).cross_check("attribution")
    assert err.value.key == "attribution.steps" and "top_k" in str(err.value)


def test_out_of_range_checked_when_the_model_is_known(model):
    with pytest.raises(ValueError, match=r"target\.k: must be <= the 4 classes"):
        IntegratedGradients(model, target=Target(kind="top_k", k=5))
    with pytest.raises(ValueError, match=r"target\.values: class 4 is out of range"):
        IntegratedGradients(model, target=Target(kind="indices", values=(0, 4)))
    settings = AttributionConfig(display_names=("a", "b", "c"))
    with pytest.raises(SettingsError) as err:
        IntegratedGradients(model, settings=settings)
    assert err.value.key == "attribution.display_names" and "4 classes" in str(err.value)


def test_targets_override_is_refused(model, x):
    ig = IntegratedGradients(model, steps=4, target=Target(kind="top_k", k=2))
    with pytest.raises(ValueError, match="cannot be combined with target kind 'top_k'"):
        ig.attribute(x, targets=1)


def test_export_is_refused_in_one_line(model, tmp_path):
    ig = IntegratedGradients(model, steps=4, target=Target(kind="top_k", k=2))
    with pytest.raises(ValueError) as err:
        export_integrated_gradients(ig, str(tmp_path / "export"))
    assert "attribution.target.kind: top_k cannot be exported" in str(err.value)
    assert "\n" not in str(err.value)


def test_display_names_of():
    assert display_names_of(("a", "b", "c"), np.array([2, 0, -1])) == ["c", "a", "a"]
    with pytest.raises(SettingsError) as err:
        display_names_of(("a", "b"), np.array([0, 2]))
    assert err.value.key == "attribution.display_names" and "index 2" in str(err.value)


# ----------------------------------------------------------------------------- pipeline

N = 40
NAMES = ["low", "mid", "high"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("multi")
    data = write_demo_workspace(root, demo_model, N, seed=4, shards=2)
    return root, data


def _run(root, out, target, **overrides):
    config = workspace_config(root, out, slices=[["country"]], **overrides)
    config["attribution"]["target"] = target
    config["attribution"]["display_names"] = NAMES
    config["batching"]["batch_size"] = 16  # several batches per file
    return run_job(parse_config(config))


def test_pipeline_top_k_rows_accounting_and_statistics(workspace, tmp_path):
    root, data = workspace
    out = tmp_path / "top2"
    summary = _run(root, out, {"kind": "top_k", "k": 2})
    counts = summary["counts"]
    assert counts["records_read"] == N and counts["examples_attributed"] == N
    assert summary["accounting"]["balanced"] is True
    assert summary["accounting"]["attribution_rows"] == 2 * N
    assert summary["accounting"]["outputs_per_example"] == 2
    assert counts["duplicate_keys"] == 0  # an example's two rows share a key: counted once
    rows = sum(
        pq.ParquetFile(p).metadata.num_rows for p in (out / "attributions").glob("*.parquet")
    )
    assert rows == 2 * N

    frame = read_attributions(out)
    assert str(frame.output_rank.dtype) == "int32"
    # Rows of an example are consecutive, rank 0 then 1.
    assert (frame.key.iloc[0::2].to_numpy() == frame.key.iloc[1::2].to_numpy()).all()
    assert (frame.output_rank.to_numpy() == np.tile([0, 1], N)).all()
    assert list(frame.output_name) == [NAMES[t] for t in frame.target]

    # Each row equals the engine with that output as a fixed target.
    model = load_model(str(root / "model.keras"))
    inputs = {name: data["x"][:, j : j + 1] for j, name in enumerate(demo.FEATURES)}
    index = np.array([int(k.split("-")[1]) for k in frame.key])
    scores = model(inputs)["probs"].numpy()
    order = np.argsort(-scores, axis=1, kind="stable")
    np.testing.assert_array_equal(frame.target, order[index, frame.output_rank])
    for cls in range(3):
        fixed = IntegratedGradients(
            model, steps=16, target=Target(kind="index", value=cls)
        ).attribute(inputs)
        mine = (frame.target == cls).to_numpy()
        for name in demo.FEATURES:
            np.testing.assert_allclose(
                frame[f"attr_{name}"][mine], fixed.attributions[name][index[mine], 0], atol=1e-6
            )
        np.testing.assert_allclose(frame.delta[mine], fixed.deltas[index[mine]], atol=1e-6)

    # Statistics: `all` and user slices from rank-0 rows (one per example), target slices from
    # every row.
    slices = pq.read_table(out / "statistics" / "slices.parquet").to_pandas()
    by = {(r.slice_name, r.slice_value): r for r in slices.itertuples()}
    assert by[("all", "")].examples == N
    countries = frame[frame.output_rank == 0].country.value_counts()
    for country, count in countries.items():
        assert by[("country", country)].examples == count
    for cls, count in frame.target.value_counts().items():
        assert by[("target", str(cls))].examples == count
    assert (
        sum(by[("target", str(c))].examples for c in range(3) if ("target", str(c)) in by) == 2 * N
    )
    first = frame[frame.output_rank == 0]
    features = pq.read_table(out / "statistics" / "features.parquet").to_pandas()
    mean_all = features[(features.slice_name == "all") & (features.feature == "f0")]
    assert mean_all.iloc[0]["count"] == N
    assert mean_all.iloc[0].mean_attributions == pytest.approx(first.attr_f0.mean(), abs=1e-9)


def test_report_and_compare_of_a_top_k_run(workspace, tmp_path):
    """The HTML report reads rank-0 rows; compare of two such runs finds them comparable."""
    from pipeline.compare import compare_runs
    from pipeline.report import write_report

    root, _ = workspace
    _run(root, tmp_path / "a", {"kind": "top_k", "k": 2})
    _run(root, tmp_path / "b", {"kind": "top_k", "k": 2})
    written = write_report(str(tmp_path / "a"), str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 0 and written
    comparison = compare_runs(str(tmp_path / "a"), str(tmp_path / "b"))
    assert comparison.fingerprint_differences == [] and comparison.anomalies == []
    assert comparison.measurements  # the slices were compared


def test_overall_statistics_equal_the_single_output_run(workspace, tmp_path):
    """top_k's `all` slice holds rank-0 rows: the same as a run with target predicted."""
    root, _ = workspace
    _run(root, tmp_path / "top3", {"kind": "top_k", "k": 3})
    _run(root, tmp_path / "pred", {"kind": "predicted"})
    a = pq.read_table(tmp_path / "top3" / "statistics" / "features.parquet").to_pandas()
    b = pq.read_table(tmp_path / "pred" / "statistics" / "features.parquet").to_pandas()
    a, b = (
        t[t.slice_name != "target"].set_index(["slice_name", "slice_value", "feature"])
        for t in (a, b)
    )
    b = b.loc[a.index]
    for column in ("count", "mean_attributions", "mean_absolute_attributions"):
        np.testing.assert_allclose(a[column], b[column], atol=1e-9)
    pred = read_attributions(tmp_path / "pred")
    assert "output_rank" not in pred.columns  # single-output runs keep their layout
    assert list(pred.output_name) == [NAMES[t] for t in pred.target]  # names on any target


def test_pipeline_indices_with_dead_letters_accounts_examples(workspace, tmp_path):
    """Accounting counts examples (records read = attributed + dead letters) with K = 2."""
    root, _ = workspace
    pattern = tmp_path / "data"
    pattern.mkdir()
    good = [
        example_bytes(
            **{f"f{j}": float(i + j) / 10 for j in range(8)},
            label=i % 3,
            country="DE",
            example_id=f"g{i}",
        )
        for i in range(6)
    ]
    # g0 twice: a real duplicate key, counted once per example, not once per output row.
    write_records(pattern / "a.tfrecord", [*good[:3], b"not an example", *good[3:], good[0]])
    config = workspace_config(root, tmp_path / "out", max_dead_letter_fraction=0.5)
    config["input"]["pattern"] = str(pattern / "*.tfrecord")
    config["attribution"]["target"] = {"kind": "indices", "values": [2, 1]}
    summary = run_job(parse_config(config))
    assert summary["counts"]["records_read"] == 8
    assert summary["counts"]["examples_attributed"] == 7
    assert summary["counts"]["dead_letters"] == 1
    assert summary["accounting"]["balanced"] is True
    assert summary["accounting"]["attribution_rows"] == 14
    assert summary["counts"]["duplicate_keys"] == 1
    duplicates = pq.read_table(tmp_path / "out" / "duplicate_keys").to_pylist()
    assert duplicates == [{"key": "g0", "count": 2}]
    frame = read_attributions(tmp_path / "out")
    assert list(frame.target) == [2, 1] * 7


def test_plan_refuses_bad_k_and_display_names_before_beam(workspace, tmp_path):
    root, _ = workspace
    config = workspace_config(root, tmp_path / "out")
    config["attribution"]["target"] = {"kind": "top_k", "k": 4}
    with pytest.raises(JobError, match=r"target\.k: must be <= the 3 classes") as err:
        plan_job(parse_config(config))
    assert "\n" not in str(err.value)
    config["attribution"]["target"] = {"kind": "top_k", "k": 2}
    config["attribution"]["display_names"] = ["a", "b"]
    with pytest.raises(JobError, match=r"attribution\.display_names: has 2 names") as err:
        plan_job(parse_config(config))


def test_statistics_count_examples_once_per_overall_slice():
    """The combine alone: rank-0 rows for `all`, every row for the target slices."""
    batch = pa.record_batch(
        {
            "key": ["a", "a", "b", "b"],
            "target": pa.array([1, 0, 0, 2], pa.int64()),
            "output_rank": pa.array([0, 1, 0, 1], pa.int32()),
            "prediction": [0.6, 0.3, 0.5, 0.4],
            "baseline_prediction": [0.1, 0.1, 0.1, 0.1],
            "delta": [0.0, 0.0, 0.0, 0.0],
            "attr_f": [1.0, 10.0, 3.0, 30.0],
        }
    )
    stats = compute_statistics([batch], features=["f"])
    slices = {(r["slice_name"], r["slice_value"]): r for r in stats.slices.to_pylist()}
    assert slices[("all", "")]["examples"] == 2
    assert {k: v["examples"] for k, v in slices.items() if k[0] == "target"} == {
        ("target", "0"): 2,
        ("target", "1"): 1,
        ("target", "2"): 1,
    }
    features = {(r["slice_name"], r["slice_value"]): r for r in stats.features.to_pylist()}
    assert features[("all", "")]["mean_attributions"] == pytest.approx(2.0)  # a/0 and b/0
    assert features[("target", "0")]["mean_attributions"] == pytest.approx(6.5)  # a/1, b/0


def test_display_names_stay_out_of_the_fingerprint(tmp_path):
    from pipeline.fingerprint import differences, fingerprint

    model = tmp_path / "m.keras"
    model.write_bytes(b"model")
    plain = AttributionConfig(steps=16)
    named = AttributionConfig(steps=16, display_names=("a", "b"))
    first = fingerprint(ModelConfig(path=str(model)), plain, ["x"], "1")
    second = fingerprint(ModelConfig(path=str(model)), named, ["x"], "1")
    assert "display_names" not in first["attribution"]
    assert differences(first, second) == []
    other = fingerprint(
        ModelConfig(path=str(model)),
        AttributionConfig(steps=16, target=Target("top_k", k=2)),
        ["x"],
        "1",
    )
    assert differences(first, other)  # the target does change attributions


def test_cli_export_and_steps_auto_refused_in_one_line(workspace, tmp_path, capsys):
    import yaml

    from pipeline.cli import main

    root, _ = workspace
    config = workspace_config(root, tmp_path / "out")
    config["attribution"]["target"] = {"kind": "indices", "values": [1, 0]}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["export", "--config", str(path), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert "attribution.target.kind: indices cannot be exported" in err and "\n" not in err
    assert not (tmp_path / "e" / "saved_model.pb").exists()
    config["attribution"]["steps"] = "auto"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "attribution.steps: auto is not supported with target kind indices" in err
    assert "\n" not in err
