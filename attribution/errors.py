"""The errors igbeam raises for bad settings and models, and the one way it shortens an error.

Pure Python: importable without TensorFlow or Beam (the config, the record reader and the command
line use it).
"""

from __future__ import annotations

__all__ = ["ModelLoadError", "SettingsError", "one_line"]


class SettingsError(ValueError):
    """An invalid setting: a job config key, or an argument of the engine.

    `str(error)` is ``"<dotted.key>: <message>"`` (just the message when no single key is at fault,
    e.g. unreadable YAML).

    Attributes:
      message: What is wrong, including the offending value.
      key: The dotted key at fault (``"attribution.steps"``, ``"slices[0]"``, ``"steps"``), or None.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message, key)
        self.message = message
        self.key = key

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ModelLoadError(ValueError):
    """The model could not be loaded or has no usable signature."""


def one_line(error: BaseException, *, limit: int = 500, with_type: bool = True) -> str:
    """`error` as one line: ``"Type: message"`` with white space folded, at most `limit` characters.

    Args:
      error: Any exception.
      limit: The longest result; a longer one is cut and ends with "...".
      with_type: Prefix the exception's class name.

    Returns:
      The line (the class name alone when the message is empty).
    """
    message = " ".join(str(error).split())
    name = type(error).__name__
    text = f"{name}: {message}" if message and with_type else message or name
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."
