"""Distillation in MaxSupTrainer: exact gradient accumulation and data parallelism with a teacher, the gradient against
a float64 formula, a student checkpoint without the teacher, the model card, and bad settings."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from _env import ROOT, TINY_RUN, run_one_and_two_processes
from _reference import per_item
from _tiny import collate, tiny_bert, tiny_dataset, tiny_marian
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import HfArgumentParser, TrainerCallback

from hf_maxsup import MaxSupSeq2SeqTrainer, MaxSupSeq2SeqTrainingArguments, MaxSupTrainer, MaxSupTrainingArguments

COMMON = dict(report_to=[], use_cpu=True, seed=0, max_grad_norm=0.0, save_strategy="no", disable_tqdm=True)
BETA, T = 0.7, 3.0


class GradCapture(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def models(task):
    """(student, teacher) of the task: different initialisations, so the teacher's targets are not the student's."""
    if task == "seq2seq":
        return tiny_marian(seed=0), tiny_marian(seed=1)
    return tiny_bert(token_level=True, seed=0), tiny_bert(token_level=True, seed=1)


def one_step_gradients(task, batch_size, accumulation, tmp_path):
    seq2seq = task == "seq2seq"
    student, teacher = models(task)
    args_cls, trainer_cls = (
        (MaxSupSeq2SeqTrainingArguments, MaxSupSeq2SeqTrainer) if seq2seq else (MaxSupTrainingArguments, MaxSupTrainer)
    )
    args = args_cls(
        output_dir=str(tmp_path / f"{batch_size}x{accumulation}"),
        loss="maxsup",
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        distill_alpha=BETA,
        distill_temperature=T,
        **COMMON,
    )
    capture = GradCapture()
    trainer = trainer_cls(
        model=student,
        args=args,
        train_dataset=tiny_dataset(8, task=task),
        data_collator=collate,
        callbacks=[capture],
        teacher=teacher,
    )
    trainer.train()
    assert not trainer.teacher.training and all(p.grad is None for p in trainer.teacher.parameters())
    return capture.grads


def reference_gradients(task, alpha=0.1):
    """The gradient of the mean over kept items of maxsup + beta T^2 KL(teacher_T || student_T), in float64."""
    student, teacher = models(task)
    batch = collate(list(tiny_dataset(8, task=task)))
    labels = batch.pop("labels")
    if task == "seq2seq":
        batch["decoder_input_ids"] = student.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = student(**batch).logits
    with torch.no_grad():
        teacher_logits = teacher(**batch).logits
    items, keep = per_item("maxsup", logits, labels, alpha)
    log_p = F.log_softmax(teacher_logits.double() / T, -1).reshape(-1, logits.shape[-1])
    log_q = F.log_softmax(logits.double() / T, -1).reshape(-1, logits.shape[-1])
    kl = torch.where(keep, (log_p.exp() * (log_p - log_q)).sum(-1), 0.0)
    ((items + BETA * T**2 * kl).sum() / keep.sum()).backward()
    return {n: p.grad for n, p in student.named_parameters() if p.grad is not None}


def max_relative_error(a, b):
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-12)).item() for n in b if b[n].norm() > 1e-8)


@pytest.mark.parametrize("task", ["token", "seq2seq"])
def test_gradient_accumulation_with_teacher_is_exact(task, tmp_path):
    full = one_step_gradients(task, 8, 1, tmp_path)
    accumulated = one_step_gradients(task, 2, 4, tmp_path)
    assert set(full) == set(accumulated)
    assert max_relative_error(accumulated, full) < 1e-5
    assert max_relative_error(full, reference_gradients(task)) < 1e-5


def test_two_processes_match_one_with_teacher(tmp_path):
    """A teacher loaded from teacher_model_name_or_path in each process: same losses and parameters on 1 and 2."""
    tiny_bert(token_level=True, seed=1).save_pretrained(tmp_path / "teacher")
    outputs = run_one_and_two_processes(TINY_RUN, tmp_path, "--teacher", str(tmp_path / "teacher"), "--max_steps", "2")
    logs = {name: json.load(open(output / "logs.json")) for name, output in outputs.items()}
    assert all("distill" in entry for entry in logs["one"])
    torch.testing.assert_close(
        torch.tensor([e["loss"] for e in logs["two"]]),
        torch.tensor([e["loss"] for e in logs["one"]]),
        rtol=1e-5,
        atol=1e-6,
    )
    one, two = (torch.load(outputs[name] / "params.pt") for name in ("one", "two"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


def test_checkpoint_holds_no_teacher_and_card_records_it(tmp_path):
    tiny_bert(seed=1).save_pretrained(tmp_path / "teacher")
    args = MaxSupTrainingArguments(
        output_dir=str(tmp_path / "student"),
        loss="ls",
        max_steps=2,
        logging_steps=1,
        per_device_train_batch_size=8,
        eval_strategy="steps",
        eval_steps=2,
        teacher_model_name_or_path=str(tmp_path / "teacher"),
        distill_temperature=4.0,
        **{**COMMON, "save_strategy": "steps"},
        save_steps=2,
    )
    student = tiny_bert(seed=0)
    trainer = MaxSupTrainer(
        model=student, args=args, train_dataset=tiny_dataset(16), eval_dataset=tiny_dataset(8), data_collator=collate
    )
    trainer.train()
    trainer.save_model()
    expected = set(student.state_dict())
    for folder in (tmp_path / "student", tmp_path / "student" / "checkpoint-2"):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            assert set(f.keys()) <= expected and len(set(f.keys())) >= len(expected) - 1  # tied weights stored once
    assert "teacher" not in {name.split(".")[0] for name, _ in student.named_modules()}
    logged = [entry for entry in trainer.state.log_history if "distill" in entry or "eval_distill" in entry]
    assert logged and all(entry.get("distill", entry.get("eval_distill")) >= 0 for entry in logged)
    card = ModelCard.load(tmp_path / "student" / "README.md")
    assert card.data.hf_maxsup_distillation == {"teacher": "teacher", "alpha": 0.5, "temperature": 4.0}
    assert card.data.hf_maxsup["loss"] == "ls"  # the loss's own record is unchanged (resume checks compare it)
    assert "from teacher, distill_alpha 0.5, temperature 4.0" in card.text
    assert "distill" not in {result.metric_type for result in card.data.eval_results or []}


def test_recipe_flags():
    (args,) = HfArgumentParser(MaxSupTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "x", "--teacher_model_name_or_path", "runs/ce", "--distill_temperature", "3"]
    )
    assert (args.teacher_model_name_or_path, args.distill_alpha, args.distill_temperature) == ("runs/ce", 0.5, 3.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(distill_alpha=-0.1), "distill_alpha .* must be a number >= 0"),
        (dict(distill_temperature=0.0), "distill_temperature must be > 0"),
        (dict(teacher_model_name_or_path="t", fused_linear_loss=True), "fused_linear_loss"),
    ],
)
def test_bad_arguments(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        MaxSupTrainingArguments(output_dir=str(tmp_path), **settings, **COMMON)


def test_bad_teachers(tmp_path):
    tiny_bert(num_labels=3, seed=1).save_pretrained(tmp_path / "three_classes")
    tiny_marian().save_pretrained(tmp_path / "marian")

    def trainer(teacher=None, **settings):
        args = MaxSupTrainingArguments(output_dir=str(tmp_path / "run"), **settings, **COMMON)
        return MaxSupTrainer(
            model=tiny_bert(), args=args, train_dataset=tiny_dataset(8), data_collator=collate, teacher=teacher
        )

    with pytest.raises(ValueError, match="distill_alpha=0.3 but no teacher"):
        trainer(distill_alpha=0.3)
    with pytest.raises(ValueError, match="could not load it with AutoModelForSequenceClassification"):
        trainer(teacher_model_name_or_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="could not load it with AutoModelForSequenceClassification"):
        trainer(teacher_model_name_or_path=str(tmp_path / "marian"))
    with pytest.raises(ValueError, match="the teacher has 3 classes .* and the student 4"):
        trainer(teacher_model_name_or_path=str(tmp_path / "three_classes"))
    with pytest.raises(ValueError, match="both teacher= and teacher_model_name_or_path"):
        trainer(teacher=tiny_bert(), teacher_model_name_or_path=str(tmp_path / "three_classes"))


def test_zero3_is_refused(tmp_path):
    pytest.importorskip("deepspeed")
    config = os.path.join(ROOT, "recipes", "configs", "ds_zero3.json")
    args = MaxSupTrainingArguments(output_dir=str(tmp_path), deepspeed=config, **COMMON)
    with pytest.raises(ValueError, match="ZeRO-3 is not supported"):
        MaxSupTrainer(
            model=tiny_bert(),
            args=args,
            train_dataset=tiny_dataset(8),
            data_collator=collate,
            teacher=tiny_bert(seed=1),
        )
