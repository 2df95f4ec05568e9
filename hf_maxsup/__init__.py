"""hf_maxsup: Max Suppression (MaxSup) and label smoothing for Hugging Face Transformers training.

The names below are imported on first use, so that `import hf_maxsup.losses` (or `hf_maxsup.kernels`) does not pull
in transformers.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "HubPushError": "hub",
    "load_for_analysis": "hub",
    "LOSSES": "losses",
    "LabelSmoothingLoss": "losses",
    "MaxSupLoss": "losses",
    "cross_entropy": "losses",
    "get_loss_fn": "losses",
    "label_smoothing_cross_entropy": "losses",
    "maxsup_cross_entropy": "losses",
    "alpha_at": "schedules",
    "MaxSupLossFunc": "trainer",
    "MaxSupSeq2SeqTrainer": "trainer",
    "MaxSupSeq2SeqTrainingArguments": "trainer",
    "MaxSupTrainer": "trainer",
    "MaxSupTrainingArguments": "trainer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
