"""What the loss needs of a model and of its Trainer, refused before training with the argument to change (#23.19:
`label_names=["target"]`, a model returning tuples, an `nn.Module` without `labels`; #22.5: `shift_labels=True` on a
classifier's labels)."""

import pytest
import torch
from _tiny import COMMON, VOCAB, collate, tiny_bert, tiny_dataset
from torch import nn

from hf_maxsup import MaxSupLossFunc, MaxSupTrainer, MaxSupTrainingArguments


def args(tmp_path, **kwargs):
    return MaxSupTrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=4, logging_steps=1, **COMMON, **kwargs
    )


class Pooled(nn.Module):
    """A classifier of our own: its forward takes no labels, and returns a dict with logits (or a tuple)."""

    def __init__(self, as_tuple=False):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head, self.as_tuple = nn.Embedding(VOCAB, 8), nn.Linear(8, 4), as_tuple

    def forward(self, input_ids, attention_mask=None):
        logits = self.head(self.embed(input_ids).mean(1))
        return (logits,) if self.as_tuple else {"logits": logits}


def test_labels_under_another_name_are_refused_before_training(tmp_path):
    data = tiny_dataset(8).rename_column("labels", "target")
    with pytest.raises(ValueError, match=r"label_names=\['target'\].*rename_column\('target', 'labels'\)"):
        MaxSupTrainer(model=tiny_bert(), args=args(tmp_path, label_names=["target"]), train_dataset=data)


def test_a_model_returning_tuples_is_refused_before_training(tmp_path):
    model = tiny_bert()
    model.config.return_dict = False
    with pytest.raises(ValueError, match=r"config.return_dict=False.*Set model.config.return_dict = True"):
        MaxSupTrainer(model=model, args=args(tmp_path), train_dataset=tiny_dataset(8), data_collator=collate)


def test_a_module_without_labels_in_its_forward(tmp_path):
    data = dict(train_dataset=tiny_dataset(8), eval_dataset=tiny_dataset(8, seed=1), data_collator=collate)
    with pytest.raises(ValueError, match=r"Pooled.forward takes no `labels`.*Set label_names=\['labels'\]"):
        MaxSupTrainer(model=Pooled(), args=args(tmp_path), **data)
    trainer = MaxSupTrainer(model=Pooled(), args=args(tmp_path, label_names=["labels"]), **data)
    trainer.train()
    assert {"eval_loss", "eval_ce", "eval_reg"} <= set(trainer.evaluate())
    tuples = MaxSupTrainer(model=Pooled(as_tuple=True), args=args(tmp_path, label_names=["labels"]), **data)
    with pytest.raises(ValueError, match=r"returned a tuple, not a dict or ModelOutput.*Return \{'logits': ...\}"):
        tuples.train()


def test_shifting_one_label_per_example_is_refused():
    loss_fn = MaxSupLossFunc("ce", shift_labels=True)
    with pytest.raises(ValueError, match=r"one per example \(shape \(3,\)\).*Leave shift_labels=False"):
        loss_fn({"logits": torch.randn(3, 4)}, torch.tensor([0, 1, 2]))
    assert loss_fn({"logits": torch.randn(2, 3, 4)}, torch.tensor([[0, 1, 2], [3, 2, 1]])) > 0  # sequences: shifted
