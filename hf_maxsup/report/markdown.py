"""The Markdown report and `results.json`: the tables, the regime check and the claims in words, the figures.

[`write_report`] writes the report of classifiers; its pieces ([`summary_table`], [`check_line`], [`regime_lines`],
[`run_table`], [`results_content`], [`write_files`]) serve the translation and distillation reports too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .figures import save_figures
from .runs import RunResult
from .summary import (
    REGIME_METRICS,
    TABLE_METRICS,
    Column,
    format_summary,
    maxsup_ls_note,
    paper_checks,
    regime_check,
    summarize,
    summarize_runs,
)

__all__ = [
    "REPORT_FILES",
    "check_line",
    "json_safe",
    "markdown_table",
    "opening_lines",
    "regime_lines",
    "results_content",
    "run_table",
    "summary_table",
    "training_time_line",
    "write_files",
    "write_report",
]

REPORT_FILES = ("report.md", "results.json", "reliability_diagrams.png", "projections.png", "risk_coverage.png")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of `rows` (lists of cell texts) under `header`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def check_line(check: dict, columns: Sequence[Column] = (*TABLE_METRICS, *REGIME_METRICS)) -> str:
    """A claim as a Markdown list item: both means ± std (scaled as in `columns`), agrees or not, the spread."""
    scale, decimals = next(((s, d) for key, _, s, d in columns if key == check["metric"]), (1.0, 3))

    def value(mean, std):
        text = f"{mean * scale:.{decimals}f}"
        return text if not math.isfinite(std) else f"{text} ± {std * scale:.{decimals}f}"

    verdict = "agrees" if check["agrees"] else "**disagrees**"
    if check["beyond_spread"] is None:
        spread = "one run per loss: spread unknown"
    else:
        spread = (
            "difference beyond the seeds' spread" if check["beyond_spread"] else "difference within the seeds' spread"
        )
    metrics = check["metric"] if check["metric_b"] == check["metric"] else f"{check['metric']} vs {check['metric_b']}"
    note = f" ({check['note']})" if check.get("note") else ""
    return (
        f"- {check['claim']}: {check['a']} {value(check['mean_a'], check['std_a'])} vs {check['b']} "
        f"{value(check['mean_b'], check['std_b'])} ({metrics}) — {verdict}; {spread}{note}."
    )


def regime_lines(summary: dict, regime: dict | None) -> list[str]:
    """The regime check in words: CE's confidence against its accuracy and its training accuracy, and a warning when
    the run is outside the papers' regime."""
    if regime is None:
        return []
    ce, gap, train = summary["ce"], regime["confidence_minus_accuracy"], regime["train_accuracy"]
    others = ", ".join(
        f"{label} {100 * metrics['mean_confidence']['mean']:.1f} %"
        for label, metrics in summary.items()
        if label != "ce" and metrics.get("mean_confidence", {}).get("n")
    )
    spread = {
        None: "one run: spread unknown",
        True: "beyond its spread over seeds",
        False: "within its spread over seeds",
    }[regime["beyond_spread"]]
    text = (
        f"CE's mean top-1 confidence is {100 * ce['mean_confidence']['mean']:.1f} % for an accuracy of "
        f"{100 * ce['accuracy']['mean']:.1f} % (confidence − accuracy {format_summary(gap, 1.0, 3)}, {spread})"
        + (f"; mean confidence of {others}" if others else "")
        + (f". CE's training accuracy: {format_summary(train, 100.0, 2)} %" if train["n"] else "")
        + "."
    )
    if regime["in_regime"]:
        text += (
            " CE is over-confident and fits its training set: the regime in which the papers measured their "
            "effects, where label smoothing improves calibration by lowering the confidence."
        )
        return ["## Regime check", "", text, ""]
    return ["## Regime check", "", text, "", f"> **Warning**: {regime['warning']}", ""]


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


def summary_table(summary: dict, first: str, columns: Sequence[Column]) -> str:
    """One row per group: its number of runs and the mean ± std of each (key, header, scale, decimals) column."""
    rows = [
        [
            label,
            str(max(s["n"] for s in metrics.values())),
            *(column.format(metrics.get(column.key, summarize([]))) for column in columns),
        ]
        for label, metrics in summary.items()
    ]
    return markdown_table([first, "runs", *(column.header for column in columns)], rows)


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
    """One row per run: its name, its checkpoint and its value of each column."""
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


def results_content(
    results: Sequence[RunResult],
    columns: Sequence[Column],
    summary: dict,
    checks: list[dict],
    regime: dict | None,
    title: str,
    command: str | None,
    data_note: str | None,
    extra: dict | None,
    **more,
) -> dict:
    """The content of `results.json`: the report's settings, every run, the summaries and the checks."""
    return {
        "title": title,
        "command": command,
        "data": data_note,
        **(extra or {}),
        "table_metrics": [{"key": column.key, "header": column.header} for column in columns],
        "runs": [result.to_json() for result in results],
        "summary": summary,
        "checks": checks,
        "regime": regime,
        **more,
    }


def write_files(output_dir: str, lines: Sequence[str], content: dict) -> dict:
    """Writes `report.md` (the lines) and `results.json` (the content, JSON-safe) into `output_dir`; returns the
    content."""
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, "report.md").write_text("\n".join(lines), encoding="utf-8")
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(content), f, indent=2)
    return content


# The papers' own numbers, for scale beside these runs' claims.
PAPERS_SCALE = (
    "For scale: MaxSup paper, ResNet-50 on ImageNet: d_within / R² CE 0.331 / 0.445, LS 0.254 / 0.461, MaxSup "
    "0.300 / 0.497; linear probe on CIFAR-10 CE 81.4, LS 74.6, MaxSup 81.0. Müller et al.: ECE 0.071 → 0.035 with LS "
    "(Inception-v4, ImageNet)."
)


def _table_lines(summary: dict, regime: dict | None, first: str) -> list[str]:
    """The two tables of the classification report, each with the words it needs, and the regime check."""
    return [
        (
            "Lower is better for NLL, ECE, AURC and the confidence on errors; d_within is the intra-class cosine "
            "distance of the normalised penultimate features, R² = 1 − d_within/d_total their inter-class "
            "separability; the linear probe is a logistic regression on the frozen penultimate features of "
            "scikit-learn's digits (8×8 upscaled to the model's input), scored on held-out digits."
        ),
        "",
        summary_table(summary, first, TABLE_METRICS),
        "",
        (
            "The regime and the numbers behind the last checks: confidence − accuracy > 0 is over-confidence; the "
            "training accuracy is measured on training examples; the logit-normalised AURC ranks by "
            "max_k (z_k − μ)/‖z − μ‖_p (Xia et al. 2024) with p chosen on held-out data; the LS error amplification is "
            "the term the LS run logged during training (mean over its logging windows)."
        ),
        "",
        summary_table(summary, first, REGIME_METRICS),
        "",
        *regime_lines(summary, regime),
    ]


def _figure_lines(figures: dict, class_names: Sequence[str], projection_classes: Sequence[int]) -> list[str]:
    """The figures' section: each figure under the sentence that says what it shows."""
    lines = ["## Figures", "", "Reliability diagrams (15 equal-width bins; counts on top of the bars):", ""]
    lines += [f"![reliability diagrams]({figures['reliability']})", ""]
    if "projections" in figures:
        classes = ", ".join(class_names[c] for c in projection_classes)
        lines += [
            (
                f"Penultimate features of the classes {classes} projected on the plane through their templates "
                "(Müller et al. 2019):"
            ),
            "",
            f"![projections]({figures['projections']})",
            "",
        ]
    return [*lines, "Risk-coverage curves:", "", f"![risk-coverage]({figures['risk_coverage']})", ""]


def write_report(
    results: Sequence[RunResult],
    output_dir: str,
    *,
    title: str = "CE / LS / MaxSup side by side",
    command: str | None = None,
    data_note: str | None = None,
    notes: Sequence[str] = (),
    projection_classes: Sequence[int] = (0, 1, 2),
    extra: dict | None = None,
) -> dict:
    """Writes `report.md`, `results.json` and the figures of analysed runs (as [`analyze_run`] returns them).

    `report.md`: one row per group of runs (a loss, over its seeds) with accuracy, NLL, ECE, adaptive ECE, AURC,
    d_within, R², mean confidence on errors and the digits linear probe, as mean ± standard deviation; a second table
    for the regime check (CE's confidence − accuracy and training accuracy, with a warning when CE is not
    over-confident or does not fit its training set) and the logit-normalised AURC and logged LS error amplification;
    the claims of the papers, each agreeing or not and beyond the seeds' spread or not; the figures; one row per run.

    Returns:
        `dict`: the content of `results.json`.
    """
    os.makedirs(output_dir, exist_ok=True)
    summary = summarize_runs(results)
    checks = paper_checks(summary)
    regime = regime_check(summary)
    figures = save_figures(results, output_dir, projection_classes)
    lines = opening_lines(title, command, data_note, summary)
    lines += _table_lines(summary, regime, "loss" if set(summary) <= {"ce", "ls", "maxsup"} else "model")
    if checks:
        lines += ["## What the papers report, and what these runs show", ""]
        lines += [*(check_line(check) for check in checks), ""]
        note = maxsup_ls_note(summary)
        lines += [note, "", PAPERS_SCALE, ""] if note else [PAPERS_SCALE, ""]
    lines += [*notes, ""] if notes else []
    time_line = training_time_line([result.path for result in results])
    lines += [time_line, ""] if time_line else []
    lines += _figure_lines(figures, results[0].class_names, projection_classes)
    lines += ["## Every run", "", run_table(results, TABLE_METRICS), ""]
    content = results_content(
        results, TABLE_METRICS, summary, checks, regime, title, command, data_note, extra, figures=figures
    )
    return write_files(output_dir, lines, content)
