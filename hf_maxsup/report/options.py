"""The options of the data the reports evaluate their runs on.

Each option is declared once, here: `hf-maxsup` builds its flags from these fields ([`option_flags`]). An option whose
metadata has `recipe=True` is also an argument of the recipe (the data it trained on), which `compare` and `distill`
read from the recipe arguments; the others are the report's own flags.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DataOptions", "SourceOptions", "TranslationDataOptions", "option", "option_flags"]


def option(default, help: str, *, recipe: bool = False, flag: str | None = None, **argparse_kwargs):
    """A field of the options with what its command-line flag needs.

    Args:
        default: the field's default, also the one the flag's help names.
        help (`str`): the flag's help.
        recipe (`bool`, *optional*, defaults to `False`): the recipe takes the same flag (a data source or column).
        flag (`str`, *optional*): the flag's name when it is not the field's (e.g. `max_analysis_samples`, since the
            recipe's `max_eval_samples` means something else).
        **argparse_kwargs: more of `add_argument` (`nargs`, `metavar`).
    """
    return field(default=default, metadata={"help": help, "recipe": recipe, "flag": flag, "argparse": argparse_kwargs})


def option_flags(options: type, *, recipe: bool) -> list[tuple[str, dict]]:
    """`(flag, add_argument keywords)` of each field of an options dataclass: the recipe's flags (`recipe=True`) or
    the report's own. The flags default to `None` ("not given": the field keeps its default); a boolean that is on by
    default is turned off by `--no_<name>`; the type comes from the field's annotation."""
    hints = typing.get_type_hints(options)
    flags = []
    for spec in dataclasses.fields(options):
        if spec.metadata.get("recipe") is not recipe:
            continue
        kind = next((arg for arg in typing.get_args(hints[spec.name]) if arg is not type(None)), hints[spec.name])
        default = spec.default
        kwargs = {"dest": spec.name, "default": None, **spec.metadata["argparse"]}
        if kind is bool:
            flags.append((f"--no_{spec.name}", {**kwargs, "action": "store_false", "help": spec.metadata["help"]}))
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = spec.metadata["help"]
        if default not in (None, ""):
            help_text = f"{help_text.rstrip('.')} (default: {shown})."
        flags.append((f"--{spec.metadata['flag'] or spec.name}", {**kwargs, "type": kind, "help": help_text}))
    return flags


@dataclass
class SourceOptions:
    """Where the evaluation data comes from (default: the embedded data of the checkpoints' task), which split and how
    much of it: what the classification and the translation reports share."""

    dataset_name: str | None = option(None, "Dataset on the Hub.", recipe=True)
    dataset_config_name: str | None = option(None, "Its configuration.", recipe=True)
    train_file: str | None = option(
        None,
        "Local training file: the regime check's training examples, and a validation split cut from it.",
        recipe=True,
    )
    validation_file: str | None = option(None, "Local validation file, evaluated on without a test split.", recipe=True)
    test_file: str | None = option(None, "Local file (csv, json, jsonl, parquet) to evaluate on.", recipe=True)
    validation_split_percentage: int = option(
        10,
        "Share of train held out as validation when the data has no validation split, as the recipe did.",
        recipe=True,
    )
    cache_dir: str | None = option(None, "Hub cache.", recipe=True)
    token: str | None = option(None, "Hub token.", recipe=True)
    split: str | None = option(None, "Split to evaluate on (default: test if the data has one, else validation).")
    max_samples: int | None = option(
        None,
        "Evaluate on the first N examples of that split only (quick checks).",
        flag="max_analysis_samples",
        metavar="N",
    )
    batch_size: int = option(128, "Batch size of the evaluation passes.", flag="analysis_batch_size", metavar="N")

    def sources(self, task: str) -> dict:
        """Where the data of `task` comes from, as the keywords of `hf_maxsup.data.load_task_dataset`."""
        names = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file")
        return {name: getattr(self, name) for name in (*names, "cache_dir", "token", "validation_split_percentage")}

    def columns(self, task: str) -> dict[str | None, str]:
        """The columns the task reads, each mapped to its flag, as `hf_maxsup.data.check_columns` takes them."""
        return {}

    def to_json(self) -> dict:
        """The options as `results.json` records them: all but the token."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "token"}


@dataclass
class DataOptions(SourceOptions):
    """Which data classifiers are evaluated on, and the options of the report's extra measurements."""

    train_dir: str | None = option(None, "Image folder of training images.", recipe=True)
    validation_dir: str | None = option(None, "Image folder of validation images.", recipe=True)
    image_column_name: str = option("image", "Column of the images.", recipe=True)
    label_column_name: str = option("label", "Column of the labels.", recipe=True)
    text_column_name: str = option("text", "Column of the texts.", recipe=True)
    text_pair_column_name: str | None = option(None, "Second text of sentence pairs.", recipe=True)
    max_seq_length: int = option(128, "Truncation of texts, in tokens.", recipe=True)
    probe: bool = option(True, "Skip the linear probe on scikit-learn's digits.")
    probe_samples: int | None = option(
        None, "Use a stratified subset of this many digits for the linear probe (default: all 1,797)."
    )
    train_samples: int = option(
        2000, "Training examples on which the regime check measures the training accuracy; 0 skips it."
    )
    projection_classes: Sequence[int] = option(
        (0, 1, 2), "The three class ids of the penultimate-feature projection plot.", nargs=3, metavar="CLASS"
    )

    def sources(self, task: str) -> dict:
        if task != "image-classification":  # image folders, given for a text model, are left out, not refused
            return super().sources(task)
        return {**super().sources(task), "train_dir": self.train_dir, "validation_dir": self.validation_dir}

    def columns(self, task: str) -> dict[str | None, str]:
        columns = {self.label_column_name: "--label_column_name"}
        if task == "image-classification":
            columns[self.image_column_name] = "--image_column_name"
        elif task == "text-classification":
            columns.update(
                {self.text_column_name: "--text_column_name", self.text_pair_column_name: "--text_pair_column_name"}
            )
        return columns


@dataclass
class TranslationDataOptions(SourceOptions):
    """Which translation data the checkpoints are evaluated on (default: the embedded Bible en→fr test split), and how
    the translations are generated."""

    source_lang: str = option("en", "Source language key in the translation column.", recipe=True)
    target_lang: str = option("fr", "Target language key in the translation column.", recipe=True)
    translation_column_name: str = option("translation", "Column of {lang: text} dicts.", recipe=True)
    source_prefix: str = option("", "Prefix of every source, e.g. for T5.", recipe=True)
    max_source_length: int = option(128, "Longer sources are truncated.", recipe=True)
    max_target_length: int = option(128, "Longer targets are truncated; the longest generation.", recipe=True)
    num_beams: int = option(1, "Beams of the generation.", recipe=True, flag="generation_num_beams", metavar="N")

    def columns(self, task: str = "translation") -> dict[str | None, str]:
        return {self.translation_column_name: "--translation_column_name"}
