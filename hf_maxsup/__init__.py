"""hf_maxsup: Max Suppression (MaxSup) and label smoothing for Hugging Face Transformers training."""

from .losses import (
    LOSSES,
    LabelSmoothingLoss,
    MaxSupLoss,
    cross_entropy,
    get_loss_fn,
    label_smoothing_cross_entropy,
    maxsup_cross_entropy,
)
from .hub import HubPushError, load_for_analysis
from .schedules import alpha_at
from .trainer import (
    MaxSupLossFunc,
    MaxSupSeq2SeqTrainer,
    MaxSupSeq2SeqTrainingArguments,
    MaxSupTrainer,
    MaxSupTrainingArguments,
)

__version__ = "0.1.0"

__all__ = [
    "HubPushError",
    "LOSSES",
    "LabelSmoothingLoss",
    "MaxSupLoss",
    "MaxSupLossFunc",
    "MaxSupSeq2SeqTrainer",
    "MaxSupSeq2SeqTrainingArguments",
    "MaxSupTrainer",
    "MaxSupTrainingArguments",
    "alpha_at",
    "cross_entropy",
    "get_loss_fn",
    "label_smoothing_cross_entropy",
    "load_for_analysis",
    "maxsup_cross_entropy",
]
