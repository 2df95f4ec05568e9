"""What the three recipe scripts share: parsing, the checks before any work, and the train / evaluate / predict / push
flow.

The scripts in `recipes/` call [`start`], build their task's model and data, and call [`run`]; their arguments are in
[`hf_maxsup.arguments`].
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
from dataclasses import fields

import datasets
import torch
import transformers
import yaml
from accelerate.utils import DistributedType
from transformers import AutoTokenizer, HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments, set_seed

from . import hub
from .arguments import DataArguments, ModelArguments, RunArguments
from .auto import unwrap_peft
from .data import check_columns, load_task_dataset
from .models import apply_lora, check_model_name_or_path

__all__ = [
    "build_with_shared_tokenizer",
    "checkpoint_problems",
    "data_source",
    "describe_engine",
    "describe_model",
    "earlier_run_files",
    "fsdp_layers_to_wrap",
    "last_complete_checkpoint",
    "load_data",
    "parse_args",
    "prepare_engine",
    "preflight",
    "recipe_defaults",
    "reliability_diagram_writer",
    "run",
    "start",
    "tokenize",
]

logger = logging.getLogger(__name__)

# Files of a saved model; a checkpoint needs one of them and trainer_state.json, which the Trainer writes last.
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")
# Files that show an output_dir holds a finished (or finishing) run.
RUN_FILES = ("trainer_state.json", "all_results.json", "train_results.json", *WEIGHTS)
# "_*" files are never uploaded by Trainer.push_to_hub.
LOCK_FILE = "_hf_maxsup.lock"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Output directories this process holds the lock of: one process may run several recipes into one directory in turn
# (the tests do), and a second flock of the same file from this process would fail.
_HELD_LOCKS: dict[str, int] = {}


def data_source(data_args: DataArguments, embedded: str) -> dict:
    """The model-card arguments (`dataset`, `dataset_tags`, `dataset_args`) that name the data a run trained on.

    Args:
        data_args ([`DataArguments`]): the parsed arguments (with `train_dir` for the image recipe).
        embedded (`str`): the name of the embedded data, used when no source was given.
    """
    if data_args.dataset_name is not None:
        return {
            "dataset": data_args.dataset_name,
            "dataset_tags": data_args.dataset_name,
            "dataset_args": data_args.dataset_config_name,
        }
    # File names only: a local path means nothing to a reader of the card, and may say more than intended.
    sources = [
        (split, getattr(data_args, f"{split}_{kind}", None))
        for kind in ("file", "dir")
        for split in ("train", "validation", "test")
    ]
    given = [f"{split}: {os.path.basename(os.path.normpath(path))}" for split, path in sources if path]
    return {"dataset": f"local data ({', '.join(given)})" if given else embedded}


def parse_args(*dataclass_types):
    """Parse the command line into the given dataclasses, or a single `.json` / `.yaml` config file holding them all.

    Also sets up logging as the transformers examples do. When the launcher started several processes on a machine
    without GPUs, `use_cpu` is turned on (see [`_cpu_only_launch`]); a launch whose engine cannot run here stops with
    a message that says why.
    """
    parser = HfArgumentParser(dataclass_types)
    _own_options_first(parser)
    defaults = recipe_defaults()
    parser.set_defaults(**defaults)  # also what --help shows
    overrides = {"use_cpu": True} if _cpu_only_launch() else {}
    if len(sys.argv) == 2 and sys.argv[1].endswith((".json", ".yaml", ".yml")):
        parsed = _parse_config_file(parser, sys.argv[1], overrides, defaults)
    else:
        extra = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
        parsed = parser.parse_args_into_dataclasses(args=[*sys.argv[1:], *extra])
    training_args = next(args for args in parsed if isinstance(args, TrainingArguments))
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    if overrides:
        logger.info(f"{_launched_processes()} processes on a machine without GPUs: training on the CPU (use_cpu).")
    _check_launch(training_args)
    return parsed


def recipe_defaults() -> dict:
    """The training arguments the recipes set where the user does not: log every 2 % of training (the Trainer reads
    a `logging_steps` below 1 as a share of the steps), so that the loss and its components (`ce`, `reg`, `alpha`)
    show up in short runs too, evaluate at the end of each epoch, and, without an accelerator, do not pin memory (the
    DataLoader would warn about it on every evaluation)."""
    defaults = {"logging_steps": 0.02, "eval_strategy": "epoch"}
    if not torch.accelerator.is_available():
        defaults["dataloader_pin_memory"] = False
    return defaults


def _own_options_first(parser: HfArgumentParser) -> None:
    """List the options of transformers' `TrainingArguments` after the recipe's own (model, data, loss, run) in
    `--help`, under a heading of their own, with a one-line usage; parsing is unchanged.

    argparse has no public way to regroup an option once added: this moves the help entries between its groups.
    """
    # The usage line would list every option once more (some 350 lines).
    parser.usage = "%(prog)s [options] | %(prog)s CONFIG.json|CONFIG.yaml"
    inherited = {item.name for item in fields(Seq2SeqTrainingArguments)}
    group = parser.add_argument_group(
        "transformers TrainingArguments", "The options of transformers' (Seq2Seq)TrainingArguments, as in its examples."
    )
    for action in [action for action in parser._optionals._group_actions if action.dest in inherited]:
        parser._optionals._group_actions.remove(action)
        group._group_actions.append(action)


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
    file and the fix rather than a traceback from the parser."""
    if not os.path.isfile(path):
        raise ValueError(
            f"config file {path}: no such file. Give the path of a .json or .yaml file holding the "
            "arguments, or pass them on the command line."
        )
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        if not isinstance(values, dict):
            raise ValueError("it must hold one mapping of argument names to values")
        return parser.parse_dict({**defaults, **values, **overrides})
    except (ValueError, yaml.YAMLError) as err:  # bad syntax, not UTF-8 (both ValueErrors), unknown keys
        raise ValueError(f"config file {path}: {err}\nFix it there (--help lists the argument names).") from err


def load_data(task: str, data_args: DataArguments, model_args: ModelArguments, seed: int = 42):
    """Load the task's data (see [`hf_maxsup.data.load_task_dataset`]), check the named columns and truncate splits.

    Args:
        task (`str`): `"image-classification"`, `"text-classification"` or `"translation"`.
        data_args ([`DataArguments`]), model_args ([`ModelArguments`]): the parsed arguments; the task's subclass of
            `DataArguments` names the columns it reads and its other sources (`columns()`, `sources()`).

    Returns:
        `datasets.DatasetDict` with `train`, `validation` and possibly `test`.
    """
    columns = data_args.columns()
    raw = load_task_dataset(
        task,
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
        validation_split_percentage=data_args.validation_split_percentage,
        seed=seed,
        non_empty_columns=[column for column in columns if column is not None],
        **data_args.sources(),
    )
    check_columns(raw, columns)
    for split, fix in (
        ("train", "--train_file (or --train_dir, --dataset_name)"),
        ("validation", "--validation_file, or --validation_split_percentage above 0"),
    ):
        if split not in raw:
            raise ValueError(f"the data has no {split} split (it has: {', '.join(raw) or 'none'}); pass {fix}.")
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    for split, limit in limits.items():
        if split in raw and limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


def start(task: str, model_type: type, data_type: type, training_type: type):
    """The first steps of every recipe: parse the flags, check the run before any work is done ([`preflight`]), seed,
    and load the data ([`load_data`]).

    Args:
        task (`str`): `"image-classification"`, `"text-classification"` or `"translation"`.
        model_type, data_type (`type`): the task's [`ModelArguments`] and [`DataArguments`] (sub)classes.
        training_type (`type`): [`MaxSupTrainingArguments`] or its Seq2Seq variant.

    Returns:
        `(model_args, data_args, training_args, raw)`, `raw` the loaded `datasets.DatasetDict`.
    """
    model_args, data_args, training_args, run_args = parse_args(model_type, data_type, training_type, RunArguments)
    preflight(model_args, training_args, run_args)
    set_seed(training_args.seed)
    return model_args, data_args, training_args, load_data(task, data_args, model_args, seed=training_args.seed)


def tokenize(raw, preprocess, data_args: DataArguments, training_args):
    """Every split of `raw` through the batched `preprocess` (one of `hf_maxsup.data`'s preprocess functions), the
    raw columns dropped; the main process first, so that the other processes read its cache.

    Returns:
        `datasets.DatasetDict`: the tokenized splits.
    """
    with training_args.main_process_first(desc="tokenization"):
        return raw.map(
            preprocess,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=raw["train"].column_names,
        )


def maybe_lora(model, model_args: ModelArguments, task_type: str):
    """Wrap the model with LoRA adapters when `--use_peft` is set."""
    if not model_args.use_peft:
        return model
    return apply_lora(
        model, task_type, r=model_args.lora_r, alpha=model_args.lora_alpha, dropout=model_args.lora_dropout
    )


def reliability_diagram_writer(output_dir: str):
    """An `on_eval` callback for [`run`] that saves the evaluation set's reliability diagram to
    `output_dir/reliability_diagram.png` (shown in the model card).
    """

    def write(output) -> None:
        from .analysis import reliability_diagram

        figure = reliability_diagram(output.predictions, output.label_ids, title="Evaluation set")
        figure.savefig(os.path.join(output_dir, "reliability_diagram.png"), dpi=100, bbox_inches="tight")

    return write


def checkpoint_problems(path: str) -> list[str]:
    """What a checkpoint folder lacks to be resumed from: `[]` when it is complete.

    The Trainer writes a checkpoint's weights first and `trainer_state.json` last, so a save interrupted by a crash
    leaves a folder without one of them (or with a truncated `trainer_state.json`).
    """
    missing = [] if any(os.path.isfile(os.path.join(path, name)) for name in WEIGHTS) else ["model weights"]
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
    except FileNotFoundError:
        missing.append("trainer_state.json")
    except ValueError:
        missing.append("a readable trainer_state.json (it is truncated)")
    return missing


def _checkpoints(output_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders of `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    ]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def _step(checkpoint: str) -> int:
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(checkpoint)))
    return int(match.group(1)) if match else -1


def last_complete_checkpoint(output_dir: str, log=logger.warning) -> str | None:
    """The newest complete checkpoint of `output_dir` (see [`checkpoint_problems`]), or `None`.

    Newer incomplete ones, left by a crash during their save, are skipped, and `log` is told which and why.
    """
    for path in reversed(_checkpoints(output_dir)):
        problems = checkpoint_problems(path)
        if not problems:
            return path
        log(
            f"skipping {path}: it is incomplete (no {', '.join(problems)}), probably because the run was stopped "
            "while saving it; an earlier checkpoint is used."
        )
    return None


def _resume_checkpoint(training_args) -> str | None:
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "True", "true"):
        if not os.path.isdir(training_args.output_dir):
            raise ValueError(
                f"--resume_from_checkpoint {resume}: --output_dir {training_args.output_dir} does not "
                "exist, so there is no run to resume. Check --output_dir, or leave out "
                "--resume_from_checkpoint to start a new run."
            )
        resume = last_complete_checkpoint(training_args.output_dir)
        if resume is None:
            raise ValueError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no complete "
                f"checkpoint-* folder in {training_args.output_dir}. Start the run again without "
                "--resume_from_checkpoint (add --overwrite_output_dir to replace what is there)."
            )
    elif resume is not None and not os.path.isdir(resume):
        raise ValueError(
            f"--resume_from_checkpoint {resume}: no such directory. Give a checkpoint-* folder of an "
            "earlier run, or 'last' for the newest one in --output_dir."
        )
    return resume


def _lock_output_dir(output_dir: str) -> None:
    """Hold an exclusive `flock` on `output_dir/_hf_maxsup.lock` until this process ends (the kernel releases it on
    a crash too, so it cannot go stale), so that a second run into the same directory fails at once.
    """
    path = os.path.realpath(output_dir)
    if path in _HELD_LOCKS:
        return
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RuntimeError(
            f"--output_dir {output_dir} is in use by {holder}: two runs into one directory would mix "
            "their files. Wait for that run to end, or give this one another --output_dir."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
    _HELD_LOCKS[path] = fd


def _release_output_dir(output_dir: str) -> None:
    fd = _HELD_LOCKS.pop(os.path.realpath(output_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


def earlier_run_files(output_dir: str) -> list[str]:
    """The files and checkpoint folders of `output_dir` that a new training run would overwrite."""
    found = [name for name in RUN_FILES if os.path.isfile(os.path.join(output_dir, name))]
    return found + [os.path.basename(path) for path in _checkpoints(output_dir)]


def _refuse_to_overwrite(training_args, overwrite: bool) -> None:
    """Stop a new training run from replacing a finished run or checkpoints in its `output_dir`, unless told to."""
    output_dir = training_args.output_dir
    checkpoints = _checkpoints(output_dir)
    found = earlier_run_files(output_dir)
    if not found:
        return
    if not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} holds an earlier run ({', '.join(found)}), which this run would "
            "overwrite. Pass --resume_from_checkpoint last to continue it, --overwrite_output_dir to "
            "replace it, or give another --output_dir."
        )
    if training_args.process_index == 0:
        # Stale checkpoints would be taken for this run's by a later --resume_from_checkpoint last.
        for path in checkpoints:
            shutil.rmtree(path)
        logger.warning(
            f"--overwrite_output_dir: replacing the run in {output_dir} (deleted {len(checkpoints)} "
            "checkpoint folders)."
        )


def loss_history(checkpoint: str, training_args, allow_change: bool = False) -> list[dict]:
    """The loss settings of a resumed run, segment by segment, for its model card; `[]` when they never changed.

    Each entry is the card's `hf_maxsup` metadata of one segment plus `from_step`, the step it started at.

    Raises:
        `ValueError`: the settings differ from the checkpoint's and `allow_change` is not set.
    """
    recorded = hub.read_card_metadata(checkpoint)
    if not recorded:
        return []
    history = recorded.get("history") or [{**recorded, "from_step": 0}]
    last = {key: value for key, value in history[-1].items() if key != "from_step"}
    current = hub.loss_metadata(
        training_args.loss,
        training_args.loss_alpha,
        training_args.loss_alpha_end,
        training_args.loss_alpha_schedule,
        training_args.loss_ls_mass,
    )
    if last == current:
        return history if len(history) > 1 else []
    if not allow_change:
        raise ValueError(
            f"{checkpoint} was trained with {hub.describe_loss(last)}, but this run asks for "
            f"{hub.describe_loss(current)}. Pass the checkpoint's settings (--loss, --loss_alpha, "
            "--loss_alpha_end, --loss_alpha_schedule, --loss_ls_mass) to resume it, or "
            "--allow_loss_change to go on with the new ones (the model card records both), or start a "
            "new run with another --output_dir."
        )
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        step = json.load(f)["global_step"]
    logger.warning(
        f"--allow_loss_change: {hub.describe_loss(last)} until step {step}, {hub.describe_loss(current)} "
        "from there; the model card records both."
    )
    return [*history, {**current, "from_step": step}]


def preflight(model_args: ModelArguments, training_args, run_args: RunArguments | None = None) -> None:
    """Check what a recipe was given that can be checked before any work, and take the output directory.

    Checks `--model_name_or_path` (a local-looking path must exist), `--resume_from_checkpoint` (`last` becomes the
    newest complete checkpoint, a folder must be complete) and whether training would overwrite an earlier run; the
    main process locks `output_dir` for the rest of its life (released at the end of [`run`]).

    Raises:
        `ValueError`: a mistake in the arguments; the message names the fix.
        `RuntimeError`: another run holds `output_dir`.
    """
    run_args = run_args or RunArguments()
    check_model_name_or_path(model_args.model_name_or_path)
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "True", "true") and not os.path.isdir(training_args.output_dir):
        _resume_checkpoint(training_args)  # raises, before the lock creates the directory
    if training_args.process_index == 0:
        _lock_output_dir(training_args.output_dir)
    resume = training_args.resume_from_checkpoint = _resume_checkpoint(training_args)
    if resume is not None:
        problems = checkpoint_problems(resume)
        if problems:
            raise ValueError(
                f"--resume_from_checkpoint {resume}: the checkpoint is incomplete (no "
                f"{', '.join(problems)}), probably because its run was stopped while saving it. Give "
                "an earlier checkpoint, or 'last' for the newest complete one."
            )
        training_args.loss_history = loss_history(resume, training_args, run_args.allow_loss_change)
        if training_args.process_index == 0:
            # Left by a crash while saving; the resumed run saves those steps again.
            for path in _checkpoints(training_args.output_dir):
                if _step(path) > _step(resume) and checkpoint_problems(path):
                    shutil.rmtree(path)
    elif training_args.do_train:
        _refuse_to_overwrite(training_args, run_args.overwrite_output_dir)


def build_with_shared_tokenizer(builder, training_args, **kwargs):
    """Call a text or translation builder of `hf_maxsup.models` so that all processes, and a resumed run, share one
    tokenizer.

    The offline defaults train their tokenizer on the data, and the trainers of 🤗 Tokenizers can give another
    vocabulary in another process. So a resumed run takes the tokenizer saved in its checkpoint; otherwise the main
    process builds first and saves its tokenizer to `output_dir` (a file system the processes share, as for
    checkpoints), and the other processes use that one.

    Args:
        builder (`Callable`): [`~hf_maxsup.models.build_text_model`] or [`~hf_maxsup.models.build_translation_model`].
        training_args: the run's arguments (`resume_from_checkpoint`, `output_dir`, process index and count).
        kwargs: the builder's arguments; `tokenizer` is set here.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: what the builder returns.
    """
    checkpoint = training_args.resume_from_checkpoint and _resume_checkpoint(training_args)
    with training_args.main_process_first(local=False, desc="building the tokenizer"):
        saved = checkpoint or (training_args.output_dir if training_args.process_index > 0 else None)
        if saved is not None and os.path.isfile(os.path.join(saved, "tokenizer.json")):
            kwargs["tokenizer"] = AutoTokenizer.from_pretrained(saved)
        model, tokenizer = builder(**kwargs)
        if training_args.world_size > 1 and training_args.process_index == 0:
            tokenizer.save_pretrained(training_args.output_dir)
    return model, tokenizer


def _check_checkpoint_fits(model, checkpoint: str) -> None:
    """Refuse to resume a checkpoint whose weights do not fit the model this run built (another architecture, size or
    label set), before training starts rather than with a `size mismatch` from `load_state_dict`."""
    from safetensors import safe_open

    path = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(path) or hasattr(model, "peft_config"):
        return  # sharded or adapter weights: left to the Trainer
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(path, framework="pt") as f:
        saved = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    wrong = [
        f"{name} is {list(shape)} there, {list(expected[name])} here"
        for name, shape in saved.items()
        if name in expected and expected[name] != shape
    ]
    missing = sorted(set(expected) - set(saved))
    if wrong or len(missing) > len(expected) // 2:
        detail = "; ".join(wrong[:3]) or f"{len(missing)} of this model's {len(expected)} weights are missing"
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} holds another model than this run builds ({detail}). "
            "Resume it with the --model_name_or_path and data (labels) it was trained with, or start "
            "a new run with another --output_dir."
        )


def describe_engine(state) -> str:
    """The engine an accelerate state really runs and its process count, e.g. `"FSDP2, 2 processes"`,
    `"DeepSpeed ZeRO-3, 2 processes"`, `"DDP, 2 processes"` or `"single process"`.

    Args:
        state (`accelerate.state.AcceleratorState`): the state of the trainer's accelerator.
    """
    count = state.num_processes
    if state.distributed_type == DistributedType.DEEPSPEED:
        engine = f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    elif state.distributed_type == DistributedType.FSDP:
        engine = f"FSDP{state.fsdp_plugin.fsdp_version}"
    elif count > 1:
        engine = "DDP"
    else:
        return "single process"
    return f"{engine}, {count} process{'es' if count > 1 else ''}"


def _input_embeddings(model):
    """The model's input embeddings, or `None` for a model without (vision models do not implement the method)."""
    try:
        return model.get_input_embeddings()
    except NotImplementedError:
        return None


def fsdp_layers_to_wrap(model) -> list[str]:
    """The classes of the layers FSDP should shard one by one: the model's `_no_split_modules` that do not hold its
    input embeddings, or else the classes of the blocks its `ModuleList`s hold (e.g. Marian, which names none).

    accelerate wraps the input embeddings on their own after the layers; a listed class that holds them (BERT's
    `BertEmbeddings`) would shard them a second time, which fails in `fully_shard`.
    """
    embeddings = _input_embeddings(model)
    holders = {
        type(module).__name__
        for module in model.modules()
        if embeddings is not None and any(sub is embeddings for sub in module.modules())
    }
    layers = sorted(set(getattr(model, "_no_split_modules", None) or ()) - holders)
    if not layers:
        layers = sorted(
            {
                type(block).__name__
                for module in model.modules()
                if isinstance(module, torch.nn.ModuleList)
                for block in module
            }
            - holders
        )
    return layers


def _check_fsdp2_ties(model) -> None:
    """Refuse a model whose tied weight is held by modules besides its input and output embeddings (Marian: also
    the encoder's and decoder's `embed_tokens`), before the cryptic error accelerate's FSDP2 set-up ends with.

    accelerate groups the input and output embeddings together and leaves any other holder in another FSDP group,
    which `fully_shard` rejects for a shared parameter.
    """
    embeddings = {id(_input_embeddings(model)), id(getattr(model, "get_output_embeddings", lambda: None)())}
    holders: dict[int, list[tuple[str, int]]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append((name, id(module)))
    for owners in holders.values():
        if len(owners) > 1 and any(module not in embeddings for _, module in owners):
            raise RuntimeError(
                f"FSDP2 cannot shard this model: one weight is tied across "
                f"{', '.join(name for name, _ in owners)}, which accelerate puts in different FSDP "
                "groups. Launch with recipes/configs/deepspeed.yaml and --deepspeed "
                "recipes/configs/ds_zero3.json (ZeRO-3 shards it too), or with ddp.yaml."
            )


def prepare_engine(trainer) -> None:
    """Log the engine that runs (see [`describe_engine`]) and, under FSDP, fill in what the config left to the model.

    An FSDP config without `fsdp_transformer_layer_cls_to_wrap` gets [`fsdp_layers_to_wrap`], so that one config
    serves every model; a model FSDP2 cannot shard stops the run (`RuntimeError`). Call it after the trainer is built
    (it creates the accelerator) and before training.
    """
    state = trainer.accelerator.state
    if state.is_main_process:
        # A warning, as the transformers examples log their process summary: visible at the default log level.
        logger.warning(f"engine: {describe_engine(state)}")
    if state.distributed_type != DistributedType.FSDP:
        return
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin, model = state.fsdp_plugin, trainer.model
    if plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = fsdp_layers_to_wrap(model)
        logger.info(f"FSDP wraps {', '.join(plugin.transformer_cls_names_to_wrap)}")
    if plugin.fsdp_version == 2:
        _check_fsdp2_ties(model)
    if _input_embeddings(model) is None:
        # accelerate's FSDP2 set-up calls get_input_embeddings(), which raises for vision models (ConvNeXt): answer
        # None, as accelerate does for a model without the method.
        model.get_input_embeddings = lambda: None


def _save_final_model(trainer) -> None:
    """Save the trained model as one loadable model, whatever state dict type FSDP checkpoints with.

    With `SHARDED_STATE_DICT`, `Trainer.save_model` writes no model at all; the final save gathers the full one.
    """
    plugin = trainer.accelerator.state.fsdp_plugin if trainer.is_fsdp_enabled else None
    if plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(_internal_call=True)  # not the public call, which would push before evaluating


def describe_model(model) -> str:
    """The model a run trains, in words: its class, size and where its weights come from, e.g.
    `"BertForSequenceClassification (0.4M parameters), built from a config: random weights"`."""
    base = unwrap_peft(model)
    count = sum(param.numel() for param in base.parameters())
    source = getattr(base.config, "_name_or_path", "") or None
    origin = f"weights from {source}" if source else "built from a config: random weights"
    adapter = ", LoRA adapters" if base is not model else ""
    return f"{type(base).__name__} ({count / 1e6:.1f}M parameters{adapter}), {origin}"


def _log_start(trainer, card_kwargs: dict) -> None:
    """Say which model and data the run uses, before any work."""
    sizes = ", ".join(
        f"{name} {len(data)}"
        for name, data in (("train", trainer.train_dataset), ("validation", trainer.eval_dataset))
        if data
    )
    # Warnings, as the engine line: the recipes log at the warning level unless --log_level says otherwise.
    logger.warning(f"model: {describe_model(trainer.accelerator.unwrap_model(trainer.model))}")
    logger.warning(f"data: {card_kwargs.get('dataset')} ({sizes} examples)")


def _log_outputs(output_dir: str) -> None:
    """Say where the run left what a user looks for: the model, the metrics, the card and the figures."""
    found = {
        what: [name for name in names if os.path.isfile(os.path.join(output_dir, name))]
        for what, names in (
            ("model", WEIGHTS),
            ("metrics", ("all_results.json",)),
            ("model card", ("README.md",)),
            ("figures", (hub.RELIABILITY_DIAGRAM,)),
            ("sacreBLEU signatures", ("sacrebleu_signatures.json",)),
        )
    }
    listed = "; ".join(f"{what}: {', '.join(names)}" for what, names in found.items() if names)
    logger.warning(f"outputs in {os.path.abspath(output_dir)}: {listed or 'none'}")


def _push_last(trainer, training_args, card_kwargs: dict) -> None:
    """Push once everything is on disk; a failure says that and how to push later."""
    try:
        trainer.push_to_hub(**card_kwargs)
    except hub.HubPushError as err:
        raise hub.HubPushError(
            f"{err}\nTraining, evaluation and prediction finished: their metrics "
            f"(all_results.json, ...) are in {training_args.output_dir}."
        ) from err.__cause__


def run(trainer, training_args, eval_dataset=None, predict_dataset=None, card_kwargs=None, on_eval=None) -> dict:
    """Train, save, evaluate, predict, write the metrics and the model card, and push last, as the flags ask.

    Call [`preflight`] first. Logs the engine first (see [`prepare_engine`]). A failed push (`HubPushError`) comes
    after everything is saved locally.

    Args:
        trainer ([`MaxSupTrainer`] or [`MaxSupSeq2SeqTrainer`]): the configured trainer.
        training_args: its arguments (`do_train`, `do_eval`, `do_predict`, `push_to_hub`, ...).
        eval_dataset, predict_dataset (`datasets.Dataset`, *optional*): the sets for `--do_eval` / `--do_predict`.
        card_kwargs (`dict`, *optional*): `create_model_card` arguments (dataset name, tags, finetuned_from, ...).
        on_eval (`Callable`, *optional*): called with the `PredictionOutput` of the evaluation set, e.g. to draw a
            reliability diagram into `output_dir` before the card is written.

    Returns:
        `dict`: all metrics (train, eval, predict).
    """
    card_kwargs = {**(card_kwargs or {}), "loss_history": getattr(training_args, "loss_history", None) or None}
    results = {}
    prepare_engine(trainer)
    if trainer.is_world_process_zero():
        _log_start(trainer, card_kwargs)
    trainer.create_model_card(**card_kwargs)
    if training_args.do_train:
        checkpoint = _resume_checkpoint(training_args)
        if checkpoint is not None:
            _check_checkpoint_fits(trainer.model, checkpoint)
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        _save_final_model(trainer)
        metrics = {**train_result.metrics, "train_samples": len(trainer.train_dataset)}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    if training_args.do_eval and eval_dataset is not None:
        # predict() rather than evaluate(): the same pass also gives the logits for on_eval.
        output = trainer.predict(eval_dataset, metric_key_prefix="eval")
        metrics = {**output.metrics, "eval_samples": len(eval_dataset)}
        trainer.log(metrics)  # into log_history, where the model card reads it; adds the eval loss components
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if on_eval is not None and trainer.is_world_process_zero():
            on_eval(output)
        results.update(metrics)
    if training_args.do_predict and predict_dataset is not None:
        output = trainer.predict(predict_dataset, metric_key_prefix="predict")
        metrics = {**output.metrics, "predict_samples": len(predict_dataset)}
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        results.update(metrics)
    trainer.create_model_card(**card_kwargs)
    if training_args.push_to_hub:
        _push_last(trainer, training_args, card_kwargs)
    if trainer.is_world_process_zero():
        _log_outputs(training_args.output_dir)
    _release_output_dir(training_args.output_dir)
    return results
