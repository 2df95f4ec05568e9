"""The functions the recipes map over (or attach to) their data, mirroring the official `transformers` examples:
[`image_transform`] for `Dataset.with_transform`, [`text_preprocess_function`] and
[`translation_preprocess_function`] for a batched `Dataset.map`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..arguments import TranslationColumns

__all__ = ["image_transform", "text_preprocess_function", "translation_preprocess_function"]

logger = logging.getLogger(__name__)


def _random_flip_and_shift(image: Image.Image, max_shift: float = 0.1) -> Image.Image:
    # Mild on purpose: mirrored clothes are still the same class, and small shifts fight overfitting on small data
    # without slowing down the short training runs the recipes default to. Uses `random`, seeded by `set_seed`.
    if random.random() < 0.5:
        image = ImageOps.mirror(image)
    shift = max(1, round(max_shift * min(image.size)))
    dx, dy = random.randint(-shift, shift), random.randint(-shift, shift)
    return image.transform(image.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy))


def _random_crop_and_erase(image: Image.Image, scale=(0.25, 1.0), erase: float = 0.5) -> Image.Image:
    # A random-resized crop (25-100 % of the area, aspect 3/4-4/3) and, half the time, a rectangle of random gray
    # (timm's RandomResizedCrop and RandomErasing, Zhong et al. 2020): training views a small model cannot fit, as on
    # ImageNet, where MaxSup's term differs from label smoothing's (on the misclassified rows).
    width, height = image.size
    area = width * height * random.uniform(*scale)
    aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w, crop_h = min(width, round(math.sqrt(area * aspect))), min(height, round(math.sqrt(area / aspect)))
    x, y = random.randint(0, width - crop_w), random.randint(0, height - crop_h)
    image = image.resize(image.size, Image.Resampling.BILINEAR, box=(x, y, x + crop_w, y + crop_h))
    if random.random() < erase:
        side_w, side_h = (max(1, round(random.uniform(0.2, 0.5) * side)) for side in image.size)
        x, y = random.randint(0, width - side_w), random.randint(0, height - side_h)
        fill = tuple(random.randint(0, 255) for _ in image.getbands())
        ImageDraw.Draw(image).rectangle((x, y, x + side_w - 1, y + side_h - 1), fill=fill if len(fill) > 1 else fill[0])
    return image


def image_transform(
    image_processor,
    image_column: str = "image",
    label_column: str = "label",
    augment: bool = False,
    strong_augment: bool = False,
) -> Callable[[dict], dict]:
    """
    Build an on-the-fly transform for `Dataset.with_transform`, so decoded images are never stored.

    Images are converted to the number of channels the processor normalises (one mean value -> grayscale `"L"`,
    otherwise, and for timm's processors, `"RGB"`), optionally augmented (random horizontal flip and a shift of up to
    10 % of the image side), then passed through `image_processor` (resize, rescale, normalise).

    Example:

    ```python
    train = dataset["train"].with_transform(image_transform(image_processor, augment=True))
    trainer = Trainer(..., train_dataset=train, data_collator=default_data_collator,
                      args=TrainingArguments(..., remove_unused_columns=False))
    ```

    Args:
        image_processor ([`~transformers.BaseImageProcessor`]):
            The processor of the model.
        image_column (`str`, *optional*, defaults to `"image"`):
            Column with the images (`datasets.Image`).
        label_column (`str`, *optional*, defaults to `"label"`):
            Column with the label ids; returned as `labels` when present.
        augment (`bool`, *optional*, defaults to `False`):
            Apply the random augmentation (use for the training split only).
        strong_augment (`bool`, *optional*, defaults to `False`):
            With `augment`, a random-resized crop and (half the time) random erasing first.

    Returns:
        `Callable[[dict], dict]`: batch -> `{"pixel_values": [...], "labels": [...]}`.
    """
    # timm's processor (TimmWrapperImageProcessor) keeps its mean in `data_config`; timm models read RGB.
    mean = getattr(image_processor, "image_mean", None)
    mode = "L" if mean is not None and np.size(mean) == 1 else "RGB"

    def convert(image: Image.Image) -> Image.Image:
        try:
            return image.convert(mode)
        except OSError as err:  # PIL decodes lazily: a truncated JPEG fails only here
            name = getattr(image, "filename", None) or "an image"
            raise ValueError(f"cannot decode {name}: {err}. Delete or replace that file and run again.") from err

    def transform(batch: dict) -> dict:
        images = [convert(image) for image in batch[image_column]]
        if augment:
            images = [
                _random_flip_and_shift(_random_crop_and_erase(image) if strong_augment else image) for image in images
            ]
        outputs = {"pixel_values": list(image_processor(images, return_tensors="pt")["pixel_values"])}
        if label_column in batch:
            outputs["labels"] = batch[label_column]
        return outputs

    return transform


def text_preprocess_function(
    tokenizer,
    text_column: str | Sequence[str] = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_seq_length: int = 128,
    pad_to_max_length: bool = False,
    delimiter: str = " ",
) -> Callable[[dict], dict]:
    """
    Build the tokenization function for `Dataset.map(..., batched=True)` of a text classification dataset.

    Several text columns are joined with `delimiter` into one text, as `run_classification.py` joins its
    `--text_column_names`; a `text_pair_column` is the second segment of a pair, as in `run_glue.py`. Texts are
    truncated to `max_seq_length` tokens (at most the tokenizer's `model_max_length`, as the examples cut it) and,
    unless `pad_to_max_length`, not padded: pad per batch with [`~transformers.DataCollatorWithPadding`].

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The tokenizer of the model.
        text_column (`str` or `Sequence[str]`, *optional*, defaults to `"text"`):
            Column(s) with the (first) text.
        text_pair_column (`str`, *optional*):
            Column with the second text of sentence-pair tasks (e.g. `sentence1` / `sentence2`).
        label_column (`str`, *optional*, defaults to `"label"`):
            Column with the label ids; returned as `labels` when present.
        max_seq_length (`int`, *optional*, defaults to 128):
            Maximum number of tokens, special tokens included.
        pad_to_max_length (`bool`, *optional*, defaults to `False`):
            Pad every text to `max_seq_length` (fixed shapes), as `run_classification.py` does by default.
        delimiter (`str`, *optional*, defaults to `" "`):
            What joins the texts of several `text_column`s.

    Returns:
        `Callable[[dict], dict]`: batch -> `{"input_ids", "attention_mask", ..., "labels"}`.
    """
    columns = [text_column] if isinstance(text_column, str) else list(text_column)
    max_length = min(max_seq_length, tokenizer.model_max_length)
    if max_length < max_seq_length:
        logger.warning(
            f"--max_seq_length {max_seq_length} is more than the tokenizer's maximum ({tokenizer.model_max_length}): "
            f"texts are cut at {max_length} tokens."
        )

    def preprocess(batch: dict) -> dict:
        texts = [delimiter.join(parts) for parts in zip(*(batch[column] for column in columns))]
        pairs = batch[text_pair_column] if text_pair_column is not None else None
        outputs = tokenizer(
            texts, pairs, truncation=True, max_length=max_length, padding="max_length" if pad_to_max_length else False
        )
        if label_column in batch:
            outputs["labels"] = batch[label_column]
        return outputs

    return preprocess


def translation_preprocess_function(
    tokenizer,
    columns: TranslationColumns,
    pad_to_max_length: bool = False,
    *,
    evaluation: bool = False,
    ignore_pad_token_for_loss: bool = True,
) -> Callable[[dict], dict]:
    """
    Build the tokenization function for `Dataset.map(..., batched=True)` of a translation dataset, as in the
    official `run_translation.py`.

    Sources are `source_prefix + example[source_lang]` (T5 needs e.g. `"translate English to French: "`), targets
    are tokenized with `text_target=` so tokenizers with language-specific target handling do the right thing.
    Unless `pad_to_max_length`, nothing is padded: pad per batch with [`~transformers.DataCollatorForSeq2Seq`], which
    pads `labels` with -100.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The tokenizer of the model.
        columns ([`~hf_maxsup.arguments.TranslationColumns`]):
            The column of `{lang: text}` dicts, the source and target languages (e.g. `"en"` and `"fr"`; mBART's
            `en_XX` reads the `en` text), the prefix of every source and the longest source and targets in tokens:
            the recipe's flags.
        pad_to_max_length (`bool`, *optional*, defaults to `False`):
            Pad sources to `max_source_length` and targets to their maximum (fixed shapes).
        evaluation (`bool`, *optional*, defaults to `False`):
            For the evaluation and test splits: targets (the references) are cut at `val_max_target_length`
            ([`~hf_maxsup.arguments.TranslationColumns.eval_target_length`]) rather than `max_target_length`.
        ignore_pad_token_for_loss (`bool`, *optional*, defaults to `True`):
            With `pad_to_max_length`, the padding of the targets becomes -100, so the loss ignores it, as in
            `run_translation.py`.

    Returns:
        `Callable[[dict], dict]`: batch -> `{"input_ids", "attention_mask", "labels"}`.
    """
    source_key, target_key = columns.language_keys()
    prefix = columns.source_prefix or ""
    target_length = columns.eval_target_length() if evaluation else columns.max_target_length
    padding = "max_length" if pad_to_max_length else False

    def preprocess(batch: dict) -> dict:
        pairs = batch[columns.translation_column_name]
        sources = [prefix + pair[source_key] for pair in pairs]
        targets = [pair[target_key] for pair in pairs]
        outputs = tokenizer(sources, max_length=columns.max_source_length, truncation=True, padding=padding)
        labels = tokenizer(text_target=targets, max_length=target_length, truncation=True, padding=padding)
        outputs["labels"] = (
            [[token if token != tokenizer.pad_token_id else -100 for token in row] for row in labels["input_ids"]]
            if pad_to_max_length and ignore_pad_token_for_loss
            else labels["input_ids"]
        )
        return outputs

    return preprocess
