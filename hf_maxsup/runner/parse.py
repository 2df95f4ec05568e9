"""The recipes' command line: their flags (or one `.json` / `.yaml` config file), the defaults the recipes set, the
checks of the launch, and logging.

`--help_all` lists the recipe's own options (the loss first, then model, data, run), then the options of transformers'
`TrainingArguments` under a heading of their own, with a one-line usage; `--help` is the short one of
[`hf_maxsup.runner.help`], without them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import types
import typing
from dataclasses import field, fields, make_dataclass

import datasets
import torch
import transformers
import yaml
from accelerate.utils import DistributedType
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments
from transformers.hf_argparser import string_to_bool

from .help import HELP_ALL, RECIPE_DEFAULTS, USAGE

__all__ = ["RecipeArgumentParser", "parse_args", "recipe_defaults"]

logger = logging.getLogger(__name__)

TRAINING_GROUP = "transformers TrainingArguments"
TRAINING_GROUP_HELP = "The options of transformers' (Seq2Seq)TrainingArguments, as in its examples."


def _split_fields(training_type: type) -> tuple[type, type]:
    """Two dataclasses holding the fields of `training_type` between them: the recipe's own (the loss settings), and
    those of transformers' (Seq2Seq)TrainingArguments, the latter in the argument group `HfArgumentParser` gives a
    dataclass with an `_argument_group_name`."""
    hints = typing.get_type_hints(training_type)
    theirs = {spec.name for spec in fields(Seq2SeqTrainingArguments)}
    own, inherited = [], []
    for spec in fields(training_type):
        if spec.init:  # as HfArgumentParser, which declares no option for the others
            # A field belongs to one dataclass: each part gets a copy.
            copy = field(default=spec.default, default_factory=spec.default_factory, metadata=spec.metadata)
            (inherited if spec.name in theirs else own).append((spec.name, hints[spec.name], copy))
    grouped = {"_argument_group_name": TRAINING_GROUP}
    return make_dataclass("RecipeOptions", own), make_dataclass("TransformersOptions", inherited, namespace=grouped)


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over the recipe's dataclasses, whose `--help` lists the options of transformers'
    `TrainingArguments` after the recipe's own, under a heading of their own, with a one-line usage.

    The options are declared from the training arguments split in two dataclasses, the recipe's own fields and those
    of transformers (in their own group); parsing fills the recipe's dataclasses, whose fields are those of the
    split, so that parsing is `HfArgumentParser`'s unchanged.

    Args:
        dataclass_types (`list[type]`): the recipe's dataclasses, one of them a `TrainingArguments`.
    """

    def __init__(self, dataclass_types: list[type]):
        training_type = next(kind for kind in dataclass_types if issubclass(kind, TrainingArguments))
        own, inherited = _split_fields(training_type)
        # The loss first, then the recipe's other options, then transformers'.
        declared = [own, *(kind for kind in dataclass_types if kind is not training_type), inherited]
        super().__init__(declared, usage=USAGE)
        self.dataclass_types = list(dataclass_types)  # what parsing fills: the same fields, as the recipe declared them

    def add_argument_group(self, title=None, description=None, **kwargs):
        # HfArgumentParser titles the group of a dataclass but gives it no description.
        if title == TRAINING_GROUP and description is None:
            description = TRAINING_GROUP_HELP
        return super().add_argument_group(title, description, **kwargs)


def parse_args(*dataclass_types):
    """Parse the command line into the given dataclasses, or a single `.json` / `.yaml` config file holding them all.

    Also sets up logging as the transformers examples do. When the launcher started several processes on a machine
    without GPUs, `use_cpu` is turned on (see [`_cpu_only_launch`]); a launch whose engine cannot run here stops with
    a message that says why.

    Returns:
        `tuple`: one instance of each dataclass, in order.
    """
    parser = RecipeArgumentParser(dataclass_types)
    defaults = recipe_defaults()
    parser.set_defaults(**defaults)  # also what --help shows
    overrides = {"use_cpu": True} if _cpu_only_launch() else {}
    if len(sys.argv) == 2 and sys.argv[1].endswith((".json", ".yaml", ".yml")):
        parsed = _parse_config_file(parser, sys.argv[1], overrides, defaults)
    else:
        extra = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
        argv = ["--help" if arg == HELP_ALL else arg for arg in sys.argv[1:]]  # the full help is the parser's
        if _evaluation_turned_off(_given_eval_flags(argv)):
            parser.set_defaults(eval_strategy="no")
        parsed = parser.parse_args_into_dataclasses(args=[*argv, *extra])
    training_args = next(args for args in parsed if isinstance(args, TrainingArguments))
    _set_up_logging(training_args)
    if overrides:
        logger.info(f"{_launched_processes()} processes on a machine without GPUs: training on the CPU (use_cpu).")
    _check_launch(training_args)
    return parsed


def _evaluation_turned_off(given: dict) -> bool:
    """Whether the user turned `do_eval` off without choosing an `eval_strategy`: then the recipes' default of
    evaluating every epoch ([`recipe_defaults`]) yields, since TrainingArguments would turn `do_eval` back on for it."""
    return given.get("do_eval") is False and given.get("eval_strategy") is None


def _given_eval_flags(args: list[str]) -> dict:
    """`do_eval` (as a bool) and `eval_strategy` as the command line `args` give them; `None` where not given."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--do_eval", "--do-eval", nargs="?", const="true")
    probe.add_argument("--eval_strategy", "--eval-strategy")
    given = vars(probe.parse_known_args(args)[0])
    try:
        return {**given, "do_eval": None if given["do_eval"] is None else string_to_bool(given["do_eval"])}
    except argparse.ArgumentTypeError:  # the parser proper names the bad value
        return {}


def _set_up_logging(training_args) -> None:
    """Log to stdout as the transformers examples do: at INFO on the main process unless `--log_level` says otherwise
    (`--log_level_replica`, WARNING by default, on the others), for hf_maxsup's loggers, `datasets`' and
    `transformers`'."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        # `--log_level passive` (the default) keeps transformers' verbosity: INFO here, as in the examples.
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logging.getLogger(__package__.partition(".")[0]).setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def recipe_defaults() -> dict:
    """The training arguments the recipes set where the user does not (`RECIPE_DEFAULTS`): log every 2 % of training
    (the Trainer reads a `logging_steps` below 1 as a share of the steps), so that the loss and its components (`ce`,
    `reg`, `alpha`) show up in short runs too, and evaluate at the end of each epoch; and, without an accelerator, do
    not pin memory (the DataLoader would warn about it on every evaluation)."""
    defaults = dict(RECIPE_DEFAULTS)
    if not torch.accelerator.is_available():
        defaults["dataloader_pin_memory"] = False
    return defaults


def _launched_processes() -> int:
    """How many processes the launcher (`accelerate launch`, `torchrun`, `deepspeed`) started, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _cpu_only_launch() -> bool:
    """Several processes on a machine without GPUs.

    accelerate finds no distributed backend there unless told `use_cpu`: each process then believes it is alone,
    DeepSpeed (which counts the launched processes itself) fails on the "auto" batch sizes, and other engines run
    the same training once per process into one `output_dir`.
    """
    return _launched_processes() > 1 and not torch.accelerator.is_available()


def _check_launch(training_args) -> None:
    """Stop a launch that would not run as the launcher was told, before any work.

    Raises:
        `RuntimeError`: the processes do not form one run, or FSDP was asked for where accelerate cannot run it.
    """
    launched = _launched_processes()
    if training_args.world_size != launched:
        raise RuntimeError(
            f"the launcher started {launched} processes, but each sees a run of "
            f"{training_args.world_size}: they would train separately into one --output_dir. Check "
            "the launcher's settings (accelerate config, --num_processes, --use_cpu)."
        )
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    on_gpus = training_args.distributed_state.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU)
    if fsdp_asked and launched > 1 and not on_gpus:
        # accelerate turns FSDP on only for GPU-type backends; on CPU it would silently run plain DDP.
        raise RuntimeError(
            "FSDP was asked for (accelerate config with distributed_type: FSDP), but this machine "
            "has no GPUs and accelerate runs FSDP only on GPUs: the run would be plain DDP. Launch "
            "with recipes/configs/cpu_2proc.yaml (DDP) or recipes/configs/deepspeed.yaml (ZeRO) "
            "instead, or on a machine with GPUs."
        )


def _parse_config_file(parser: HfArgumentParser, path: str, overrides: dict, defaults: dict):
    """Parse a `.json` / `.yaml` config file, over `defaults` and with `overrides` on top, with errors that name the
    file and the fix rather than a traceback from the parser.

    Each value is read as the command line would read its text (see [`_coerce_config_values`]): `"max_steps": "2"`
    is 2, `"do_eval": "no"` is False, YAML's `learning_rate: 1e-3` (a string to YAML 1.1) is 0.001, and YAML's
    `save_strategy: no` is the strategy "no" (YAML 1.2 booleans: only true and false).
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"config file {path}: no such file. Give the path of a .json or .yaml file holding the "
            "arguments, or pass them on the command line."
        )
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.endswith(".json") else yaml.load(f, Loader=_ConfigLoader)
        if not isinstance(values, dict):
            raise ValueError("it must hold one mapping of argument names to values")
        values = _coerce_config_values(parser, values)
        if _evaluation_turned_off(values):
            defaults = {**defaults, "eval_strategy": "no"}
        return parser.parse_dict({**defaults, **values, **overrides})
    except (ValueError, yaml.YAMLError) as err:  # bad syntax, not UTF-8 (both ValueErrors), unknown keys
        raise ValueError(f"config file {path}: {err}\nFix it there (--help lists the argument names).") from err


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only `true` and `false`, so that `save_strategy: no` or
    `report_to: none`-like words stay the text the command line would get (YAML 1.1 reads `no`, `off`, `yes`, `on`
    as booleans)."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _coerce_config_values(parser: HfArgumentParser, values: dict) -> dict:
    """`values` of a config file as the command line would parse their text: each number, string or boolean of an
    argument goes through the parser's own conversion of `--key=text` (`int`, `float`, the bool words, the choices
    of an enum); lists, mappings and `null` stay as they are, for the arguments that take them. Unknown keys are left
    for `parse_dict` to name.

    Raises:
        `ValueError`: a value the command line would refuse, or a list or mapping for an argument that takes one
        value; the message names the key, the value and the expected type.
    """
    hints = {
        spec.name: typing.get_type_hints(kind)[spec.name]
        for kind in parser.dataclass_types
        for spec in fields(kind)
        if spec.init
    }
    parser.exit_on_error = False  # an ArgumentError to name the file with, not a usage message and exit 2
    coerced = dict(values)
    for key, value in values.items():
        if key not in hints or value is None:
            continue
        if isinstance(value, (list, dict)):
            kind = list if isinstance(value, list) else dict
            if not _accepts(hints[key], kind):
                raise ValueError(
                    f"{key}: {value!r} is a {'list' if kind is list else 'mapping'}, but {key} takes one value "
                    f"({_type_name(hints[key])})."
                )
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            coerced[key] = getattr(parser.parse_known_args([f"--{key}={text}"])[0], key)
        except argparse.ArgumentError as err:
            raise ValueError(f"{key}: {value!r} is not a valid value ({_type_name(hints[key])}): {err}.") from None
    return coerced


def _accepts(hint, kind: type) -> bool:
    """Whether a field typed `hint` takes a value of `kind` (`list` or `dict`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(arg, kind) for arg in typing.get_args(hint))
    return (typing.get_origin(hint) or hint) is kind


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
