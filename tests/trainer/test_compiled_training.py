"""MaxSupTrainer with `torch_compile=True`: the same training as eager, the in-place gradient kept where nothing
else reads the logits, never where the compiled graph saved them, and `loss_inplace_backward=False` to turn it off."""

import pytest
import torch
from _tiny import COMMON, collate, tiny_bert, tiny_dataset

from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments, kernels

FUSED_LOSS = kernels.fused_loss


class LogSoftmaxHead(torch.nn.Module):
    """A classifier whose last op (log_softmax) saves its output for its backward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = torch.nn.EmbeddingBag(50, 16), torch.nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask=None, labels=None):
        return {"logits": torch.log_softmax(self.head(self.embed(input_ids)), -1)}


def train(model, tmp_path, monkeypatch, **kwargs):
    """3 SGD steps; the parameters, the logged losses and, per training call of the loss, whether it ran in place."""
    calls = []

    def spy(logits, target, **options):
        calls.append(options["inplace_backward"])
        return FUSED_LOSS(logits, target, **options)

    monkeypatch.setattr(kernels, "fused_loss", spy)
    args = MaxSupTrainingArguments(
        output_dir=str(tmp_path / str(sorted(kwargs.items()))),
        loss="maxsup",
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=0.5,
        optim="sgd",
        logging_steps=1,
        **kwargs,
        **COMMON,
    )
    trainer = MaxSupTrainer(model=model, args=args, train_dataset=tiny_dataset(12), data_collator=collate)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    return params, losses, calls


def assert_same_training(a, b):
    params, losses, _ = a
    other_params, other_losses, _ = b
    assert other_losses == pytest.approx(losses, rel=1e-6)
    for name, value in params.items():
        torch.testing.assert_close(other_params[name.removeprefix("_orig_mod.")], value, rtol=1e-5, atol=1e-6)


def test_a_compiled_model_whose_last_op_saves_its_output_trains_as_eager(tmp_path, monkeypatch):
    """The compiled graph saved its log_softmax output: the loss must not overwrite it (this crashed with
    "modified by an inplace operation ... CompiledFunction")."""
    eager = train(LogSoftmaxHead(), tmp_path, monkeypatch)
    compiled = train(LogSoftmaxHead(), tmp_path, monkeypatch, torch_compile=True)
    assert eager[2] == compiled[2] == [False, False, False]
    assert_same_training(eager, compiled)


def test_a_compiled_bert_trains_as_eager_with_the_gradient_in_place(tmp_path, monkeypatch):
    """A linear head saves nothing: compiled training keeps the in-place gradient, and equals eager over 3 steps."""
    eager = train(tiny_bert(), tmp_path, monkeypatch)
    compiled = train(tiny_bert(), tmp_path, monkeypatch, torch_compile=True)
    assert eager[2] == compiled[2] == [True, True, True]
    assert_same_training(eager, compiled)


def test_loss_inplace_backward_false_keeps_the_logits(tmp_path, monkeypatch):
    in_place = train(tiny_bert(), tmp_path, monkeypatch)
    kept = train(tiny_bert(), tmp_path, monkeypatch, loss_inplace_backward=False)
    assert kept[2] == [False, False, False]
    assert_same_training(in_place, kept)
