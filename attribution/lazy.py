"""Package attributes that load their module on first use (PEP 562), so a package stays light.

`attribution` loads TensorFlow only when the engine is used, and `transforms` loads Beam only
when a transform is, while both keep a curated public surface (`__all__`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of a package whose `exports` (name -> module) load lazily.

    Args:
      package: The package's name, for the AttributeError of an unknown name.
      exports: Public name -> the module that defines it.
      namespace: The package's `globals()`; a loaded name is cached there.
    """

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted([*namespace, *exports])

    return getattr_, dir_
