"""Trainer subclasses that train with MaxSup or label smoothing, and the loss callable they share.

- `config`: [`LossConfig`], the loss settings with every default and every check;
- `loss_arguments`: [`LossArguments`], the loss settings as fields (the recipes' loss flags), without torch;
- `arguments`: [`MaxSupTrainingArguments`], [`MaxSupSeq2SeqTrainingArguments`] (`TrainingArguments` with them);
- `loss_func`: [`MaxSupLossFunc`], the loss as a `compute_loss_func` and a callback driving alpha, for any Trainer;
- `teacher`: the teacher of a distillation, loaded and checked;
- `trainer`: [`MaxSupTrainer`], [`MaxSupSeq2SeqTrainer`].

`MaxSupTrainer` is a drop-in `transformers.Trainer`: the loss is chosen with `MaxSupTrainingArguments(loss=...,
loss_alpha=...)`. Users of other `Trainer` subclasses (trl's, their own) get the same loss from [`MaxSupLossFunc`]:

```python
loss_fn = MaxSupLossFunc("maxsup", alpha=0.1, alpha_end=0.2)
trainer = Trainer(model, args, compute_loss_func=loss_fn, callbacks=[loss_fn], ...)
```

Distillation: `MaxSupTrainingArguments(teacher_model_name_or_path=..., distill_alpha=..., distill_temperature=...)`,
or `MaxSupTrainer(..., teacher=model)`, adds the teacher's soft targets to that loss (see [`MaxSupTrainer`]).
"""

from ..lazy import lazy_exports

# The modules of this package and their public names, imported on first use: `loss_arguments` and `config` (the
# recipes' loss flags, read by their `--help`) without torch.
_EXPORTS = {
    "arguments": ("MaxSupSeq2SeqTrainingArguments", "MaxSupTrainingArguments"),
    "config": ("LossConfig",),
    "loss_arguments": ("LossArguments",),
    "loss_func": ("MaxSupLossFunc",),
    "trainer": ("MaxSupSeq2SeqTrainer", "MaxSupTrainer"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
