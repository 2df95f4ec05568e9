"""Training the members of a study (a loss and a seed each) through a recipe script, resumably.

Each member (a loss and a seed) runs `python <recipe> <passthrough> --loss L --seed S --output_dir <runs>/L-seedS
--do_train --do_eval` in a subprocess, so the recipe's own argument parsing, data loading, progress bar and model card
are used unchanged. A member is *finished* when its output directory holds the final weights (`model.safetensors` or
`adapter_model.safetensors`) and `eval_results.json`: running the same comparison again skips it. An unfinished member
with a complete `checkpoint-*` folder is resumed from the newest complete one (`--resume_from_checkpoint last`; one
left incomplete by a crash during its save is skipped); one without is trained again from the start
(with `--overwrite_output_dir` when it left files: compare owns the member folders). Each member's folder records the
settings it was trained with ([`~hf_maxsup.report.runs.MEMBER_FILE`]), and the report labels the member from it.
Before anything is trained, every member's folder is checked ([`check_member_folder`]): a folder compare did not
create (a user's own run) or one created with arguments of another meaning is refused; the same arguments in another
order, or `--x=v` for `--x v`, are the same. Nothing here imports torch or transformers: the folders are judged by
[`hf_maxsup.runner.output_dir`] alone.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..report.runs import MEMBER_FILE, read_member_record
from ..runner.output_dir import SAFETENSORS_WEIGHTS, earlier_run_files, last_complete_checkpoint

__all__ = [
    "DEFAULT_ARGS",
    "RESERVED",
    "Member",
    "canonical_args",
    "check_member_folder",
    "check_passthrough",
    "check_same_settings",
    "default_recipe",
    "is_finished",
    "member_command",
    "plan_members",
    "train_members",
]
# Set by compare for every member; the recipe must not get them from the passthrough arguments as well.
RESERVED = {
    "--loss": "--losses",
    "--seed": "--seeds",
    "--output_dir": "--output_dir / --runs_dir",
    "--resume_from_checkpoint": "(resuming is automatic)",
    "--overwrite_output_dir": "(an unfinished member without a checkpoint is retrained)",
}
# Defaults that keep the run folders small; the passthrough arguments override them.
DEFAULT_ARGS = ("--save_total_limit", "2")


@dataclass
class Member:
    """One run of a study: its loss, its seed and the folder it trains into."""

    loss: str
    seed: int
    output_dir: str

    @property
    def name(self) -> str:
        """How the progress lines name the member, e.g. `ls seed 1`."""
        return f"{self.loss} seed {self.seed}"


def default_recipe() -> str:
    """The image-classification recipe shipped with the package: `hf_maxsup/scripts/` is the repository's `recipes/`
    (a link in a checkout, a copy in a wheel), so the path is the checkout's own script when there is one."""
    path = (Path(__file__).parent.parent / "scripts" / "image_classification.py").resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"no recipe at {path}: this installation of hf_maxsup lacks its scripts. Reinstall it, or pass --recipe "
            "path/to/recipes/image_classification.py (or another recipe that takes --loss, --seed and --output_dir)."
        )
    return str(path)


def check_passthrough(args: Sequence[str]) -> None:
    """Rejects the flags that compare sets itself for every member."""
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in RESERVED:
            raise ValueError(f"{flag} is set by compare for each member; use {RESERVED[flag]} instead.")


def is_finished(output_dir: str) -> bool:
    """Whether a member's output directory holds its final weights and its evaluation results."""
    return any(os.path.isfile(os.path.join(output_dir, name)) for name in SAFETENSORS_WEIGHTS) and os.path.isfile(
        os.path.join(output_dir, "eval_results.json")
    )


def plan_members(runs_dir: str, losses: Sequence[str], seeds: Sequence[int]) -> list[Member]:
    """One member per (loss, seed), seeds in the outer loop so that a partial comparison has every loss."""
    return [Member(loss, seed, os.path.join(runs_dir, f"{loss}-seed{seed}")) for seed in seeds for loss in losses]


def member_command(
    recipe: str,
    member: Member,
    passthrough: Sequence[str],
    python: str = sys.executable,
    resume: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """The command line that trains `member`: the recipe with compare's defaults, the passthrough arguments, the
    member's loss, seed and folder; `--resume_from_checkpoint last` to resume, `--overwrite_output_dir` to replace
    what an interrupted member left."""
    command = [
        python,
        recipe,
        *DEFAULT_ARGS,
        *passthrough,
        "--loss",
        member.loss,
        "--seed",
        str(member.seed),
        "--output_dir",
        member.output_dir,
        "--do_train",
        "--do_eval",
    ]
    if resume:
        return command + ["--resume_from_checkpoint", "last"]
    # Without a checkpoint to resume, what an interrupted member left is replaced (the recipe refuses otherwise).
    return command + (["--overwrite_output_dir"] if overwrite else [])


def canonical_args(args: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Recipe arguments by meaning rather than spelling: `--x=v` as `--x v`, in any order, each flag with the values
    of its last occurrence (the parser keeps the last); values before any flag under `""`."""
    groups: dict[str, tuple[str, ...]] = {}
    flag = ""
    for arg in args:
        if arg.startswith("--"):
            flag, equals, value = arg.partition("=")
            groups[flag] = (value,) if equals else ()
        else:
            groups[flag] = (*groups.get(flag, ()), arg)
    return groups


def _settings(member: Member, recipe: str, passthrough: Sequence[str]) -> dict:
    """What a member's record holds: the recipe, the loss, the seed and the recipe arguments as given."""
    return {"recipe": os.path.abspath(recipe), "loss": member.loss, "seed": member.seed, "args": list(passthrough)}


def _shown(values: tuple[str, ...] | None) -> str:
    """A flag's values in a difference: `absent`, `given` (a flag without values) or the values."""
    return "absent" if values is None else " ".join(values) or "given"


def _differences(recorded: dict, settings: dict) -> list[str]:
    """How a member's record differs in meaning from these settings: the recipe (by file name: the same recipe of
    another checkout is the same), the loss, the seed and each recipe flag."""
    differences = [
        f"{key}: {recorded.get(key)} recorded, {settings[key]} now"
        for key in ("loss", "seed")
        if recorded.get(key) != settings[key]
    ]
    if os.path.basename(recorded.get("recipe") or "") != os.path.basename(settings["recipe"]):
        differences.append(f"recipe: {recorded.get('recipe')} recorded, {settings['recipe']} now")
    before, now = canonical_args(recorded.get("args") or []), canonical_args(settings["args"])
    differences += [
        f"{flag or 'positional'}: {_shown(before.get(flag))} recorded, {_shown(now.get(flag))} now"
        for flag in sorted(set(before) | set(now))
        if before.get(flag) != now.get(flag)
    ]
    return differences


def check_member_folder(member: Member, recipe: str, passthrough: Sequence[str]) -> None:
    """Refuses a member's folder that this study may not reuse or replace: one it did not create (files there, no
    [`~hf_maxsup.report.runs.MEMBER_FILE`], e.g. a user's own run), or one created with arguments of another meaning.
    Writes nothing.

    Raises:
        `ValueError`: naming the folder and, for a record of other arguments, what differs.
    """
    folder = member.output_dir
    recorded = read_member_record(folder)
    if recorded is None:
        if os.path.isfile(folder) or (os.path.isdir(folder) and os.listdir(folder)):
            raise ValueError(
                f"{folder} was not created by hf-maxsup (it has no {MEMBER_FILE}): a comparison only reuses or "
                "replaces the members it created. Give another --runs_dir (or --output_dir), or move that folder "
                "away."
            )
        return
    differences = _differences(recorded, _settings(member, recipe, passthrough))
    if differences:
        raise ValueError(
            f"{folder} was created with other arguments ({'; '.join(differences)}): give another --runs_dir (or "
            "--output_dir) for these arguments, or rerun with the recorded ones; delete that folder only if its run "
            "is no longer wanted."
        )


def check_same_settings(member: Member, recipe: str, passthrough: Sequence[str]) -> None:
    """Refuses a member's folder as [`check_member_folder`] does; records the settings there on first use.

    Raises:
        `ValueError`: see [`check_member_folder`].
    """
    check_member_folder(member, recipe, passthrough)
    if read_member_record(member.output_dir) is None:
        os.makedirs(member.output_dir, exist_ok=True)
        with open(os.path.join(member.output_dir, MEMBER_FILE), "w", encoding="utf-8") as f:
            json.dump(_settings(member, recipe, passthrough), f, indent=2)


def train_members(
    members: Sequence[Member],
    recipe: str,
    passthrough: Sequence[str],
    *,
    python: str = sys.executable,
    log: Callable[[str], None] = print,
    env: dict | None = None,
    check: Callable[[str], None] | None = None,
) -> None:
    """Trains every unfinished member in turn (see the module docstring), printing which member of how many.

    `check`, when given, is called on the output directory of the first member once it is finished, so that a model
    the report cannot analyse stops the comparison before the other members are trained
    ([`~hf_maxsup.studies.compare.check_reportable`]).

    Raises:
        `RuntimeError`: a member's recipe failed; rerunning the same command resumes from there.
    """
    check_passthrough(passthrough)
    for member in members:  # every folder judged before any is written or trained
        check_member_folder(member, recipe, passthrough)
    for i, member in enumerate(members, 1):
        prefix = f"[hf-maxsup compare] member {i}/{len(members)} ({member.name})"
        check_same_settings(member, recipe, passthrough)
        if is_finished(member.output_dir):
            log(f"{prefix}: finished earlier, skipped ({member.output_dir})")
            if check is not None and i == 1:
                check(member.output_dir)
            continue
        checkpoint = last_complete_checkpoint(
            member.output_dir, log=lambda message, prefix=prefix: log(f"{prefix}: {message}")
        )
        if checkpoint is not None:
            log(f"{prefix}: resuming from {checkpoint}")
        else:
            log(f"{prefix}: training into {member.output_dir}")
        command = member_command(
            recipe,
            member,
            passthrough,
            python,
            resume=checkpoint is not None,
            overwrite=checkpoint is None and bool(earlier_run_files(member.output_dir)),
        )
        log(f"  $ {shlex.join(command)}")
        completed = subprocess.run(command, env=env, check=False)
        if completed.returncode != 0 or not is_finished(member.output_dir):
            raise RuntimeError(
                f"{prefix} failed (exit code {completed.returncode}); its output is in {member.output_dir}. Fix the "
                "cause and rerun the same command: finished members are skipped and this one resumes from its last "
                "checkpoint."
            )
        log(f"{prefix}: done")
        if check is not None and i == 1:
            check(member.output_dir)
