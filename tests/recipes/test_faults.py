"""Issue 23's faults of the recipes: nothing lost, nothing silently wrong (items 1, 9, 10, 11, 17, 18), and the
crashes that became messages (items 14, 15, 16). Each test names its item; docs/reliability.md lists them."""

import errno
import json
import logging
import os
import re
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from _runs import TINY, run_recipe
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import save_file
from transformers import Trainer

from hf_maxsup import MaxSupTrainingArguments
from hf_maxsup.arguments import ImageDataArguments, ImageModelArguments, RunArguments
from hf_maxsup.runner import last_complete_checkpoint
from hf_maxsup.runner.checkpoint_files import damaged_files
from hf_maxsup.runner.output_dir import resolve_resume
from hf_maxsup.runner.parse import parse_args

IMAGE, TEXT = "image_classification", "text_classification"


def images(root, classes=("circle", "square"), n=12):
    for c, label in enumerate(classes):
        os.makedirs(root / label, exist_ok=True)
        for i in range(n):
            Image.new("L", (28, 28), color=(20 * i + 90 * c) % 256).save(root / label / f"{i}.png")
    return root


def image_run(tmp_path, out, *extra):
    folder = tmp_path / "images"
    if not folder.exists():
        images(folder)
    return ["--train_dir", str(folder), "--output_dir", str(out), *TINY, "--per_device_train_batch_size", "4", *extra]


def csv(path, labels, header="text,label"):
    rows = "".join(f"{'good' if i % 2 else 'bad'} movie {i},{label}\n" for i, label in enumerate(labels))
    path.write_text(f"{header}\n{rows}", encoding="utf-8")
    return str(path)


def text_run(out, *extra):
    return ["--output_dir", str(out), *TINY, *extra]


# Item 1: an evaluation-only run into a finished run's folder.
def test_an_eval_only_run_evaluates_the_saved_model_and_overwrites_nothing_unasked(tmp_path):
    out = tmp_path / "run"
    run_recipe(IMAGE, *image_run(tmp_path, out, "--do_train", "--do_eval", "--loss", "ce", "--max_steps", "4"))
    trained = json.loads((out / "eval_results.json").read_text())
    kept = {name: (out / name).read_bytes() for name in ("eval_results.json", "all_results.json", "README.md")}
    with pytest.raises(
        ValueError, match=r"holds results \(eval_results.json, all_results.json\).*--overwrite_output_dir"
    ):
        run_recipe(IMAGE, *image_run(tmp_path, out, "--do_eval", "--loss", "ce"))
    assert kept == {name: (out / name).read_bytes() for name in kept}

    run_recipe(IMAGE, *image_run(tmp_path, out, "--do_eval", "--loss", "ce", "--overwrite_output_dir"))
    again = json.loads((out / "eval_results.json").read_text())
    assert again["eval_accuracy"] == trained["eval_accuracy"]  # the trained model, not a new one
    assert again["eval_nll"] == pytest.approx(trained["eval_nll"], rel=1e-5)
    assert (out / "README.md").read_bytes() == kept["README.md"]  # the card of the training run stays
    assert "train_loss" in json.loads((out / "all_results.json").read_text())

    copy = shutil.copytree(out, tmp_path / "copy")
    with pytest.raises(ValueError, match=r"holds a trained model, but this run evaluates --model_name_or_path"):
        run_recipe(IMAGE, *image_run(tmp_path, out, "--do_eval", "--model_name_or_path", str(copy)))
    three = images(tmp_path / "three", classes=("circle", "square", "star"))
    with pytest.raises(ValueError, match=r"trained on the labels \['circle', 'square'\].*'star'"):
        run_recipe(
            IMAGE,
            *image_run(tmp_path, tmp_path / "other", "--do_eval", "--model_name_or_path", str(copy)),
            "--train_dir",
            str(three),
        )


def test_an_eval_only_run_into_an_unfinished_run_is_refused(tmp_path):
    out = tmp_path / "run"
    os.makedirs(out / "checkpoint-3")
    with pytest.raises(ValueError, match=r"unfinished run .*untrained model.*--model_name_or_path .*checkpoint-3"):
        run_recipe(IMAGE, *image_run(tmp_path, out, "--do_eval"))
    assert not [name for name in os.listdir(out) if name.endswith(".json")]


# Item 9: resuming with another length.
def test_resuming_with_another_length_is_refused_or_recorded(tmp_path):
    out = tmp_path / "run"
    run_recipe(IMAGE, *image_run(tmp_path, out, "--do_train", "--loss", "maxsup", "--max_steps", "4",
                                 "--save_strategy", "steps", "--save_steps", "1"))  # fmt: skip
    resume = ["--do_train", "--loss", "maxsup", "--resume_from_checkpoint", str(out / "checkpoint-2")]
    with pytest.raises(
        ValueError,
        match=r"trained toward 4 steps.*step 2 alpha was 0.15 .*toward 8 steps, so alpha would go on from "
        r"0.125.*--max_steps 4.*--allow_loss_change",
    ):
        run_recipe(IMAGE, *image_run(tmp_path, out, *resume, "--max_steps", "8"))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4  # nothing trained
    run_recipe(IMAGE, *image_run(tmp_path, out, *resume, "--max_steps", "8", "--allow_loss_change"))
    history = ModelCard.load(out / "README.md").data.to_dict()["hf_maxsup"]["history"]
    assert [(entry["from_step"], entry["max_steps"]) for entry in history] == [(0, 4), (2, 8)]
    # Resumed again with the new length: nothing to refuse, the history is kept.
    run_recipe(IMAGE, *image_run(tmp_path, out, *resume[:-1], str(out / "checkpoint-6"), "--max_steps", "8"))
    assert ModelCard.load(out / "README.md").data.to_dict()["hf_maxsup"]["history"] == history


# Item 10: the one-class check looks at the training split the model sees.
@pytest.mark.parametrize(
    "train, validation, expected",
    [
        (["pos"] * 20, ["pos", "neg"] * 4, r"1 class \(pos\) in the training split"),
        (["pos", "neg"], None, r"1 class \((pos|neg)\) in the training split .*--train_val_split"),
    ],
)
def test_one_class_in_the_training_split_is_refused(train, validation, expected, tmp_path):
    files = ["--train_file", csv(tmp_path / "train.csv", train)]
    if validation:
        files += ["--validation_file", csv(tmp_path / "validation.csv", validation)]
    with pytest.raises(ValueError, match=expected):
        run_recipe(TEXT, *text_run(tmp_path / "run", "--do_train", *files))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


# Item 11: a label only the evaluation data has, and "do_eval": "no" in a config file.
def test_a_label_only_the_evaluation_data_has_is_refused(tmp_path):
    files = ["--train_file", csv(tmp_path / "train.csv", ["pos", "neg"] * 10)]
    files += ["--validation_file", csv(tmp_path / "validation.csv", ["pos", "neg", "neutral", "neg"])]
    with pytest.raises(
        ValueError, match=r"split 'validation' holds label\(s\) 'neutral' that the training split lacks"
    ):
        run_recipe(TEXT, *text_run(tmp_path / "run", "--do_train", *files))
    validation = images(tmp_path / "validation", classes=("circle", "square", "star"), n=2)
    with pytest.raises(ValueError, match=r"--validation_dir .* class folder\(s\) star that --train_dir .* lacks"):
        run_recipe(IMAGE, *image_run(tmp_path, tmp_path / "run", "--do_train", "--validation_dir", str(validation)))


def test_do_eval_no_in_a_config_file_runs_no_evaluation(tmp_path):
    images(tmp_path / "images")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"train_dir: {tmp_path / 'images'}\noutput_dir: {tmp_path / 'run'}\ndo_train: yes\ndo_eval: no\n"
        "max_train_samples: 8\nper_device_train_batch_size: 4\nreport_to: none\nuse_cpu: true\n"
    )
    run_recipe(IMAGE, str(config))
    assert not (tmp_path / "run" / "eval_results.json").exists()
    assert "eval_accuracy" not in json.loads((tmp_path / "run" / "all_results.json").read_text())


# Item 16: config values read as the command line reads their text, or named.
@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("c.json", {"max_steps": "2"}, {"max_steps": 2}),
        ("c.json", {"do_eval": "no", "eval_strategy": "no"}, {"do_eval": False}),
        ("c.yaml", "learning_rate: 1e-3\nsave_strategy: no\n", {"learning_rate": 0.001, "save_strategy": "no"}),
        ("c.json", {"max_steps": "abc"}, r"max_steps: 'abc' is not a valid value \(int\).*invalid int value"),
        ("c.json", {"max_steps": [1]}, r"max_steps: \[1\] is a list, but max_steps takes one value \(int\)"),
        ("c.json", {"max_steps": 2.7}, r"max_steps: 2.7 is not a valid value \(int\)"),
        ("c.json", {"save_strategy": False}, r"save_strategy: False is not a valid value .*invalid choice: 'false'"),
    ],
)
def test_config_values_are_read_as_the_command_line_reads_them(name, content, expected, tmp_path, monkeypatch):
    config = tmp_path / name
    config.write_text(content if isinstance(content, str) else json.dumps({"output_dir": str(tmp_path), **content}))
    monkeypatch.setattr(sys, "argv", ["recipe", str(config)])
    dataclasses = (ImageModelArguments, ImageDataArguments, MaxSupTrainingArguments, RunArguments)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=rf"config file {config}: {expected}"):
            parse_args(*dataclasses)
        return
    training_args = parse_args(*dataclasses)[2]
    for key, value in expected.items():
        got = getattr(training_args, key)
        assert getattr(got, "value", got) == value


# Item 14: a damaged newest checkpoint.
def _checkpoints(root):
    """Three checkpoints as the Trainer writes them, without training: weights, config, state and torch archives."""
    for step in (1, 2, 3):
        folder = root / f"checkpoint-{step}"
        os.makedirs(folder)
        save_file({"weight": torch.arange(4096, dtype=torch.float32)}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"model_type": "resnet"}))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 3}))
        torch.save({"state": {0: {"exp_avg": torch.ones(512)}}}, folder / "optimizer.pt")
        torch.save({"python": 1, "cpu": torch.ones(8)}, folder / "rng_state.pth")
    return root


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated model.safetensors": ("model.safetensors", _truncate, r"model.safetensors is truncated"),
    "random model.safetensors": ("model.safetensors", lambda p: p.write_bytes(os.urandom(5000)), "safetensors header"),
    "empty model.safetensors": ("model.safetensors", lambda p: p.write_bytes(b""), r"is 0 bytes long"),
    "trainer_state.json {}": ("trainer_state.json", lambda p: p.write_text("{}"), r"holds no Trainer state \(a dict"),
    "trainer_state.json list": ("trainer_state.json", lambda p: p.write_text("[]"), r"no Trainer state \(a list"),
    "truncated config.json": ("config.json", _truncate, r"config.json is not readable JSON"),
    "truncated optimizer.pt": ("optimizer.pt", _truncate, r"optimizer.pt is not a whole torch.save archive"),
    "truncated rng_state.pth": ("rng_state.pth", _truncate, r"rng_state.pth is not a whole torch.save archive"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_skipped(damage, tmp_path):
    name, spoil, expected = DAMAGE[damage]
    root = _checkpoints(tmp_path)
    spoil(root / "checkpoint-3" / name)
    skipped = []
    assert last_complete_checkpoint(str(root), log=skipped.append) == str(root / "checkpoint-2")
    assert len(skipped) == 1 and skipped[0].startswith(f"skipping {root / 'checkpoint-3'}: it is damaged")
    assert re.search(expected, skipped[0]), skipped[0]
    with pytest.raises(
        ValueError, match=rf"checkpoint-3: the checkpoint is damaged.*--resume_from_checkpoint {root / 'checkpoint-2'}"
    ):
        resolve_resume(str(root / "checkpoint-3"), str(root))


def test_what_the_checkpoint_checks_cannot_see(tmp_path):
    """Flipped bytes inside a tensor are not found: safetensors keeps no checksum (docs/reliability.md says so)."""
    root = _checkpoints(tmp_path)
    weights = root / "checkpoint-3" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 800, len(data) - 600):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert damaged_files(str(root / "checkpoint-3")) == []


def test_resume_last_moves_a_damaged_checkpoint_aside_and_goes_on(tmp_path):
    out = tmp_path / "run"
    args = image_run(tmp_path, out, "--do_train", "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1")
    run_recipe(IMAGE, *args)
    _truncate(out / "checkpoint-3" / "model.safetensors")
    damaged = (out / "checkpoint-3" / "model.safetensors").read_bytes()
    run_recipe(IMAGE, *args, "--resume_from_checkpoint", "last")
    assert (out / "damaged-checkpoint-3" / "model.safetensors").read_bytes() == damaged  # kept, not written over
    assert damaged_files(str(out / "checkpoint-3")) == []  # saved again by the resumed run
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


# Item 15: where a run writes.
@pytest.mark.parametrize(
    "where, expected",
    [
        ("a file", r"--output_dir .*out is a file: give a folder"),
        ("a long name", r"the name xxxx.* has 300 bytes, more than the 255 this file system takes"),
        ("/sys/hf_maxsup_cannot_be_made", r"--output_dir /sys/hf_maxsup_cannot_be_made cannot be written to: "),
        ("/proc/self", r"--output_dir /proc/self cannot be written to: .*give another --output_dir"),
    ],
)
def test_an_output_dir_that_cannot_be_written_is_named_before_any_work(where, expected, tmp_path):
    out = {"a file": tmp_path / "out", "a long name": tmp_path / ("x" * 300)}.get(where, where)
    if where == "a file":
        out.write_text("mine")
    with pytest.raises(ValueError, match=expected):
        run_recipe(IMAGE, *image_run(tmp_path, out, "--do_train"))
    assert where != "a file" or out.read_text() == "mine"


def test_a_datasets_cache_that_cannot_be_written_is_named_before_loading(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", "/sys/hf_maxsup_home/.cache/huggingface/datasets")
    with pytest.raises(ValueError, match=r"the datasets cache /sys/hf_maxsup_home/.* cannot be written to.*HF_HOME"):
        run_recipe(IMAGE, *image_run(tmp_path, tmp_path / "run", "--do_train"))


def test_a_full_disk_says_so(tmp_path, monkeypatch, caplog):
    save = Trainer._save_rng_state

    def disk_full(self, output_dir):
        if self.state.global_step == 2:  # what torch.save's zip writer raises on a full disk
            monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=9 << 20, used=9 << 20, free=0))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 384 vs 266")
        save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", disk_full)
    out = tmp_path / "run"
    args = image_run(tmp_path, out, "--do_train", "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1")
    with pytest.raises(OSError, match=r"disk of --output_dir .*run is full \(0.0 MiB left\).*unexpected pos.*"
                       r"--resume_from_checkpoint last: it continues from .*checkpoint-1") as info:  # fmt: skip
        run_recipe(IMAGE, *args)
    assert info.value.errno == errno.ENOSPC
    assert last_complete_checkpoint(str(out), log=lambda _: None) == str(out / "checkpoint-1")


# Item 17: an unlabeled test split.
def test_an_unlabeled_test_split_is_predicted_without_metrics(tmp_path, caplog):
    files = ["--train_file", csv(tmp_path / "train.csv", [0, 1] * 10)]
    files += ["--validation_file", csv(tmp_path / "validation.csv", [1, 0] * 4)]
    files += ["--test_file", csv(tmp_path / "test.csv", [-1] * 6)]
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        run_recipe(TEXT, *text_run(out, "--do_train", "--do_eval", "--do_predict", *files))
    results = json.loads((out / "all_results.json").read_text())
    assert results["predict_samples"] == 6 and "predict_accuracy" not in results and "eval_accuracy" in results
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    assert "split 'test' has no labels (every 'label' is -1)" in caplog.text
    mixed = csv(tmp_path / "mixed.csv", [-1, 0, 1])
    with pytest.raises(ValueError, match=r"split 'test' mixes labels with -1 \(no label\)"):
        run_recipe(TEXT, *text_run(tmp_path / "run2", "--do_train", *files[:4], "--test_file", mixed))


# Item 18: label types that differ between files.
def test_label_types_that_differ_between_files_are_named(tmp_path):
    files = ["--train_file", csv(tmp_path / "train.csv", [0, 1] * 10)]
    files += ["--validation_file", csv(tmp_path / "validation.csv", ["pos", "neg"])]
    with pytest.raises(
        ValueError,
        match=r"column 'label' has values of another type in --validation_file .*validation.csv \(strings\) than in "
        r"--train_file .*train.csv \(int64 values\)",
    ):
        run_recipe(TEXT, *text_run(tmp_path / "run", "--do_train", *files))
