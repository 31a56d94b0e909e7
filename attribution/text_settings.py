"""The `attribution.text` settings (token features at an embedding layer). Pure Python.

Kept apart from `attribution.text` (TensorFlow) so that the settings, and the job config that
embeds them, import no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from attribution.errors import SettingsError
from attribution.fields import Check, Text, setting, show

__all__ = ["TextConfig"]


class _IdOrString(Check):
    """A padding value: an integer id or a string (possibly empty)."""

    def __call__(self, value: Any, key: str, api: bool) -> int | str:
        if isinstance(value, bool) or not isinstance(value, int | str | np.integer):
            raise SettingsError(f"must be an integer token id or a string, got {show(value)}", key)
        return int(value) if isinstance(value, int | np.integer) else value


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Token features attributed at an embedding layer (`attribution.text`; needs `layer`).

    Attributes:
      feature: The model input holding the tokens (int ids, or strings looked up inside the
        model). None: the one model input that feeds `attribution.layer` through single-input
        layers (e.g. ids -> Embedding, or strings -> StringLookup -> Embedding).
      tokens: The example feature holding each example's token strings (BYTES), written as
        `tokens_<layer>` beside the scores. None: `feature` itself when it holds strings, else no
        token strings.
      padding: The padding value of `feature`: a token id (int feature) or a string (string
        feature). None: 0 for ids, "" for strings.
    """

    feature: str | None = setting(None, check=Text())
    tokens: str | None = setting(None, check=Text())
    padding: int | str | None = setting(None, check=_IdOrString())
