"""MaxSup, LS or CE for an existing `transformers.Trainer` script, in one line:

```python
trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
hf_maxsup.apply_maxsup(trainer, loss="maxsup", alpha=0.1)  # linear 0.1 -> 0.2, as MaxSupTrainer
trainer.train()
```

Like transformers' `use_liger_kernel` (applied to a model in `Trainer.__init__`), it changes what the trainer computes,
not the script: the trainer gets a [`~hf_maxsup.trainer.MaxSupLossFunc`] as its `compute_loss_func` (so the Trainer
counts `num_items_in_batch` over the accumulated batch, as it does for [`~hf_maxsup.trainer.MaxSupTrainer`]) and as
its first callback (so alpha follows its schedule and the logged components reach the console, `report_to` and the
log history). Unlike setting `model.loss_function`, it serves every model with `logits`, whether or not its forward
calls `loss_function` (Marian's does not), and drives alpha's schedule.
"""

from __future__ import annotations

from transformers import DataCollatorForSeq2Seq, Trainer

from ..auto import is_causal_lm, unwrap_peft
from .checks import check_label_names, check_student
from .config import LossConfig, check_label_smoothing_factor
from .loss_func import MaxSupLossFunc

__all__ = ["apply_maxsup"]


def apply_maxsup(
    trainer: Trainer,
    loss: str = LossConfig.loss,
    alpha: float = LossConfig.alpha,
    alpha_end: float | None = None,
    schedule: str | None = None,
    ls_mass: str = LossConfig.ls_mass,
) -> MaxSupLossFunc:
    """Makes `trainer` train with MaxSup, label smoothing or cross-entropy: the loss, gradients, alpha schedule and
    logged components (`ce`, `reg`, `alpha`, ...) of [`~hf_maxsup.trainer.MaxSupTrainer`] with these settings.

    Args:
        trainer (`transformers.Trainer`): a `Trainer` or `Seq2SeqTrainer`, before training.
        loss (`str`, *optional*, defaults to `"maxsup"`): `"ce"`, `"ls"` or `"maxsup"`.
        alpha, alpha_end, schedule, ls_mass: as in [`~hf_maxsup.trainer.LossConfig`] (alpha 0.1 rising linearly to
            0.2 for MaxSup by default).

    Returns:
        [`~hf_maxsup.trainer.MaxSupLossFunc`]: the loss the trainer now uses (causal LMs get their labels shifted).

    Raises:
        `TypeError`: `trainer` is not a `transformers.Trainer`.
        `ValueError`: a trainer or model this cannot serve, each naming what to use instead: a trainer that already
            has a loss function or computes its loss itself (trl's `SFTTrainer`), an encoder-decoder whose collator
            does not give the decoder inputs, `label_smoothing_factor > 0`, labels not under `labels`, and the
            models [`~hf_maxsup.trainer.MaxSupTrainer`] refuses too; bad loss settings (see `LossConfig`).
    """
    _check_trainer(trainer)
    model = trainer.model
    check_student(model)
    check_label_names(trainer)
    check_label_smoothing_factor(trainer.args.label_smoothing_factor)
    _check_decoder_inputs(model, trainer.data_collator)
    loss_fn = MaxSupLossFunc(loss, alpha, alpha_end, schedule, shift_labels=is_causal_lm(model), ls_mass=ls_mass)
    # The progress the callback would have set at the trainer's creation (0 before training).
    loss_fn.on_step_begin(trainer.args, trainer.state, trainer.control)
    trainer.compute_loss_func = loss_fn
    # First, not appended: its on_log adds the components to the logs the printer and report_to callbacks then see.
    trainer.callback_handler.callbacks.insert(0, loss_fn)
    return loss_fn


def _check_trainer(trainer) -> None:
    """Refuses the trainers whose loss a `compute_loss_func` would not set."""
    if not isinstance(trainer, Trainer):
        raise TypeError(f"apply_maxsup takes a transformers.Trainer, got {type(trainer).__name__}.")
    name = type(trainer).__name__
    if isinstance(trainer.compute_loss_func, MaxSupLossFunc):
        raise ValueError(
            f"this {name} already trains with a MaxSupLossFunc: set the loss there (MaxSupTrainingArguments' loss, "
            "loss_alpha, ...) rather than applying a second one."
        )
    if trainer.compute_loss_func is not None:
        raise ValueError(
            f"this {name} already has a compute_loss_func ({type(trainer.compute_loss_func).__name__}), which "
            "apply_maxsup would replace. Build the Trainer without it, or use MaxSupTrainer."
        )
    if type(trainer).compute_loss is not Trainer.compute_loss:
        if any(cls.__name__ == "SFTTrainer" for cls in type(trainer).__mro__):
            raise ValueError(
                f"{name} computes its loss itself (trl's SFTTrainer): use hf_maxsup's MaxSupSFTTrainer with "
                "MaxSupSFTConfig(loss=..., loss_alpha=...) instead, one forward per step and trl's metrics kept."
            )
        raise ValueError(
            f"{name} overrides compute_loss, which may not call the compute_loss_func apply_maxsup sets. Derive it "
            "from MaxSupTrainer (with MaxSupTrainingArguments(loss=..., loss_alpha=...)) instead of Trainer."
        )


def _check_decoder_inputs(model, data_collator) -> None:
    """Refuses an encoder-decoder that would get no decoder inputs: with a `compute_loss_func`, the Trainer removes
    the labels from the batch before the forward, so the model cannot derive its decoder inputs from them."""
    base = unwrap_peft(model)
    if not getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return
    if isinstance(data_collator, DataCollatorForSeq2Seq) and data_collator.model is not None:
        return  # DataCollatorForSeq2Seq(model=...) adds decoder_input_ids to every batch
    raise ValueError(
        f"{type(base).__name__} derives its decoder inputs from the labels, which the Trainer takes out of the batch "
        "before the forward when it has a loss function: use MaxSupSeq2SeqTrainer (it derives them), or give the "
        "Trainer DataCollatorForSeq2Seq(tokenizer, model=model), which puts decoder_input_ids in each batch."
    )
