"""The options of the data the reports evaluate their runs on.

`hf-maxsup` builds its flags from these fields ([`option_flags`]). The data's source and columns are the recipes' own
arguments ([`hf_maxsup.arguments`]: the same dataclasses, inherited), which `compare` and `distill` read from the
recipe arguments; the other fields are the report's own flags, declared here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..arguments import DataSourceArguments, HubArguments, ImageColumns, TextColumns, TranslationColumns

__all__ = ["DataOptions", "SourceOptions", "TranslationDataOptions", "option", "option_flags"]

# The column group of each task's data: the columns a report checks are those the task's recipe reads.
TASK_COLUMNS = {
    "image-classification": ImageColumns,
    "text-classification": TextColumns,
    "translation": TranslationColumns,
}


def option(
    default, help: str, *, recipe: bool = False, flag: str | None = None, aliases: tuple = (), **argparse_kwargs
):
    """A field of the options with what its command-line flag needs.

    Args:
        default: the field's default, also the one the flag's help names.
        help (`str`): the flag's help.
        recipe (`bool`, *optional*, defaults to `False`): the recipe's command line holds the flag (a training
            argument such as `generation_num_beams`).
        flag (`str`, *optional*): the flag's name when it is not the field's (e.g. `max_analysis_samples`, since the
            recipe's `max_eval_samples` means something else).
        aliases (`tuple[str]`, *optional*): other names of the flag (a recipe's alias of a training argument).
        **argparse_kwargs: more of `add_argument` (`nargs`, `metavar`).
    """
    metadata = {"help": help, "recipe": recipe, "flag": flag, "aliases": aliases, "argparse": argparse_kwargs}
    return field(default=default, metadata=metadata)


def option_flags(options: type, *, recipe: bool) -> list[tuple[tuple[str, ...], dict]]:
    """`(flag names, add_argument keywords)` of each field of an options dataclass: the recipe's flags
    (`recipe=True`) or the report's own. The flags default to `None` ("not given": the field keeps its default); a
    boolean that is on by default is turned off by `--no_<name>`; the type comes from the field's annotation."""
    hints = typing.get_type_hints(options)
    flags = []
    for spec in dataclasses.fields(options):
        if spec.metadata.get("recipe", spec.name in RECIPE_ARGUMENTS) is not recipe:
            continue
        kind = next((arg for arg in typing.get_args(hints[spec.name]) if arg is not type(None)), hints[spec.name])
        default = spec.default
        kwargs = {"dest": spec.name, "default": None, **spec.metadata.get("argparse", {})}
        if kind is bool:
            flags.append(((f"--no_{spec.name}",), {**kwargs, "action": "store_false", "help": spec.metadata["help"]}))
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = spec.metadata["help"]
        if default not in (None, ""):
            help_text = f"{help_text.rstrip('.')} (default: {shown})."
        # A recipe's aliases are written as HfArgumentParser takes them ("--name"), the report's without dashes.
        aliases = [alias.lstrip("-") for alias in spec.metadata.get("aliases", ())]
        names = (spec.metadata.get("flag") or spec.name, *aliases)
        flags.append((tuple(f"--{name}" for name in names), {**kwargs, "type": kind, "help": help_text}))
    return flags


# The recipes' arguments that tell a report which data a run trained on.
RECIPE_ARGUMENTS = {
    spec.name
    for arguments in (DataSourceArguments, HubArguments, ImageColumns, TextColumns, TranslationColumns)
    for spec in dataclasses.fields(arguments)
}


@dataclass
class SourceOptions(DataSourceArguments, HubArguments):
    """Where the evaluation data comes from (default: the embedded data of the checkpoints' task), which split and how
    much of it: what the classification and the translation reports share."""

    split: str | None = option(None, "Split to evaluate on (default: test if the data has one, else validation).")
    max_samples: int | None = option(
        None,
        "Evaluate on the first N examples of that split only (quick checks).",
        flag="max_analysis_samples",
        metavar="N",
    )
    batch_size: int = option(128, "Batch size of the evaluation passes.", flag="analysis_batch_size", metavar="N")

    def task_columns(self, task: str) -> dict[str | None, str]:
        """The columns `task` reads, each mapped to its flag, as `hf_maxsup.data.check_columns` takes them: those of
        the task's column group (e.g. [`~hf_maxsup.arguments.TextColumns.columns`]), none when these options lack it."""
        group = TASK_COLUMNS.get(task)
        return group.columns(self) if group is not None and isinstance(self, group) else {}

    def task_image_folders(self, task: str) -> dict[str, str]:
        """The image folders given, by split, when `task` is the image task: given for a text model, they are left
        out, not refused."""
        if task != "image-classification" or not isinstance(self, ImageColumns):
            return {}
        return self.image_folders()

    def to_json(self) -> dict:
        """The options as `results.json` records them: all but the token."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "token"}


@dataclass
class DataOptions(SourceOptions, ImageColumns, TextColumns):
    """Which data classifiers are evaluated on, and the options of the report's extra measurements. It holds the
    columns of the image and the text task: those of the checkpoints' task are [`~SourceOptions.task_columns`]."""

    probe: bool = option(True, "Skip the linear probe on scikit-learn's digits.")
    probe_samples: int | None = option(
        None, "Use a stratified subset of this many digits for the linear probe (default: all 1,797)."
    )
    probe_shots: int | None = option(
        None,
        "Fit the linear probe on this many labelled digits per class (a few-shot probe, averaged over "
        "--probe_draws draws) instead of the whole training half.",
        metavar="N",
    )
    probe_draws: int = option(20, "Draws of the few-shot probe averaged.", metavar="N")
    train_samples: int = option(
        2000, "Training examples on which the regime check measures the training accuracy; 0 skips it."
    )
    projection_classes: Sequence[int] = option(
        (0, 1, 2), "The three class ids of the penultimate-feature projection plot.", nargs=3, metavar="CLASS"
    )


@dataclass
class TranslationDataOptions(SourceOptions, TranslationColumns):
    """Which translation data the checkpoints are evaluated on (default: the embedded Bible en→fr test split), and how
    the translations are generated."""

    num_beams: int = option(
        1, "Beams of the generation.", recipe=True, flag="generation_num_beams", aliases=("num_beams",), metavar="N"
    )
