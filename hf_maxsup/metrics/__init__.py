"""Our `evaluate` modules, loadable offline by path, and ready-made `compute_metrics` functions for the Trainer.

The Hub is not needed: `evaluate.load(hf_maxsup.metrics.path("calibration"))` loads the module from
this package. Modules: `accuracy` (top-1 / top-5 from logits), `calibration` (ECE variants, NLL, Brier,
AURC, E-AURC from logits) and `translation` (sacreBLEU BLEU and chrF with their signatures).
"""

from .compute import classification_compute_metrics, path, translation_compute_metrics

__all__ = ["classification_compute_metrics", "path", "translation_compute_metrics"]
