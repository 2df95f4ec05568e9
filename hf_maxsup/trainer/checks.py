"""What the loss needs of a model and of its Trainer, checked before training: a single-label classifier or a
language model, outputs that carry `logits`, and the labels handed over under the batch's `labels` key. Every
trainer of hf_maxsup ([`MaxSupTrainer`], [`~hf_maxsup.trainer.apply_maxsup`], trl's `MaxSupSFTTrainer`) runs them.
"""

from __future__ import annotations

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from .. import heads
from ..auto import is_causal_lm, unwrap_peft

__all__ = [
    "check_fused_linear_loss",
    "check_label_names",
    "check_labels_to_shift",
    "check_student",
    "missing_logits_message",
]


def check_student(model) -> None:
    """Refuses the models MaxSup and LS do not apply to (regression, multi-label, fewer than two classes) and a
    transformers model set to return tuples, whose logits the loss cannot find.

    Args:
        model (`nn.Module`): the model to train (PEFT-wrapped or not), or `None` (a `model_init` builds it later).

    Raises:
        `ValueError`: naming the setting to change.
    """
    config = getattr(model, "config", None)
    if getattr(config, "problem_type", None) in ("regression", "multi_label_classification"):
        raise ValueError(
            f"problem_type={config.problem_type!r}: MaxSup and label smoothing apply to single-label "
            "classification; train this model with transformers.Trainer."
        )
    generative = getattr(config, "is_encoder_decoder", False) or is_causal_lm(model)
    if config is not None and not generative and getattr(config, "num_labels", 2) < 2:
        raise ValueError(
            f"the model has num_labels={config.num_labels}: with fewer than 2 classes the softmax is 1 for every "
            "input, so ce, ls and maxsup are 0 and nothing is learnt. Give the model one output per class "
            "(num_labels=K >= 2, e.g. from_pretrained(..., num_labels=K)) and data with at least two classes; for "
            "regression set problem_type='regression' and use transformers.Trainer."
        )
    if getattr(config, "return_dict", True) is False:
        raise ValueError(
            f"{type(unwrap_peft(model)).__name__} has config.return_dict=False, so it returns tuples and the loss "
            "cannot find its `logits`. Set model.config.return_dict = True (or load the model without "
            "return_dict=False)."
        )


def check_label_names(trainer) -> None:
    """Refuses a Trainer that would not hand the labels to the loss: the Trainer gives a `compute_loss_func` the
    batch's `labels` only, and keeps a column for the model only if the model's forward or `label_names` names it.

    Args:
        trainer (`transformers.Trainer`): after `Trainer.__init__`, which settles `trainer.label_names` (the
            arguments' `label_names`, or the label arguments of the model's forward).

    Raises:
        `ValueError`: saying whether to rename a label column or to set `label_names=["labels"]`.
    """
    if "labels" in trainer.label_names:
        return
    given = trainer.args.label_names
    if given:
        raise ValueError(
            f"label_names={given!r}: the loss reads the labels from the batch's `labels`, the one key a Trainer "
            f"hands to its loss function. Name the column `labels` (e.g. dataset.rename_column({given[0]!r}, "
            "'labels')) and leave label_names unset (or set label_names=['labels'])."
        )
    model = unwrap_peft(trainer.model)
    raise ValueError(
        f"{type(model).__name__}.forward takes no `labels`, so the Trainer would drop the batch's labels "
        "(remove_unused_columns) and evaluate without them. Set label_names=['labels'] in the training arguments: "
        "the loss then takes them, and the model is called without them."
    )


def check_fused_linear_loss(trainer) -> None:
    """With `args.fused_linear_loss`, refuses a model whose head [`hf_maxsup.heads`] does not know, and the engines
    that shard the head's weight.

    Args:
        trainer (`transformers.Trainer`): after `Trainer.__init__` (the model built, the engine known).

    Raises:
        `ValueError`: saying to set `fused_linear_loss=False`, or which engine to train with.
    """
    if not trainer.args.fused_linear_loss:
        return
    heads.output_head(trainer.model)
    if trainer.is_fsdp_enabled or is_deepspeed_zero3_enabled():
        raise ValueError(
            "fused_linear_loss reads the output head's weight after the head's forward, when FSDP and DeepSpeed "
            "ZeRO-3 have sharded it again. Train with DDP or ZeRO-1/2, or set fused_linear_loss=False."
        )


def check_labels_to_shift(labels: torch.Tensor) -> None:
    """Refuses `shift_labels=True` on one label per example: the shift would give each example the next one's label.

    Raises:
        `ValueError`: the labels are 1-D (a classifier's), naming the fix.
    """
    if labels.dim() < 2:
        raise ValueError(
            f"shift_labels=True shifts each sequence's labels by one token (causal language models), but these "
            f"labels are one per example (shape {tuple(labels.shape)}): each example would be trained on the next "
            "one's label. Leave shift_labels=False for a classifier."
        )


def missing_logits_message(outputs) -> str:
    """What to change when a model's `outputs` hold no `logits` for the loss (a tuple, a tensor, another key)."""
    if isinstance(outputs, (tuple, list, torch.Tensor)):
        return (
            f"the model returned a {type(outputs).__name__}, not a dict or ModelOutput with `logits`. Return "
            "{'logits': ...} from your module's forward; a transformers model: set model.config.return_dict = True."
        )
    keys = ", ".join(outputs.keys()) if isinstance(outputs, dict) else type(outputs).__name__
    return (
        f"the model output has no `logits` (it has: {keys}). MaxSup and LS regularise the classifier's "
        "logits: use a model with a task head (AutoModelForSequenceClassification, "
        "AutoModelForImageClassification, AutoModelForSeq2SeqLM, ...)."
    )
