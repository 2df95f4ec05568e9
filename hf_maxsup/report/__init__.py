"""The side-by-side reports of trained models: metrics tables, the papers' claims checked, figures and `results.json`.

- [`~hf_maxsup.report.evaluate`]: loading a classifier's checkpoint, collecting its logits and features on the
  evaluation split, measuring it ([`analyze_run`]), and every run on the same data ([`analyze_checkpoints`]).
- [`~hf_maxsup.report.summary`]: the metrics of a run, their mean ± std over seeds, the checks against the papers
  ([`paper_checks`]) and the regime check ([`regime_check`]).
- [`~hf_maxsup.report.markdown`] and [`~hf_maxsup.report.figures`]: `report.md`, `results.json` and the figures
  ([`write_report`]).
- [`~hf_maxsup.report.translation`]: the same for translation models: BLEU, chrF, the references' NLL and token-level
  ECE ([`analyze_translation_checkpoints`]).
- [`~hf_maxsup.report.options`] and [`~hf_maxsup.report.runs`]: what they take ([`Run`], [`DataOptions`],
  [`TranslationDataOptions`]) and what an evaluation gives ([`RunResult`]).

`hf-maxsup analyze` (see [`hf_maxsup.cli`]) calls [`analyze_checkpoints`] on existing checkpoints; `hf-maxsup compare`
after training.
"""

from .evaluate import analyze_checkpoints, analyze_run, resolve_device
from .figures import save_figures
from .markdown import (
    REPORT_FILES,
    check_line,
    json_safe,
    markdown_table,
    regime_lines,
    summary_table,
    training_time_line,
    write_report,
)
from .options import DataOptions, SourceOptions, TranslationDataOptions
from .runs import Run, RunResult
from .summary import (
    FIT_ACCURACY,
    PAPER_CLAIMS,
    REGIME_METRICS,
    TABLE_METRICS,
    Column,
    compute_metrics,
    format_summary,
    maxsup_ls_note,
    paper_checks,
    regime_check,
    summarize,
    summarize_runs,
)
from .translation import (
    TRANSLATION_CLAIMS,
    TRANSLATION_METRICS,
    analyze_translation_checkpoints,
    analyze_translation_run,
    token_calibration,
    write_translation_report,
)

__all__ = [
    "FIT_ACCURACY",
    "PAPER_CLAIMS",
    "REGIME_METRICS",
    "REPORT_FILES",
    "TABLE_METRICS",
    "TRANSLATION_CLAIMS",
    "TRANSLATION_METRICS",
    "Column",
    "DataOptions",
    "Run",
    "RunResult",
    "SourceOptions",
    "TranslationDataOptions",
    "analyze_checkpoints",
    "analyze_run",
    "analyze_translation_checkpoints",
    "analyze_translation_run",
    "check_line",
    "compute_metrics",
    "format_summary",
    "maxsup_ls_note",
    "json_safe",
    "markdown_table",
    "paper_checks",
    "regime_check",
    "regime_lines",
    "resolve_device",
    "save_figures",
    "summarize",
    "summarize_runs",
    "summary_table",
    "token_calibration",
    "training_time_line",
    "write_report",
    "write_translation_report",
]
