"""The recipes against transformers' four example scripts (`examples/pytorch`: `run_image_classification.py`,
`text-classification/run_classification.py` and `run_glue.py`, `translation/run_translation.py`): every flag of
their `ModelArguments` and `DataTrainingArguments`, with its default; their README command lines, the Hub dataset
swapped for a local folder of the same splits (and the Hub model for a tiny local one), with `--loss maxsup
--max_steps 2`; and the differences that used to be silent."""

import json
import logging

import pytest
from _runs import run_recipe
from datasets import Dataset
from PIL import Image

from hf_maxsup import MaxSupSeq2SeqTrainingArguments, MaxSupTrainingArguments
from hf_maxsup.arguments import (
    ImageDataArguments,
    ImageModelArguments,
    RunArguments,
    TextDataArguments,
    TextModelArguments,
    TranslationColumns,
    TranslationDataArguments,
    TranslationModelArguments,
)
from hf_maxsup.data import text_preprocess_function, translation_preprocess_function
from hf_maxsup.models import build_text_model, build_translation_model
from hf_maxsup.runner.parse import RecipeArgumentParser

REQUIRED = object()  # a flag without a default: the script refuses to run without it

# The ModelArguments of run_classification.py, run_glue.py and run_translation.py: one dataclass, copied into each.
TOKENIZER_MODEL = {
    "model_name_or_path": REQUIRED,
    "config_name": None,
    "tokenizer_name": None,
    "cache_dir": None,
    "use_fast_tokenizer": True,
    "model_revision": "main",
    "token": None,
    "trust_remote_code": False,
}
# The sample limits and data files of the text scripts' DataTrainingArguments.
SAMPLE_LIMITS = {"max_train_samples": None, "max_eval_samples": None, "max_predict_samples": None}
DATA_FILES = {"train_file": None, "validation_file": None, "test_file": None}
# The fields of each script's ModelArguments and DataTrainingArguments and their defaults, written from the scripts
# (transformers main, 2025: run_classification.py and run_glue.py at 005c23ae, run_translation.py at c73b6660).
OFFICIAL = {
    "run_image_classification.py": {
        "model_name_or_path": "google/vit-base-patch16-224-in21k",
        "model_type": None,
        "config_name": None,
        "cache_dir": None,
        "model_revision": "main",
        "image_processor_name": None,
        "token": None,
        "trust_remote_code": False,
        "ignore_mismatched_sizes": False,
        "dataset_name": None,
        "dataset_config_name": None,
        "train_dir": None,
        "validation_dir": None,
        "train_val_split": 0.15,
        "max_train_samples": None,
        "max_eval_samples": None,
        "image_column_name": "image",
        "label_column_name": "label",
    },
    "run_classification.py": {
        **TOKENIZER_MODEL,
        "ignore_mismatched_sizes": False,
        "dataset_name": None,
        "dataset_config_name": None,
        "do_regression": None,
        "text_column_names": None,
        "text_column_delimiter": " ",
        "train_split_name": None,
        "validation_split_name": None,
        "test_split_name": None,
        "remove_splits": None,
        "remove_columns": None,
        "label_column_name": None,
        "max_seq_length": 128,
        "preprocessing_num_workers": None,
        "overwrite_cache": False,
        "pad_to_max_length": True,
        "shuffle_train_dataset": False,
        "shuffle_seed": 42,
        **SAMPLE_LIMITS,
        "metric_name": None,
        **DATA_FILES,
    },
    "run_glue.py": {
        **TOKENIZER_MODEL,
        "ignore_mismatched_sizes": False,
        "task_name": None,
        "dataset_name": None,
        "dataset_config_name": None,
        "max_seq_length": 128,
        "overwrite_cache": False,
        "pad_to_max_length": True,
        **SAMPLE_LIMITS,
        **DATA_FILES,
    },
    "run_translation.py": {
        **TOKENIZER_MODEL,
        "source_lang": None,
        "target_lang": None,
        "dataset_name": None,
        "dataset_config_name": None,
        **DATA_FILES,
        "overwrite_cache": False,
        "preprocessing_num_workers": None,
        "max_source_length": 1024,
        "max_target_length": 128,
        "val_max_target_length": None,
        "pad_to_max_length": False,
        **SAMPLE_LIMITS,
        "num_beams": 1,
        "ignore_pad_token_for_loss": True,
        "source_prefix": None,
        "forced_bos_token": None,
    },
}
OFFLINE_MODEL = "the offline default model is built from a config (the scripts' needs the Hub)"
# The defaults kept different on purpose: flag -> (ours, why). The README lists them.
KEPT = {
    "run_image_classification.py": {"model_name_or_path": (None, OFFLINE_MODEL)},
    "run_classification.py": {
        "model_name_or_path": (None, OFFLINE_MODEL),
        "label_column_name": ("label", "the same column: run_classification.py reads None as 'label'"),
    },
    "run_glue.py": {"model_name_or_path": (None, OFFLINE_MODEL)},
    "run_translation.py": {
        "model_name_or_path": (None, OFFLINE_MODEL),
        "source_lang": ("en", "the embedded data's languages (the script requires the flag)"),
        "target_lang": ("fr", "the embedded data's languages (the script requires the flag)"),
        "num_beams": (None, "--generation_num_beams then decides; the script's 1 overrides --generation_num_beams"),
    },
}
RECIPE_OF = {
    "run_image_classification.py": (ImageModelArguments, ImageDataArguments, MaxSupTrainingArguments),
    "run_classification.py": (TextModelArguments, TextDataArguments, MaxSupTrainingArguments),
    "run_glue.py": (TextModelArguments, TextDataArguments, MaxSupTrainingArguments),
    "run_translation.py": (TranslationModelArguments, TranslationDataArguments, MaxSupSeq2SeqTrainingArguments),
}


def parse(script: str, *argv: str):
    """The recipe's arguments for `argv`, merged into one dict of field -> value (every field is in one group)."""
    parser = RecipeArgumentParser([*RECIPE_OF[script], RunArguments])
    groups = parser.parse_args_into_dataclasses(args=["--output_dir", "unused", *argv])
    return {name: value for group in groups for name, value in vars(group).items()}


@pytest.mark.parametrize("script", list(OFFICIAL))
def test_every_flag_of_the_example_script_with_its_default(script):
    defaults = parse(script)
    expected = {
        flag: KEPT[script][flag][0] if flag in KEPT[script] else official for flag, official in OFFICIAL[script].items()
    }
    assert {flag: defaults[flag] for flag in expected} == expected
    assert set(KEPT[script]) <= set(OFFICIAL[script])


@pytest.mark.parametrize("script", list(OFFICIAL))
def test_every_flag_of_the_example_script_sets_its_field(script):
    """Each flag, given a value other than its default, lands in the field of its name."""
    refused = {"do_regression", "use_fast_tokenizer"}  # refused with a message: see the test below
    defaults = parse(script)
    for flag in OFFICIAL[script]:
        if flag in refused:
            continue
        if isinstance(defaults[flag], bool):
            given, expected = str(not defaults[flag]), not defaults[flag]
        else:
            given = {"task_name": "mrpc", "train_val_split": "0.25"}.get(flag, "7")
            expected = given
        value = parse(script, f"--{flag}", given)[flag]
        assert (value if isinstance(value, bool) else str(value)) == expected, flag


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("run_classification.py", ["--do_regression", "true"], "a regression has none"),
        ("run_classification.py", ["--use_fast_tokenizer", "false"], "fast one"),
        ("run_glue.py", ["--task_name", "stsb"], "stsb is a regression"),
        ("run_glue.py", ["--task_name", "qnlx"], "not a GLUE task"),
        ("run_glue.py", ["--task_name", "mrpc", "--text_column_names", "a"], "sets the text columns"),
    ],
)
def test_flags_that_cannot_apply_are_refused_before_any_work(script, argv, message):
    with pytest.raises(ValueError, match=message):
        parse(script, *argv)


def test_flags_without_effect_say_so(tmp_path, caplog):
    """`--model_type` (never read by run_image_classification.py either) and the flags of a pretrained model without
    one are accepted, and a warning says they change nothing."""
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no train split"):
        run_recipe(
            "image_classification",
            "--model_type",
            "vit",
            "--config_name",
            "google/vit-base-patch16-224",
            "--validation_file",
            str(_image_parquet(tmp_path / "validation.parquet", 4)),
            "--output_dir",
            str(tmp_path / "run"),
        )
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "--model_type has no effect" in warned and "--config_name has no effect" in warned


# The silent differences of before, each fixed.


def _image_folder(root, per_class=10):
    """An image folder whose rows come class by class: its first rows are all of one class."""
    for label, shade in (("dark", 10), ("light", 240)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (28, 28), color=shade + (i if label == "dark" else -i)).save(root / label / f"{i:02d}.png")
    return root


def test_max_samples_are_drawn_at_random_with_the_seed_for_images(tmp_path):
    """run_image_classification.py shuffles with --seed before taking --max_train_samples / --max_eval_samples: the
    first rows of an image folder are one class, and 100 % of one class is no training set."""
    from hf_maxsup.arguments import ImageDataArguments as Args
    from hf_maxsup.runner.flow import load_data

    train, validation = _image_folder(tmp_path / "train"), _image_folder(tmp_path / "validation")
    args = Args(train_dir=str(train), validation_dir=str(validation), max_train_samples=8, max_eval_samples=6)
    raw = load_data("image-classification", args, ImageModelArguments(), seed=42)
    assert len(set(raw["train"]["label"])) == 2 and len(set(raw["validation"]["label"])) == 2
    again = load_data("image-classification", args, ImageModelArguments(), seed=42)
    assert raw["train"]["label"] == again["train"]["label"]  # the seed decides


def test_val_max_target_length_cuts_the_evaluation_references(word_tokenizer):
    columns = TranslationColumns(source_lang="en", target_lang="fr", max_target_length=6, val_max_target_length=2)
    batch = {"translation": [{"en": "good movie", "fr": "good bad movie good bad movie good"}]}
    train = translation_preprocess_function(word_tokenizer, columns)(batch)
    evaluation = translation_preprocess_function(word_tokenizer, columns, evaluation=True)(batch)
    assert len(train["labels"][0]) == 6 and len(evaluation["labels"][0]) == 2
    assert columns.language_keys() == ("en", "fr")
    assert TranslationColumns(source_lang="en_XX", target_lang="ro_RO").language_keys() == ("en", "ro")


def test_several_text_columns_are_joined_with_the_delimiter(word_tokenizer):
    batch = {"title": ["good"], "body": ["bad movie"], "label": [1]}
    joined = text_preprocess_function(word_tokenizer, ["title", "body"], delimiter=" ")(batch)
    single = text_preprocess_function(word_tokenizer, "title")({"title": ["good bad movie"], "label": [1]})
    assert joined["input_ids"] == single["input_ids"] and joined["labels"] == [1]


@pytest.mark.parametrize(
    "columns, found",
    [
        (["sentence1", "sentence2", "label", "idx"], (["sentence1"], "sentence2")),
        (["sentence", "label", "idx"], (["sentence"], None)),  # run_classification.py's default column
        (["text", "label"], (["text"], None)),
        (["premise", "hypothesis", "label"], (["premise"], "hypothesis")),  # run_glue.py: the first two others
        (["review", "label"], (["review"], None)),
    ],
)
def test_text_columns_are_found_as_run_glue_finds_them(columns, found):
    args = TextDataArguments()
    args.detect_text_columns(columns)
    assert (args.text_columns(), args.text_pair_column_name) == found


def test_glue_task_and_glue_columns_on_local_files(tmp_path, caplog):
    """run_glue.py's command on local GLUE-style files: the text columns found as it finds them, or given by
    --task_name, tokenized as a pair."""
    train, validation = _pairs_csv(tmp_path / "train.csv", 24), _pairs_csv(tmp_path / "validation.csv", 8)
    common = ["--train_file", str(train), "--validation_file", str(validation), "--do_train", "--do_eval"]
    for name, extra in (("detected", []), ("task", ["--task_name", "mrpc"])):
        with caplog.at_level(logging.INFO):
            run_recipe("text_classification", *common, *extra, "--output_dir", str(tmp_path / name), "--max_steps", "2")
        assert json.load(open(tmp_path / name / "all_results.json"))["eval_samples"] == 8
    assert "text column 'sentence1' and 'sentence2' (a pair), found in the data" in caplog.text


def _pairs_csv(path, n):
    rows = [(f"the cat {i} sat", f"a cat {i} is sitting" if i % 2 else f"the dog {i} ran", i % 2) for i in range(n)]
    path.write_text(
        "sentence1,sentence2,label,idx\n" + "".join(f"{a},{b},{y},{i}\n" for i, (a, b, y) in enumerate(rows))
    )
    return path


def _image_parquet(path, n, label_column="label"):
    images = [Image.new("L", (28, 28), color=(0 if i % 2 else 255)) for i in range(n)]
    Dataset.from_dict({"image": images, label_column: [i % 2 for i in range(n)]}).to_parquet(str(path))
    return path


@pytest.fixture
def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3, "movie": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


# The README command lines of the four scripts, as printed there; only the data (a local folder with the Hub
# dataset's configuration and splits) and the Hub model (a tiny local one) are swapped, and pushing to the Hub is left
# out (no network). Each gets `--loss maxsup --max_steps 2`.
RUN = ["--loss", "maxsup", "--max_steps", "2"]


def local_hub_dataset(root, config: str, splits: dict) -> str:
    """A folder that `datasets.load_dataset(root, config)` reads as it reads a Hub dataset of that configuration."""
    root.mkdir(parents=True)
    files = []
    for split, rows in splits.items():
        Dataset.from_dict(rows).to_parquet(str(root / f"{split}.parquet"))
        files.append(f"  - split: {split}\n    path: {split}.parquet\n")
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: {config}\n  data_files:\n{''.join(files)}---\n")
    return str(root)


def tiny_bert(root) -> str:
    """A tiny BERT encoder and its tokenizer, saved as a Hub checkpoint such as google-bert/bert-base-cased is: no
    classification head, so that the script gives it one for the data's labels."""
    texts = [f"the review number {i} was good bad fine great" for i in range(40)]
    model, tokenizer = build_text_model(["a", "b"], train_texts=texts, vocab_size=120)
    model.bert.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def tiny_marian(root, pairs) -> str:
    """A tiny Marian and its tokenizer, saved as Helsinki-NLP/opus-mt-en-ro is."""
    model, tokenizer = build_translation_model(
        train_pairs=pairs, source_lang="en", target_lang="ro", vocab_size=120, d_model=32, num_layers=1
    )
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def test_run_image_classification_readme_commands(tmp_path):
    images = [Image.new("RGB", (28, 28), color=(0, 40 * i % 255, 0) if i % 3 else (200, 0, 0)) for i in range(24)]
    beans = local_hub_dataset(
        tmp_path / "beans",
        "default",
        {split: {"image": images, "labels": [i % 3 for i in range(24)]} for split in ("train", "validation", "test")},
    )
    run_recipe(
        "image_classification",
        *["--dataset_name", beans, "--output_dir", str(tmp_path / "beans_outputs"), "--remove_unused_columns"],
        *["False", "--label_column_name", "labels", "--do_train", "--do_eval", "--learning_rate", "2e-5"],
        *["--num_train_epochs", "5", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8"],
        *["--logging_strategy", "steps", "--logging_steps", "10", "--eval_strategy", "epoch", "--save_strategy"],
        *["epoch", "--load_best_model_at_end", "True", "--save_total_limit", "3", "--seed", "1337", *RUN],
    )
    assert "eval_accuracy" in json.load(open(tmp_path / "beans_outputs" / "all_results.json"))
    train = _image_folder(tmp_path / "images")
    out = tmp_path / "outputs"
    run_recipe(
        "image_classification",
        *["--train_dir", str(train), "--output_dir", str(out), "--remove_unused_columns", "False", "--do_train"],
        *["--do_eval", *RUN],
    )
    assert json.load(open(out / "all_results.json"))["eval_samples"] == 3  # --train_val_split 0.15 of 20 images


def test_run_glue_readme_commands(tmp_path):
    bert = tiny_bert(tmp_path / "bert-base-cased")
    mrpc = [
        *["--train_file", str(_pairs_csv(tmp_path / "train.csv", 24))],
        *["--validation_file", str(_pairs_csv(tmp_path / "dev.csv", 8))],
    ]
    out = tmp_path / "mrpc"
    run_recipe(
        "text_classification",
        *["--model_name_or_path", bert, "--task_name", "mrpc", *mrpc, "--do_train", "--do_eval"],
        *["--max_seq_length", "128", "--per_device_train_batch_size", "32", "--learning_rate", "2e-5"],
        *["--num_train_epochs", "3", "--output_dir", str(out), *RUN],
    )
    assert json.load(open(out / "all_results.json"))["eval_samples"] == 8
    reviews = {"text": [f"this film {i} was {'great' if i % 2 else 'bad'}" for i in range(30)], "label": [0, 1] * 15}
    imdb = local_hub_dataset(tmp_path / "imdb", "plain_text", {"train": reviews, "test": reviews})
    out = tmp_path / "imdb_out"
    run_recipe(
        "text_classification",
        *["--model_name_or_path", bert, "--dataset_name", imdb, "--do_train", "--do_predict"],
        *["--max_seq_length", "128", "--per_device_train_batch_size", "32", "--learning_rate", "2e-5"],
        *["--num_train_epochs", "3", "--output_dir", str(out), *RUN],
    )
    assert json.load(open(out / "all_results.json"))["predict_samples"] == 30


def test_run_classification_readme_commands(tmp_path):
    bert = tiny_bert(tmp_path / "bert-base-uncased")
    n = 40
    reviews = {
        "review_title": [f"title {i}" for i in range(n)],
        "review_body": [f"the product {i} is {'good' if i % 2 else 'bad'}" for i in range(n)],
        "product_category": [["home", "toy"][i % 2] for i in range(n)],
        "stars": [1 + i % 5 for i in range(n)],
    }
    amazon = local_hub_dataset(tmp_path / "amazon", "en", {"train": reviews, "validation": reviews, "test": reviews})
    out = tmp_path / "amazon_reviews_multi_en"
    run_recipe(
        "text_classification",
        *["--model_name_or_path", bert, "--dataset_name", amazon, "--dataset_config_name", "en"],
        *["--shuffle_train_dataset", "--metric_name", "accuracy"],
        *["--text_column_name", "review_title,review_body,product_category", "--text_column_delimiter", "\\n"],
        *["--label_column_name", "stars", "--do_train", "--do_eval", "--max_seq_length", "512"],
        *["--per_device_train_batch_size", "32", "--learning_rate", "2e-5", "--num_train_epochs", "1"],
        *["--output_dir", str(out), *RUN],
    )
    assert json.load(open(out / "config.json"))["id2label"] == {str(i): str(i + 1) for i in range(5)}
    topics = {"text": [f"news {i}" for i in range(12)], "topics": [["earn"], ["acq", "earn"]] * 6}
    reuters = local_hub_dataset(tmp_path / "reuters", "ModApte", {"train": topics, "test": topics, "unused": topics})
    # Multi-label classification: MaxSup and label smoothing need one class per example.
    with pytest.raises(ValueError, match="topics"):
        run_recipe(
            "text_classification",
            *["--model_name_or_path", bert, "--dataset_name", reuters, "--dataset_config_name", "ModApte"],
            *["--shuffle_train_dataset", "--remove_splits", "unused", "--metric_name", "f1"],
            *["--text_column_name", "text", "--label_column_name", "topics", "--do_train", "--do_eval"],
            *["--max_seq_length", "512", "--per_device_train_batch_size", "32", "--learning_rate", "2e-5"],
            *["--num_train_epochs", "15", "--output_dir", str(tmp_path / "reuters21578_ModApte"), *RUN],
        )


TRANSLATION_README = {
    "marian": [],
    "t5": ["--source_prefix", "translate English to Romanian: "],
    "mbart": ["--source_lang", "en_XX", "--target_lang", "ro_RO"],
}


def test_run_translation_readme_commands(tmp_path):
    pairs = [{"en": f"the house number {i} is big", "ro": f"casa numarul {i} este mare"} for i in range(24)]
    marian = tiny_marian(tmp_path / "opus-mt-en-ro", pairs)
    # Few evaluation pairs: the untrained model generates up to the full target length for each.
    splits = {"train": pairs, "validation": pairs[:4], "test": pairs[:4]}
    wmt16 = local_hub_dataset(
        tmp_path / "wmt16", "ro-en", {split: {"translation": rows} for split, rows in splits.items()}
    )
    for name, variant in TRANSLATION_README.items():
        out = tmp_path / name
        run_recipe(
            "translation",
            *["--model_name_or_path", marian, "--do_train", "--do_eval", "--source_lang", "en", "--target_lang"],
            *["ro", *variant, "--dataset_name", wmt16, "--dataset_config_name", "ro-en", "--output_dir", str(out)],
            *["--per_device_train_batch_size=4", "--per_device_eval_batch_size=4", "--overwrite_output_dir"],
            *["--predict_with_generate", *RUN],
        )
        assert "eval_bleu" in json.load(open(out / "all_results.json")), name
    files, few = tmp_path / "wmt16.jsonl", tmp_path / "wmt16_validation.jsonl"
    files.write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs))
    few.write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs[:4]))
    run_recipe(
        "translation",
        *["--model_name_or_path", marian, "--do_train", "--do_eval", "--source_lang", "en", "--target_lang", "ro"],
        *["--source_prefix", "translate English to Romanian: ", "--train_file", str(files)],
        *["--validation_file", str(few), "--output_dir", str(tmp_path / "files")],
        *["--per_device_train_batch_size=4", "--per_device_eval_batch_size=4", "--overwrite_output_dir"],
        *["--predict_with_generate", *RUN],
    )
