"""The lazy face of a package: its public names, each imported from its module on first use.

The faces of `hf_maxsup`, `hf_maxsup.hub` and `hf_maxsup.runner` use it so that importing a light module of theirs
(`hf_maxsup.losses`, `hf_maxsup.hub.metadata`, `hf_maxsup.runner.output_dir`) does not import the heavy ones
(transformers, torch) that the package's `__init__` would otherwise import first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """The module-level `__getattr__` and `__dir__` of a package whose public names are imported on first use.

    Args:
        package (`str`): the package's `__name__`.
        exports (`dict[str, str]`): public name -> the submodule of `package` that defines it.

    Returns:
        `tuple[Callable, Callable]`: `(__getattr__, __dir__)`, to assign at the package's top level.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
