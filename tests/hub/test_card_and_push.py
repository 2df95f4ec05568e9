"""Model card, Hub push and reloading: real MaxSupTrainer runs; the Hub is replaced at the HTTP boundary only."""

import functools
import logging
import os

import pytest
import torch
from _hub import COMMON, NUM_LABELS, FakeHub, make_trainer
from _tiny import collate, tiny_bert, tiny_dataset, tiny_marian
from huggingface_hub import ModelCard, constants, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification

from hf_maxsup import (
    MaxSupSeq2SeqTrainer,
    MaxSupSeq2SeqTrainingArguments,
)
from hf_maxsup.hub import HubPushError, load_for_analysis
from hf_maxsup.metrics import classification_compute_metrics


@functools.cache
def classification_metrics():
    return classification_compute_metrics()  # once: loading the evaluate modules takes seconds


class RecordingMetrics:
    """hf_maxsup's classification metrics, remembering which names they returned."""

    def __init__(self):
        self.compute, self.names = classification_metrics(), set()

    def __call__(self, eval_pred):
        metrics = self.compute(eval_pred)
        self.names = set(metrics)
        return metrics


@pytest.fixture
def compute_metrics():
    return RecordingMetrics()


def logits_of(model):
    batch = collate(list(tiny_dataset(8, NUM_LABELS, seed=2)))
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits


def final_eval_metrics(trainer, compute_metrics):
    """The metrics of the last evaluation, as the Trainer logged them."""
    last = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry][-1]
    return {name: last[f"eval_{name}"] for name in compute_metrics.names}


@pytest.mark.parametrize(
    "loss, kwargs, expected",
    [
        ("ce", {}, None),
        ("ls", {"loss_alpha": 0.15}, {"alpha": 0.15, "alpha_end": 0.15, "alpha_schedule": "constant"}),
        ("maxsup", {}, {"alpha": 0.1, "alpha_end": 0.2, "alpha_schedule": "linear"}),
        (
            "maxsup",
            {"loss_alpha": 0.05, "loss_alpha_end": 0.3},
            {"alpha": 0.05, "alpha_end": 0.3, "alpha_schedule": "linear"},
        ),
    ],
)
def test_card_round_trips_metrics_and_names_the_loss(loss, kwargs, expected, tmp_path, compute_metrics):
    trainer = make_trainer(tmp_path, compute_metrics, loss=loss, **kwargs)
    trainer.create_model_card(dataset="Tiny", dataset_tags="user/tiny", language="en", license="apache-2.0")
    trainer.train()
    (tmp_path / "reliability_diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    trainer.save_model()

    metrics = final_eval_metrics(trainer, compute_metrics)
    assert {"accuracy", "top5_accuracy", "ece", "adaptive_ece", "classwise_ece", "nll", "brier", "aurc"} <= set(metrics)
    card = ModelCard.load(tmp_path / "README.md")
    _, results = model_index_to_eval_results(metadata_load(tmp_path / "README.md")["model-index"])
    assert {result.metric_type: result.metric_value for result in results} == metrics
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in results} == {
        ("text-classification", "user/tiny", "Tiny")
    }
    data = card.data
    assert data.library_name == "transformers" and data.datasets == ["user/tiny"] and data.license == "apache-2.0"
    assert data.hf_maxsup == ({"loss": loss} if expected is None else {"loss": loss, **expected})
    tag = {"ce": None, "ls": "label-smoothing", "maxsup": "maxsup"}[loss]
    assert "hf_maxsup" in data.tags and ({"maxsup", "label-smoothing"} & set(data.tags)) == ({tag} - {None})
    if expected is not None:
        assert (
            f"| `{loss}` | {expected['alpha']} | {expected['alpha_end']} | {expected['alpha_schedule']} |" in card.text
        )
    assert "![Reliability diagram" in card.text and "(reliability_diagram.png)" in card.text
    assert "@inproceedings{zhou2025maxsup" in card.text and "2502.15798" in card.text
    assert "## Intended uses & limitations" in card.text and "AutoModelForSequenceClassification" in card.text

    # The checkpoint written during training has its own card, with the arguments given before training.
    checkpoint_card = ModelCard.load(tmp_path / "checkpoint-2" / "README.md")
    assert checkpoint_card.data.datasets == ["user/tiny"] and checkpoint_card.data.eval_results
    assert "reliability_diagram.png" not in checkpoint_card.text  # it is not in that folder


@pytest.mark.parametrize(
    "loss, kwargs, row",
    [
        # linear from 0.1 to 0.2, at step 3 of 10: 0.1 + (0.2 - 0.1) * 3 / 10; at step 10: the end value
        ("maxsup", {}, {3: "| `maxsup` | 0.1 | 0.2 | linear | 0.13 (step 3 of 10) |", 10: "| 0.2 (step 10 of 10) |"}),
        (
            "ls",
            {"loss_alpha": 0.15},
            {3: "| `ls` | 0.15 | 0.15 | constant | 0.15 (step 3 of 10) |", 10: "| 0.15 (step 10 of 10) |"},
        ),
    ],
)
def test_card_gives_alpha_at_the_checkpoint_step(loss, kwargs, row, tmp_path):
    """Each saved card gives the schedule's value at its own step, not the start value (expectations by hand)."""
    trainer = make_trainer(
        tmp_path, loss=loss, max_steps=10, eval_strategy="no", save_steps=3, logging_steps=10, **kwargs
    )
    trainer.train()
    trainer.save_model()
    assert row[3] in ModelCard.load(tmp_path / "checkpoint-3" / "README.md").text
    assert row[10] in ModelCard.load(tmp_path / "README.md").text


def test_seq2seq_card_names_the_task_and_translation_metrics(tmp_path):
    def translation_metrics(eval_pred):
        return {"bleu": 12.5, "chrf": 30.25}

    def trained(output_dir, **kwargs):
        """A tiny Marian trained one step with LS, then evaluated."""
        args = MaxSupSeq2SeqTrainingArguments(
            output_dir=str(output_dir),
            loss="ls",
            max_steps=1,
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="no",
            **kwargs,
            **COMMON,
        )
        trainer = MaxSupSeq2SeqTrainer(
            model=tiny_marian(),
            args=args,
            train_dataset=tiny_dataset(8, task="seq2seq"),
            eval_dataset=tiny_dataset(4, task="seq2seq"),
            data_collator=collate,
            compute_metrics=translation_metrics,
        )
        trainer.train()
        return trainer

    trainer = trained(tmp_path)
    trainer.create_model_card(tasks="translation", dataset="Tiny en-fr")
    card = ModelCard.load(tmp_path / "README.md")
    assert {
        (r.task_type, r.dataset_type, r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results
    } == {
        ("translation", "Tiny_en-fr", "Tiny en-fr", "bleu", 12.5),
        ("translation", "Tiny_en-fr", "Tiny en-fr", "chrf", 30.25),
    }
    assert card.data.pipeline_tag == "translation" and "AutoModelForSeq2SeqLM" in card.text
    assert "ECE variants" not in card.text  # the note on calibration metrics only comes with them

    # Generating, the Seq2SeqTrainer's eval_loss is the model's own token NLL: a metric, recorded as such.
    trainer = trained(tmp_path / "gen", predict_with_generate=True, generation_max_length=8)
    eval_loss = next(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h)
    trainer.create_model_card(tasks="translation", dataset="Tiny en-fr")
    metrics = {r.metric_type: r.metric_value for r in ModelCard.load(tmp_path / "gen" / "README.md").data.eval_results}
    assert metrics == {"bleu": 12.5, "chrf": 30.25, "nll": eval_loss}


def test_push_uploads_model_processor_card_and_metrics(tmp_path, serve, compute_metrics):
    fake_hub = serve(FakeHub())
    trainer = make_trainer(
        tmp_path, compute_metrics, loss="maxsup", push_to_hub=True, hub_model_id="user/model", hub_token="x"
    )
    train_metrics = trainer.train().metrics
    trainer.save_metrics("train", train_metrics)
    trainer.save_metrics("eval", trainer.evaluate())
    trainer.save_state()
    (tmp_path / "reliability_diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    trainer.push_to_hub(dataset="Tiny")

    checkpoint_push, final_push = fake_hub.commits
    assert checkpoint_push["summary"] == "Training in progress, step 2"
    assert "README.md" in checkpoint_push["files"]  # the card is refreshed before each checkpoint push
    assert final_push["summary"] == "End of training"
    assert set(final_push["files"]) == {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "all_results.json",
        "eval_results.json",
        "train_results.json",
        "trainer_state.json",
        "reliability_diagram.png",
    }
    assert (tmp_path / "training_args.bin").exists()  # written, but a pickle: not uploaded
    for name, content in final_push["files"].items():
        assert content == (tmp_path / name).read_bytes(), name
    card = ModelCard(final_push["files"]["README.md"].decode())
    assert card.data.model_name == "model" and "maxsup" in card.data.tags
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == final_eval_metrics(
        trainer, compute_metrics
    )
    assert '"user/model"' in card.text  # the how-to-use snippet names the repo
    assert fake_hub.authorizations == {"Bearer x"}


@pytest.mark.parametrize("failure", ["offline", "unreachable", "no_token"])
def test_push_without_hub_keeps_the_trained_model(failure, tmp_path, serve, monkeypatch, caplog):
    if failure == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        expected = "HF_HUB_OFFLINE is set"
    elif failure == "unreachable":
        serve(FakeHub("unreachable"))
        expected = "could not be reached"
    else:
        serve(FakeHub("unauthorized"))
        expected = "hf auth login"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with caplog.at_level(logging.WARNING, logger="hf_maxsup.trainer"):
        trainer = make_trainer(
            tmp_path / "out",
            loss="maxsup",
            push_to_hub=True,
            hub_model_id="user/model",
            hub_token=None if failure == "no_token" else "x",
        )
    assert "Could not create the Hugging Face Hub repository 'user/model'" in caplog.text
    trainer.train()
    with pytest.raises(HubPushError, match="Could not push") as error:
        trainer.save_model()  # what the recipes call at the end; it pushes when push_to_hub=True

    message = str(error.value)
    assert expected in message and "--push_to_hub False" in message
    assert f"hf upload user/model {tmp_path / 'out'}" in message
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-2"):
        assert {"model.safetensors", "config.json", "README.md"} <= set(os.listdir(folder))
        reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
        torch.testing.assert_close(logits_of(reloaded), logits_of(trainer.model))


def test_checkpoint_reloads_with_auto_class_from_safetensors_only(tmp_path):
    trainer = make_trainer(tmp_path, loss="ls")
    trainer.train()
    trainer.save_model()
    expected = logits_of(trainer.model)
    for folder in (tmp_path, tmp_path / "checkpoint-2"):
        files = set(os.listdir(folder))
        assert "model.safetensors" in files
        # training_args.bin is the Trainer's pickled arguments, not weights; no weights are pickled.
        assert not {name for name in files if name.endswith((".bin", ".pt", ".pth"))} - {
            "training_args.bin",
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
        }
        assert not any(name.startswith("pytorch_model") for name in files)
        for model in (
            AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True),
            load_for_analysis(str(folder)),
        ):
            assert type(model).__name__ == "BertForSequenceClassification" and not model.training
            torch.testing.assert_close(logits_of(model), expected)


def test_peft_adapter_card_keeps_peft_fields_and_reloads(tmp_path, compute_metrics):
    tiny_bert(NUM_LABELS).save_pretrained(tmp_path / "base")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    model = get_peft_model(
        base,
        LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    trainer = make_trainer(tmp_path / "adapter", compute_metrics, model=model, loss="maxsup", learning_rate=0.05)
    trainer.train()
    trainer.save_model()

    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == str(tmp_path / "base")
    assert {"lora", f"base_model:adapter:{tmp_path / 'base'}", "hf_maxsup", "maxsup"} <= set(card.data.tags)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == final_eval_metrics(
        trainer, compute_metrics
    )
    assert "PEFT adapter" in card.text and "- peft " in card.text

    expected = logits_of(trainer.model)
    untrained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    assert not torch.allclose(expected, logits_of(untrained))  # so that reloading the base alone would fail below
    for reloaded in (
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapter"),
        load_for_analysis(str(tmp_path / "adapter")),
    ):
        torch.testing.assert_close(logits_of(reloaded), expected)


def test_sample_counts_are_not_metrics(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.state.log_history = [
        {"eval_accuracy": 0.9, "eval_samples": 1200, "eval_ce": 1.0, "eval_runtime": 3.0, "step": 1}
    ]
    trainer.create_model_card()
    results = ModelCard.load(tmp_path / "README.md").data.eval_results
    assert [(r.metric_type, r.metric_value) for r in results] == [("accuracy", 0.9)]
