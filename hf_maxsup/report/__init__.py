"""The side-by-side reports of trained models, one module per task over shared steps.

- `classification`: classifiers, checked against the papers' claims ([`analyze_checkpoints`], [`analyze_paths`],
  [`analyze_run`]); `translation`: translation models ([`analyze_translation_checkpoints`]); `distillation`: the
  students of CE, LS and MaxSup teachers ([`evaluate_distillation`], [`write_distillation_report`]).
- The steps they share: `options` (the evaluation data, each field a flag: [`DataOptions`],
  [`TranslationDataOptions`]), `runs` ([`Run`], [`RunResult`], the runs of checkpoint paths), `device`
  ([`resolve_device`]), `evaluate` (data, safe loading, the runs in turn), `measures` (what is measured of a
  classifier), `stats` (summaries over seeds, the claims checked, the regime check), `markdown` and `figures`.

`hf-maxsup analyze` (see [`hf_maxsup.cli`]) calls [`analyze_paths`]; `hf-maxsup compare` and `distill`
([`hf_maxsup.studies`]) call the others after training. The names below are imported on first use, so that the
command line's flags (built from the options) and its device check do not import torch.
"""

import importlib

# public name -> the module of this package that defines it
_EXPORTS = {
    "analyze_checkpoints": "classification",
    "analyze_paths": "classification",
    "analyze_run": "classification",
    "resolve_device": "device",
    "evaluate_distillation": "distillation",
    "write_distillation_report": "distillation",
    "DataOptions": "options",
    "SourceOptions": "options",
    "TranslationDataOptions": "options",
    "Run": "runs",
    "RunResult": "runs",
    "analyze_translation_checkpoints": "translation",
    "analyze_translation_run": "translation",
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
