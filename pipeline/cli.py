"""The `igbeam` command line.

  igbeam run --config configs/NAME.yaml [--set key=value ...] [Beam options ...]
  igbeam export --config configs/NAME.yaml --out DIR [--subdirectory NAME] [--output-name NAME]
  igbeam compare --baseline RUN_A --current RUN_B [--config thresholds.yaml] --out DIR
  igbeam monitor --config nightly.yaml [--date YYYY-MM-DD] [Beam options ...]
  igbeam report RUN [--compare BASELINE_RUN | --drift DIR] --out report.html
  igbeam import-vertex --spec SPEC.json [--model PATH] [--input PATTERN] [--output DIR]
                       --out job.yaml
  igbeam visualize RUN --examples K --out DIR [--keys k1,k2]

Unknown options are handed to Beam untouched (`--runner`, `--direct_num_workers`,
`--temp_location`, `--setup_file`, ...), so the same command runs on the DirectRunner, Dataflow or
Flink. Errors found before the pipeline starts print one line and exit 2 (a stack trace only with
`--verbose`). TensorFlow's native log lines are dropped unless `--verbose` (`pipeline.console`);
runs longer than a few seconds print a progress line every `--progress` seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from attribution.errors import one_line
from pipeline.console import quiet_native_logs

EXIT_OK = 0
EXIT_FAILED = 1  # the pipeline failed, or the accounting invariant did not hold
EXIT_USAGE = 2  # bad config or an early check failed; nothing ran
EXIT_DEAD_LETTERS = 3  # outputs written, but too many records were dead-lettered
EXIT_DRIFT = 1  # compare/monitor: anomalies found (--drift-exit-code maps it)
EXIT_MONITOR_FAILED = 4  # monitor: the pipeline failed (1 means anomalies there)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igbeam", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="attribute a dataset (Beam options pass through)")
    run.add_argument("--config", required=True, help="the job's YAML config")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path, YAML value); repeatable",
    )
    run.add_argument(
        "--max-dead-letter-fraction",
        type=float,
        default=None,
        help="exit 3 when more than this fraction of records is dead-lettered "
        "(overrides the config's max_dead_letter_fraction, default 0.01)",
    )
    run.add_argument(
        "--progress",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="print a progress line every SECONDS while the run goes on (0: never; runs shorter "
        "than SECONDS print none)",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="stack traces, Beam logs and TensorFlow's native logs",
    )
    export = sub.add_parser(
        "export",
        help="write a SavedModel with serving_default and integrated_gradients signatures",
    )
    export.add_argument("--config", required=True, help="the job's YAML config")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    export.add_argument("--out", required=True, help="export directory")
    export.add_argument("--subdirectory", default=None, help="write into OUT/SUBDIRECTORY")
    export.add_argument(
        "--output-name", default="attributions", help="attributions output prefix (TF-GNN's)"
    )
    export.add_argument(
        "--key-feature",
        default=None,
        help="with a preprocessing model and random_uniform baselines: the preprocessing output "
        "holding each example's key (else the signatures take a `keys` input)",
    )
    export.add_argument(
        "--verbose", action="store_true", help="stack traces and TensorFlow's native logs"
    )
    compare = sub.add_parser(
        "compare",
        help="compare two runs' statistics: attribution drift, input drift, IG health",
    )
    compare.add_argument("--baseline", required=True, help="the baseline run's output.path")
    compare.add_argument("--current", required=True, help="the current run's output.path")
    compare.add_argument("--config", default=None, help="thresholds YAML (ComparisonConfig)")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    _comparison_options(compare, EXIT_DRIFT)
    compare.add_argument("--out", required=True, help="where drift.parquet/json/pbtxt go")
    compare.add_argument("--verbose", action="store_true", help="stack traces")
    monitor = sub.add_parser(
        "monitor",
        help="scheduled job: attribute a day's data, compare it with a baseline run",
    )
    monitor.add_argument("--config", required=True, help="the monitor's YAML (MonitorConfig)")
    monitor.add_argument("--date", default=None, help="the run's date, YYYY-MM-DD (today)")
    monitor.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    _comparison_options(monitor, None)
    monitor.add_argument(
        "--progress", type=float, default=5.0, metavar="SECONDS", help="as for igbeam run"
    )
    monitor.add_argument("--verbose", action="store_true", help="stack traces and native logs")
    report = sub.add_parser(
        "report",
        help="one self-contained HTML page for a run, or for a run compared with a baseline",
    )
    report.add_argument("run", help="the run's output.path (the current run of a comparison)")
    against = report.add_mutually_exclusive_group()
    against.add_argument(
        "--compare", default=None, metavar="BASELINE_RUN", help="compare RUN with this run now"
    )
    against.add_argument(
        "--drift",
        default=None,
        metavar="DIR",
        help="show a comparison written by igbeam compare/monitor (its drift.json)",
    )
    report.add_argument("--config", default=None, help="thresholds YAML, with --compare")
    report.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument(
        "--sample-rows",
        type=int,
        default=None,
        metavar="N",
        help="rows read from the attributions and dead letters, at most (default 10000)",
    )
    report.add_argument("--verbose", action="store_true", help="stack traces")
    vertex = sub.add_parser(
        "import-vertex",
        help="translate a Vertex AI ExplanationSpec (or Model JSON) into a job config",
    )
    vertex.add_argument(
        "--spec",
        action="append",
        required=True,
        help="Model JSON (gcloud ai models describe --format=json), an ExplanationSpec, or its "
        "parameters / metadata objects; repeatable (e.g. one file each)",
    )
    vertex.add_argument("--model", default=None, help="model.path (default: the artifactUri)")
    vertex.add_argument("--input", default=None, help="input.pattern (TFRecords)")
    vertex.add_argument("--output", default=None, help="output.path of the job")
    vertex.add_argument(
        "--key", default=None, help="input.key (batch prediction's keyField): lines carry `key`"
    )
    vertex.add_argument("--out", required=True, help="the job YAML to write")
    vertex.add_argument("--verbose", action="store_true", help="stack traces")
    visualize = sub.add_parser(
        "visualize",
        help="image attributions of a run as PNGs (original, mask, overlay) and index.html",
    )
    visualize.add_argument("run", help="the run's output.path")
    visualize.add_argument("--examples", type=int, default=8, metavar="K", help="how many")
    visualize.add_argument("--keys", default=None, help="comma-separated example keys instead")
    visualize.add_argument("--out", required=True, help="the directory to write into")
    visualize.add_argument("--verbose", action="store_true", help="stack traces")
    return parser


def _comparison_options(parser: argparse.ArgumentParser, drift_default: int | None) -> None:
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="compare even when the runs' attribution fingerprints differ",
    )
    parser.add_argument(
        "--drift-exit-code",
        type=int,
        default=drift_default,
        metavar="N",
        help=f"exit code when anomalies are found (default {EXIT_DRIFT}"
        f"{'' if drift_default is not None else ', or the config`s drift_exit_code'}); e.g. 99 "
        "for a scheduler that treats it as 'skipped'",
    )


def _fail(message: str) -> int:
    print(f"igbeam: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.job import DeadLetterThresholdError, JobError, plan_job, run_job

    overrides = list(args.overrides)
    if args.max_dead_letter_fraction is not None:
        overrides.append(f"max_dead_letter_fraction={args.max_dead_letter_fraction!r}")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as err:
        return _fail(f"{args.config}: {err}")
    started = time.time()
    try:
        plan = plan_job(config)
    except JobError as err:
        return _fail(str(err))
    try:
        summary = run_job(
            config, beam_args, plan=plan, started=started, progress_interval=args.progress or None
        )
    except DeadLetterThresholdError as err:
        print(f"igbeam: error: {err}", file=sys.stderr)
        return EXIT_DEAD_LETTERS
    _print_summary(summary)
    return EXIT_OK


def _print_summary(summary: dict) -> None:
    counts = summary["counts"]
    print(f"igbeam: wrote {summary['output']}")
    print(
        f"  examples attributed: {counts['examples_attributed']}, dead letters: "
        f"{counts['dead_letters']}, records read: {counts['records_read']}, "
        f"duplicate keys: {counts['duplicate_keys']}, files: {counts['input_files']}"
    )
    print(
        f"  wall time: {summary['wall_seconds']:.1f}s, checks to summary "
        f"({summary['examples_per_second']} examples/s, model load and tracing included)"
    )
    adaptive = summary.get("adaptive_steps")
    if adaptive:
        print(
            f"  steps (auto): mean {adaptive['mean_steps']}, used {adaptive['steps_used']}, "
            f"above tolerance {adaptive['tolerance']:g} at max_steps: {adaptive['above_tolerance']}"
        )


def _export(args: argparse.Namespace) -> int:
    from attribution import ModelLoadError, export_integrated_gradients
    from pipeline.config import ConfigError, load_config
    from pipeline.job import JobError, engine_spec, resolve_data_baseline
    from transforms.attribute import LoadedEngine

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        return _fail(f"{args.config}: {err}")
    try:
        config = resolve_data_baseline(config)  # reference / expected_gradients: from data
    except JobError as err:
        return _fail(str(err))
    try:
        loaded = engine_spec(config).load()
    except (ModelLoadError, ValueError) as err:
        return _fail(f"model: {err}")
    if not isinstance(loaded, LoadedEngine):
        return _fail("model: the model is already an igbeam export; export the trained model")
    if loaded.adaptive:
        return _fail(
            "attribution.steps: auto cannot be exported (an export bakes in fixed steps); "
            "give an integer, e.g. --set attribution.steps=64"
        )
    out = os.path.join(args.out, args.subdirectory) if args.subdirectory else args.out
    try:
        export_integrated_gradients(
            loaded.engine,
            out,
            preprocess=loaded.preprocess,
            key_feature=args.key_feature,
            output_name=args.output_name,
        )
    except ValueError as err:
        return _fail(f"export: {err}")
    print(f"igbeam: exported serving_default and integrated_gradients to {out}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from pipeline.compare import (
        CompareError,
        IncompatibleRunsError,
        compare_runs,
        write_comparison,
    )

    settings = _comparison_settings(args)
    if isinstance(settings, str):
        return _fail(settings)
    try:
        comparison = compare_runs(
            args.baseline, args.current, settings, allow_config_change=args.allow_config_change
        )
    except IncompatibleRunsError as err:
        write_comparison(err.comparison, args.out)
        return _fail(str(err))
    except CompareError as err:
        return _fail(str(err))
    return report_comparison(comparison, args.out, args.drift_exit_code)


def _comparison_settings(args: argparse.Namespace) -> Any:
    """The ComparisonConfig of `--config` and `--set`, or the error line (a str)."""
    from pipeline.compare import ComparisonConfig
    from pipeline.config import ConfigError, load_settings, parse_settings

    try:
        if args.config:
            return load_settings(ComparisonConfig, args.config, args.overrides)
        return parse_settings(ComparisonConfig, {}, args.overrides)
    except ConfigError as err:
        return f"{args.config or '--set'}: {err}"


def _monitor(args: argparse.Namespace, beam_args: list[str]) -> int:
    import datetime

    from pipeline.compare import CompareError, IncompatibleRunsError, compare_runs, is_run
    from pipeline.config import ConfigError
    from pipeline.job import DeadLetterThresholdError, JobError, plan_job, run_job
    from pipeline.monitor import load_monitor_config, parse_date

    try:
        date = parse_date(args.date) if args.date else datetime.date.today()
    except ValueError as err:
        return _fail(str(err))
    try:
        config, baseline = load_monitor_config(args.config, date, args.overrides)
    except ConfigError as err:
        return _fail(f"{args.config}: {err}")
    drift_code = config.drift_exit_code if args.drift_exit_code is None else args.drift_exit_code
    _remove_comparison(config.comparison_dir)  # a rerun replaces the date's comparison too
    started = time.time()
    try:
        plan = plan_job(config.job)
    except JobError as err:
        return _fail(str(err))
    try:
        summary = run_job(
            config.job,
            beam_args,
            plan=plan,
            started=started,
            progress_interval=args.progress or None,
        )
    except DeadLetterThresholdError as err:
        print(f"igbeam: error: {err}", file=sys.stderr)
        return EXIT_DEAD_LETTERS
    except Exception as err:
        if args.verbose:
            raise
        print(f"igbeam: error: the run failed: {one_line(err)}", file=sys.stderr)
        return EXIT_MONITOR_FAILED
    _print_summary(summary)
    if not is_run(baseline):
        if config.baseline.missing == "skip":
            print(f"igbeam: note: no baseline run at {baseline} yet: nothing compared")
            return EXIT_OK
        return _fail(f"baseline: no run at {baseline} (baseline.missing: skip tolerates it)")
    allow = args.allow_config_change or config.allow_config_change
    try:
        comparison = compare_runs(
            baseline, config.job.output.path, config.compare, allow_config_change=allow
        )
    except IncompatibleRunsError as err:
        from pipeline.compare import write_comparison

        write_comparison(err.comparison, config.comparison_dir)
        _write_monitor_report(config.job.output.path, err.comparison, config.comparison_dir)
        return _fail(str(err))
    except CompareError as err:
        return _fail(str(err))
    code = report_comparison(comparison, config.comparison_dir, drift_code)
    _write_monitor_report(config.job.output.path, comparison, config.comparison_dir)
    return code


def _report(args: argparse.Namespace) -> int:
    from pipeline.report import DEFAULT_SAMPLE_ROWS, ReportError, write_report

    settings = None
    if args.config or args.overrides:
        if args.compare is None:
            return _fail("--config and --set only apply with --compare")
        settings = _comparison_settings(args)
        if isinstance(settings, str):
            return _fail(settings)
    rows = DEFAULT_SAMPLE_ROWS if args.sample_rows is None else args.sample_rows
    try:
        written = write_report(
            args.run,
            args.out,
            compare=args.compare,
            drift_dir=args.drift,
            settings=settings,
            sample_rows=rows,
        )
    except ReportError as err:
        return _fail(str(err))
    _print_report(written)
    return EXIT_OK


def _print_report(written: dict) -> None:
    print(
        f"igbeam: wrote the report {written['path']} ({written['bytes'] / 1e6:.2f} MB, "
        f"{written['charts']} charts, {written['seconds']:.1f}s)"
    )


def _write_monitor_report(run: str, comparison: Any, directory: str) -> None:
    """The comparison's report next to it; a failure to draw it is said, never fatal."""
    from pipeline.report import REPORT_FILE, ReportError, write_report

    path = (
        f"{directory.rstrip('/')}/{REPORT_FILE}"
        if "://" in directory
        else os.path.join(directory, REPORT_FILE)
    )
    try:
        _print_report(write_report(run, path, comparison=comparison))
    except ReportError as err:
        print(f"igbeam: warning: no report: {err}", file=sys.stderr)


def _remove_comparison(directory: str) -> None:
    if "://" in directory or not os.path.isdir(directory):
        return
    for name in ("drift.parquet", "drift.json", "anomalies.pbtxt", "report.html"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)


def report_comparison(comparison: Any, out: str, drift_exit_code: int) -> int:
    """Writes a comparison, prints its verdict and returns the exit code (0 or the drift code)."""
    from pipeline.compare import write_comparison

    paths = write_comparison(comparison, out)
    for note in comparison.notes:
        print(f"igbeam: note: {note}")
    breached = comparison.anomalies
    print(
        f"igbeam: compared {comparison.baseline} -> {comparison.current}: "
        f"{len(comparison.measurements)} measurements, {len(breached)} anomalies; wrote "
        f"{paths['json']}"
    )
    for anomaly in breached[:10]:
        print(f"  {anomaly['reason']}")
    if len(breached) > 10:
        print(f"  ... and {len(breached) - 10} more in {paths['json']}")
    return drift_exit_code if breached else EXIT_OK


def _import_vertex(args: argparse.Namespace) -> int:
    """Translates, validates, writes; a spec igbeam cannot honour is one line and exit 2."""
    from pipeline.config import ConfigError, parse_config
    from pipeline.vertex import VertexSpecError, read_documents, render_yaml, translate

    texts = []
    for path in args.spec:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except OSError as err:
            return _fail(f"--spec: cannot read {path!r}: {err}")
    try:
        translation = translate(
            read_documents(texts),
            model=args.model,
            input_pattern=args.input,
            output=args.output,
            key=args.key,
        )
    except VertexSpecError as err:
        return _fail(f"vertex spec: {err}")
    try:  # the file as `igbeam run` will read it: relative paths against its directory
        parse_config(translation.config, base_dir=os.path.dirname(os.path.abspath(args.out)))
    except ConfigError as err:
        return _fail(f"the translated config does not validate: {err}")
    text = render_yaml(translation, ", ".join(os.path.basename(p) for p in args.spec))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    for note in translation.notes:
        print(f"igbeam: note: {note}")
    print(f"igbeam: wrote {args.out}")
    return EXIT_OK


def _visualize(args: argparse.Namespace) -> int:
    from pipeline.visualize import VisualizeError, visualize

    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    try:
        done = visualize(args.run, args.out, examples=args.examples, keys=keys)
    except VisualizeError as err:
        return _fail(str(err))
    print(f"igbeam: wrote {len(done.files)} images of {len(done.keys)} examples: {done.index}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `igbeam` console script; returns the exit code."""
    args, beam_args = _parser().parse_known_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    with quiet_native_logs(enabled=not args.verbose):
        return _main(args, beam_args)


def _main(args: argparse.Namespace, beam_args: list[str]) -> int:
    try:
        if args.command == "run":
            return _run(args, beam_args)
        if args.command == "monitor":
            return _monitor(args, beam_args)
        if beam_args:
            return _fail(f"unrecognized arguments: {' '.join(beam_args)}")
        if args.command == "export":
            return _export(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "report":
            return _report(args)
        if args.command == "import-vertex":
            return _import_vertex(args)
        if args.command == "visualize":
            return _visualize(args)
    except Exception as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split())[:500] or type(err).__name__
        print(
            f"igbeam: error: {type(err).__name__}: {message} (--verbose for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
