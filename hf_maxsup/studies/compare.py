"""`hf-maxsup compare`: the same model trained with each loss and seed through a recipe, then the report of them.

    hf-maxsup compare --output_dir report/ --seeds 0 1 2 [recipe arguments ...]

[`run_compare`] trains one member per loss and seed ([`~hf_maxsup.studies.members.train_members`]: resumable,
finished members skipped), stops early when the first member's model is one the reports do not cover
([`check_reportable`]), then writes the report of its task: classifiers
([`~hf_maxsup.report.classification.analyze_checkpoints`]) or translation models
([`~hf_maxsup.report.translation.analyze_translation_checkpoints`]).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence

from ..auto import task_of
from ..report.classification import analyze_checkpoints
from ..report.options import DataOptions, TranslationDataOptions
from ..report.runs import Run
from ..report.translation import analyze_translation_checkpoints
from .members import check_passthrough, default_recipe, plan_members, train_members

__all__ = ["REPORTED_TASKS", "check_reportable", "member_task", "run_compare"]

# The tasks of the models the comparison reports on: classifiers and translation models.
REPORTED_TASKS = ("image-classification", "text-classification", "text2text-generation")


def member_task(output_dir: str) -> tuple[str, str | None]:
    """(architecture, task) of a member's saved model, from its `config.json`."""
    with open(os.path.join(output_dir, "config.json"), encoding="utf-8") as f:
        architecture = (json.load(f).get("architectures") or [""])[0]
    return architecture, task_of(architecture)


def check_reportable(output_dir: str) -> None:
    """Raises a ValueError unless the member's saved model is an image or text classifier or a sequence-to-sequence
    (translation) model: what the reports cover."""
    architecture, task = member_task(output_dir)
    if task not in REPORTED_TASKS:
        raise ValueError(
            f"{output_dir} holds a {architecture or 'model of unknown architecture'} ({task or 'unknown task'}): the "
            "comparison report covers image and text classifiers and translation (sequence-to-sequence) models only."
        )


def run_compare(
    output_dir: str,
    *,
    losses: Sequence[str] = ("ce", "ls", "maxsup"),
    seeds: Sequence[int] = (42,),
    recipe: str | None = None,
    runs_dir: str | None = None,
    python: str = sys.executable,
    passthrough: Sequence[str] = (),
    data: DataOptions | None = None,
    translation_data: TranslationDataOptions | None = None,
    device: str | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """Trains every member (see the module docstring), then writes the report of their task into `output_dir`.

    Args:
        output_dir (`str`): folder of the report (`report.md`, `results.json`, the figures).
        losses (`Sequence[str]`), seeds (`Sequence[int]`): one member per loss and seed.
        recipe (`str`, *optional*): the recipe script (default: `recipes/image_classification.py`).
        runs_dir (`str`, *optional*): where the members go (default: `output_dir/runs`).
        python (`str`): the interpreter that runs the recipe.
        passthrough (`Sequence[str]`): the recipe's arguments.
        data ([`~hf_maxsup.report.DataOptions`], *optional*), translation_data
            ([`~hf_maxsup.report.TranslationDataOptions`], *optional*): the evaluation data of classifiers and of
            translation models (default: the task's embedded data).
        device (`str`, *optional*): where the report evaluates the members (training is the recipe's).
        command (`str`): the command line, recorded in the report.

    Returns:
        `dict`: the content of `results.json`.
    """
    recipe = recipe or default_recipe()
    check_passthrough(passthrough)
    runs_dir = runs_dir or os.path.join(output_dir, "runs")
    members = plan_members(runs_dir, losses, seeds)
    log(
        f"[hf-maxsup compare] {len(members)} members ({len(losses)} losses x {len(seeds)} seeds) with "
        f"{recipe}; runs in {runs_dir}"
    )
    start = time.monotonic()
    train_members(members, recipe, passthrough, python=python, log=log, check=check_reportable)
    trained = time.monotonic() - start
    runs = [Run(path=member.output_dir, label=member.loss, seed=member.seed) for member in members]
    note = (
        f"Recipe: `{os.path.relpath(recipe)}`; recipe arguments: `{shlex.join(passthrough) or '(defaults)'}`. "
        "ls uses a constant alpha and maxsup the linear 0.1 → 0.2 schedule unless --loss_alpha* say otherwise."
    )
    extra = {"recipe": recipe, "recipe_args": list(passthrough), "losses": list(losses), "seeds": list(seeds)}
    extra.update(runs_dir=runs_dir, train_seconds_this_invocation=round(trained, 1))
    report = {"device": device, "log": log, "notes": [note], "command": command, "extra": extra}
    if member_task(members[0].output_dir)[1] == "text2text-generation":
        content = analyze_translation_checkpoints(runs, output_dir, translation_data, **report)
    else:
        content = analyze_checkpoints(runs, output_dir, data, title="CE / LS / MaxSup side by side", **report)
    log(f"[hf-maxsup compare] report written to {os.path.join(output_dir, 'report.md')}")
    return content
