"""A recipe's `--help` without torch or transformers (they take seconds to load): the recipe's own options, the loss
first, then the model, the data and the output directory, and where the options of transformers' `TrainingArguments`
are (`--help_all` lists them all, with these). Also the usage line and the defaults the recipes set, which the full
parser ([`hf_maxsup.runner.parse`]) shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..arguments import RunArguments
from ..trainer.loss_arguments import LossArguments

__all__ = ["HELP_ALL", "RECIPE_DEFAULTS", "USAGE", "recipe_help", "wants_help"]

# The usage line: listing every option once more would take some 350 lines.
USAGE = "%(prog)s [options] | %(prog)s CONFIG.json|CONFIG.yaml"
# The training arguments the recipes set where the user does not (see `hf_maxsup.runner.parse.recipe_defaults`).
RECIPE_DEFAULTS = {"logging_steps": 0.02, "eval_strategy": "epoch"}
# The flag of the full help: every option, transformers' included.
HELP_ALL = "--help_all"
_HELP = ("-h", "--help")


def wants_help(argv: list[str]) -> bool:
    """Whether the command line asks for the short help (`-h`, `--help`), not the full one."""
    return any(arg in _HELP for arg in argv) and HELP_ALL not in argv


def _kind(hint) -> type:
    """The type a field's flag takes (`int` for `int | None`)."""
    return next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)


def _add_options(group, dataclass_type: type) -> None:
    """Declare the flags of a dataclass's fields for display, as `HfArgumentParser` names them."""
    hints = typing.get_type_hints(dataclass_type)
    for spec in dataclasses.fields(dataclass_type):
        if not spec.init:
            continue
        metadata = spec.metadata
        names = [f"--{spec.name}", *metadata.get("aliases", ())]
        default = None if spec.default is dataclasses.MISSING else spec.default
        kind = _kind(hints[spec.name])
        metavar = "{true,false}" if kind is bool else spec.name.upper()
        group.add_argument(
            *names,
            choices=metadata.get("choices"),
            metavar=None if metadata.get("choices") else metavar,
            default=repr(default) if isinstance(default, str) and not default.strip() else default,
            help=metadata.get("help", ""),
        )


def recipe_help(prog: str, description: str | None, dataclass_types: tuple[type, ...]) -> str:
    """The short help of a recipe.

    Args:
        prog (`str`): the script's name.
        description (`str`, *optional*): what the recipe does (the first paragraph of its docstring).
        dataclass_types (`tuple[type, ...]`): the recipe's model and data arguments, in that order.

    Returns:
        `str`: the help text.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=USAGE,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=_training_note(),
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", default=argparse.SUPPRESS, help="This help.")
    parser.add_argument(HELP_ALL, action="store_true", default=argparse.SUPPRESS, help="Every option, below too.")
    titles = ["loss (hf_maxsup)", "model", "data", "output directory"]
    for title, kind in zip(titles, (LossArguments, *dataclass_types, RunArguments)):
        _add_options(parser.add_argument_group(title), kind)
    return parser.format_help()


def _training_note() -> str:
    """What the short help says of transformers' options."""
    defaults = " and ".join(f"--{name} {value}" for name, value in RECIPE_DEFAULTS.items())
    return (
        "transformers TrainingArguments: every option of transformers' (Seq2Seq)TrainingArguments is taken too, as "
        "in its example scripts: --output_dir, --do_train, --do_eval, --do_predict, --num_train_epochs, "
        "--max_steps, --learning_rate, --per_device_train_batch_size, --seed, --resume_from_checkpoint, "
        f"--push_to_hub, ... Unless given, the recipes set {defaults}. {HELP_ALL} lists them all (it loads "
        "transformers: a few seconds)."
    )
