"""Which teachers distil well: one student per teacher (CE, LS, MaxSup) and seed, trained through a recipe, compared.

    hf-maxsup distill --teachers runs/ce-seed0 runs/ls-seed0 runs/maxsup-seed0 --seeds 0 1 2 \\
        --output_dir report/ --model_architecture resnet-small [recipe arguments ...]

Müller, Kornblith and Hinton (2019) found that a teacher trained with label smoothing distils worse than one trained
with cross-entropy: smoothing erases the class-resemblance information its logits carry. The MaxSup paper argues that
penalising the top-1 logit instead keeps it. For every teacher and seed, [`run_study`] trains the same student through
the recipe ([`~hf_maxsup.studies.members.train_members`]: resumable, finished students are skipped) with
`--teacher_model_name_or_path`, and by default a student on the labels alone, then writes the report of
[`hf_maxsup.report.distillation`]: per teacher, its own accuracy, NLL, ECE and how much class-resemblance information
its logits keep, and its students' accuracy, NLL and ECE over the seeds.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

from ..hub import read_card_metadata
from ..report.claims import NO_TEACHER
from ..report.distillation import distillation_notes, evaluate_distillation, write_distillation_report
from ..report.options import DataOptions
from ..report.runs import Run
from .members import Member, check_member_folder, check_passthrough, default_recipe, train_members

__all__ = ["STUDY_FLAGS", "run_study", "teacher_label", "train_students"]

# Flags the study sets for every student; the recipe must not get them from the passthrough arguments as well.
STUDY_FLAGS = ("--teacher_model_name_or_path", "--distill_alpha", "--distill_temperature")


def teacher_label(path: str) -> str:
    """The loss a teacher was trained with, from its model card (`hf_maxsup.loss`), else its folder name."""
    loss = (read_card_metadata(path) or {}).get("loss")
    if loss:
        return loss
    return os.path.basename(os.path.normpath(path))


def _check_teachers(teachers: Sequence[str], labels: Sequence[str], passthrough: Sequence[str]) -> None:
    for flag in STUDY_FLAGS:
        if any(arg.split("=", 1)[0] == flag for arg in passthrough):
            raise ValueError(
                f"{flag} is set by the study for each student: use --teachers, --distill_alpha and "
                "--distill_temperature of hf-maxsup distill."
            )
    for path in teachers:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"teacher {path}: no config.json there. Give the output folder of a finished run (e.g. "
                "a member of hf-maxsup compare) or a checkpoint-* folder."
            )
    if len(set(labels)) != len(labels) or NO_TEACHER in labels:
        raise ValueError(
            f"the teachers' labels {list(labels)} must be distinct (one teacher per loss) and not "
            f"{NO_TEACHER!r}; pass --teacher_labels."
        )


def _named_teachers(
    teachers: Sequence[str], teacher_labels: Sequence[str] | None, passthrough: Sequence[str]
) -> dict[str, str]:
    """`{label: teacher}`, the labels given or read from the teachers' model cards, all checked, and the recipe
    arguments checked (see [`~hf_maxsup.studies.members.check_passthrough`]) before any training."""
    labels = list(teacher_labels or [teacher_label(path) for path in teachers])
    if len(labels) != len(teachers):
        raise ValueError(f"--teacher_labels names {len(labels)} teachers for {len(teachers)} --teachers.")
    _check_teachers(teachers, labels, passthrough)
    check_passthrough(passthrough)
    return dict(zip(labels, teachers, strict=True))


def train_students(
    groups: dict[str, str | None],
    runs_dir: str,
    seeds: Sequence[int],
    recipe: str,
    passthrough: Sequence[str],
    *,
    student_loss: str,
    distill_alpha: float,
    temperature: float,
    python: str,
    log: Callable[[str], None],
) -> dict[str, list[Member]]:
    """Trains one student per (teacher label, seed) into `runs_dir/<label>-seed<S>` (a `None` teacher: labels
    only), every student's folder checked before any is trained; returns the members of each label."""
    members, arguments = {}, {}
    for label, teacher in groups.items():
        members[label] = [
            Member(student_loss, seed, os.path.join(runs_dir, f"{label.replace(' ', '_')}-seed{seed}"))
            for seed in seeds
        ]
        arguments[label] = [*passthrough] + (
            []
            if teacher is None
            else [
                "--teacher_model_name_or_path",
                os.path.abspath(teacher),
                "--distill_alpha",
                str(distill_alpha),
                "--distill_temperature",
                str(temperature),
            ]
        )
    for label, group in members.items():
        for member in group:
            check_member_folder(member, recipe, arguments[label])
    for label, group in members.items():
        train_members(
            group, recipe, arguments[label], python=python, log=lambda message, label=label: log(f"[{label}] {message}")
        )
    return members


def run_study(
    teachers: Sequence[str],
    output_dir: str,
    *,
    seeds: Sequence[int],
    runs_dir: str | None = None,
    teacher_labels: Sequence[str] | None = None,
    baseline: bool = True,
    student_loss: str = "ce",
    distill_alpha: float = 1.0,
    temperature: float = 4.0,
    recipe: str | None = None,
    passthrough: Sequence[str] = (),
    python: str = sys.executable,
    data: DataOptions | None = None,
    max_train_samples: int | None = None,
    device: str | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """Trains the students (see the module docstring), evaluates them and the teachers, writes the report.

    Args:
        teachers (`Sequence[str]`): output folders of the teachers, one per loss.
        output_dir (`str`): folder of `report.md` and `results.json`.
        seeds (`Sequence[int]`): the students' training seeds, the same for every teacher.
        runs_dir (`str`, *optional*): where the students go (default: `output_dir/runs`).
        teacher_labels (`Sequence[str]`, *optional*): a name per teacher (default: the loss in its model card).
        baseline (`bool`, *optional*, defaults to `True`): also train the student on the labels alone.
        student_loss, distill_alpha, temperature: the students' `--loss`, `--distill_alpha`, `--distill_temperature`.
        recipe (`str`, *optional*): the recipe script (default: `recipes/image_classification.py`).
        passthrough (`Sequence[str]`): arguments for the recipe (the student's architecture, data, schedule).
        data ([`~hf_maxsup.report.DataOptions`], *optional*): the evaluation data (default: the task's embedded data).
        max_train_samples (`int`, *optional*): the recipe's `--max_train_samples`: the teachers' non-target entropy
            at T is measured on those first training examples.
        device (`str`, *optional*): where students and teachers are evaluated (default: cuda if available, else cpu).
        command (`str`): the command line, recorded in the report.

    Returns:
        `dict`: the content of `results.json`.
    """
    recipe = recipe or default_recipe()
    named = _named_teachers(teachers, teacher_labels, passthrough)
    groups = {**named, **({NO_TEACHER: None} if baseline else {})}
    start = time.monotonic()
    runs_dir = runs_dir or os.path.join(output_dir, "runs")
    training = {"student_loss": student_loss, "distill_alpha": distill_alpha, "temperature": temperature}
    members = train_students(groups, runs_dir, seeds, recipe, passthrough, python=python, log=log, **training)
    trained = time.monotonic() - start
    students = [Run(member.output_dir, label, member.seed) for label, group in members.items() for member in group]
    evaluation = {"max_train_samples": max_train_samples, "temperature": temperature, "device": device, "log": log}
    results, teacher_metrics = evaluate_distillation(students, named, data, **evaluation)
    seconds = (trained, time.monotonic() - start - trained)
    settings = dict(seeds=list(seeds), student_loss=student_loss, distill_alpha=distill_alpha)
    settings["distill_temperature"] = temperature
    extra = {"recipe": recipe, "recipe_args": list(passthrough), **settings}
    extra.update(train_seconds_this_invocation=round(seconds[0], 1), evaluate_seconds=round(seconds[1], 1))
    notes = distillation_notes(recipe, passthrough, settings, baseline, results, seconds)
    report = {"command": command, "notes": notes, "extra": extra}
    return write_distillation_report(output_dir, results, groups, teacher_metrics, **report)
