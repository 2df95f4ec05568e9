"""The report of the distillation study: the students of CE, LS and MaxSup teachers side by side, with each teacher's
own metrics and how much class-resemblance information its logits keep.

[`evaluate_distillation`] evaluates the students and the teachers (with
[`~hf_maxsup.report.classification.analyze_run`], and the normalised entropy of each teacher's non-target
distribution, [`non_target_entropy`]); [`write_distillation_report`] writes `report.md` and `results.json` and checks
[`DISTILLATION_CLAIMS`] (Müller et al. 2019, the MaxSup paper's argument). `hf-maxsup distill`
([`~hf_maxsup.studies.distill.run_study`]) trains the students, then calls both. A new claim is one
[`~hf_maxsup.report.stats.Claim`] in [`DISTILLATION_CLAIMS`].
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable, Sequence

import numpy as np

from .claims import DISTILLATION_CLAIMS, NO_TEACHER
from .classification import ACCURACY, CONFIDENCE_GAP, ECE, NLL, analyze_run
from .markdown import Column, claims_lines, markdown_table, summary_table, training_time_line, write_files
from .options import DataOptions
from .runs import Run, RunResult, read_member_record
from .stats import paper_checks, summarize, summarize_runs

__all__ = [
    "distillation_notes",
    "evaluate_distillation",
    "non_target_entropy",
    "teacher_runs",
    "write_distillation_report",
]

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


def evaluate_distillation(
    students: Sequence[Run],
    teachers: dict[str, str],
    data: DataOptions | None,
    *,
    max_train_samples: int | None,
    temperature: float,
    device: str | None,
    log: Callable[[str], None],
) -> tuple[list[RunResult], dict]:
    """Evaluates the students and the teachers on the same split.

    Args:
        students (`Sequence[Run]`): the students, each labelled by its teacher's label ([`NO_TEACHER`] for those
            trained on the labels alone).
        teachers (`dict[str, str]`): `{label: teacher's folder}`.
        data ([`DataOptions`], *optional*): the evaluation data (default: the task's embedded data).
        max_train_samples (`int`, *optional*): the students' `--max_train_samples`: each teacher's non-target entropy
            at `temperature` is measured on those first training examples.
        temperature (`float`): the distillation temperature T.
        device (`str`, *optional*): where students and teachers are evaluated.
        log (`Callable[[str], None]`): progress messages.

    Returns:
        `tuple[list[RunResult], dict]`: the students' results, and each teacher's metrics by label (accuracy, NLL,
        ECE, confidence − accuracy, the non-target entropy at T = 1 and at `temperature`).
    """
    # The regime check and the digits probe belong to the loss comparison, not to this study.
    data = dataclasses.replace(data or DataOptions(), probe=False, train_samples=0)
    train_data = dataclasses.replace(data, split="train", max_samples=max_train_samples)
    log(f"[hf-maxsup distill] evaluating {len(students)} students and {len(teachers)} teachers")
    results = [_evaluate(run.path, run.label, run.seed, data, device) for run in students]
    teacher_metrics = {
        label: _teacher_metrics(path, data, train_data, temperature, device) for label, path in teachers.items()
    }
    return results, teacher_metrics


# --- writing ---------------------------------------------------------------------------------------------------------


def _table(summary: dict, teachers: dict, temperature: float) -> str:
    """One row per teacher: its checkpoint and own metrics, its students' number and metrics over their seeds."""
    rows = []
    for label, metrics in summary.items():
        teacher = [column.format(metrics[column.key]) if column.key in metrics else "—" for column in TEACHER_COLUMNS]
        students = [column.format(metrics.get(column.key, summarize([]))) for column in STUDENT_COLUMNS]
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
            *(column.format_value(result.metrics.get(column.key, float("nan"))) for column in STUDENT_COLUMNS),
        ]
        for result in results
    ]
    header = ["teacher", "seed", "checkpoint", *(column.header for column in STUDENT_COLUMNS)]
    return ["## Every student", "", markdown_table(header, rows), ""]


def distillation_notes(
    recipe: str, passthrough: Sequence[str], settings: dict, baseline: bool, results, seconds
) -> list[str]:
    """The notes that say how the students were trained, on what they were evaluated, and how long it took.

    Args:
        recipe (`str`), passthrough (`Sequence[str]`): the recipe script and the arguments it got.
        settings (`dict`): the students' `seeds`, `student_loss`, `distill_alpha` and `distill_temperature`.
        baseline (`bool`): whether students were trained on the labels alone too ([`NO_TEACHER`]).
        results (`Sequence[RunResult]`): the students' results.
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


def teacher_runs(teachers: dict, teacher_metrics: dict, teacher_seeds: dict | None = None) -> list[dict]:
    """Each teacher as `results.json` lists it among `teacher_runs`: `label`, `seed` (from `teacher_seeds`, else the
    member record a comparison left in the teacher's folder, else `None`), `path` and `metrics` (those of
    [`evaluate_distillation`]). Teachers of equal seeds (members of one comparison) are paired in the tests."""
    runs = []
    for label, metrics in teacher_metrics.items():
        path = teachers[label]
        if teacher_seeds is not None:
            seed = teacher_seeds.get(label)
        else:
            seed = (read_member_record(path) or {}).get("seed") if os.path.isdir(path) else None
        runs.append({"label": label, "seed": seed, "path": path, "metrics": metrics})
    return runs


def _every_teacher(own: Sequence[dict], others: Sequence[dict], split: str) -> tuple[list[dict], list[RunResult]]:
    """This study's teachers and the others not among them, and all of them as runs for the tests."""
    seen = {(run["label"], run["path"]) for run in own}
    every = [*own, *(run for run in others if (run["label"], run["path"]) not in seen)]
    return every, [RunResult(run["label"], run["seed"], run["path"], "", split, 0, run["metrics"]) for run in every]


def _teachers_lines(runs: Sequence[dict], split: str) -> list[str]:
    """The table of the teachers of every label over their seeds, when some label has more than one."""
    results = [RunResult(run["label"], run["seed"], run["path"], "", split, 0, run["metrics"]) for run in runs]
    summary = summarize_runs(results)
    if all(metrics["teacher_accuracy"]["n"] < 2 for metrics in summary.values()):
        return []
    columns = [column for column in TEACHER_COLUMNS if column.key != "teacher_non_target_entropy_at_t"]
    return [
        "Teachers over their seeds (this study's and those of the studies it was analysed with; the claims on the "
        "teachers are tested on these):",
        "",
        summary_table(summary, "teacher", columns, count="teachers"),
        "",
    ]


def _opening_lines(command: str, table: str) -> list[str]:
    """The title, the command, what the table shows, and the table."""
    return [
        "# Distillation: students of CE, LS and MaxSup teachers",
        "",
        "```",
        command,
        "```",
        "",
        "Students: mean ± sample standard deviation (ddof=1) over their seeds; one teacher per row (its own "
        "numbers). The non-target entropy is the mean normalised entropy of the teacher's distribution over the "
        "classes other than the label (1 = uniform: no class-resemblance information); confidence − accuracy > 0 is "
        "over-confidence, < 0 under-confidence.",
        "",
        table,
        "",
    ]


def write_distillation_report(
    output_dir: str,
    results: Sequence[RunResult],
    teachers: dict,
    teacher_metrics: dict,
    *,
    command: str,
    notes: Sequence[str],
    extra: dict,
    teacher_seeds: dict | None = None,
    other_teachers: Sequence[dict] = (),
    training_time: str | None = None,
) -> dict:
    """Writes `report.md` and `results.json` of the study; returns the content of `results.json`.

    The claims on the students are tested on this study's students, those on the teachers on every teacher: this
    study's and `other_teachers` (e.g. the other seeds of each loss, distilled in studies of their own).

    Args:
        output_dir (`str`): the report's folder; command (`str`): the command line, recorded in the report.
        results (`Sequence[RunResult]`), teacher_metrics (`dict`): as [`evaluate_distillation`] returns them.
        teachers (`dict`): `{label: teacher's folder}`, with [`NO_TEACHER`]: `None` when there are such students.
        notes (`Sequence[str]`): paragraphs after the claims (see [`distillation_notes`]).
        extra (`dict`): the study's settings, recorded in `results.json` (`distill_temperature` names the table's T).
        teacher_seeds (`dict`, *optional*), other_teachers (`Sequence[dict]`, *optional*): `{label: the teacher's
            training seed}` (default: see [`teacher_runs`]) and more teachers, as [`teacher_runs`] lists them.
        training_time (`str`, *optional*): the line of the students' training time when their folders are gone.
    """
    summary = summarize_runs(results)
    for label, metrics in teacher_metrics.items():
        summary[label].update({key: summarize([value]) for key, value in metrics.items()})
    own = teacher_runs(teachers, teacher_metrics, teacher_seeds)
    every_teacher, teacher_results = _every_teacher(own, other_teachers, results[0].split)
    checks = paper_checks([*results, *teacher_results], DISTILLATION_CLAIMS)
    lines = [
        *_opening_lines(command, _table(summary, teachers, extra["distill_temperature"])),
        *_teachers_lines(every_teacher, results[0].split),
        *claims_lines("the papers", checks, (*TEACHER_COLUMNS, *STUDENT_COLUMNS)),
        *notes,
        "",
    ]
    time_line = training_time or training_time_line([result.path for result in results])
    time_line = time_line and time_line.replace(" runs ", " students ")
    lines += [*([time_line, ""] if time_line else []), *_student_lines(results)]
    content = {"command": command, **extra, "teachers": teachers, "teacher_metrics": teacher_metrics}
    content.update(
        teacher_runs=every_teacher,
        # The students' task is the teachers': not repeated per student.
        students=[{key: value for key, value in result.to_json().items() if key != "task"} for result in results],
        summary=summary,
        checks=checks,
        notes=list(notes),
        training_time=time_line,
    )
    return write_files(output_dir, lines, content)
