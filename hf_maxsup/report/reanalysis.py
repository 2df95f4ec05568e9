"""`hf-maxsup reanalyze`: a report written again from its own `results.json`, with the current claims and tests.

Every report keeps each run's metrics in `results.json`, so its tables, claims and regime check can be recomputed
without the checkpoints (which a comparison's `--runs_dir` may no longer hold): [`reanalyze`] reads the file, rebuilds
the runs and calls the writer of the report's task, keeping what cannot be recomputed (the figures, the training time,
the notes). A distillation study can take the teachers of other studies (`teachers_from`: e.g. the other seeds of
each loss, distilled in studies of their own), so that its claims on the teachers are tested over several teachers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .classification import write_report
from .distillation import write_distillation_report
from .runs import RunResult
from .translation import write_translation_report

__all__ = ["reanalyze"]

# What a report's writer computes itself: not passed back to it as settings of the study.
COMPUTED = {
    "title",
    "command",
    "data",
    "table_metrics",
    "runs",
    "summary",
    "checks",
    "regime",
    "figures",
    "notes",
    "training_time",
    "projection_class_names",
    "teachers",
    "teacher_metrics",
    "teacher_runs",
    "students",
}
# The paragraphs of notes in a report written before `results.json` kept them, by their first words.
NOTE_STARTS = ("Recipe:", "Evaluated on the", "This invocation:")


def _read(folder: str) -> tuple[dict, list[str]]:
    """The content of `folder/results.json` and the lines of its `report.md` (none when it has none)."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no results.json: give the folder of a report written by hf-maxsup.")
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    report = Path(folder, "report.md")
    return content, report.read_text(encoding="utf-8").splitlines() if report.is_file() else []


def _kept(content: dict, lines: list[str]) -> dict:
    """What the writer cannot recompute: the notes and the training time (from `results.json`, else from the
    paragraphs of the earlier `report.md` that hold them)."""
    notes = content.get("notes")
    if notes is None:
        # The data note starts as a distillation's note does, and is written apart.
        notes = [line for line in lines if line.startswith(NOTE_STARTS) and line != content.get("data")]
    time_line = content.get("training_time")
    if time_line is None:
        time_line = next((line for line in lines if line.startswith("Training time:")), None)
    return {"notes": notes, "training_time": time_line}


def _class_names(content: dict, lines: list[str]) -> dict[int, str] | None:
    """The class names the projection figure's sentence needs: from `results.json`, else from that sentence in the
    earlier `report.md`."""
    names = content.get("projection_class_names")
    if names is None:
        sentence = (re.match(r"Penultimate features of the classes (.+) projected", line) for line in lines)
        found = next((match for match in sentence if match), None)
        names = found.group(1).split(", ") if found else None
    ids = (content.get("data_options") or {}).get("projection_classes", [0, 1, 2])
    return dict(zip(ids, names)) if names else None


def _teachers_of(folder: str, split: tuple) -> list[dict]:
    """The teachers a distillation study in `folder` evaluated itself, refused unless evaluated on `split`."""
    content, _ = _read(folder)
    if "teacher_metrics" not in content:
        raise ValueError(f"--teachers_from {folder}: not the report of hf-maxsup distill.")
    student = content["students"][0]
    if (student["split"], student["num_examples"]) != split:
        raise ValueError(
            f"--teachers_from {folder}: its teachers were evaluated on {student['num_examples']} examples of the "
            f"{student['split']} split, this study's on {split[1]} of the {split[0]} split: give studies evaluated "
            "on the same data."
        )
    seeds = {(run["label"], run["path"]): run["seed"] for run in content.get("teacher_runs", [])}
    return [
        {
            "label": label,
            "seed": seeds.get((label, content["teachers"][label])),
            "path": content["teachers"][label],
            "metrics": metrics,
        }
        for label, metrics in content["teacher_metrics"].items()
    ]


def _distillation(folder: str, content: dict, kept: dict, teachers_from: Sequence[str]) -> dict:
    """The distillation study's report again, with the teachers of `teachers_from` in the claims on teachers."""
    students = [RunResult(task="", **student) for student in content["students"]]
    split = (students[0].split, students[0].num_examples)
    others = [run for other in teachers_from for run in _teachers_of(other, split)]
    seeds = {run["label"]: run["seed"] for run in content.get("teacher_runs", [])}
    return write_distillation_report(
        folder,
        students,
        content["teachers"],
        content["teacher_metrics"],
        command=content["command"],
        extra={key: value for key, value in content.items() if key not in COMPUTED},
        teacher_seeds={label: seeds.get(label) for label in content["teacher_metrics"]},
        other_teachers=others,
        **kept,
    )


def reanalyze(folder: str, *, teachers_from: Sequence[str] = (), log: Callable[[str], None] = print) -> dict:
    """Writes the report of `folder` again from its `results.json` (see the module docstring).

    Args:
        folder (`str`): the folder of a report of `hf-maxsup compare`, `analyze` or `distill`.
        teachers_from (`Sequence[str]`, *optional*): folders of other distillation studies evaluated on the same
            data, whose teachers join this study's in the claims on teachers (a distillation report only).
        log (`Callable[[str], None]`): progress messages.

    Returns:
        `dict`: the new content of `results.json`.

    Raises:
        `ValueError`: no `results.json` in a folder, or `teachers_from` given for a report that is not a
            distillation study's or naming a study evaluated on other data.
    """
    content, lines = _read(folder)
    kept = _kept(content, lines)
    if "students" in content:
        written = _distillation(folder, content, kept, teachers_from)
    elif teachers_from:
        raise ValueError("--teachers_from is for the report of hf-maxsup distill: this one compares losses.")
    else:
        names = _class_names(content, lines)
        runs = [RunResult(**run, class_names=names) for run in content["runs"]]
        common = {"title": content["title"], "command": content["command"], "data_note": content["data"]}
        extra = {key: value for key, value in content.items() if key not in COMPUTED}
        if runs[0].task == "translation":
            written = write_translation_report(runs, folder, extra=extra, **common, **kept)
        else:
            classes = (content.get("data_options") or {}).get("projection_classes", (0, 1, 2))
            figures = content["figures"]
            written = write_report(
                runs, folder, extra=extra, projection_classes=classes, figures=figures, **common, **kept
            )
    log(f"[hf-maxsup reanalyze] {os.path.join(folder, 'report.md')} written again from its results.json")
    return written
