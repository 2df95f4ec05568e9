"""A run's output directory: who holds it, what an earlier run left in it, and which checkpoint a run resumes from.

Without torch or transformers, so that `compare` lists and judges its members' folders cheaply.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable

from filelock import lock_descriptor, unlock_descriptor

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
    "refuse_to_overwrite",
    "release_output_dir",
    "resolve_resume",
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


def last_complete_checkpoint(output_dir: str, log: Callable[[str], None] = logger.warning) -> str | None:
    """The newest complete checkpoint of `output_dir` (see [`checkpoint_problems`]), or `None`.

    Newer incomplete ones, left by a crash during their save, are skipped, and `log` is told which and why.
    """
    for path in reversed(list_checkpoints(output_dir)):
        problems = checkpoint_problems(path)
        if not problems:
            return path
        log(
            f"skipping {path}: it is incomplete (no {', '.join(problems)}), probably because the run was stopped "
            "while saving it; an earlier checkpoint is used."
        )
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
    problems = checkpoint_problems(resume)
    if problems:
        raise ValueError(
            f"--resume_from_checkpoint {resume}: the checkpoint is incomplete (no "
            f"{', '.join(problems)}), probably because its run was stopped while saving it. Give "
            "an earlier checkpoint, or 'last' for the newest complete one."
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
        lock_output_dir(output_dir)
    return resolve_resume(resume, output_dir)


def drop_incomplete_checkpoints(output_dir: str, after: str) -> None:
    """Delete the incomplete checkpoints of `output_dir` newer than `after`, the one a run resumes: left by a crash
    while saving, their steps are saved again by the resumed run."""
    for path in list_checkpoints(output_dir):
        if _step(path) > _step(after) and checkpoint_problems(path):
            shutil.rmtree(path)


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
