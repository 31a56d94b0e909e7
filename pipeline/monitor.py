"""A scheduled skew/drift job: attribute one day's data, compare it with a baseline run.

`igbeam monitor --config nightly.yaml [--date YYYY-MM-DD]` (see `configs/nightly.yaml`):

1. renders the config for the date: every string may hold ``{date}`` (the run's date),
   ``{yesterday}`` or ``{date-N}`` (N days earlier), all as YYYY-MM-DD;
2. runs the `job` (as `igbeam run`: a rerun for the same date replaces that date's outputs);
3. compares it (`pipeline.compare`) with the baseline: a fixed run (`baseline.run`), or the run
   the same job wrote for an earlier date (`baseline.date`, e.g. ``"{date-7}"``);
4. writes the comparison next to the run (`comparison_path`, default ``<output.path>/drift``).

The exit code drives the alert: 0 no anomaly, `drift_exit_code` (default 1) anomalies, 2 a bad
config, an early check or incompatible runs, 3 too many dead letters, 4 the pipeline failed.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from attribution.errors import SettingsError
from attribution.fields import Boolean, Choice, Integer, Section, Text, setting, show
from pipeline.compare import ComparisonConfig
from pipeline.config import JobConfig, parse_settings, read_yaml

__all__ = [
    "BaselineConfig",
    "MonitorConfig",
    "load_monitor_config",
    "parse_date",
    "render_dates",
]

_TEMPLATE = re.compile(r"\{(date|yesterday)(?:-(\d+))?\}")


def render_dates(value: Any, date: datetime.date) -> Any:
    """`value` (a config tree) with ``{date}``, ``{yesterday}`` and ``{date-N}`` filled in."""
    if isinstance(value, str):

        def fill(match: re.Match) -> str:
            days = int(match.group(2) or 0) + (1 if match.group(1) == "yesterday" else 0)
            return (date - datetime.timedelta(days=days)).isoformat()

        return _TEMPLATE.sub(fill, value)
    if isinstance(value, Mapping):
        return {k: render_dates(v, date) for k, v in value.items()}
    if isinstance(value, list):
        return [render_dates(v, date) for v in value]
    return value


def parse_date(text: str) -> datetime.date:
    """A YYYY-MM-DD date, or ValueError with one line."""
    try:
        return datetime.date.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"--date must be YYYY-MM-DD, got {text!r}") from err


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """The run today's run is compared with: exactly one of `run` and `date`.

    Attributes:
      run: A fixed run's `output.path` (e.g. the training data's run).
      date: The date whose run of the same job is the baseline: ``"{date-7}"``, ``"{yesterday}"``
        or a fixed YYYY-MM-DD.
      missing: When the baseline run does not exist (the first nights): "error" (exit 2) or
        "skip" (run, compare nothing, exit 0 with a note).
    """

    run: str | None = setting(None, check=Text(), path=True)
    date: str | None = setting(None, check=Text())
    missing: str = setting("error", check=Choice(("error", "skip"), "policy"))

    def cross_check(self, prefix: str) -> None:
        if (self.run is None) == (self.date is None):
            raise SettingsError("give exactly one of run and date", prefix or None)
        if self.date is not None:
            try:
                datetime.date.fromisoformat(self.date)
            except ValueError as err:
                raise SettingsError(
                    f"must render to a YYYY-MM-DD date, got {show(self.date)}",
                    f"{prefix}.date" if prefix else "date",
                ) from err


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """A scheduled monitoring job (see the module docstring).

    Attributes:
      job: The job config, exactly as `igbeam run` reads it (paths may hold date templates).
      baseline: What the run is compared with.
      compare: Thresholds and rules of the comparison (`igbeam compare --config`).
      comparison_path: Where the comparison goes (default: ``<job.output.path>/drift``).
      allow_config_change: Compare even when the attribution fingerprints differ.
      drift_exit_code: The exit code when anomalies are found.
    """

    job: JobConfig = setting(check=Section(JobConfig))
    baseline: BaselineConfig = setting(check=Section(BaselineConfig))
    compare: ComparisonConfig = setting(ComparisonConfig(), check=Section(ComparisonConfig))
    comparison_path: str | None = setting(None, check=Text(), path=True)
    allow_config_change: bool = setting(False, check=Boolean())
    drift_exit_code: int = setting(1, check=Integer(0))

    @property
    def comparison_dir(self) -> str:
        """Where the comparison is written."""
        if self.comparison_path is not None:
            return self.comparison_path
        out = self.job.output.path
        return f"{out.rstrip('/')}/drift" if "://" in out else os.path.join(out, "drift")


def load_monitor_config(
    path: str, date: datetime.date, overrides: Sequence[str] = ()
) -> tuple[MonitorConfig, str | None]:
    """The monitor config for `date`, and the baseline run's path (None: no such run needed).

    The baseline of `baseline.date` is the `job.output.path` that the same config renders for
    that date.

    Raises:
      ConfigError: the file cannot be read, or a key is invalid (named with its dotted key).
    """
    raw = read_yaml(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    config = parse_settings(MonitorConfig, render_dates(raw, date), overrides, base_dir)
    if config.baseline.run is not None:
        return config, config.baseline.run
    baseline_date = datetime.date.fromisoformat(config.baseline.date)
    then = parse_settings(MonitorConfig, render_dates(raw, baseline_date), overrides, base_dir)
    return config, then.job.output.path
