"""Each recipe's data arguments: its task's columns and the data arguments, with the flags of its transformers
example script that only it has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .columns import ImageColumns, TextColumns, TranslationColumns
from .source import DataArguments

__all__ = ["ImageDataArguments", "TextDataArguments", "TranslationDataArguments"]


@dataclass
class ImageDataArguments(ImageColumns, DataArguments):
    augment: bool = field(default=True, metadata={"help": "Random flips and shifts of the training images."})
    strong_augment: bool = field(
        default=False,
        metadata={
            "help": "With --augment: random-resized crops and random erasing too, training views a small model "
            "cannot fit (the regime in which MaxSup differs from label smoothing)."
        },
    )

    # run_image_classification.py draws --max_train_samples / --max_eval_samples at random with the seed.
    SAMPLES_SHUFFLED: ClassVar[bool] = True


@dataclass
class TextDataArguments(TextColumns, DataArguments):
    pad_to_max_length: bool = field(
        default=True,
        metadata={
            "help": "Pad every text to --max_seq_length; false pads each batch to its longest text (faster on a CPU)."
        },
    )
    shuffle_train_dataset: bool = field(
        default=False, metadata={"help": "Shuffle the training set (before --max_train_samples takes its first rows)."}
    )
    shuffle_seed: int = field(default=42, metadata={"help": "Seed of --shuffle_train_dataset."})
    metric_name: str | None = field(
        default=None,
        metadata={
            "help": "An `evaluate` metric (a Hub name or a local path) reported beside the recipe's own (accuracy, "
            "calibration, ...); accuracy is among those already."
        },
    )
    do_regression: bool | None = field(
        default=None,
        metadata={
            "help": "Refused when true: MaxSup and label smoothing act on a classifier's classes, and regression "
            "has none. Float labels are refused too."
        },
    )

    def __post_init__(self):
        if self.do_regression:
            raise ValueError(
                "--do_regression: MaxSup and label smoothing act on the classes of a classifier, and a regression has "
                "none. Train it with run_classification.py and a plain Trainer, or leave the flag out."
            )
        super().__post_init__()


@dataclass
class TranslationDataArguments(TranslationColumns, DataArguments):
    num_beams: int | None = field(
        default=None,
        metadata={
            "help": "Beams of the generation in evaluation and prediction; sets --generation_num_beams. Default: "
            "--generation_num_beams (run_translation.py's default 1 would override it)."
        },
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad sources and targets to --max_source_length / --max_target_length; otherwise each batch "
            "is padded to its longest sequence."
        },
    )
    ignore_pad_token_for_loss: bool = field(
        default=True,
        metadata={"help": "Leave the padding of the targets out of the loss (false trains on it as a token)."},
    )
    forced_bos_token: str | None = field(
        default=None,
        metadata={
            "help": "Token generated first, after the decoder start (the target language of mBART-50 or M2M100, "
            "e.g. ro_RO); it must be in the tokenizer's vocabulary."
        },
    )
