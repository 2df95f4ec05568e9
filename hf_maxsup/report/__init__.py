"""The side-by-side reports of trained models, one module per task over shared steps.

- `classification`: classifiers, checked against the papers' claims ([`analyze_checkpoints`], [`analyze_paths`],
  [`analyze_run`]); `translation`: translation models ([`analyze_translation_checkpoints`]); `distillation`: the
  students of CE, LS and MaxSup teachers ([`evaluate_distillation`], [`write_distillation_report`]); `reanalysis`:
  a report written again from its `results.json` ([`reanalyze`]).
- The steps they share: `options` (the evaluation data, each field a flag: [`DataOptions`],
  [`TranslationDataOptions`]), `runs` ([`Run`], [`RunResult`], the runs of checkpoint paths), `device`
  ([`resolve_device`]), `evaluate` (data, safe loading, the runs in turn), `measures` (what is measured of a
  classifier), `claims` (what the papers report), `stats` and `significance` (summaries over seeds, the claims
  tested, the regime check), `markdown` and `figures`.

`hf-maxsup analyze` (see [`hf_maxsup.cli`]) calls [`analyze_paths`], `hf-maxsup reanalyze` [`reanalyze`];
`hf-maxsup compare` and `distill` ([`hf_maxsup.studies`]) call the others after training. The names below are imported
on first use, so that the command line's flags (built from the options) and its device check do not import torch.
"""

from ..lazy import lazy_exports

# each module of this package -> the public names it defines
_EXPORTS = {
    "classification": ("analyze_checkpoints", "analyze_paths", "analyze_run"),
    "device": ("resolve_device",),
    "distillation": ("evaluate_distillation", "write_distillation_report"),
    "options": ("DataOptions", "SourceOptions", "TranslationDataOptions"),
    "reanalysis": ("reanalyze",),
    "runs": ("Run", "RunResult"),
    "translation": ("analyze_translation_checkpoints", "analyze_translation_run"),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
