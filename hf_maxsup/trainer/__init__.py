"""Trainer subclasses that train with MaxSup or label smoothing, and the loss callable they share.

- `config`: [`LossConfig`], the loss settings with every default and every check;
- `loss_arguments`: [`LossArguments`], the loss settings as fields (the recipes' loss flags), without torch;
- `arguments`: [`MaxSupTrainingArguments`], [`MaxSupSeq2SeqTrainingArguments`] (`TrainingArguments` with them);
- `loss_func`: [`MaxSupLossFunc`], the loss as a `compute_loss_func` and a callback driving alpha, for any Trainer;
- `checks`: what the loss needs of a model and of its Trainer, checked before training;
- `teacher`: the teacher of a distillation, loaded and checked;
- `trainer`: [`MaxSupTrainer`], [`MaxSupSeq2SeqTrainer`];
- `apply`: [`apply_maxsup`], the same loss for an existing `transformers.Trainer`, in one line;
- `trl`: [`MaxSupSFTConfig`], [`MaxSupSFTTrainer`], trl's `SFTTrainer` with the loss (imported on first use: trl is
  an optional dependency).

`MaxSupTrainer` is a drop-in `transformers.Trainer`: the loss is chosen with `MaxSupTrainingArguments(loss=...,
loss_alpha=...)`. An existing `Trainer` script switches with one line, `apply_maxsup(trainer, loss="maxsup")`; users of
other `Trainer` subclasses get the same loss from [`MaxSupLossFunc`]:

```python
loss_fn = MaxSupLossFunc("maxsup", alpha=0.1, alpha_end=0.2)
trainer = Trainer(model, args, compute_loss_func=loss_fn, callbacks=[loss_fn], ...)
```

Distillation: `MaxSupTrainingArguments(teacher_model_name_or_path=..., distill_alpha=..., distill_temperature=...)`,
or `MaxSupTrainer(..., teacher=model)`, adds the teacher's soft targets to that loss (see [`MaxSupTrainer`]).
"""

from ..lazy import lazy_exports

# The modules of this package and their public names, imported on first use: `loss_arguments` and `config` (the
# recipes' loss flags, read by their `--help`) without torch, `trl` only when trl's trainer is asked for (an optional
# dependency).
_EXPORTS = {
    "apply": ("apply_maxsup",),
    "arguments": ("MaxSupSeq2SeqTrainingArguments", "MaxSupTrainingArguments"),
    "config": ("LossConfig",),
    "loss_arguments": ("LossArguments",),
    "loss_func": ("MaxSupLossFunc",),
    "trainer": ("MaxSupSeq2SeqTrainer", "MaxSupTrainer"),
    "trl": ("MaxSupSFTConfig", "MaxSupSFTTrainer"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
