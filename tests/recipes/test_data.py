import json

import datasets
import huggingface_hub
import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

from hf_maxsup.arguments import DataSourceArguments, TranslationColumns
from hf_maxsup.data import (
    TASKS,
    check_columns,
    encode_labels,
    image_transform,
    load_embedded_dataset,
    load_task_dataset,
    text_preprocess_function,
    translation_preprocess_function,
)

FASHION_MNIST_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
]  # fmt: skip
R8_NAMES = ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]


@pytest.fixture
def word_tokenizer():
    # A whitespace word-level tokenizer over a fixed vocabulary: enough to test the preprocessing functions.
    vocab = {token: i for i, token in enumerate("[PAD] [UNK] [CLS] [SEP] </s> a b c d e f g translate:".split())}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@pytest.mark.parametrize(
    "task, sizes, columns",
    [
        ("image-classification", (10800, 1200, 5000), ["image", "label"]),
        ("text-classification", (4936, 549, 2189), ["text", "label"]),
        ("translation", (18000, 1000, 1000), ["translation"]),
    ],
)
def test_embedded_datasets_load_offline(task, sizes, columns, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    dataset = load_embedded_dataset(task)
    assert list(dataset) == ["train", "validation", "test"]
    assert tuple(len(split) for split in dataset.values()) == sizes
    for split in dataset.values():
        assert split.column_names == columns


def test_embedded_features_and_label_names():
    images = load_embedded_dataset("image-classification")
    assert isinstance(images["train"].features["image"], datasets.Image)
    assert images["test"].features["label"].names == FASHION_MNIST_NAMES
    image = images["test"][0]["image"]
    assert image.size == (28, 28) and image.mode == "L"
    # Stratified subsets: every class equally represented in test.
    assert np.bincount(images["test"]["label"]).tolist() == [500] * 10

    texts = load_embedded_dataset("text-classification")
    assert texts["validation"].features["label"].names == R8_NAMES
    assert isinstance(texts["train"][0]["text"], str) and texts["train"][0]["text"]

    pair = load_embedded_dataset("translation")["test"][0]["translation"]
    assert set(pair) == {"en", "fr"} and pair["en"] and pair["fr"]


def test_load_task_dataset_defaults_to_embedded_data():
    dataset = load_task_dataset("text-classification")
    assert list(dataset) == ["train", "validation", "test"]
    assert dataset["train"].features["label"].names == R8_NAMES


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(ValueError, match="valid tasks are: image-classification, text-classification, translation"):
        load_embedded_dataset("summarization")
    with pytest.raises(ValueError, match="image-classification"):
        load_task_dataset("summarization")
    assert TASKS == ("image-classification", "text-classification", "translation")


def test_local_csv_files_and_validation_split(tmp_path):
    rows = "sentence,label\n" + "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv").write_text("sentence,label\nhello,pos\n")

    files = DataSourceArguments(train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.csv"))
    dataset = load_task_dataset("text-classification", files, seed=0)
    assert sorted(dataset) == ["test", "train", "validation"]
    # 15 % held out: --train_val_split's default, run_image_classification.py's
    assert (len(dataset["train"]), len(dataset["validation"]), len(dataset["test"])) == (17, 3, 1)
    assert dataset["train"].column_names == ["sentence", "label"]

    no_split = load_task_dataset(
        "text-classification",
        DataSourceArguments(train_file=str(tmp_path / "train.csv"), validation_split_percentage=0),
    )
    assert list(no_split) == ["train"]


def test_local_json_files(tmp_path):
    pairs = [{"translation": {"en": f"word {i}", "de": f"wort {i}"}} for i in range(5)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(pair) for pair in pairs))
    dataset = load_task_dataset(
        "translation",
        DataSourceArguments(
            train_file=str(tmp_path / "train.jsonl"), validation_file=str(tmp_path / "validation.jsonl")
        ),
    )
    assert list(dataset) == ["train", "validation"]
    assert dataset["validation"][2]["translation"] == {"en": "word 2", "de": "wort 2"}


def test_file_format_errors(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\n")
    (tmp_path / "valid.json").write_text('{"text": "a", "label": 0}\n')
    (tmp_path / "train.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="same format"):
        load_task_dataset(
            "text-classification",
            DataSourceArguments(train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "valid.json")),
        )
    with pytest.raises(ValueError, match="Unsupported data file extension '.xml'"):
        load_task_dataset("text-classification", DataSourceArguments(train_file=str(tmp_path / "train.xml")))
    with pytest.raises(ValueError, match="only one data source"):
        load_task_dataset(
            "text-classification", DataSourceArguments(dataset_name="glue", train_file=str(tmp_path / "train.csv"))
        )


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    dataset = load_task_dataset(
        "image-classification",
        DataSourceArguments(validation_split_percentage=20),
        image_folders={"train": str(tmp_path)},
    )
    assert (len(dataset["train"]), len(dataset["validation"])) == (8, 2)
    assert dataset["train"].features["label"].names == ["cat", "dog"]
    assert dataset["train"][0]["image"].size == (10, 12)

    with pytest.raises(ValueError, match="only supported for image-classification"):
        load_task_dataset("text-classification", image_folders={"train": str(tmp_path)})


def test_hub_dataset_offline_gives_actionable_error(monkeypatch):
    # Offline mode makes `datasets` fail at once instead of waiting on network timeouts.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as info:
        load_task_dataset(
            "text-classification", DataSourceArguments(dataset_name="hf-maxsup/does-not-exist", dataset_config_name="x")
        )
    message = str(info.value)
    assert "Could not load dataset 'hf-maxsup/does-not-exist' (config 'x')" in message
    assert "--train_file" in message and "leave out --dataset_name" in message
    assert info.value.__cause__ is not None


def test_check_columns():
    dataset = DatasetDict(train=Dataset.from_dict({"text": ["a"], "label": [0]}))
    check_columns(dataset, {"text": "--text_column_name", "label": "--label_column_name", None: "--text_pair"})
    with pytest.raises(ValueError) as info:
        check_columns(dataset, {"sentence": "--text_column_name"})
    assert str(info.value) == (
        "column 'sentence' (--text_column_name) not found in split 'train'; available columns: text, label"
    )
    with pytest.raises(ValueError, match=r"^column 'lable' \(--label_column_name\) not found; available"):
        check_columns(dataset["train"], {"lable": "--label_column_name"})


def test_encode_labels():
    dataset = DatasetDict(
        train=Dataset.from_dict({"label": ["pos", "neg", "pos", "neutral"]}),
        validation=Dataset.from_dict({"label": ["neutral"]}),
        test=Dataset.from_dict({"text": ["unlabelled"]}),
    )
    encoded, names = encode_labels(dataset)
    assert names == ["neg", "neutral", "pos"]
    assert encoded["train"]["label"] == [2, 0, 2, 1] and encoded["validation"]["label"] == [1]
    assert isinstance(encoded["train"].features["label"], ClassLabel)
    assert encoded["test"].column_names == ["text"]
    # A label only the validation split has would be a class the model never trains on (issue 23, item 11).
    dataset["train"] = Dataset.from_dict({"label": ["pos", "neg", "pos"]})
    with pytest.raises(
        ValueError, match=r"split 'validation' holds label\(s\) 'neutral' that the training split lacks"
    ):
        encode_labels(dataset)

    # Integer labels sort numerically (10 after 9) and need not start at 0.
    encoded, names = encode_labels(DatasetDict(train=Dataset.from_dict({"y": [10, 9, 2, 9]})), label_column="y")
    assert names == ["2", "9", "10"] and encoded["train"]["y"] == [2, 1, 0, 1]

    class_label = DatasetDict(
        train=Dataset.from_dict({"label": [1, 0]}).cast_column("label", ClassLabel(names=["b", "a"])),
        test=Dataset.from_dict({"label": [-1, -1]}).cast_column("label", ClassLabel(names=["b", "a"])),
    )
    encoded, names = encode_labels(class_label)
    assert names == ["b", "a"] and encoded["test"].column_names == []  # GLUE-style -1: no labels (item 17)

    with pytest.raises(ValueError, match="only ClassLabel, string or integer"):
        encode_labels(DatasetDict(train=Dataset.from_dict({"label": [0.5]})))


def test_image_transform_handles_channels_and_augmentation():
    gray = ConvNextImageProcessorPil(size={"shortest_edge": 8}, crop_pct=1.0, image_mean=[0.5], image_std=[0.5])
    rgb = ConvNextImageProcessorPil(size={"shortest_edge": 8}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image = Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3), mode="RGB")
    batch = {"image": [image, image.convert("L")], "label": [3, 4]}

    outputs = image_transform(gray)(batch)
    assert [tuple(x.shape) for x in outputs["pixel_values"]] == [(1, 8, 8), (1, 8, 8)]
    assert outputs["labels"] == [3, 4]
    assert [tuple(x.shape) for x in image_transform(rgb)(batch)["pixel_values"]] == [(3, 8, 8), (3, 8, 8)]

    random_image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8))
    plain = image_transform(gray)({"image": [random_image]})
    assert "labels" not in plain
    augmented = [image_transform(gray, augment=True)({"image": [random_image]})["pixel_values"][0] for _ in range(8)]
    assert all(x.shape == plain["pixel_values"][0].shape for x in augmented)
    assert any(not np.allclose(x, plain["pixel_values"][0]) for x in augmented)


def test_text_preprocess_function(word_tokenizer):
    batch = {"text_a": ["a b c d e f", "g"], "text_b": ["a", "b c"], "label": [1, 0]}
    single = text_preprocess_function(word_tokenizer, text_column="text_a", max_seq_length=4)(batch)
    assert single["input_ids"][0] == word_tokenizer.convert_tokens_to_ids(["[CLS]", "a", "b", "[SEP]"])
    assert single["labels"] == [1, 0]

    pair = text_preprocess_function(word_tokenizer, text_column="text_a", text_pair_column="text_b")(batch)
    assert word_tokenizer.convert_ids_to_tokens(pair["input_ids"][1]) == ["[CLS]", "g", "[SEP]", "b", "c", "[SEP]"]
    assert pair["token_type_ids"][1] == [0, 0, 0, 1, 1, 1]


def test_translation_preprocess_function(word_tokenizer):
    batch = {"translation": [{"en": "a b", "fr": "c d e f g"}, {"en": "a", "fr": "b"}]}
    columns = TranslationColumns(source_prefix="translate: ", max_source_length=8, max_target_length=3)
    preprocess = translation_preprocess_function(word_tokenizer, columns)
    outputs = preprocess(batch)
    assert word_tokenizer.convert_ids_to_tokens(outputs["input_ids"][0]) == ["[CLS]", "translate:", "a", "b", "[SEP]"]
    assert word_tokenizer.convert_ids_to_tokens(outputs["labels"][0]) == ["[CLS]", "c", "[SEP]"]
    assert len(outputs["labels"][1]) == 3 and {"input_ids", "attention_mask", "labels"} <= set(outputs)
