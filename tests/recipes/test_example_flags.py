"""The recipes as users of the transformers example scripts run them: the examples' flag names on local files, the
defaults that make the loss components show up, the start and end messages, and TensorBoard."""

import glob
import json
import logging

import pytest
import torch
from _runs import TINY, run_recipe
from huggingface_hub import ModelCard
from transformers import AutoConfig


def sentence_pairs(path, n=40):
    rows = [
        (f"the film number {i} was {'good' if i % 2 else 'bad'}", f"review {i}", ["neg", "pos"][i % 2])
        for i in range(n)
    ]
    path.write_text("sentence1,sentence2,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return path


def test_text_recipe_with_run_classification_flags(tmp_path, caplog):
    train, validation = sentence_pairs(tmp_path / "train.csv"), sentence_pairs(tmp_path / "validation.csv", 16)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        run_recipe(
            "text_classification",
            "--train_file",
            str(train),
            "--validation_file",
            str(validation),
            "--text_column_names",
            "sentence1,sentence2",
            "--label_column_name",
            "label",
            "--max_seq_length",
            "24",
            "--pad_to_max_length",
            "true",
            "--output_dir",
            str(out),
            "--do_train",
            "--do_eval",
            *TINY,
        )
    assert set(AutoConfig.from_pretrained(out).id2label.values()) == {"neg", "pos"}
    # the progress messages at INFO, as the transformers examples log theirs (visible by default)
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert any(m.startswith("model: ") and "parameters" in m for m in messages), messages
    assert any(m.startswith("engine: ") for m in messages)
    assert any(m.startswith("data: local data (train: train.csv, validation: validation.csv)") for m in messages)
    outputs = next(m for m in messages if m.startswith("outputs in "))
    assert "model.safetensors" in outputs and "all_results.json" in outputs and "README.md" in outputs
    assert "reliability_diagram.png" in outputs
    # the defaults: logging every 2 % of the steps (here every step) and an evaluation at the end of the epoch
    state = json.load(open(out / "trainer_state.json"))
    assert state["logging_steps"] == 1
    assert any("eval_loss" in entry for entry in state["log_history"])  # saved before the final evaluation

    # three columns are joined as run_classification.py joins them; these ones are not in the data
    with pytest.raises(ValueError, match=r"column 'a' \(--text_column_names\) not found"):
        run_recipe(
            "text_classification",
            "--train_file",
            str(train),
            "--text_column_names",
            "a,b,c",
            "--output_dir",
            str(tmp_path / "x"),
        )


def test_image_recipe_with_run_image_classification_flags(tmp_path):
    from PIL import Image

    for label in ("dark", "light"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (28, 28), color=10 * i if label == "dark" else 255 - 10 * i).save(
                tmp_path / "images" / label / f"{i}.png"
            )
    out = tmp_path / "run"
    run_recipe(
        "image_classification",
        "--train_dir",
        str(tmp_path / "images"),
        "--train_val_split",
        "0.2",
        "--image_column_name",
        "image",
        "--label_column_name",
        "label",
        "--output_dir",
        str(out),
        "--do_train",
        "--do_eval",
        *TINY,
    )
    results = json.load(open(out / "all_results.json"))
    assert results["train_samples"] == 16 and results["eval_samples"] == 4  # 20 % of 20 images held out


def test_translation_recipe_with_run_translation_flags(tmp_path):
    pairs = [{"translation": {"en": f"the house number {i}", "fr": f"la maison numéro {i}"}} for i in range(24)]
    train = tmp_path / "train.json"
    train.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in pairs))
    out = tmp_path / "run"
    run_recipe(
        "translation",
        "--train_file",
        str(train),
        "--validation_file",
        str(train),
        "--source_lang",
        "en",
        "--target_lang",
        "fr",
        "--source_prefix",
        "translate: ",
        "--max_source_length",
        "16",
        "--max_target_length",
        "16",
        "--val_max_target_length",
        "6",
        "--pad_to_max_length",
        "true",
        "--num_beams",
        "2",
        "--predict_with_generate",
        "true",
        "--output_dir",
        str(out),
        "--do_train",
        "--do_eval",
        *TINY,
    )
    assert {"eval_bleu", "eval_chrf"} <= set(json.load(open(out / "all_results.json")))
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert (args.generation_num_beams, args.generation_max_length) == (2, 6)
    card = (out / "README.md").read_text()
    assert "ECE variants" not in card and "BLEU and chrF are sacreBLEU's scores" in card  # no classifier paragraph
    # "How to use": the folder on disk (an absolute output_dir: its name only) and the Hub id
    assert 'from_pretrained("./run")' in card and 'from_pretrained("<your-username>/run")' in card


def test_tensorboard_gets_the_loss_components(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_recipe(
        "image_classification", "--output_dir", str(out), "--do_train", "--do_eval", *TINY, "--report_to", "tensorboard"
    )
    events = glob.glob(str(out / "**" / "events.out.tfevents.*"), recursive=True)
    assert events
    tags = set()
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/ce", "train/reg", "train/alpha", "train/loss"} <= tags, tags
    assert {"eval/ce", "eval/reg"} <= tags, tags
    # the embedded data gets a dataset type in the model-index, not "unknown"
    results = ModelCard.load(out / "README.md").data.eval_results
    assert results and {result.dataset_type for result in results} == {"fashion_mnist"}
