"""The three recipes, run as users run them, at tiny sizes: every loss, user files, resume, 2 processes, configs."""

import json
import os
import subprocess
import sys

import pytest
from _runs import RECIPES, ROOT, TINY, run_recipe
from transformers import AutoModelForImageClassification, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from hf_maxsup import MaxSupSeq2SeqTrainingArguments
from hf_maxsup.models import build_translation_model
from hf_maxsup.runner import build_with_shared_tokenizer

AUTO = {
    "image_classification": AutoModelForImageClassification,
    "text_classification": AutoModelForSequenceClassification,
    "translation": AutoModelForSeq2SeqLM,
}
TASK_FLAGS = {
    "image_classification": [],
    "text_classification": [],
    "translation": ["--predict_with_generate", "true", "--generation_max_length", "8"],
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_help(name):
    result = subprocess.run([sys.executable, RECIPES[name], "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--loss {ce,ls,maxsup}" in result.stdout and "--model_name_or_path" in result.stdout


# Every loss on every recipe; the default suite keeps the image recipe's three and maxsup for the other two.
CASES = [
    pytest.param(name, loss, marks=[] if name == "image_classification" or loss == "maxsup" else pytest.mark.slow)
    for name in RECIPES
    for loss in ("ce", "ls", "maxsup")
]


@pytest.mark.parametrize("name, loss", CASES)
def test_recipe_trains_and_saves_a_loadable_model(name, loss, tmp_path):
    out = tmp_path / "run"
    run_recipe(
        name,
        "--loss",
        loss,
        "--output_dir",
        str(out),
        "--do_train",
        "--do_eval",
        "--do_predict",
        *TINY,
        *TASK_FLAGS[name],
    )
    results = json.load(open(out / "all_results.json"))
    assert results["eval_samples"] == 16 and results["predict_samples"] == 16
    if name == "translation":
        assert {"eval_bleu", "eval_chrf", "eval_loss"} <= set(results)
        assert json.load(open(out / "sacrebleu_signatures.json"))["bleu"].startswith(
            "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp"
        )
    else:
        assert {"eval_accuracy", "eval_ece", "eval_nll", "eval_brier", "eval_aurc"} <= set(results)
        assert (out / "reliability_diagram.png").exists()
    card = (out / "README.md").read_text()
    assert f"| `{loss}` |" in card
    assert not list(out.glob("*.bin")) or [p.name for p in out.glob("*.bin")] == ["training_args.bin"]
    AUTO[name].from_pretrained(out)


def test_text_recipe_on_local_files_names_the_wrong_column(tmp_path):
    rows = [
        {"sentence": f"{'good' if i % 2 else 'bad'} movie number {i}", "sentiment": ["neg", "pos"][i % 2]}
        for i in range(40)
    ]
    train = tmp_path / "train.csv"
    train.write_text("sentence,sentiment\n" + "".join(f"{r['sentence']},{r['sentiment']}\n" for r in rows))
    common = ["--train_file", str(train), "--do_train", "--do_eval", *TINY]
    # the text column is found in the data (sentence, as run_classification.py's default); the label is not
    with pytest.raises(ValueError, match=r"column 'label' \(--label_column_name\) not found.*sentence, sentiment"):
        run_recipe("text_classification", "--output_dir", str(tmp_path / "a"), *common)
    run_recipe(
        "text_classification",
        "--output_dir",
        str(tmp_path / "b"),
        "--text_column_name",
        "sentence",
        "--label_column_name",
        "sentiment",
        *common,
    )
    config = json.load(open(tmp_path / "b" / "config.json"))
    assert set(config["id2label"].values()) == {"neg", "pos"}


def test_image_recipe_on_an_image_folder_and_resume(tmp_path):
    from PIL import Image

    for label in ("circle", "square"):
        os.makedirs(tmp_path / "images" / label)
        for i in range(12):
            Image.new("L", (28, 28), color=20 * i if label == "circle" else 255 - 20 * i).save(
                tmp_path / "images" / label / f"{i}.png"
            )
    out = tmp_path / "run"
    args = [
        "--train_dir",
        str(tmp_path / "images"),
        "--output_dir",
        str(out),
        "--do_train",
        "--do_eval",
        *TINY,
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--num_train_epochs",
        "2",
    ]
    run_recipe("image_classification", *args)
    first = json.load(open(out / "trainer_state.json"))
    run_recipe("image_classification", *args, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    resumed = json.load(open(out / "trainer_state.json"))
    assert resumed["global_step"] == first["global_step"]
    losses = [[e["loss"] for e in state["log_history"] if "loss" in e] for state in (first, resumed)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    with pytest.raises(ValueError, match="no such directory"):
        run_recipe("image_classification", *args, "--resume_from_checkpoint", str(out / "checkpoint-99"))


def test_config_file(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "output_dir": str(tmp_path / "run"),
                "loss": "ls",
                "loss_alpha": 0.2,
                "do_train": True,
                "max_train_samples": 16,
                "max_steps": 1,
                "report_to": "none",
                "use_cpu": True,
            }
        )
    )
    run_recipe("image_classification", str(config))
    state = json.load(open(tmp_path / "run" / "trainer_state.json"))
    assert state["log_history"][0]["alpha"] == 0.2


@pytest.mark.parametrize("name", list(RECIPES))
def test_two_process_launch(name, tmp_path):
    config = os.path.join(ROOT, "recipes", "configs", "cpu_2proc.yaml")
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config,
        RECIPES[name],
        "--output_dir",
        str(tmp_path),
        "--do_train",
        "--do_eval",
        "--loss",
        "maxsup",
        *TINY,
        *TASK_FLAGS[name],
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.load(open(tmp_path / "trainer_state.json"))
    # 32 examples, 16 per process and step on 2 processes: one optimizer step per epoch.
    assert state["global_step"] == 1
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage, tmp_path):
    path = os.path.join(ROOT, "recipes", "configs", f"ds_zero{stage}.json")
    assert json.load(open(path))["zero_optimization"]["stage"] == stage
    pytest.importorskip("deepspeed")
    from hf_maxsup import MaxSupTrainingArguments

    args = MaxSupTrainingArguments(output_dir=str(tmp_path), deepspeed=path)
    assert args.hf_deepspeed_config.config["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize("name", ["image_classification", "text_classification"])
def test_compare_flag_runs_the_comparison_of_this_recipe(name):
    result = subprocess.run(
        [sys.executable, RECIPES[name], "--compare", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--seeds" in result.stdout and "--losses" in result.stdout


def test_resumed_run_reuses_the_checkpoint_tokenizer(tmp_path):
    # A tokenizer trained anew may differ from the one the checkpoint's embeddings were trained with.
    pairs = [{"en": f"word{i} and more", "fr": f"mot{i} et plus"} for i in range(200)]
    _, saved = build_translation_model(train_pairs=pairs[:20], vocab_size=60)
    checkpoint = str(tmp_path / "checkpoint-5")
    saved.save_pretrained(checkpoint)
    args = MaxSupSeq2SeqTrainingArguments(
        output_dir=str(tmp_path), resume_from_checkpoint=checkpoint, do_train=True, use_cpu=True, report_to="none"
    )
    model, tokenizer = build_with_shared_tokenizer(build_translation_model, args, checkpoint, train_pairs=pairs)
    assert tokenizer.get_vocab() == saved.get_vocab()
    assert model.config.vocab_size == len(saved)
    fresh, _ = build_with_shared_tokenizer(
        build_translation_model,
        MaxSupSeq2SeqTrainingArguments(output_dir=str(tmp_path / "fresh"), use_cpu=True, report_to="none"),
        None,
        train_pairs=pairs,
    )
    assert fresh.config.vocab_size != len(saved)  # without a checkpoint the tokenizer is trained on the data
