"""The studies: applications that train runs through a recipe in subprocesses, then write a report of them.

- `compare`: `hf-maxsup compare`, the same model with each loss and seed ([`run_compare`]);
- `distill`: `hf-maxsup distill`, one student per teacher and seed ([`run_study`]);
- `members`: training the members of a study through a recipe, resumably ([`train_members`]).

The names below are imported on first use, so that planning and training members (which judges their folders without
torch) does not import the reports.
"""

from ..lazy import lazy_exports

# each module of this package -> the public names it defines
_EXPORTS = {
    "compare": ("check_reportable", "run_compare"),
    "distill": ("run_study",),
    "members": ("Member", "default_recipe", "is_finished", "plan_members", "train_members"),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
