"""`TrainingArguments` and `Seq2SeqTrainingArguments` with the loss settings ([`LossArguments`]): each a field (hence
a recipe flag), checked by [`~hf_maxsup.trainer.LossConfig`] when the arguments are created."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .loss_arguments import LossArguments

__all__ = ["MaxSupSeq2SeqTrainingArguments", "MaxSupTrainingArguments"]


@dataclass
class MaxSupTrainingArguments(LossArguments, TrainingArguments):
    """`TrainingArguments` plus the loss: `loss` (`"ce"`, `"ls"`, `"maxsup"`), `loss_alpha`, `loss_alpha_end`,
    `loss_alpha_schedule` (`"linear"` or `"constant"`) and `loss_ls_mass` (`"all"` or `"others"`, label smoothing
    only), checked when the arguments are created,
    `fused_linear_loss` (compute the loss of a language model's head without its logits, see [`hf_maxsup.heads`]),
    `loss_inplace_backward` (the gradient written over the logits where nothing else reads them; default True),
    and distillation: `teacher_model_name_or_path`, `distill_alpha` (the weight beta >= 0 of the distillation term,
    0.5 by default with a teacher) and `distill_temperature` (T > 0, default 2.0).
    """


@dataclass
class MaxSupSeq2SeqTrainingArguments(LossArguments, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the loss fields of [`MaxSupTrainingArguments`]."""
