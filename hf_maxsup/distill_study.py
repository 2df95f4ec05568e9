"""Which teachers distil well: one student per teacher (CE, LS, MaxSup) and seed, trained through a recipe, compared.

    hf-maxsup distill --teachers runs/ce-seed0 runs/ls-seed0 runs/maxsup-seed0 --seeds 0 1 2 \\
        --output_dir report/ --model_architecture resnet-small [recipe arguments ...]

Müller, Kornblith and Hinton (2019) found that a teacher trained with label smoothing distils worse than one trained
with cross-entropy: smoothing erases the class-resemblance information its logits carry. The MaxSup paper argues that
penalising the top-1 logit instead keeps it. For every teacher and seed, [`run_study`] trains the same student through
the recipe ([`hf_maxsup.compare.train_members`]: resumable, finished students are skipped) with
`--teacher_model_name_or_path`, and by default a student on the labels alone, then writes `report.md` and
`results.json`: per teacher, its own accuracy, NLL, ECE and how much class-resemblance information its logits keep
(the normalised entropy of its non-target distribution, see [`non_target_entropy`]), and its students' accuracy, NLL
and ECE over the seeds.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from .hub import read_card_metadata
from .report import DataOptions, Run, RunResult, analyze_run
from .report.markdown import check_line, markdown_table, training_time_line, write_files
from .report.summary import ACCURACY, CONFIDENCE_GAP, ECE, NLL, Column, paper_checks, summarize, summarize_runs

__all__ = ["NO_TEACHER", "non_target_entropy", "run_study", "teacher_label"]

NO_TEACHER = "no teacher"
# Flags the study sets for every student; the recipe must not get them from the passthrough arguments as well.
STUDY_FLAGS = ("--teacher_model_name_or_path", "--distill_alpha", "--distill_temperature")

# The teachers' columns, then the students'.
TEACHER_COLUMNS = (
    *(
        column.renamed(f"teacher_{column.key}", f"teacher {column.header}")
        for column in (ACCURACY, NLL, ECE, CONFIDENCE_GAP)
    ),
    Column("teacher_non_target_entropy", "teacher non-target entropy, T = 1"),
    Column("teacher_non_target_entropy_at_t", "teacher non-target entropy at T, students' training data"),
)
# The sign ECE lacks, confidence − accuracy: > 0 over-confident, < 0 under-confident.
STUDENT_COLUMNS = tuple(
    column.renamed(column.key, f"student {column.header}") for column in (ACCURACY, NLL, ECE, CONFIDENCE_GAP)
)

# (claim, metric, group a, relation, group b, metric of b), as hf_maxsup.report.paper_checks takes them.
CLAIMS = (
    (
        "The student of the LS teacher is less accurate than the student of the CE teacher (Müller et al. 2019)",
        "accuracy",
        "ls",
        "<",
        "ce",
        None,
    ),
    (
        "The student of the MaxSup teacher is at least as accurate as the student of the LS teacher (MaxSup paper's "
        "argument: MaxSup keeps the class structure)",
        "accuracy",
        "maxsup",
        ">=",
        "ls",
        None,
    ),
    (
        "The LS teacher's non-target distribution is flatter than the CE teacher's, i.e. it keeps less class "
        "resemblance (Müller et al. 2019)",
        "teacher_non_target_entropy",
        "ls",
        ">",
        "ce",
        None,
    ),
    (
        "The MaxSup teacher's non-target distribution is less flat than the LS teacher's (MaxSup paper)",
        "teacher_non_target_entropy",
        "maxsup",
        "<",
        "ls",
        None,
    ),
    (
        "The student of the CE teacher is more accurate than the student trained on the labels alone (distillation "
        "helps)",
        "accuracy",
        "ce",
        ">",
        NO_TEACHER,
        None,
    ),
)


def non_target_entropy(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean over examples of the entropy of the non-target distribution, normalised to [0, 1].

    Per example with label y: `q = softmax(z_k / T for k != y)` over the K - 1 other classes, and
    `H(q) / log(K - 1)`. 1 means the teacher spreads its remaining probability evenly, saying nothing about which
    wrong classes resemble the input (the erasure Müller et al. attribute to label smoothing); lower values mean a
    more structured distribution. The target is left out, so the confidence in it does not enter.

    Args:
        logits (`np.ndarray` of shape `(N, K)`): the teacher's logits, K >= 3.
        labels (`np.ndarray` of shape `(N,)`): class indices.
        temperature (`float`, *optional*, defaults to 1.0): the softmax temperature, e.g. the distillation's.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    n, k = logits.shape
    if k < 3:
        raise ValueError(f"the non-target distribution needs at least 3 classes; got {k}.")
    others = logits[~np.eye(k, dtype=bool)[labels]].reshape(n, k - 1) / temperature
    log_q = others - others.max(axis=1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    return float((-(np.exp(log_q) * log_q).sum(axis=1) / np.log(k - 1)).mean())


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
    """`{label: teacher}`, the labels given or read from the teachers' model cards, all checked."""
    labels = list(teacher_labels or [teacher_label(path) for path in teachers])
    if len(labels) != len(teachers):
        raise ValueError(f"--teacher_labels names {len(labels)} teachers for {len(teachers)} --teachers.")
    _check_teachers(teachers, labels, passthrough)
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
) -> dict[str, list]:
    """Trains one student per (teacher label, seed) into `runs_dir/<label>-seed<S>` (a `None` teacher: labels
    only); returns the members of each label."""
    from .compare import Member, train_members

    members = {}
    for label, teacher in groups.items():
        members[label] = [
            Member(student_loss, seed, os.path.join(runs_dir, f"{label.replace(' ', '_')}-seed{seed}"))
            for seed in seeds
        ]
        extra = (
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
        train_members(
            members[label],
            recipe,
            [*passthrough, *extra],
            python=python,
            check=None,
            log=lambda message, label=label: log(f"[{label}] {message}"),
        )
    return members


def _evaluate(path: str, label: str, seed: int | None, data: DataOptions, device: str | None) -> RunResult:
    return analyze_run(Run(path=path, label=label, seed=seed), data, log=lambda message: None, device=device)


def _teacher_metrics(
    path: str, data: DataOptions, train_data: DataOptions, temperature: float, device: str | None
) -> dict[str, float]:
    """The teacher's accuracy, NLL, ECE, confidence − accuracy and non-target entropy on the evaluated split, and its
    non-target entropy at the distillation temperature on the training examples the students see."""
    result = _evaluate(path, "teacher", None, data, device)
    on_train = _evaluate(path, "teacher", None, train_data, device)
    return {
        "teacher_accuracy": result.metrics["accuracy"],
        "teacher_nll": result.metrics["nll"],
        "teacher_ece": result.metrics["ece"],
        "teacher_confidence_minus_accuracy": result.metrics["confidence_minus_accuracy"],
        "teacher_non_target_entropy": non_target_entropy(result.logits, result.labels),
        "teacher_non_target_entropy_at_t": non_target_entropy(on_train.logits, on_train.labels, temperature),
    }


def _table(summary: dict, teachers: dict, temperature: float) -> str:
    """One row per teacher: its checkpoint and own metrics, its students' number and metrics over their seeds."""
    rows = []
    for label, metrics in summary.items():
        teacher = [column.format(metrics[column.key]) if column.key in metrics else "—" for column in TEACHER_COLUMNS]
        students = [column.format(metrics[column.key]) for column in STUDENT_COLUMNS]
        rows.append(
            [
                label,
                f"`{os.path.basename(os.path.normpath(teachers[label]))}`" if teachers[label] else "—",
                *teacher,
                str(metrics["accuracy"]["n"]),
                *students,
            ]
        )
    names = [column.header.replace("at T", f"at T = {temperature:g}") for column in TEACHER_COLUMNS]
    return markdown_table(["teacher", "checkpoint", *names, "students", *(c.header for c in STUDENT_COLUMNS)], rows)


def _student_lines(results: Sequence[RunResult]) -> list[str]:
    """The section of one row per student: its teacher, seed, checkpoint and metrics."""
    rows = [
        [
            result.label,
            str(result.seed),
            f"`{result.path}`",
            *(f"{result.metrics[column.key] * column.scale:.{column.decimals}f}" for column in STUDENT_COLUMNS),
        ]
        for result in results
    ]
    header = ["teacher", "seed", "checkpoint", *(column.header for column in STUDENT_COLUMNS)]
    return ["## Every student", "", markdown_table(header, rows), ""]


def write_study_report(
    output_dir: str,
    results: Sequence[RunResult],
    teachers: dict,
    teacher_metrics: dict,
    *,
    command: str,
    notes: Sequence[str],
    extra: dict,
) -> dict:
    """Writes `report.md` and `results.json` of the study; returns the content of `results.json`."""
    summary = summarize_runs(results)
    for label, metrics in teacher_metrics.items():
        summary[label].update({key: summarize([value]) for key, value in metrics.items()})
    checks = paper_checks(summary, CLAIMS)
    lines = [
        "# Distillation: students of CE, LS and MaxSup teachers",
        "",
        "```",
        command,
        "```",
        "",
        "Students: mean ± sample standard deviation (ddof=1) over their seeds; one teacher per row (no spread). "
        "The non-target entropy is the mean normalised entropy of the teacher's distribution over the classes "
        "other than the label (1 = uniform: no class-resemblance information); confidence − accuracy > 0 is "
        "over-confidence, < 0 under-confidence.",
        "",
        _table(summary, teachers, extra["distill_temperature"]),
        "",
        "## What the papers report, and what these runs show",
        "",
        *(check_line(check, (*TEACHER_COLUMNS, *STUDENT_COLUMNS)) for check in checks),
        "",
        *notes,
        "",
    ]
    time_line = training_time_line([result.path for result in results])
    lines += [time_line.replace("runs", "students"), ""] if time_line else []
    lines += _student_lines(results)
    content = {
        "command": command,
        **extra,
        "teachers": teachers,
        "teacher_metrics": teacher_metrics,
        # The students' task is the teachers': not repeated per student.
        "students": [{key: value for key, value in result.to_json().items() if key != "task"} for result in results],
        "summary": summary,
        "checks": checks,
    }
    return write_files(output_dir, lines, content)


def _study_notes(recipe: str, passthrough: Sequence[str], settings: dict, baseline: bool, results, seconds) -> list:
    """The notes that say how the students were trained, on what they were evaluated, and how long it took.

    Args:
        settings (`dict`): the students' `seeds`, `student_loss`, `distill_alpha` and `distill_temperature`.
        seconds (`tuple[float, float]`): this invocation's training and evaluating time.
    """
    loss, alpha, temperature = settings["student_loss"], settings["distill_alpha"], settings["distill_temperature"]
    return [
        f"Recipe: `{os.path.relpath(recipe)}`; recipe arguments: `{shlex.join(passthrough) or '(defaults)'}`; "
        f"students: `--loss {loss}`, distillation `--distill_alpha {alpha} --distill_temperature {temperature}` "
        f"(loss = {loss} + β·T²·KL(teacher_T ‖ student_T)), seeds {', '.join(map(str, settings['seeds']))}"
        + (f"; `{NO_TEACHER}`: the same student on the labels alone" if baseline else "")
        + ".",
        f"Evaluated on the {results[0].split} split ({results[0].num_examples} examples).",
        f"This invocation: {seconds[0] / 60:.1f} min training (students trained earlier are skipped), "
        f"{seconds[1] / 60:.1f} min evaluating.",
    ]


def _evaluate_study(
    members: dict, teachers: dict, data: DataOptions | None, max_train_samples, temperature, device, log
) -> tuple[list[RunResult], dict]:
    """The students' results, and each teacher's metrics (see [`_teacher_metrics`])."""
    # The regime check and the digits probe belong to the loss comparison, not to this study.
    data = dataclasses.replace(data or DataOptions(), probe=False, train_samples=0)
    train_data = dataclasses.replace(data, split="train", max_samples=max_train_samples)
    log(f"[hf-maxsup distill] evaluating {sum(map(len, members.values()))} students and {len(teachers)} teachers")
    results = [
        _evaluate(member.output_dir, label, member.seed, data, device)
        for label, group in members.items()
        for member in group
    ]
    teacher_metrics = {
        label: _teacher_metrics(path, data, train_data, temperature, device) for label, path in teachers.items()
    }
    return results, teacher_metrics


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
    from .compare import check_passthrough, default_recipe

    recipe = recipe or default_recipe()
    named = _named_teachers(teachers, teacher_labels, passthrough)
    check_passthrough(passthrough)
    groups = {**named, **({NO_TEACHER: None} if baseline else {})}
    start = time.monotonic()
    runs_dir = runs_dir or os.path.join(output_dir, "runs")
    members = train_students(
        groups,
        runs_dir,
        seeds,
        recipe,
        passthrough,
        student_loss=student_loss,
        distill_alpha=distill_alpha,
        temperature=temperature,
        python=python,
        log=log,
    )
    trained = time.monotonic() - start
    results, teacher_metrics = _evaluate_study(members, named, data, max_train_samples, temperature, device, log)
    evaluated = time.monotonic() - start - trained
    settings = {
        "seeds": list(seeds),
        "student_loss": student_loss,
        "distill_alpha": distill_alpha,
        "distill_temperature": temperature,
    }
    notes = _study_notes(recipe, passthrough, settings, baseline, results, (trained, evaluated))
    extra = {
        "recipe": recipe,
        "recipe_args": list(passthrough),
        **settings,
        "train_seconds_this_invocation": round(trained, 1),
        "evaluate_seconds": round(evaluated, 1),
    }
    return write_study_report(output_dir, results, groups, teacher_metrics, command=command, notes=notes, extra=extra)
