"""The Markdown of the reports and their `results.json`: tables, the claims and the regime check in words, the files.

The pieces every task's report is made of ([`Column`], [`summary_table`], [`run_table`], [`claims_lines`],
[`regime_lines`], [`opening_lines`], [`write_files`]); [`side_by_side`] is the frame of the reports that set groups of
runs side by side, around each task's tables ([`~hf_maxsup.report.classification.write_report`], ...).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .runs import RunResult
from .significance import PAIRED
from .stats import Claim, format_summary, paper_checks, regime_check, summarize, summarize_runs

__all__ = [
    "Column",
    "check_line",
    "claims_intro",
    "claims_lines",
    "format_p",
    "json_safe",
    "markdown_table",
    "opening_lines",
    "percent",
    "regime_lines",
    "run_table",
    "side_by_side",
    "summary_table",
    "training_time_line",
    "write_files",
]


class Column(NamedTuple):
    """A column of the report's tables: the metric, its header, and how it is shown (`value * scale` with `decimals`
    decimals).

    Args:
        key (`str`): the metric's key in a run's `metrics`.
        header (`str`): the column's header.
        scale (`float`, *optional*, defaults to 1.0): e.g. 100 for a percentage.
        decimals (`int`, *optional*, defaults to 3)
    """

    key: str
    header: str
    scale: float = 1.0
    decimals: int = 3

    def format(self, summary: dict[str, float]) -> str:
        """The summary of this metric over runs as `"mean ± std"`, see [`format_summary`]."""
        return format_summary(summary, self.scale, self.decimals)

    def format_value(self, value: float) -> str:
        """One run's value of this metric (`"—"` when it is NaN)."""
        return self.format(summarize([value]))

    def renamed(self, key: str, header: str) -> Column:
        """The same display for another metric, e.g. the teacher's accuracy beside the student's."""
        return Column(key, header, self.scale, self.decimals)


def percent(key: str, header: str) -> Column:
    """A column of a fraction shown in % with two decimals; the header gets its "(%)"."""
    return Column(key, f"{header} (%)", 100.0, 2)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of `rows` (lists of cell texts) under `header`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_p(p: float) -> str:
    """A p-value in three decimals, or in scientific notation below 0.001."""
    return f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.1e}"


def _test_words(check: dict, scale: float, decimals: int) -> str:
    """The test behind a claim's verdict in words: the difference with its 95 % interval, the test, its p-values."""
    difference = f"difference {check['difference'] * scale:+.{decimals}f}"
    if check["difference"] == 0:
        return "equal means"
    if check["p_value"] is None:
        return f"{difference}; fewer than two runs on a side"
    interval = f"95 % CI {check['ci_low'] * scale:+.{decimals}f} to {check['ci_high'] * scale:+.{decimals}f}"
    if check["test"] == PAIRED:
        test = f"paired t-test over {check['n']} " + ("seeds" if check["paired_seeds"] is not None else "runs")
    else:
        test = f"Welch t-test, {check['n_a']} vs {check['n_b']} runs"
    return (
        f"{difference} ({interval}); {test}, p = {format_p(check['p_value'])}, Holm-adjusted "
        f"p = {format_p(check['p_adjusted'])}"
    )


def check_line(check: dict, columns: Sequence[Column]) -> str:
    """A claim as a Markdown list item: both means ± std (scaled as in the column of its metric among `columns`), the
    difference with its 95 % interval, the test and its p-values, and the verdict (see [`~hf_maxsup.report.stats`])."""
    scale, decimals = next(((s, d) for key, _, s, d in columns if key == check["metric"]), (1.0, 3))

    def value(mean, std, n):
        text = f"{mean * scale:.{decimals}f}"
        return f"{text} (1 run)" if n < 2 else f"{text} ± {std * scale:.{decimals}f} ({n} runs)"

    metrics = check["metric"] if check["metric_b"] == check["metric"] else f"{check['metric']} vs {check['metric_b']}"
    note = f" ({check['note']})" if check.get("note") else ""
    return (
        f"- {check['claim']}: {check['a']} {value(check['mean_a'], check['std_a'], check['n_a'])} vs {check['b']} "
        f"{value(check['mean_b'], check['std_b'], check['n_b'])} ({metrics}) — {_test_words(check, scale, decimals)}: "
        f"**{check['verdict']}**{note}."
    )


def claims_intro(checks: Sequence[dict]) -> str:
    """How the claims below were tested and what their verdicts mean."""
    claims = f"{len(checks)} claim" + ("s" if len(checks) != 1 else "")
    return (
        f"Each claim is tested on the runs ({claims}): a paired t-test on the per-seed differences when "
        "both groups hold the same seeds (the same seed gives the same initialisation and data order), Welch's "
        "t-test otherwise; two-sided, with Holm's correction across these claims. Verdict at the 5 % level of the "
        "adjusted p: **supported**, **contradicted** (significant the other way), **not significant** "
        '(**consistent** for an "at least" claim), **untestable** with fewer than two runs on a side, **tie** '
        "for equal means."
    )


def _gap_words(gap: dict, test: dict) -> str:
    """CE's confidence − accuracy over its runs with the one-sample t-test against 0."""
    text = f"confidence − accuracy {format_summary(gap, 1.0, 3)}"
    if test["p_value"] is None:
        return f"{text}, one run: untestable"
    return (
        f"{text} over {gap['n']} runs, 95 % CI {test['ci_low']:+.3f} to {test['ci_high']:+.3f}, one-sample t-test "
        f"against 0: p = {format_p(test['p_value'])}"
    )


def _regime_verdict(regime: dict) -> str:
    """What the regime check concludes, saying only what was measured."""
    if regime["in_regime"]:
        return (
            " CE is over-confident and fits its training set: the regime in which the papers measured their "
            "effects, where label smoothing improves calibration by lowering the confidence."
        )
    if regime["over_confident"] and regime["in_regime"] is None:
        return (
            " CE is over-confident, as in the regime in which the papers measured their effects; its training "
            "accuracy was not measured."
        )
    return ""


def regime_lines(summary: dict, regime: dict | None) -> list[str]:
    """The regime check in words: CE's confidence against its accuracy with its test, its training accuracy and each
    group's misclassified training rows (when measured), and a warning when the run is outside the papers' regime.
    Each sentence only when its quantity was measured."""
    if regime is None:
        return []
    ce, gap, train = summary["ce"], regime["confidence_minus_accuracy"], regime["train_accuracy"]
    others = ", ".join(
        f"{label} {100 * metrics['mean_confidence']['mean']:.1f} %"
        for label, metrics in summary.items()
        if label != "ce" and metrics.get("mean_confidence", {}).get("n")
    )
    measured = ce.get("mean_confidence", {}).get("n") and ce.get("accuracy", {}).get("n")
    text = (
        (
            f"CE's mean top-1 confidence is {100 * ce['mean_confidence']['mean']:.1f} % for an accuracy of "
            f"{100 * ce['accuracy']['mean']:.1f} % ({_gap_words(gap, regime['test'])})"
            if measured
            else f"CE's {_gap_words(gap, regime['test'])}"
        )
        + (f"; mean confidence of {others}" if others else "")
        + (f". CE's training accuracy: {format_summary(train, 100.0, 2)} %" if train["n"] else "")
        + "."
    )
    misclassified = regime.get("train_misclassified") or {}
    if misclassified:
        text += (
            " Training rows misclassified (label not the top-1 logit), mean of the logged fraction over training: "
            + ", ".join(f"{label} {format_summary(value, 100.0, 1)} %" for label, value in misclassified.items())
            + ". MaxSup's term differs from LS's only on such rows."
        )
    text += _regime_verdict(regime)
    if regime["in_regime"] is False:
        return ["## Regime check", "", text, "", f"> **Warning**: {regime['warning']}", ""]
    return ["## Regime check", "", text, ""]


def training_time_line(paths: Sequence[str]) -> str | None:
    """How long the runs trained in all: the sum of the `train_runtime` the recipe saved in each run's
    `train_results.json` (None when a run has none, e.g. a Hub id), which a resumed or re-run comparison keeps."""
    seconds = []
    for path in paths:
        file = os.path.join(path, "train_results.json")
        if not os.path.isfile(file):
            return None
        with open(file, encoding="utf-8") as f:
            seconds.append(float(json.load(f).get("train_runtime", float("nan"))))
    if not seconds or not all(math.isfinite(s) for s in seconds):
        return None
    return (
        f"Training time: {sum(seconds) / 60:.1f} min for the {len(seconds)} runs (sum of their `train_runtime`; "
        f"{min(seconds) / 60:.1f}–{max(seconds) / 60:.1f} min each)."
    )


def summary_table(summary: dict, first: str, columns: Sequence[Column], count: str = "runs") -> str:
    """One row per group: its number of runs (headed `count`) and the mean ± std of each (key, header, scale,
    decimals) column; a column no group measured is left out."""
    columns = [c for c in columns if any(metrics.get(c.key, {}).get("n") for metrics in summary.values())]
    rows = [
        [
            label,
            str(max(s["n"] for s in metrics.values())),
            *(column.format(metrics.get(column.key, summarize([]))) for column in columns),
        ]
        for label, metrics in summary.items()
    ]
    return markdown_table([first, count, *(column.header for column in columns)], rows)


def json_safe(value):
    """`value` with NaN and infinities as `None` (JSON has no NaN) and numpy scalars as Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def run_table(results: Sequence[RunResult], columns: Sequence[Column]) -> str:
    """One row per run: its name, its checkpoint and its value of each column; a column no run measured is left
    out."""
    columns = [c for c in columns if any(summarize([r.metrics.get(c.key, float("nan"))])["n"] for r in results)]
    rows = [
        [result.name, f"`{result.path}`", *(c.format_value(result.metrics.get(c.key, float("nan"))) for c in columns)]
        for result in results
    ]
    return markdown_table(["run", "checkpoint", *(column.header for column in columns)], rows)


def opening_lines(title: str, command: str | None, data_note: str | None, summary: dict) -> list[str]:
    """The title, the command in a code block, what the runs were evaluated on, and how a row is summarised."""
    several = any(max(s["n"] for s in metrics.values()) > 1 for metrics in summary.values())
    lines = [f"# {title}", ""]
    lines += ["```", command, "```", ""] if command else []
    lines += [data_note, ""] if data_note else []
    lines.append(
        "Mean ± sample standard deviation (ddof=1) over the runs of each row."
        if several
        else "One run per row: no spread over seeds."
    )
    return lines


def claims_lines(source: str, checks: Sequence[dict], columns: Sequence[Column]) -> list[str]:
    """The section of the papers' claims: how they were tested ([`claims_intro`]), then each claim with its verdict
    ([`check_line`], its metric scaled as in `columns`)."""
    return [
        f"## What {source} report, and what these runs show",
        "",
        claims_intro(checks),
        "",
        *(check_line(check, columns) for check in checks),
        "",
    ]


def side_by_side(
    results: Sequence[RunResult],
    columns: Sequence[Column],
    claims: Sequence[Claim],
    body: Callable[[dict, list[dict], dict | None], list[str]],
    *,
    title: str,
    command: str | None = None,
    data_note: str | None = None,
    notes: Sequence[str] = (),
    extra: dict | None = None,
    training_time: str | None = None,
    before_runs: Sequence[str] = (),
    more: dict | None = None,
) -> tuple[list[str], dict]:
    """The lines of `report.md` and the content of `results.json` of a report that sets groups of runs side by side.

    `report.md`: the opening ([`opening_lines`]), `body(summary, checks, regime)` (the task's tables and claims: the
    runs summarised per group, `claims` tested on them, the regime check, see [`~hf_maxsup.report.stats`]), the notes,
    the training time, `before_runs` and one row per run with `columns`. `results.json`: the settings and `extra`,
    every run, the summary, the checks, the regime check, `more`, the notes and the training time.

    Args:
        results (`Sequence[RunResult]`): the runs; columns (`Sequence[Column]`): the metrics of the table of runs.
        claims (`Sequence[Claim]`): the task's claims; body (`Callable`): its sections.
        title (`str`): the report's title; command (`str`, *optional*): the command line that made it.
        data_note (`str`, *optional*): what the runs were evaluated on, in words.
        notes (`Sequence[str]`): paragraphs after the claims (e.g. the recipe and its arguments).
        extra (`dict`, *optional*): more settings recorded in `results.json` (e.g. the data options).
        training_time (`str`, *optional*): the line of the training time; by default summed from the runs' folders
            ([`training_time_line`]), which a re-analysis of runs whose folders are gone cannot do.
        before_runs (`Sequence[str]`), more (`dict`, *optional*): the task's lines before the table of runs, and its
            entries of `results.json`.
    """
    summary = summarize_runs(results)
    checks = paper_checks(results, claims)
    regime = regime_check(summary)
    lines = [*opening_lines(title, command, data_note, summary), *body(summary, checks, regime)]
    lines += [*notes, ""] if notes else []
    time_line = training_time or training_time_line([result.path for result in results])
    lines += [time_line, ""] if time_line else []
    lines += [*before_runs, "## Every run", "", run_table(results, columns), ""]
    content = {
        "title": title,
        "command": command,
        "data": data_note,
        **(extra or {}),
        "table_metrics": [{"key": column.key, "header": column.header} for column in columns],
        "runs": [result.to_json() for result in results],
        "summary": summary,
        "checks": checks,
        "regime": regime,
        **(more or {}),
        "notes": list(notes),
        "training_time": time_line,
    }
    return lines, content


def write_files(output_dir: str, lines: Sequence[str], content: dict) -> dict:
    """Writes `report.md` (the lines) and `results.json` (the content, JSON-safe) into `output_dir`; returns the
    content."""
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, "report.md").write_text("\n".join(lines), encoding="utf-8")
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(content), f, indent=2)
    return content
