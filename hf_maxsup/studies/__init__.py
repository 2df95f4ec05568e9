"""The studies: applications that train runs through a recipe in subprocesses, then write a report of them.

- `compare`: `hf-maxsup compare`, the same model with each loss and seed ([`run_compare`]);
- `distill`: `hf-maxsup distill`, one student per teacher and seed ([`run_study`]);
- `members`: training the members of a study through a recipe, resumably ([`train_members`]).

The names below are imported on first use, so that planning and training members (which judges their folders without
torch) does not import the reports.
"""

import importlib

# public name -> the module of this package that defines it
_EXPORTS = {
    "check_reportable": "compare",
    "run_compare": "compare",
    "run_study": "distill",
    "Member": "members",
    "default_recipe": "members",
    "is_finished": "members",
    "plan_members": "members",
    "train_members": "members",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
