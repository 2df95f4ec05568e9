"""hf_maxsup: Max Suppression (MaxSup) and label smoothing for Hugging Face Transformers training.

The names below are imported on first use, so that `import hf_maxsup.losses` (or `hf_maxsup.kernels`) does not pull
in transformers.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

# each submodule -> the public names it defines
_EXPORTS = {
    "hub": ("HubPushError", "load_for_analysis"),
    "losses": (
        "LOSSES",
        "LabelSmoothingLoss",
        "MaxSupLoss",
        "cross_entropy",
        "get_loss_fn",
        "label_smoothing_cross_entropy",
        "maxsup_cross_entropy",
    ),
    "schedules": ("alpha_at",),
    "trainer": (
        "MaxSupLossFunc",
        "MaxSupSFTConfig",
        "MaxSupSFTTrainer",
        "MaxSupSeq2SeqTrainer",
        "MaxSupSeq2SeqTrainingArguments",
        "MaxSupTrainer",
        "MaxSupTrainingArguments",
        "apply_maxsup",
    ),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
