"""A run's output directory: who holds it, what an earlier run left in it, and which checkpoint a run resumes from.

Without torch or transformers, so that `compare` lists and judges its members' folders cheaply.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable

from filelock import lock_descriptor, unlock_descriptor

from .checkpoint_files import damaged_files
from .storage import check_output_dir

__all__ = [
    "LOCK_FILE",
    "RUN_FILES",
    "SAFETENSORS_WEIGHTS",
    "WEIGHTS",
    "checkpoint_problems",
    "claim_output_dir",
    "drop_incomplete_checkpoints",
    "earlier_run_files",
    "last_complete_checkpoint",
    "list_checkpoints",
    "lock_output_dir",
    "model_to_evaluate",
    "refuse_to_overwrite",
    "release_output_dir",
    "resolve_resume",
    "saved_model",
    "unusable",
]

logger = logging.getLogger(__name__)

# The weights hf_maxsup loads (`hub.load_for_analysis` reads safetensors only): a finished `compare` member needs one.
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
# Files of a saved model, pickled ones too: a checkpoint the Trainer can resume needs one of them and
# trainer_state.json, which the Trainer writes last.
WEIGHTS = (*SAFETENSORS_WEIGHTS, "pytorch_model.bin")
# Files that show an output_dir holds a finished (or finishing) run.
RUN_FILES = ("trainer_state.json", "all_results.json", "train_results.json", *WEIGHTS)
# "_*" files are never uploaded by Trainer.push_to_hub.
LOCK_FILE = "_hf_maxsup.lock"
# What --resume_from_checkpoint takes for "the newest complete checkpoint of --output_dir".
_LAST = ("last", "True", "true")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Output directories this process holds the lock of: one process may run several recipes into one directory in turn
# (the tests do), and a second lock of the same file from this process would fail.
_HELD_LOCKS: dict[str, int] = {}


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


def list_checkpoints(output_dir: str) -> list[str]:
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


def unusable(path: str) -> str | None:
    """Why the checkpoint folder `path` cannot be resumed, in words: `"incomplete (no ...), ..."`
    ([`checkpoint_problems`]) or `"damaged (...)"` (a file that is there cannot be read, see
    [`~hf_maxsup.runner.checkpoint_files.damaged_files`]); `None` when it can."""
    problems = checkpoint_problems(path)
    if problems:
        return f"incomplete (no {', '.join(problems)}), probably because the run was stopped while saving it"
    damage = damaged_files(path)
    return f"damaged ({'; '.join(damage)})" if damage else None


def last_complete_checkpoint(
    output_dir: str, log: Callable[[str], None] = logger.warning, before: str | None = None
) -> str | None:
    """The newest complete, undamaged checkpoint of `output_dir` (see [`unusable`]), or `None`.

    Newer incomplete or damaged ones are skipped, and `log` is told which and why.

    Args:
        output_dir (`str`): the run's folder.
        log (`Callable[[str], None]`, *optional*): told of each checkpoint skipped.
        before (`str`, *optional*): look only at the checkpoints older than this one.
    """
    for path in reversed(list_checkpoints(output_dir)):
        if before is not None and _step(path) >= _step(before):
            continue
        reason = unusable(path)
        if reason is None:
            return path
        log(f"skipping {path}: it is {reason}; an earlier checkpoint is used.")
    return None


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names: `last` (or `True`) is the newest complete checkpoint of
    `output_dir`, a folder must exist and be complete; `None` when there is nothing to resume.

    Raises:
        `ValueError`: no such run, folder or complete checkpoint; the message names the fix.
    """
    if resume in _LAST:
        if not os.path.isdir(output_dir):
            raise ValueError(
                f"--resume_from_checkpoint {resume}: --output_dir {output_dir} does not "
                "exist, so there is no run to resume. Check --output_dir, or leave out "
                "--resume_from_checkpoint to start a new run."
            )
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"--resume_from_checkpoint {resume}: no complete "
                f"checkpoint-* folder in {output_dir}. Start the run again without "
                "--resume_from_checkpoint (add --overwrite_output_dir to replace what is there)."
            )
        return checkpoint
    if resume is None:
        return None
    if not os.path.isdir(resume):
        raise ValueError(
            f"--resume_from_checkpoint {resume}: no such directory. Give a checkpoint-* folder of an "
            "earlier run, or 'last' for the newest one in --output_dir."
        )
    reason = unusable(resume)
    if reason is not None:
        parent = os.path.dirname(os.path.normpath(resume))
        previous = last_complete_checkpoint(parent, log=lambda _: None, before=resume)  # the message names it
        fix = (
            f"Give an earlier checkpoint: --resume_from_checkpoint {previous} is the previous complete one"
            if previous
            else "There is no complete earlier checkpoint: start the run again without --resume_from_checkpoint"
        )
        raise ValueError(
            f"--resume_from_checkpoint {resume}: the checkpoint is {reason}. {fix}, or give "
            "'last' for the newest complete one (it skips incomplete and damaged checkpoints)."
        )
    return resume


def lock_output_dir(output_dir: str) -> None:
    """Hold an exclusive lock on `output_dir/_hf_maxsup.lock` until this process ends (the operating system releases
    it on a crash too, so it cannot go stale) or [`release_output_dir`], so that a second run into the same directory
    fails at once. The lock is `filelock`'s native one (`flock` on POSIX, `LockFileEx` on Windows), on a descriptor
    of ours, so that the file also names its holder.

    Raises:
        `RuntimeError`: another process holds the lock; the message names it.
    """
    path = os.path.realpath(output_dir)
    if path in _HELD_LOCKS:
        return
    os.makedirs(path, exist_ok=True)
    # O_BINARY (Windows only): no newline translation in what the file says.
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    if not lock_descriptor(fd, blocking=False):
        # Windows locks the file's first byte against reads too: the holder is written after it.
        os.lseek(fd, 1, os.SEEK_SET)
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RuntimeError(
            f"--output_dir {output_dir} is in use by {holder}: two runs into one directory would mix "
            "their files. Wait for that run to end, or give this one another --output_dir."
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"\nprocess {os.getpid()} on {socket.gethostname()}".encode())
    _HELD_LOCKS[path] = fd


def release_output_dir(output_dir: str) -> None:
    """Release the lock of [`lock_output_dir`], if this process holds it."""
    fd = _HELD_LOCKS.pop(os.path.realpath(output_dir), None)
    if fd is not None:
        unlock_descriptor(fd)
        os.close(fd)


def claim_output_dir(output_dir: str, resume: str | None, *, is_main: bool) -> str | None:
    """Take `output_dir` for a run: the main process locks it ([`lock_output_dir`]), and `--resume_from_checkpoint`
    is resolved ([`resolve_resume`]).

    Returns:
        `str` or `None`: the checkpoint to resume from.
    """
    if resume in _LAST and not os.path.isdir(output_dir):
        resolve_resume(resume, output_dir)  # raises, before the lock creates the directory
    if is_main:
        check_output_dir(output_dir)
        lock_output_dir(output_dir)
    return resolve_resume(resume, output_dir)


def drop_incomplete_checkpoints(output_dir: str, after: str) -> None:
    """Clear the way for a run that resumes `after`: the incomplete checkpoints of `output_dir` newer than it (left
    by a crash while saving) are deleted, as their steps are saved again by the resumed run; the damaged ones are
    moved aside to `damaged-checkpoint-<step>`, which neither `last` nor the Trainer's rotation looks at, so that
    nothing a user may still want is deleted or written over."""
    for path in list_checkpoints(output_dir):
        if _step(path) <= _step(after):
            continue
        if checkpoint_problems(path):
            shutil.rmtree(path)
        elif damaged_files(path):
            aside = os.path.join(output_dir, f"damaged-{os.path.basename(path)}")
            aside = next(
                name for n in itertools.count(1) if not os.path.exists(name := aside + (f"-{n}" if n > 1 else ""))
            )
            os.rename(path, aside)
            logger.warning(
                f"moved the damaged {path} to {aside}: the resumed run saves that step again. Delete it "
                "when you no longer need it."
            )


def earlier_run_files(output_dir: str) -> list[str]:
    """The files and checkpoint folders of `output_dir` that a new training run would overwrite."""
    found = [name for name in RUN_FILES if os.path.isfile(os.path.join(output_dir, name))]
    return found + [os.path.basename(path) for path in list_checkpoints(output_dir)]


def refuse_to_overwrite(output_dir: str, overwrite: bool, *, is_main: bool) -> None:
    """Stop a new training run from replacing a finished run or checkpoints in its `output_dir`, unless told to
    (`overwrite`); then the main process deletes the old checkpoints.

    Raises:
        `ValueError`: `output_dir` holds an earlier run and `overwrite` is not set.
    """
    checkpoints = list_checkpoints(output_dir)
    found = earlier_run_files(output_dir)
    if not found:
        return
    if not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} holds an earlier run ({', '.join(found)}), which this run would "
            "overwrite. Pass --resume_from_checkpoint last to continue it, --overwrite_output_dir to "
            "replace it, or give another --output_dir."
        )
    if is_main:
        # Stale checkpoints would be taken for this run's by a later --resume_from_checkpoint last.
        for path in checkpoints:
            shutil.rmtree(path)
        logger.warning(
            f"--overwrite_output_dir: replacing the run in {output_dir} (deleted {len(checkpoints)} "
            "checkpoint folders)."
        )


def saved_model(folder: str) -> bool:
    """Whether `folder` holds a saved model (its config and weights), as a finished run leaves in its output_dir."""
    has = [os.path.isfile(os.path.join(folder, name)) for name in ("config.json", "adapter_config.json", *WEIGHTS)]
    return any(has[:2]) and any(has[2:])


def model_to_evaluate(
    output_dir: str, model_name_or_path: str | None, splits: list[str], overwrite: bool
) -> str | None:
    """The model an evaluation- or prediction-only run evaluates (no `--do_train`), refusing before any work what
    would mix or overwrite another run's outputs.

    The model a folder holds is the one a finished run saved there (see [`saved_model`]). When `output_dir` holds
    one, the run evaluates it: `--model_name_or_path` may only name that same folder, since the results of another
    model would sit beside this one and be taken for its own. An unfinished run's folder (checkpoints, no saved
    model) is refused: without a model the run would evaluate a new, untrained one. Results the run would write
    (`eval_results.json`, `predict_results.json`, or their keys in `all_results.json`) are replaced only with
    `--overwrite_output_dir`; the saved model and its card are left as they are (see [`~hf_maxsup.runner.run`]).

    Args:
        output_dir (`str`): `--output_dir`.
        model_name_or_path (`str`, *optional*): `--model_name_or_path`.
        splits (`list[str]`): the metric prefixes the run writes: `"eval"` (`--do_eval`), `"predict"` (`--do_predict`).
        overwrite (`bool`): `--overwrite_output_dir`.

    Returns:
        `str` or `None`: the model to evaluate (`output_dir` when it holds one), `None` for a new model.

    Raises:
        `ValueError`: the message names the folder, what is in it and the fix.
    """
    if saved_model(output_dir):
        if model_name_or_path is not None and os.path.realpath(model_name_or_path) != os.path.realpath(output_dir):
            raise ValueError(
                f"--output_dir {output_dir} holds a trained model, but this run evaluates --model_name_or_path "
                f"{model_name_or_path}: its results would sit beside that model and be taken for its own. Give "
                f"another --output_dir for them, or leave out --model_name_or_path to evaluate the model in "
                f"{output_dir}."
            )
        model_name_or_path = output_dir
    elif list_checkpoints(output_dir):
        newest = list_checkpoints(output_dir)[-1]
        raise ValueError(
            f"--output_dir {output_dir} holds an unfinished run (checkpoints, no saved model): this run would "
            "evaluate an untrained model. Finish that run (--do_train --resume_from_checkpoint last), or evaluate "
            f"one of its checkpoints into another --output_dir (--model_name_or_path {newest})."
        )
    written = _results_written(output_dir, splits)
    if written and not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} holds results ({', '.join(written)}) that this run would overwrite. Pass "
            "--overwrite_output_dir to replace them (the saved model and its card stay), or give another "
            f"--output_dir{f' with --model_name_or_path {model_name_or_path}' if model_name_or_path else ''}."
        )
    return model_name_or_path


def _results_written(output_dir: str, splits: list[str]) -> list[str]:
    """The result files of `splits` in `output_dir`, and `all_results.json` when it holds their metrics."""
    found = [
        f"{split}_results.json" for split in splits if os.path.isfile(os.path.join(output_dir, f"{split}_results.json"))
    ]
    try:
        with open(os.path.join(output_dir, "all_results.json"), encoding="utf-8") as f:
            keys = json.load(f)
    except (OSError, ValueError):
        keys = {}
    if isinstance(keys, dict) and any(key.startswith(tuple(f"{split}_" for split in splits)) for key in keys):
        found.append("all_results.json")
    return found
