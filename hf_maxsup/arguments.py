"""The recipes' command-line arguments: the model, the data of each task, and how a run treats its `output_dir`.

Each dataclass is one group of flags of [`hf_maxsup.runner.parse_args`]; the names follow the transformers example
scripts (`run_image_classification.py`, `run_classification.py`, `run_translation.py`), ours kept as aliases. Each
task's column group (`ImageColumns`, `TextColumns`, `TranslationColumns`) names the columns the task reads, with the
flag of each ([`~ImageColumns.columns`]), for the recipes and the reports alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DataArguments",
    "DataSourceArguments",
    "HubArguments",
    "ImageColumns",
    "TextColumns",
    "TranslationColumns",
    "ImageDataArguments",
    "ImageModelArguments",
    "ModelArguments",
    "RunArguments",
    "TextDataArguments",
    "TranslationDataArguments",
    "TranslationModelArguments",
]


def _chain_post_init(instance, cls: type) -> None:
    """Runs the next `__post_init__` after `cls`'s in `instance`'s class order, if any: these dataclasses are mixed
    (a recipe's and a report's data arguments combine several), so each one's checks must run whatever the order."""
    after = getattr(super(cls, instance), "__post_init__", None)
    if after is not None:
        after()


@dataclass
class HubArguments:
    """How the Hub is reached: what the recipes and the reports (`hf-maxsup analyze`) share."""

    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})


@dataclass
class ModelArguments(HubArguments):
    """Which model to fine-tune (or, without `model_name_or_path`, the offline default built from a config)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local directory or Hub id of a pretrained model. Default: the task's offline model."},
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})


@dataclass
class DataSourceArguments:
    """Where the data comes from: a Hub dataset, local files, or (nothing given) the embedded real data. The recipes
    train on it, and the reports evaluate on the same source."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the Hub (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of that dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (csv, json, jsonl, parquet)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (for --do_predict)."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Share of train held out for validation when there is no validation split."}
    )

    def __post_init__(self):
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(
                f"--validation_split_percentage must be in [0, 100); got {self.validation_split_percentage}."
            )
        _chain_post_init(self, DataSourceArguments)

    def data_files(self) -> dict[str, str]:
        """The local data files given, by split (`train`, `validation`, `test`)."""
        files = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}
        return {split: path for split, path in files.items() if path is not None}


@dataclass
class DataArguments(DataSourceArguments):
    """The data of a recipe: its source, how much of it to use and how to preprocess it."""

    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "preprocessing_num_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1; got {getattr(self, name)}. Leave it out for no limit.")

    def columns(self) -> dict[str | None, str]:
        """The columns the task reads, each mapped to the flag that names it: none here, each task's subclass takes
        them from its column group (e.g. [`ImageColumns.columns`])."""
        return {}


@dataclass
class RunArguments:
    """How a run treats an `output_dir` that holds an earlier run."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that holds a finished run or checkpoints, replacing them "
            "(their checkpoint-* folders are deleted). Without it such a run is refused."
        },
    )
    allow_loss_change: bool = field(
        default=False,
        metadata={
            "help": "Resume a checkpoint with other loss settings (--loss, --loss_alpha*) than it was trained "
            "with; the model card then records both. Without it such a resume is refused."
        },
    )


@dataclass
class ImageModelArguments(ModelArguments):
    model_architecture: str = field(
        default="convnext",
        metadata={
            "help": "Default model without --model_name_or_path: convnext, or resnet (about 6x the steps/s), "
            "or resnet-small (half its widths, e.g. a distillation student)."
        },
    )


@dataclass
class ImageColumns:
    """Where the images and their labels are (the reports read the same flags as the recipe)."""

    train_dir: str | None = field(default=None, metadata={"help": "Image folder of training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder of validation images."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})

    def columns(self) -> dict[str | None, str]:
        """The columns the image task reads, each mapped to the flag that names it (for errors that name the flag)."""
        return {self.image_column_name: "--image_column_name", self.label_column_name: "--label_column_name"}

    def image_folders(self) -> dict[str, str]:
        """The image folders given, by split (`train`, `validation`)."""
        folders = {"train": self.train_dir, "validation": self.validation_dir}
        return {split: path for split, path in folders.items() if path is not None}


@dataclass
class TextColumns:
    """Where the texts and their labels are, and their truncation (the reports read the same flags as the recipe)."""

    text_column_names: str | None = field(
        default=None,
        metadata={
            "help": "Text column(s), comma-separated, as in transformers' run_classification.py: one column, or "
            "two for sentence pairs (tokenized as a pair). Sets --text_column_name and --text_pair_column_name."
        },
    )
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    text_pair_column_name: str | None = field(default=None, metadata={"help": "Second text of sentence pairs."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer texts are truncated to this many tokens."})

    def __post_init__(self):
        _chain_post_init(self, TextColumns)
        if self.text_column_names is not None:
            names = [name.strip() for name in self.text_column_names.split(",") if name.strip()]
            if not 1 <= len(names) <= 2:
                raise ValueError(
                    f"--text_column_names {self.text_column_names}: give one text column, or two for "
                    "sentence pairs, separated by a comma."
                )
            self.text_column_name, self.text_pair_column_name = names[0], (names[1] if len(names) == 2 else None)

    def columns(self) -> dict[str | None, str]:
        """The columns the text task reads, each mapped to the flag that names it (the pair column is `None` when
        not given)."""
        return {
            self.text_column_name: "--text_column_name",
            self.text_pair_column_name: "--text_pair_column_name",
            self.label_column_name: "--label_column_name",
        }


@dataclass
class TranslationColumns:
    """Where the sentence pairs are, and their truncation (the reports read the same flags as the recipe)."""

    source_lang: str = field(default="en", metadata={"help": "Source language key in the translation column."})
    target_lang: str = field(default="fr", metadata={"help": "Target language key in the translation column."})
    translation_column_name: str = field(default="translation", metadata={"help": "Column of {lang: text} dicts."})
    source_prefix: str = field(default="", metadata={"help": "Prefix of every source, e.g. for T5."})
    max_source_length: int = field(default=128, metadata={"help": "Longer sources are truncated."})
    max_target_length: int = field(default=128, metadata={"help": "Longer targets are truncated."})

    def columns(self) -> dict[str | None, str]:
        """The column the translation task reads, mapped to the flag that names it."""
        return {self.translation_column_name: "--translation_column_name"}


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
    train_val_split: float | None = field(
        default=None,
        metadata={
            "help": "Share of train held out for validation when there is no validation split, as a fraction "
            "(run_image_classification.py's name); sets --validation_split_percentage."
        },
    )

    def __post_init__(self):
        if self.train_val_split is not None:
            if not 0.0 <= self.train_val_split < 1.0:
                raise ValueError(f"--train_val_split must be in [0, 1); got {self.train_val_split}.")
            self.validation_split_percentage = round(100 * self.train_val_split)
        super().__post_init__()


@dataclass
class TextDataArguments(TextColumns, DataArguments):
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad every text to --max_seq_length (run_classification.py does by default); otherwise "
            "each batch is padded to its longest text."
        },
    )


@dataclass
class TranslationModelArguments(ModelArguments):
    model_d_model: int = field(default=256, metadata={"help": "Width of the from-scratch Marian (no checkpoint)."})
    model_layers: int = field(default=3, metadata={"help": "Encoder and decoder layers of the from-scratch Marian."})
    vocab_size: int = field(default=8000, metadata={"help": "BPE vocabulary of the from-scratch Marian."})


@dataclass
class TranslationDataArguments(TranslationColumns, DataArguments):
    val_max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest generation in evaluation and prediction (run_translation.py's name); sets "
            "--generation_max_length, which defaults to --max_target_length."
        },
    )
    num_beams: int | None = field(
        default=None,
        metadata={
            "help": "Beams of the generation in evaluation and prediction (run_translation.py's name); sets "
            "--generation_num_beams."
        },
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad sources and targets to --max_source_length / --max_target_length; otherwise each batch "
            "is padded to its longest sequence."
        },
    )
