"""MaxSupTrainer: exact gradient accumulation, multi-process equivalence, resume, logging and bad configurations."""

import json

import pytest
import torch
from _env import TINY_RUN, run_one_and_two_processes
from _reference import IGN, misclassified, per_item
from _tiny import COMMON, GradCapture, collate, max_relative_error, tiny_bert, tiny_dataset, tiny_gpt2, tiny_marian
from transformers import Trainer, TrainingArguments

from hf_maxsup import (
    MaxSupLossFunc,
    MaxSupSeq2SeqTrainer,
    MaxSupSeq2SeqTrainingArguments,
    MaxSupTrainer,
    MaxSupTrainingArguments,
    kernels,
)

FUSED_LOSS = kernels.fused_loss


def one_step_gradients(task, loss, batch_size, accumulation, tmp_path):
    seq2seq = task == "seq2seq"
    model = tiny_marian() if seq2seq else tiny_bert()
    args_cls, trainer_cls = (
        (MaxSupSeq2SeqTrainingArguments, MaxSupSeq2SeqTrainer) if seq2seq else (MaxSupTrainingArguments, MaxSupTrainer)
    )
    args = args_cls(
        output_dir=str(tmp_path / f"{batch_size}x{accumulation}"),
        loss=loss,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        **COMMON,
    )
    capture = GradCapture()
    trainer_cls(
        model=model, args=args, train_dataset=tiny_dataset(8, task=task), data_collator=collate, callbacks=[capture]
    ).train()
    return capture.grads


def reference_gradients(task, loss, alpha=0.1):
    """The gradient of the mean loss over all kept items of the 8 examples, from the float64 reference formula."""
    model = tiny_marian() if task == "seq2seq" else tiny_bert()
    batch = collate(list(tiny_dataset(8, task=task)))
    labels = batch.pop("labels")
    if task == "seq2seq":
        batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(**batch).logits
    items, keep = per_item(loss, logits, labels, alpha)
    (items.sum() / keep.sum()).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task", ["sequence", "seq2seq"])
@pytest.mark.parametrize("loss", ["ce", "ls", "maxsup"])
def test_gradient_accumulation_is_exact(task, loss, tmp_path):
    full = one_step_gradients(task, loss, 8, 1, tmp_path)
    accumulated = one_step_gradients(task, loss, 2, 4, tmp_path)
    assert set(full) == set(accumulated)
    assert max_relative_error(accumulated, full) < 1e-5
    assert max_relative_error(full, reference_gradients(task, loss)) < 1e-5


def test_two_processes_match_one(tmp_path):
    """Same global batch on 1 process and on 2 (DDP on CPU, gloo): same losses and parameters after 3 steps."""
    outputs = run_one_and_two_processes(TINY_RUN, tmp_path)
    logs = {name: json.load(open(output / "logs.json")) for name, output in outputs.items()}
    assert [entry["epoch"] for entry in logs["one"]] == [entry["epoch"] for entry in logs["two"]]
    # ce and reg are logged as averages of per-process means, which differ from the global mean: only diagnostics.
    for key in ("loss", "alpha"):
        torch.testing.assert_close(
            torch.tensor([e[key] for e in logs["two"]]),
            torch.tensor([e[key] for e in logs["one"]]),
            rtol=1e-5,
            atol=1e-6,
        )
    one, two = (torch.load(outputs[name] / "params.pt") for name in ("one", "two"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


def test_resume_reproduces_alpha_and_parameters(tmp_path):
    def run(output_dir, resume=None):
        args = MaxSupTrainingArguments(
            output_dir=str(output_dir),
            loss="maxsup",
            max_steps=4,
            logging_steps=1,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            **{**COMMON, "save_strategy": "steps"},
            save_steps=2,
        )
        trainer = MaxSupTrainer(
            model=tiny_bert(seed=1), args=args, train_dataset=tiny_dataset(32), data_collator=collate
        )
        trainer.train(resume_from_checkpoint=resume)
        alphas = {e["step"]: e["alpha"] for e in trainer.state.log_history if "alpha" in e}
        return alphas, {k: v.clone() for k, v in trainer.model.state_dict().items()}

    alphas, params = run(tmp_path / "full")
    assert alphas == pytest.approx({1: 0.1, 2: 0.125, 3: 0.15, 4: 0.175})
    resumed_alphas, resumed_params = run(tmp_path / "full", resume=str(tmp_path / "full" / "checkpoint-2"))
    # Steps 1-2 come from the checkpoint's log history, steps 3-4 were computed after resuming.
    assert resumed_alphas == alphas
    for name in params:
        torch.testing.assert_close(resumed_params[name], params[name], rtol=1e-6, atol=1e-8)


def test_logs_components_and_eval_metrics(tmp_path):
    args = MaxSupTrainingArguments(
        output_dir=str(tmp_path),
        loss="ls",
        loss_alpha=0.2,
        max_steps=4,
        logging_steps=2,
        per_device_train_batch_size=4,
        **COMMON,
    )
    trainer = MaxSupTrainer(
        model=tiny_bert(),
        args=args,
        train_dataset=tiny_dataset(16),
        eval_dataset=tiny_dataset(8, seed=1),
        data_collator=collate,
    )
    trainer.train()
    metrics = trainer.evaluate()
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(train_logs) == 2
    for entry in train_logs:
        assert entry["alpha"] == 0.2
        # The logged loss is the average objective of the window: CE + alpha * reg.
        assert entry["loss"] == pytest.approx(entry["ce"] + 0.2 * entry["reg"], rel=1e-4)
        assert entry["reg"] == pytest.approx(entry["ls_regularization"] + entry["ls_error_amplification"], abs=1e-5)
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_ce"] + 0.2 * metrics["eval_reg"], rel=1e-4)


def _misclassified_fraction(logits, labels):
    keep = labels.reshape(-1) != IGN
    return float((misclassified(logits, labels) & keep).sum() / keep.sum())


def test_logs_the_misclassified_fraction_per_logging_window(tmp_path, monkeypatch):
    """Logged as `misclassified` (and `eval_misclassified`): the mean over the window's calls of each call's fraction,
    as the trainer's LossComponents average every component."""
    fractions = []

    def spy(logits, target, **options):
        fractions.append((torch.is_grad_enabled(), _misclassified_fraction(logits, target)))
        return FUSED_LOSS(logits, target, **options)

    monkeypatch.setattr(kernels, "fused_loss", spy)
    args = MaxSupTrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, logging_steps=2, **COMMON
    )
    trainer = MaxSupTrainer(
        model=tiny_bert(), args=args, train_dataset=tiny_dataset(16), eval_dataset=tiny_dataset(8, seed=1),
        data_collator=collate,
    )  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    train = [f for grad, f in fractions if grad]
    logged = [entry["misclassified"] for entry in trainer.state.log_history if "misclassified" in entry]
    assert logged == pytest.approx([sum(train[0:2]) / 2, sum(train[2:4]) / 2], abs=1e-6)
    evaluated = [f for grad, f in fractions if not grad]
    assert metrics["eval_misclassified"] == pytest.approx(sum(evaluated) / len(evaluated), abs=1e-6)


def test_loss_func_for_a_plain_trainer(tmp_path):
    loss_fn = MaxSupLossFunc("maxsup", alpha=0.1, alpha_end=0.3)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, **COMMON)
    trainer = Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=tiny_dataset(8),
        data_collator=collate,
        compute_loss_func=loss_fn,
        callbacks=[loss_fn],
    )
    trainer.train()
    assert loss_fn.current_alpha() == pytest.approx(0.2)  # progress 1/2 at the start of the last step
    # the components of the last window, added by the loss callback to the Trainer's own log
    assert {"ce", "reg", "alpha"} <= set(trainer.state.log_history[-1])

    orphan = MaxSupLossFunc("maxsup")
    trainer = Trainer(
        model=tiny_bert(), args=args, train_dataset=tiny_dataset(8), data_collator=collate, compute_loss_func=orphan
    )
    with pytest.raises(ValueError, match=r"callbacks=\[loss_fn\]"):
        trainer.train()


def test_causal_lm_labels_are_shifted(tmp_path):
    model = tiny_gpt2()
    args = MaxSupTrainingArguments(output_dir=str(tmp_path), loss="ce", **COMMON)
    trainer = MaxSupTrainer(model=model, args=args)
    batch = {"input_ids": torch.randint(0, 50, (3, 7))}
    batch["labels"] = batch["input_ids"].clone()
    batch["labels"][0, 4:] = -100
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        theirs = model(**batch).loss  # transformers' own shifted cross-entropy
    torch.testing.assert_close(ours, theirs)


def test_peft_wrapped_model_trains(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"]))
    args = MaxSupTrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, logging_steps=1, **COMMON
    )
    capture = GradCapture()
    MaxSupTrainer(
        model=model, args=args, train_dataset=tiny_dataset(8), data_collator=collate, callbacks=[capture]
    ).train()
    assert capture.grads and all("lora" in name or "classifier" in name for name in capture.grads)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss="maxsupp"), "unknown loss 'maxsupp'; valid names: ce, ls, maxsup"),
        (dict(loss_alpha=1.0), "loss_alpha must be in [0, 1)"),
        (dict(loss_alpha=-0.1), "loss_alpha must be in [0, 1)"),
        (dict(loss_alpha_end=1.2), "loss_alpha_end must be in [0, 1)"),
        (dict(loss_alpha_schedule="cosine"), "unknown loss_alpha_schedule 'cosine'"),
        (dict(loss="ls", loss_alpha_schedule="constant", loss_alpha_end=0.3), "use the linear schedule"),
        (dict(loss="ls", label_smoothing_factor=0.1), "Use loss='ls', loss_alpha=0.1"),
        (dict(loss="ce", label_smoothing_factor=0.1), "leave label_smoothing_factor at 0"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, message, tmp_path):
    with pytest.raises(ValueError) as error:
        MaxSupTrainingArguments(output_dir=str(tmp_path), **kwargs)
    assert message in str(error.value)


def test_schedule_defaults_follow_the_loss(tmp_path):
    assert MaxSupTrainingArguments(output_dir=str(tmp_path), loss="maxsup").loss_alpha_schedule == "linear"
    assert MaxSupTrainingArguments(output_dir=str(tmp_path), loss="ls").loss_alpha_schedule == "constant"


def test_trainer_misuse_gets_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="needs MaxSupTrainingArguments"):
        MaxSupTrainer(model=tiny_bert(), args=TrainingArguments(output_dir=str(tmp_path)))
    args = MaxSupTrainingArguments(output_dir=str(tmp_path), **COMMON)
    with pytest.raises(ValueError, match="use transformers.Trainer to pass your own"):
        MaxSupTrainer(model=tiny_bert(), args=args, compute_loss_func=lambda *a, **k: 0)
    regression = tiny_bert(num_labels=1)
    regression.config.problem_type = "regression"
    with pytest.raises(ValueError, match="single-label classification"):
        MaxSupTrainer(model=regression, args=args)
    with pytest.raises(ValueError, match="has no `logits`"):
        MaxSupLossFunc("ce")({"last_hidden_state": torch.zeros(1)}, torch.zeros(1, dtype=torch.long))


def test_inplace_gradient_is_skipped_when_autograd_needs_the_logits():
    """exp saves its output for backward: overwriting it with the gradient would make backward fail."""
    loss_fn = MaxSupLossFunc("maxsup", alpha=0.1, schedule="constant")
    loss_fn.inplace_backward = True
    x = torch.randn(64, 1200, requires_grad=True)
    labels = torch.randint(0, 1200, (64,))
    loss_fn({"logits": x.exp()}, labels).backward()
    reference = x.detach().clone().requires_grad_()
    (
        torch.nn.functional.cross_entropy(reference.exp(), labels)
        + 0.1 * (reference.exp().max(-1).values - reference.exp().mean(-1)).mean()
    ).backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_follows_a_linear_schedule_over_steps(tmp_path):
    """2 micro-batches of 4 vs 1 batch of 8, 3 SGD steps with alpha rising linearly: same alphas, same parameters."""

    def run(batch_size, accumulation):
        args = MaxSupTrainingArguments(
            output_dir=str(tmp_path / f"{batch_size}x{accumulation}"),
            loss="maxsup",
            loss_alpha=0.1,
            loss_alpha_end=0.4,
            max_steps=3,
            logging_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=0.5,
            optim="sgd",
            dataloader_drop_last=True,
            **COMMON,
        )
        trainer = MaxSupTrainer(
            model=tiny_bert(token_level=True),
            args=args,
            train_dataset=tiny_dataset(24, task="token"),
            data_collator=collate,
        )
        trainer.train()
        alphas = [e["alpha"] for e in trainer.state.log_history if "alpha" in e]
        return alphas, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    alphas, params = run(8, 1)
    accumulated_alphas, accumulated_params = run(4, 2)
    assert alphas == pytest.approx([0.1, 0.2, 0.3]) and accumulated_alphas == pytest.approx(alphas)
    for name in params:
        torch.testing.assert_close(accumulated_params[name], params[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(params[name], v) for name, v in tiny_bert(token_level=True).state_dict().items())


def test_training_steps_run_in_place_and_evaluation_does_not(tmp_path, monkeypatch):
    from hf_maxsup import kernels

    calls = []
    fused_loss = kernels.fused_loss

    def spy(logits, target, **kwargs):
        calls.append((torch.is_grad_enabled(), kwargs["inplace_backward"]))
        return fused_loss(logits, target, **kwargs)

    monkeypatch.setattr(kernels, "fused_loss", spy)
    args = MaxSupTrainingArguments(
        output_dir=str(tmp_path), loss="maxsup", max_steps=2, per_device_train_batch_size=4, **COMMON
    )
    trainer = MaxSupTrainer(
        model=tiny_bert(),
        args=args,
        train_dataset=tiny_dataset(8),
        eval_dataset=tiny_dataset(8, seed=1),
        data_collator=collate,
    )
    trainer.train()
    trainer.evaluate()
    assert [inplace for grad, inplace in calls if grad] == [True, True]
    assert calls[2:] and all(not grad and not inplace for grad, inplace in calls[2:])
