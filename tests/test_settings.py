"""Settings declared once (attribution.fields / attribution.settings) and the typed surface."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import textwrap

import apache_beam as beam
import numpy as np
import pytest

import attribution
import transforms
from attribution import fields
from attribution.errors import SettingsError, one_line
from attribution.fields import (
    OPTIONAL_FOR_KIND,
    REQUIRED_FOR_KIND,
    Choice,
    Integer,
    NumberOrMap,
    Section,
    Text,
    setting,
)
from attribution.settings import AttributionConfig, Baseline, BatchingConfig, Target
from pipeline import config as cfg


# A section as a later feature would add it (say, monitoring thresholds): declared once, and
# parsing, errors, to_dict, the override schema and path resolution come from the machinery.
@dataclasses.dataclass(frozen=True)
class Alert:
    kind: str = setting("none", check=Choice(("none", "slack", "page"), "alert kind", ("page",)))
    channel: str | None = setting(None, check=Text(), kinds={"slack": REQUIRED_FOR_KIND})
    retries: int = setting(3, check=Integer(0), kinds={"slack": OPTIONAL_FOR_KIND})


@dataclasses.dataclass(frozen=True)
class Monitoring:
    report: str = setting(check=Text(), path=True)
    threshold: float | dict[str, float] = setting(0.3, check=NumberOrMap())
    min_examples: int = setting(100, check=Integer(1))
    alert: Alert = setting(Alert(), check=Section(Alert))

    def cross_check(self, prefix: str) -> None:
        if isinstance(self.threshold, dict) and "all" in self.threshold:
            raise SettingsError("'all' is reserved", f"{prefix}.threshold")


def test_a_new_section_is_parsed_checked_and_written_from_its_declaration():
    parsed = fields.parse(
        Monitoring,
        {"report": "r.html", "threshold": {"f0": 1}, "alert": {"kind": "slack", "channel": "#ml"}},
        "monitoring",
    )
    assert parsed == Monitoring(
        report="r.html", threshold={"f0": 1.0}, alert=Alert("slack", "#ml", 3)
    )
    assert fields.to_dict(parsed) == {
        "report": "r.html",
        "threshold": {"f0": 1.0},
        "min_examples": 100,
        "alert": {"kind": "slack", "channel": "#ml", "retries": 3},
    }
    again = json.loads(json.dumps(fields.to_dict(parsed)))
    assert fields.parse(Monitoring, again, "monitoring") == parsed
    assert fields.schema(Monitoring) == {
        "report": fields.LEAF,
        "threshold": fields.MAP,
        "min_examples": fields.LEAF,
        "alert": {"kind": fields.LEAF, "channel": fields.LEAF, "retries": fields.LEAF},
    }
    assert fields.path_keys(Monitoring, "monitoring") == [("monitoring.report", False)]
    # Only the kind's fields are written.
    assert fields.to_dict(Alert()) == {"kind": "none"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "monitoring.report: required"),
        ({"report": "r", "nope": 1}, "monitoring.nope: unknown key; expected one of report, "),
        ({"report": "r", "min_examples": 0}, "monitoring.min_examples: must be an integer >= 1"),
        ({"report": "r", "threshold": "x"}, "monitoring.threshold: must be a number or a"),
        ({"report": "r", "threshold": {"f": "x"}}, "monitoring.threshold.f: must be a number"),
        ({"report": "r", "threshold": {"all": 1}}, "monitoring.threshold: 'all' is reserved"),
        ({"report": "r", "alert": {"channel": "c"}}, "monitoring.alert.kind: required; choose"),
        ({"report": "r", "alert": {"kind": "slack"}}, "monitoring.alert.channel: required for"),
        (
            {"report": "r", "alert": {"kind": "none", "retries": 1}},
            "monitoring.alert.retries: not allowed for alert kind 'none'",
        ),
        (
            {"report": "r", "alert": {"kind": "page"}},
            "monitoring.alert.kind: unknown alert kind 'page'; choose one of none, slack",
        ),
        ({"report": "r", "alert": "slack"}, "monitoring.alert: must be a mapping, got 'slack'"),
    ],
)
def test_errors_name_the_dotted_key(data, message):
    with pytest.raises(SettingsError) as info:
        fields.parse(Monitoring, data, "monitoring")
    assert str(info.value).startswith(message)


def test_python_instances_get_the_same_checks_and_python_only_choices():
    # A choice only Python can hold ('page') passes from Python, never from a file.
    assert fields.validated(Alert("page")).kind == "page"
    with pytest.raises(SettingsError, match=r"^alert.channel: required for alert kind 'slack'"):
        fields.validated(Alert("slack"), "alert")
    with pytest.raises(SettingsError, match=r"^retries: must be an integer >= 0, got -1"):
        fields.validated(Alert("slack", "#c", -1))
    # Numbers are normalised the same way: numpy scalars in, Python floats/ints out.
    value = fields.validated(Baseline("constant", value=np.float32(0.5)))
    assert value == Baseline("constant", value=0.5) and type(value.value) is float
    # A kind's field at its default still counts as given (0.0 is a valid constant).
    assert fields.validated(Baseline("constant", value=0.0)).value == 0.0


def test_engine_and_config_share_one_definition():
    # The config's choices are the engine's, less the Python-only ones; no copies to keep in step.
    assert cfg.METHODS == attribution.METHODS
    assert tuple(k for k in attribution.BASELINE_KINDS if k != "array") == cfg.BASELINE_KINDS
    assert tuple(k for k in attribution.TARGET_KINDS if k != "callable") == cfg.TARGET_KINDS
    assert cfg.AttributionConfig is AttributionConfig and cfg.BatchingConfig is BatchingConfig
    assert cfg.BaselineConfig is Baseline and cfg.TargetConfig is Target
    # Defaults live in the dataclasses only: the engine's signature repeats none of them.
    signature = inspect.signature(attribution.IntegratedGradients.__init__)
    for name in ("method", "steps", "baseline", "target", "max_rows_per_call"):
        assert signature.parameters[name].default is None, name
    assert fields.default_of(AttributionConfig, "steps") == 50
    # The YAML schema is derived from the dataclass fields.
    assert set(cfg._SCHEMA) == {f.name for f in dataclasses.fields(cfg.JobConfig)}
    assert set(cfg._SCHEMA["attribution"]["baseline"]) == {
        f.name for f in dataclasses.fields(Baseline)
    } - {"references"}
    assert "references" not in cfg._SCHEMA["attribution"]["baseline"]  # Python-only
    assert set(cfg._SCHEMA["attribution"]["target"]) == {
        f.name for f in dataclasses.fields(Target)
    } - {"fn"}
    assert "fn" not in cfg._SCHEMA["attribution"]["target"]  # Python-only


def test_config_and_settings_import_neither_tensorflow_nor_beam():
    script = textwrap.dedent(
        """
        import sys
        import attribution
        from attribution import Baseline, integration_rule
        from pipeline.config import parse_config
        job = parse_config({"model": {"path": "m.keras"}, "input": {"pattern": "d/*"},
                            "output": {"path": "o"}})
        integration_rule("gausslegendre", 8)
        import transforms, transforms.constants, transforms.tfrecords, transforms.progress
        print(sorted(m for m in ("tensorflow", "apache_beam", "keras") if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("package", [attribution, transforms])
def test_public_names_resolve(package):
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_public_transforms_are_typed():
    names = (
        "ReadBlocks",
        "ReadTFRecords",
        "ReadTFRecordFiles",
        "AttributeBlocks",
        "WriteRunOutputs",
    )
    for name in names:
        cls = getattr(transforms, name)
        assert issubclass(cls, beam.PTransform), name
        (base,) = [b for b in cls.__orig_bases__ if getattr(b, "__origin__", None)]
        assert base.__origin__ is beam.PTransform and len(base.__args__) == 2, name
    assert transforms.AttributedBlock._fields[3:5] == ("results", "dead_letters")
    assert transforms.ReadResult._fields == ("records", "dead_letters")


def test_one_line_errors():
    err = ValueError("first line\n  second   line")
    assert one_line(err) == "ValueError: first line second line"
    assert one_line(err, with_type=False) == "first line second line"
    assert one_line(RuntimeError()) == "RuntimeError"
    assert one_line(ValueError("x" * 50), limit=20) == "ValueError: xxxxx..."
    assert len(one_line(ValueError("x" * 50), limit=20)) == 20
