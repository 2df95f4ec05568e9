"""trl's `SFTTrainer` with our loss, `MaxSupSFTTrainer`: one forward pass per step (a forward hook counts them), the
loss of the `compute_loss_func` path, trl's metrics, alpha's schedule and the components, fused and unfused alike,
on a tiny Llama with `completion_only_loss`."""

import os
import subprocess
import sys

import pytest
import torch
from test_other_trainers import COMMON, check_alpha_and_components, prompt_completion, tiny_llama, tiny_tokenizer

from hf_maxsup import MaxSupLossFunc

trl = pytest.importorskip("trl")
from hf_maxsup import MaxSupSFTConfig, MaxSupSFTTrainer  # noqa: E402 (needs trl)
from hf_maxsup.trainer.trl import token_statistics  # noqa: E402

# float32 (SFTConfig's default is bf16 autocast, whose rounding of the logits would hide a 1e-6 difference).
EXACT = dict(COMMON, bf16=False, completion_only_loss=True, max_length=32)
TRL_METRICS = ("entropy", "mean_token_accuracy", "num_tokens")


def train(kind, tmp_path, fused=False, **overrides):
    """Trains a tiny Llama 4 steps with `kind` ("ours", "loss_func": SFTTrainer + MaxSupLossFunc, "trl": trl's own
    loss); returns the train logs, the backbone's forwards per step, the labels the loss saw, and the trainer."""
    model = tiny_llama()
    forwards = []
    model.model.register_forward_hook(lambda module, args, output: forwards.append(torch.is_grad_enabled()))
    common = dict(output_dir=str(tmp_path / f"{kind}-{fused}"), **{**EXACT, **overrides})
    data = dict(train_dataset=prompt_completion(), eval_dataset=prompt_completion(8), processing_class=tiny_tokenizer())
    if kind == "ours":
        trainer = MaxSupSFTTrainer(model, args=MaxSupSFTConfig(fused_linear_loss=fused, **common), **data)
    else:
        loss_fn = MaxSupLossFunc("maxsup", shift_labels=True)
        extra = dict(compute_loss_func=loss_fn, callbacks=[loss_fn]) if kind == "loss_func" else {}
        trainer = trl.SFTTrainer(model, args=trl.SFTConfig(**common), **data, **extra)
    labels = []
    loss_func = trainer.compute_loss_func
    if loss_func is not None:  # the Trainer calls its compute_loss_func attribute: record the labels it is given

        def recording(outputs, target, num_items_in_batch=None):
            labels.append(target.clone())
            return loss_func(outputs, target, num_items_in_batch)

        trainer.compute_loss_func = recording
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logs, len(forwards) / trainer.state.global_step, labels, trainer


def test_one_forward_per_step_and_the_loss_of_the_loss_func_path(tmp_path):
    ours, ours_forwards, labels, trainer = train("ours", tmp_path)
    reference, reference_forwards, _, _ = train("loss_func", tmp_path)
    _, trl_forwards, _, _ = train("trl", tmp_path)
    assert ours_forwards == trl_forwards == 1
    assert reference_forwards == 2  # trl's compute_loss_func path: one with grad, one without
    for key in ("loss", "ce", "reg", "alpha", *TRL_METRICS):
        assert [entry[key] for entry in ours] == pytest.approx([entry[key] for entry in reference], rel=1e-6), key
    check_alpha_and_components(trainer.state.log_history)
    # completion only: the prompt's 5 words are masked in the labels the loss receives
    assert labels and all((batch[:, :5] == -100).all() and (batch[:, 5:] != -100).any() for batch in labels)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_ce", "eval_reg", "eval_alpha", "eval_entropy", "eval_mean_token_accuracy"} <= set(
        metrics
    )


def test_trl_metrics_are_trls(tmp_path):
    """On the first step (same weights, same batch) entropy and token accuracy equal trl's own; ce is trl's NLL."""
    ours, *_ = train("ours", tmp_path)
    trls, *_ = train("trl", tmp_path)
    for key in TRL_METRICS:
        assert ours[0][key] == pytest.approx(trls[0][key], rel=1e-5), key
    assert ours[0]["ce"] == pytest.approx(trls[0]["loss"], rel=1e-5)
    assert [entry["num_tokens"] for entry in ours] == [entry["num_tokens"] for entry in trls]


def test_fused_and_unfused_give_the_same_loss(tmp_path):
    unfused, _, _, unfused_trainer = train("ours", tmp_path)
    fused, fused_forwards, _, fused_trainer = train("ours", tmp_path, fused=True)
    assert fused_forwards == 1
    for key in ("loss", "ce", "reg", "alpha", *TRL_METRICS):
        assert [entry[key] for entry in fused] == pytest.approx([entry[key] for entry in unfused], rel=1e-5), key
    timings = ("runtime", "per_second")
    evaluations = [
        {key: value for key, value in trainer.evaluate().items() if not key.endswith(timings)}
        for trainer in (fused_trainer, unfused_trainer)
    ]
    assert evaluations[0] == pytest.approx(evaluations[1], rel=1e-5)


def test_token_statistics_from_the_head_equal_those_from_the_logits():
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(2, 6, 8), torch.randn(11, 8), torch.randn(11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :3] = -100
    logits = torch.nn.functional.linear(hidden, weight, bias)
    head = type("Head", (), {"weight": weight, "bias": bias})
    count, entropy, correct = token_statistics(logits, labels)
    kept = labels[:, 1:] != -100
    probs = logits[:, :-1].softmax(-1)[kept]
    assert count == kept.sum()
    assert entropy == pytest.approx(-(probs * probs.log()).sum().item(), rel=1e-5)
    assert correct == (logits[:, :-1].argmax(-1) == labels[:, 1:])[kept].sum()
    from_head = token_statistics(hidden, labels, head)
    assert [value.item() for value in from_head] == pytest.approx([count.item(), entropy.item(), correct.item()])


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(loss_type="dft"), "loss_type='dft' is trl's own loss"),
        (dict(teacher_model_name_or_path="teacher"), "MaxSupSFTTrainer does not distil"),
        (dict(distill_alpha=0.5), "MaxSupSFTTrainer does not distil"),
        (dict(label_smoothing_factor=0.1), "Use loss='ls', loss_alpha=0.1"),
        (dict(loss="ls", loss_alpha=1.5), r"loss_alpha must be in \[0, 1\)"),
    ],
)
def test_config_refusals(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        MaxSupSFTConfig(output_dir=str(tmp_path), **{**EXACT, **settings})


def test_trainer_refusals(tmp_path):
    data = dict(train_dataset=prompt_completion(), processing_class=tiny_tokenizer())
    with pytest.raises(TypeError, match="needs MaxSupSFTConfig"):
        MaxSupSFTTrainer(tiny_llama(), args=trl.SFTConfig(output_dir=str(tmp_path), **EXACT), **data)
    args = MaxSupSFTConfig(output_dir=str(tmp_path), **EXACT)
    with pytest.raises(ValueError, match="use trl's SFTTrainer to pass your own"):
        MaxSupSFTTrainer(tiny_llama(), args=args, compute_loss_func=MaxSupLossFunc(), **data)
    model = tiny_llama()
    model.config.return_dict = False
    with pytest.raises(ValueError, match="Set model.config.return_dict = True"):
        MaxSupSFTTrainer(model, args=args, **data)
    with pytest.raises(ValueError, match="label_names=\\['target'\\]"):
        MaxSupSFTTrainer(tiny_llama(), args=MaxSupSFTConfig(str(tmp_path), label_names=["target"], **EXACT), **data)


def test_importing_hf_maxsup_does_not_import_trl():
    code = (
        "import sys, hf_maxsup, hf_maxsup.trainer\n"
        "from hf_maxsup import MaxSupTrainer, apply_maxsup\n"
        "print('trl' in sys.modules)\n"
        "from hf_maxsup import MaxSupSFTTrainer\n"
        "print('trl' in sys.modules)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["False", "True"]
