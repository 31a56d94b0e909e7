"""Settings declared once: a dataclass field carries its default, its check and its role.

Every igbeam setting (the engine's, the job config's, and sections added later) is a field of a
frozen dataclass declared with `setting(...)`. From those declarations alone this module derives:

* `parse(cls, mapping)`: a validated instance from a config mapping (YAML, JSON, `to_dict`), with
  unknown keys rejected and every error naming its dotted key (`attribution.steps: must be an
  integer >= 1, got 0`);
* `validated(instance)`: the same checks on an instance built in Python (the engine's arguments);
* `to_dict(instance)`: the mapping `parse` reads back (`parse(cls, to_dict(x)) == x`);
* `schema(cls)`: the key tree (for `--set` overrides and the documentation test);
* `path_keys(cls)`: the dotted keys holding file paths (resolved against the config's directory).

A field may be used only when another field of its section has a given value
(`when=("steps", "auto")`): given otherwise it is an error, and `to_dict` leaves it out.

A section may define `cross_check(prefix)` for rules between its fields (run after the fields
are parsed). A *kinded* section (a `kind` field checked by `Choice`, e.g. the baseline) lists per
field the kinds that use it (`kinds={"constant": REQUIRED_FOR_KIND}`): a field given for another
kind is an error, and only the kind's fields are written by `to_dict`.

Pure Python: no TensorFlow, no Beam (the job config is read in the launcher and pickled to
workers). Errors are `attribution.errors.SettingsError`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from attribution.errors import SettingsError

__all__ = [
    "LEAF",
    "MAP",
    "OPTIONAL_FOR_KIND",
    "REQUIRED_FOR_KIND",
    "Boolean",
    "Check",
    "Choice",
    "Function",
    "Indices",
    "Integer",
    "IntegerOrWord",
    "Names",
    "Number",
    "NumberOrMap",
    "NumberOrNumbersMap",
    "Positive",
    "Section",
    "SettingsError",
    "Strings",
    "Text",
    "check_value",
    "choices",
    "config_fields",
    "default_of",
    "parse",
    "path_keys",
    "schema",
    "setting",
    "show",
    "to_dict",
    "validated",
]

T = TypeVar("T")

LEAF = "leaf"
"""`schema` marks a plain value with this."""
MAP = "map"
"""`schema` marks a free-form {name: value} map (an override may address one entry) with this."""

REQUIRED_FOR_KIND = True
OPTIONAL_FOR_KIND = False

_META = "igbeam"


# ------------------------------------------------------------------------------------ messages


def show(value: Any) -> str:
    """A short repr of `value` for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number_hint(value: Any) -> str:
    """Explains a YAML 1.1 pitfall: `1e-3` (no dot) is read as a string."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (a string; YAML reads numbers like 1e-3 as strings, write 1.0e-3)"
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# -------------------------------------------------------------------------------------- checks


class Check:
    """Validates and normalises one value; `key` is the dotted key to name in errors.

    Checks never see None: an absent or null value takes the field's default (or is "required").
    """

    is_map = False  # a free-form {name: value} map
    section: type | None = None  # a nested settings dataclass

    def __call__(self, value: Any, key: str, api: bool) -> Any:
        raise NotImplementedError


class Integer(Check):
    """An integer >= `minimum` (not a bool, not 2.0, not "2")."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def __call__(self, value: Any, key: str, api: bool) -> int:
        if not _is_int(value) or value < self.minimum:
            raise SettingsError(f"must be an integer >= {self.minimum}, got {show(value)}", key)
        return int(value)


class IntegerOrWord(Check):
    """An integer >= `minimum`, or the string `word` (e.g. steps: `auto`)."""

    def __init__(self, minimum: int, word: str) -> None:
        self.minimum, self.word = minimum, word

    def __call__(self, value: Any, key: str, api: bool) -> int | str:
        if value == self.word and isinstance(value, str):
            return value
        if not _is_int(value) or value < self.minimum:
            # a string is told the one word allowed; a number, the integers (as `Integer`)
            also = f" or {self.word}" if isinstance(value, str) else ""
            raise SettingsError(
                f"must be an integer >= {self.minimum}{also}, got {show(value)}", key
            )
        return int(value)


class SizeOrWord(Check):
    """A memory size (bytes as an integer, or a string like "512MiB", "2GB"), or `word`."""

    def __init__(self, word: str) -> None:
        self.word = word

    def __call__(self, value: Any, key: str, api: bool) -> int | str:
        from attribution.budget import parse_size

        if value == self.word and isinstance(value, str):
            return value
        size = parse_size(value)
        if size is None:
            raise SettingsError(
                f"must be a size (bytes, or like 512MiB, 2GB) or {self.word}, got {show(value)}",
                key,
            )
        return value if isinstance(value, str) else size


class Positive(Check):
    """A finite number > 0; returned as float."""

    def __call__(self, value: Any, key: str, api: bool) -> float:
        if not _is_number(value) or value <= 0:
            raise SettingsError(
                f"must be a number > 0, got {show(value)}{_number_hint(value)}", key
            )
        return float(value)


class Number(Check):
    """A finite number, optionally within [low, high]; returned as float."""

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high

    def __call__(self, value: Any, key: str, api: bool) -> float:
        inside = _is_number(value) and (
            (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        )
        if not inside:
            what = "a number" if self.low is None else f"a number in [{self.low:g}, {self.high:g}]"
            raise SettingsError(f"must be {what}, got {show(value)}{_number_hint(value)}", key)
        return float(value)


class Boolean(Check):
    """true or false (not 1, not "yes")."""

    def __call__(self, value: Any, key: str, api: bool) -> bool:
        if not isinstance(value, bool):
            raise SettingsError(f"must be true or false, got {show(value)}", key)
        return value


class Text(Check):
    """A non-empty string; with `split`, a comma-separated list of non-empty items."""

    def __init__(self, split: bool = False) -> None:
        self.split = split

    def __call__(self, value: Any, key: str, api: bool) -> str:
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"must be a non-empty string, got {show(value)}", key)
        if self.split:
            parts = [p.strip() for p in value.split(",")]
            if any(not p for p in parts):
                raise SettingsError(
                    f"empty pattern in comma-separated list, got {show(value)}", key
                )
            return ",".join(parts)
        return value


class Choice(Check):
    """One of `choices`; `api_only` ones are accepted from Python but not from a config file."""

    def __init__(self, choices: Sequence[str], what: str, api_only: Sequence[str] = ()) -> None:
        self.choices = tuple(choices)
        self.what = what
        self.api_only = tuple(api_only)

    def allowed(self, api: bool) -> tuple[str, ...]:
        """The choices open to Python callers (`api`) or to config files."""
        return self.choices if api else tuple(c for c in self.choices if c not in self.api_only)

    def __call__(self, value: Any, key: str, api: bool) -> str:
        allowed = self.allowed(api)
        if not isinstance(value, str) or value not in allowed:
            raise SettingsError(
                f"unknown {self.what} {show(value)}; choose one of {', '.join(allowed)}", key
            )
        return value


class Names(Check):
    """A list of unique, non-empty names (feature names), returned as a tuple."""

    def __init__(self, *, nullable: bool = False, allow_empty: bool = True, hint: str = ""):
        self.nullable, self.allow_empty, self.hint = nullable, allow_empty, hint

    def __call__(self, value: Any, key: str, api: bool) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            expected = "a list of feature names" + (" or null" if self.nullable else "")
            raise SettingsError(f"must be {expected}, got {show(value)}", key)
        if not value and not self.allow_empty:
            raise SettingsError(f"must not be an empty list{self.hint}", key)
        seen: set[str] = set()
        for i, name in enumerate(value):
            if not isinstance(name, str) or not name.strip():
                raise SettingsError(f"must be a non-empty string, got {show(name)}", f"{key}[{i}]")
            if name in seen:
                raise SettingsError(f"duplicate feature {name!r}", key)
            seen.add(name)
        return tuple(value)


class Indices(Check):
    """A non-empty list of distinct integers >= 0 (output indices), returned as a tuple."""

    def __call__(self, value: Any, key: str, api: bool) -> tuple[int, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise SettingsError(
                f"must be a non-empty list of output indices, got {show(value)}", key
            )
        for i, v in enumerate(value):
            if not _is_int(v) or v < 0:
                raise SettingsError(f"must be an integer >= 0, got {show(v)}", f"{key}[{i}]")
        if len(set(value)) != len(value):
            repeated = sorted({int(v) for v in value if list(value).count(v) > 1})
            raise SettingsError(f"indices must be distinct; repeated {repeated}", key)
        return tuple(int(v) for v in value)


class Strings(Check):
    """A non-empty list of strings (display names), returned as a tuple."""

    def __call__(self, value: Any, key: str, api: bool) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise SettingsError(f"must be a non-empty list of strings, got {show(value)}", key)
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise SettingsError(f"must be a string, got {show(v)}", f"{key}[{i}]")
        return tuple(value)


class NumberOrMap(Check):
    """A number for every feature, or a non-empty {feature: number} map."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> float | dict[str, float]:
        if isinstance(value, Mapping):
            if not value:
                raise SettingsError("must be a number or a non-empty {feature: number} map", key)
            out = {}
            for name, v in value.items():
                _check_map_name(name, key)
                out[name] = Number()(v, f"{key}.{name}", api)
            return out
        if not _is_number(value):
            raise SettingsError(
                f"must be a number or a {{feature: number}} map, got {show(value)}"
                f"{_number_hint(value)}",
                key,
            )
        return float(value)


class NumberOrNumbersMap(Check):
    """A non-empty {feature: number or flat list of numbers} map (numpy arrays from Python)."""

    is_map = True

    def __call__(self, value: Any, key: str, api: bool) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not value:
            raise SettingsError(
                f"must be a non-empty {{feature: number or list}} map, got {show(value)}", key
            )
        out: dict[str, Any] = {}
        for name, v in value.items():
            _check_map_name(name, key)
            where = f"{key}.{name}"
            if api and hasattr(v, "shape") and hasattr(v, "dtype"):  # a numpy array, any shape
                out[name] = v
            elif isinstance(v, list | tuple):
                if not v or not all(_is_number(x) for x in v):
                    raise SettingsError(
                        f"must be a number or a non-empty list of numbers, got {show(v)}", where
                    )
                out[name] = tuple(float(x) for x in v)
            elif _is_number(v):
                out[name] = float(v)
            else:
                raise SettingsError(
                    f"must be a number or a non-empty list of numbers, got {show(v)}"
                    f"{_number_hint(v)}",
                    where,
                )
        return out


def _check_map_name(name: Any, key: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f"feature names must be non-empty strings, got {show(name)}", key)


class Function(Check):
    """A Python callable (settings that only the Python API can hold)."""

    def __call__(self, value: Any, key: str, api: bool) -> Callable[..., Any]:
        if not callable(value):
            raise SettingsError(f"must be a function, got {show(value)}", key)
        return value


class Section(Check):
    """A nested settings dataclass: a mapping in a config file, an instance from Python."""

    def __init__(self, cls: type) -> None:
        self.section = cls

    def __call__(self, value: Any, key: str, api: bool) -> Any:
        if api and isinstance(value, self.section):
            return validated(value, key)
        if not isinstance(value, Mapping):
            raise SettingsError(f"must be a mapping, got {show(value)}", key)
        return _parse(self.section, value, key, api)


# -------------------------------------------------------------------------------- declaration


@dataclasses.dataclass(frozen=True)
class _Spec:
    check: Check
    kinds: Mapping[str, bool] | None = None
    config: bool = True
    path: bool = False
    when: tuple[str, Any] | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    check: Check,
    kinds: Mapping[str, bool] | None = None,
    config: bool = True,
    path: bool = False,
    when: tuple[str, Any] | None = None,
) -> Any:
    """Declares a settings field.

    Args:
      default: The default; omit it for a required field. A settings dataclass (or dict/list) is
        copied per instance.
      check: How a given value is validated and normalised.
      kinds: In a kinded section: kind -> `REQUIRED_FOR_KIND` / `OPTIONAL_FOR_KIND` for the kinds
        that use this field (others reject it).
      config: False for settings only the Python API can hold (functions): no config key.
      path: The value is a file path or comma-separated patterns, resolved against the directory
        of the config file.
      when: (field, value): the setting is used only when that field of the section has that
        value (`("steps", "auto")`); given otherwise it is an error, and `to_dict` leaves it
        out then (so sections written before it existed read and compare the same).

    Returns:
      A `dataclasses.field`.
    """
    meta = {_META: _Spec(check, kinds, config, path, when)}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if dataclasses.is_dataclass(default) or isinstance(default, dict | list | set):
        factory = type(default) if dataclasses.is_dataclass(default) else default.copy
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _spec(f: dataclasses.Field) -> _Spec:
    return f.metadata[_META]


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if _META in f.metadata]


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that a config file can set, in declaration order."""
    return [f for f in _fields(cls) if _spec(f).config]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of settings dataclass `cls`."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return _default(f)
    raise KeyError(name)


def check_value(cls: type, name: str, value: Any, key: str | None = None) -> Any:
    """`value` checked as field `name` of `cls` is checked from Python (key: `key` or `name`)."""
    for f in _fields(cls):
        if f.name == name:
            return _spec(f).check(value, key or name, True)
    raise KeyError(name)


def choices(cls: type, name: str, *, api: bool = False) -> tuple[str, ...]:
    """The choices of `Choice` field `name` of `cls`: those of config files, or (`api`) all."""
    for f in _fields(cls):
        check = _spec(f).check
        if f.name == name and isinstance(check, Choice):
            return check.allowed(api)
    raise KeyError(name)


def _kind_check(cls: type) -> Choice | None:
    for f in _fields(cls):
        if f.name == "kind" and isinstance(_spec(f).check, Choice):
            return _spec(f).check
    return None


# ------------------------------------------------------------------------------------- parsing


def parse(cls: type[T], data: Any, prefix: str = "") -> T:
    """A validated `cls` from a config mapping.

    Args:
      cls: A settings dataclass.
      data: The mapping (from YAML or `to_dict`); absent or null keys take their defaults.
      prefix: The dotted key of this section, for error messages ("" at the top).

    Returns:
      The instance.

    Raises:
      SettingsError: unknown key, missing required key, bad value, or a cross-field check; the
        error names the dotted key.
    """
    if not isinstance(data, Mapping):
        raise SettingsError(f"must be a mapping, got {show(data)}", prefix or None)
    return _parse(cls, data, prefix, api=False)


def validated(instance: T, prefix: str = "") -> T:
    """`instance` (built in Python) checked and normalised exactly as `parse` checks a mapping.

    A field still at its default counts as not given, unless the section's kind uses it (then
    its default is its value). Python-only choices and fields (`Choice.api_only`,
    `config=False`) are accepted here.

    Raises:
      SettingsError: as `parse`, the key relative to `prefix` (e.g. "steps", "baseline.samples").
    """
    cls = type(instance)
    kind = getattr(instance, "kind", None) if _kind_check(cls) else None
    given = {}
    for f in _fields(cls):
        value = getattr(instance, f.name)
        kinds = _spec(f).kinds
        used = kind is not None and kinds is not None and kind in kinds  # a default is a value
        if f.name == "kind" or (value is not None and used) or not _same(value, _default(f)):
            given[f.name] = value
    return _parse(cls, given, prefix, api=True)


def _value_of(cls: type, values: Mapping[str, Any], name: str) -> Any:
    if name in values:
        return values[name]
    return default_of(cls, name)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        equal = a == b
    except Exception:  # noqa: BLE001 - incomparable values are not the default
        return False
    return isinstance(equal, bool) and equal


def _parse(cls: type[T], data: Mapping[str, Any], prefix: str, api: bool) -> T:
    fields = _fields(cls) if api else config_fields(cls)
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            raise SettingsError(
                f"unknown key; expected one of {', '.join(f.name for f in config_fields(cls))}",
                _join(prefix, str(key)),
            )
    given = {f.name: data.get(f.name) for f in fields if data.get(f.name) is not None}
    kind_check = _kind_check(cls)
    kind = None
    if kind_check is not None:
        if "kind" not in given:
            raise SettingsError(
                f"required; choose one of {', '.join(kind_check.allowed(api))}",
                _join(prefix, "kind"),
            )
        kind = kind_check(given["kind"], _join(prefix, "kind"), api)
        for f in fields:  # a field of another kind
            kinds = _spec(f).kinds
            if f.name in given and kinds is not None and kind not in kinds:
                raise SettingsError(
                    f"not allowed for {kind_check.what} {kind!r}", _join(prefix, f.name)
                )
        for f in fields:  # a field this kind needs
            kinds = _spec(f).kinds
            if kinds is not None and kinds.get(kind) and f.name not in given:
                raise SettingsError(
                    f"required for {kind_check.what} {kind!r}", _join(prefix, f.name)
                )
    values: dict[str, Any] = {}
    for f in fields:
        key = _join(prefix, f.name)
        if f.name == "kind" and kind is not None:
            values[f.name] = kind
        elif f.name in given:
            values[f.name] = _spec(f).check(given[f.name], key, api)
        elif _default(f) is dataclasses.MISSING:
            if _spec(f).check.section is None:
                raise SettingsError("required", key)
            values[f.name] = _spec(f).check({}, key, api)  # names the section's required key
    for f in fields:  # a field used only with another field's value
        when = _spec(f).when
        if when is not None and f.name in given and _value_of(cls, values, when[0]) != when[1]:
            raise SettingsError(f"only used with {when[0]}: {when[1]}", _join(prefix, f.name))
    instance = cls(**values)
    cross_check = getattr(instance, "cross_check", None)
    if cross_check is not None:
        cross_check(prefix)  # checks between the fields of the section
    return instance


# ------------------------------------------------------------------------------------- writing


def to_dict(instance: Any) -> dict[str, Any]:
    """The config mapping of a settings instance (JSON-able: lists, dicts, str, numbers, None).

    A kinded section holds `kind` and the fields of that kind only; an optional section (default
    None) is written only when set. `parse(type(x), to_dict(x)) == x`.
    """
    cls = type(instance)
    kind = getattr(instance, "kind", None) if _kind_check(cls) else None
    out: dict[str, Any] = {}
    for f in config_fields(cls):
        kinds = _spec(f).kinds
        if kind is not None and kinds is not None and kind not in kinds:
            continue
        when = _spec(f).when
        if when is not None and getattr(instance, when[0]) != when[1]:
            continue
        value = getattr(instance, f.name)
        if value is None and _spec(f).check.section is not None and _default(f) is None:
            continue  # an optional section left out (e.g. smoothgrad): older configs read the same
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return value


def schema(cls: type) -> dict[str, Any]:
    """The key tree of a settings dataclass: sections are dicts, values `LEAF` or `MAP`."""
    tree: dict[str, Any] = {}
    for f in config_fields(cls):
        check = _spec(f).check
        if check.section is not None:
            tree[f.name] = schema(check.section)
        else:
            tree[f.name] = MAP if check.is_map else LEAF
    return tree


def path_keys(cls: type, prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted key, comma-separated) of every path-valued setting, in declaration order."""
    keys: list[tuple[str, bool]] = []
    for f in config_fields(cls):
        spec = _spec(f)
        dotted = _join(prefix, f.name)
        if spec.check.section is not None:
            keys.extend(path_keys(spec.check.section, dotted))
        elif spec.path:
            keys.append((dotted, isinstance(spec.check, Text) and spec.check.split))
    return keys
