"""The columns each task reads, with the flag that names each: the column groups the recipes and the reports share
(the reports read the same flags as the recipe), and GLUE's text columns for run_glue.py's `--task_name`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .source import DataSourceArguments, chain_post_init, comma_names

__all__ = ["GLUE_DATASET", "GLUE_TASKS", "ImageColumns", "TextColumns", "TranslationColumns"]

logger = logging.getLogger(__name__)

# run_glue.py's tasks and their text columns (the second one of a pair, or None); stsb is a regression.
GLUE_TASKS = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
# Where run_glue.py loads a --task_name from when no data is given.
GLUE_DATASET = "nyu-mll/glue"


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
    """Where the texts and their labels are, and their truncation (the reports read the same flags as the recipe).

    Without `--text_column_names` or `--task_name`, the text columns are found in the data
    ([`detect_text_columns`]): `sentence1` and `sentence2` as a pair (run_glue.py), else `sentence`
    (run_classification.py's default), else `text`, else, as run_glue.py does, the first two other columns as a pair,
    or the only one.
    """

    task_name: str | None = field(
        default=None,
        metadata={
            "help": f"GLUE task ({', '.join(name for name in GLUE_TASKS if name != 'stsb')}): its text columns, "
            f"and its data ({GLUE_DATASET} on the Hub) unless data is given."
        },
    )
    text_column_names: str | None = field(
        default=None,
        metadata={
            "aliases": ["--text_column_name"],
            "help": "Text column(s), comma-separated: several are joined with --text_column_delimiter into one text "
            "(run_classification.py). Default: found in the data as run_glue.py finds them: sentence1 and sentence2 "
            "(a pair), else sentence, else text, else the first two other columns (a pair) or the only one.",
        },
    )
    text_column_delimiter: str = field(
        default=" ", metadata={"help": "What joins the --text_column_names of an example into one text."}
    )
    text_pair_column_name: str | None = field(
        default=None, metadata={"help": "Second text of sentence pairs, tokenized as the pair's second segment."}
    )
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_seq_length: int = field(
        default=128,
        metadata={"help": "Longer texts are truncated to this many tokens (at most the tokenizer's maximum)."},
    )

    def __post_init__(self):
        chain_post_init(self, TextColumns)
        if self.task_name is None:
            return
        self.task_name = self.task_name.lower()
        if self.task_name not in GLUE_TASKS:
            raise ValueError(f"--task_name {self.task_name}: not a GLUE task; choose one of {', '.join(GLUE_TASKS)}.")
        if self.task_name == "stsb":
            raise ValueError(
                "--task_name stsb is a regression (a similarity score), and MaxSup and label smoothing act on the "
                "classes of a classifier: train it with run_glue.py and a plain Trainer."
            )
        first, second = GLUE_TASKS[self.task_name]
        if self.text_column_names is not None or self.text_pair_column_name is not None:
            raise ValueError(
                f"--task_name {self.task_name} sets the text columns ({', '.join(filter(None, (first, second)))}): "
                "leave out --text_column_names / --text_pair_column_name, or --task_name."
            )
        self.text_column_names, self.text_pair_column_name = first, second
        if isinstance(self, DataSourceArguments) and not (self.dataset_name or self.data_files()):
            self.dataset_name, self.dataset_config_name = GLUE_DATASET, self.task_name
            if self.task_name == "mnli":  # run_glue.py evaluates MNLI on its matched split
                self.validation_split_name = self.validation_split_name or "validation_matched"
                self.test_split_name = self.test_split_name or "test_matched"

    def text_columns(self) -> list[str]:
        """The columns joined into an example's (first) text; empty before they are known."""
        return comma_names(self.text_column_names)

    def detect_text_columns(self, column_names: list[str]) -> None:
        """Find the text columns in the data's `column_names` when no flag named them (see [`TextColumns`]), and
        say which were taken."""
        if self.text_column_names is not None:
            return
        others = [name for name in column_names if name not in (self.label_column_name, self.text_pair_column_name)]
        if self.text_pair_column_name is not None:
            found = next((name for name in ("sentence", "text") if name in others), None) or others[0]
        elif {"sentence1", "sentence2"} <= set(others):
            found, self.text_pair_column_name = "sentence1", "sentence2"
        elif {"sentence", "text"} & set(others):
            found = "sentence" if "sentence" in others else "text"
        elif len(others) >= 2:
            found, self.text_pair_column_name = others[0], others[1]
        else:
            found = others[0] if others else "text"
        self.text_column_names = found
        pair = f" and {self.text_pair_column_name!r} (a pair)" if self.text_pair_column_name else ""
        logger.info(f"text column {found!r}{pair}, found in the data; --text_column_names chooses others.")

    def columns(self) -> dict[str | None, str]:
        """The columns the text task reads, each mapped to the flag that names it (the pair column is `None` when
        not given)."""
        flag = "--task_name" if self.task_name else "--text_column_names"
        return {
            **{name: flag for name in self.text_columns()},
            self.text_pair_column_name: "--text_pair_column_name" if not self.task_name else flag,
            self.label_column_name: "--label_column_name",
        }


@dataclass
class TranslationColumns:
    """Where the sentence pairs are, and their truncation (the reports read the same flags as the recipe)."""

    source_lang: str = field(
        default="en",
        metadata={
            "help": "Source language (key in the translation column; a code such as en_XX is looked up as en). "
            "Default en, the embedded data's (the examples require it)."
        },
    )
    target_lang: str = field(default="fr", metadata={"help": "Target language, as --source_lang. Default fr."})
    translation_column_name: str = field(default="translation", metadata={"help": "Column of {lang: text} dicts."})
    source_prefix: str | None = field(default=None, metadata={"help": "Prefix of every source, e.g. for T5."})
    max_source_length: int = field(
        default=1024,
        metadata={"help": "Longer sources are truncated (at most at the model's number of positions)."},
    )
    max_target_length: int = field(default=128, metadata={"help": "Longer training targets are truncated."})
    val_max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Longer evaluation and test targets (the references) are truncated, and the longest generation "
            "when --generation_max_length is not given. Default: --max_target_length."
        },
    )

    def columns(self) -> dict[str | None, str]:
        """The column the translation task reads, mapped to the flag that names it."""
        return {self.translation_column_name: "--translation_column_name"}

    def language_keys(self) -> tuple[str, str]:
        """The keys of the source and target texts in the translation column: the language codes, without what
        follows an underscore (mBART's `en_XX` is `en` there), as run_translation.py reads them."""
        return self.source_lang.split("_")[0], self.target_lang.split("_")[0]

    def eval_target_length(self) -> int:
        """The length at which evaluation and test targets are truncated."""
        return self.max_target_length if self.val_max_target_length is None else self.val_max_target_length
