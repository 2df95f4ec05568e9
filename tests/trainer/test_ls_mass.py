"""`loss_ls_mass`: fairseq's / tensor2tensor's label smoothing through the trainer, its logits and fused paths, the
argument checks and the model card."""

import pytest
import torch
from _tiny import collate, tiny_bert, tiny_dataset
from huggingface_hub import ModelCard

from hf_maxsup import MaxSupLossFunc, MaxSupTrainer, MaxSupTrainingArguments
from hf_maxsup.heads import LinearHeadInputs

COMMON = dict(report_to=[], use_cpu=True, seed=0, max_grad_norm=0.0, save_strategy="no", disable_tqdm=True)
ALPHA = 0.2


def fairseq_label_smoothed_nll(logits, target, epsilon, ignore_index=-100):
    """fairseq's `label_smoothed_nll_loss` written out, averaged over the kept items: `1 - epsilon` on the target and
    `epsilon / (K - 1)` on each other class."""
    lprobs = torch.log_softmax(logits.double(), dim=-1)
    keep = target != ignore_index
    lprobs, target = lprobs[keep], target[keep]
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    return ((1.0 - epsilon - eps_i) * nll + eps_i * smooth).mean()


def first_step_gradients(tmp_path, mass):
    args = MaxSupTrainingArguments(
        output_dir=str(tmp_path / mass),
        loss="ls",
        loss_alpha=ALPHA,
        loss_ls_mass=mass,
        max_steps=1,
        per_device_train_batch_size=8,
        learning_rate=0.0,
        **COMMON,
    )
    grads = {}

    def capture(module, *_):
        grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer = MaxSupTrainer(model=tiny_bert(), args=args, train_dataset=tiny_dataset(8), data_collator=collate)
    trainer.create_optimizer()
    trainer.optimizer.register_step_pre_hook(capture)
    trainer.train()
    return trainer, grads


def test_others_mass_trains_with_fairseqs_gradient(tmp_path):
    trainer, grads = first_step_gradients(tmp_path, "others")
    model, batch = tiny_bert(), collate(list(tiny_dataset(8)))
    labels = batch.pop("labels")
    fairseq_label_smoothed_nll(model(**batch).logits, labels, ALPHA).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-7)
    _, grads_all = first_step_gradients(tmp_path, "all")
    assert not torch.allclose(grads_all["classifier.weight"], grads["classifier.weight"])

    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "others" / "README.md")
    assert card.data.hf_maxsup["ls_mass"] == "others"
    assert "as in fairseq and tensor2tensor" in card.text and "smoothing mass on the other classes" in card.text


def test_linear_loss_path_takes_the_mass_too():
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(2, 5, 8), torch.randn(11, 8), torch.randn(11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = -100
    loss_fn = MaxSupLossFunc("ls", alpha=ALPHA, ls_mass="others")
    from_logits = loss_fn({"logits": hidden @ weight.T + bias}, labels)
    fused = loss_fn.linear_loss(LinearHeadInputs(hidden, weight, bias), labels)
    reference = fairseq_label_smoothed_nll(hidden @ weight.T + bias, labels, ALPHA)
    torch.testing.assert_close(from_logits.double(), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.double(), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss="ls", loss_ls_mass="target"), "unknown loss_ls_mass 'target'; valid values: all, others"),
        (dict(loss="maxsup", loss_ls_mass="others"), "applies to loss='ls' only"),
        (dict(loss="ce", loss_ls_mass="others"), "applies to loss='ls' only"),
    ],
)
def test_bad_mass_is_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        MaxSupTrainingArguments(output_dir=str(tmp_path), **kwargs)
