"""Lazy re-exports for a package's face (PEP 562): each public name is imported from its module on first use, so that
importing one light module of a package (a card's metadata, the report's options) does not import the heavy ones
beside it (torch, transformers)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, tuple[str, ...]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of a package's `__init__.py` whose public names are `exports`.

    Args:
        package (`str`): the package's `__name__`, whose `__init__.py` is running.
        exports (`dict[str, tuple[str, ...]]`): `{submodule of the package: the public names it defines}`.

    Returns:
        `tuple`: `(__getattr__, __dir__)`, to assign in the `__init__.py`.
    """
    namespace = vars(sys.modules[package])
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name in module_of:
            value = getattr(importlib.import_module(f".{module_of[name]}", package), name)
            namespace[name] = value  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__
