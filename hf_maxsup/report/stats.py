"""The statistics of the reports: summaries of a metric over seeds, and the checks of claims against them.

[`summarize_runs`] groups evaluated runs by label and gives every metric's mean, sample standard deviation and count;
[`paper_checks`] compares the group means against the claims of the papers (each task's `*_CLAIMS`, [`Claim`]s);
[`regime_check`] says whether the CE baseline is in the papers' regime (over-confident, fitting its training set).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from .runs import RunResult

__all__ = [
    "FIT_ACCURACY",
    "Claim",
    "format_summary",
    "paper_checks",
    "regime_check",
    "summarize",
    "summarize_runs",
]

# CE is taken to fit its training set from this training accuracy on (the report says "near 100 %").
FIT_ACCURACY = 0.98


class Claim(NamedTuple):
    """A claim of a paper as a report checks it: group `a`'s mean `metric` stands in `relation` to group `b`'s.

    Args:
        text (`str`): the claim in words, with its source.
        metric (`str`): the metric compared, a key of the runs' `metrics`.
        a (`str`), b (`str`): the labels of the two groups (e.g. `"ls"`, `"ce"`).
        relation (`str`): `"<"`, `">"` or `">="`: `"a < b"` means a's metric should be lower.
        metric_b (`str`, *optional*): b's metric when it is not `metric` (one group with and without a fix).
        note (`Callable[[dict], str | None]`, *optional*): the numbers that go with the claim beyond its two means,
            from the summary.
    """

    text: str
    metric: str
    a: str
    relation: str
    b: str
    metric_b: str | None = None
    note: Callable[[dict], str | None] | None = None


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1) and count of the finite values; std is NaN for fewer than two."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(finite)
    return {
        "mean": float(finite.mean()) if n else float("nan"),
        "std": float(finite.std(ddof=1)) if n > 1 else float("nan"),
        "n": n,
    }


def format_summary(summary: dict[str, float], scale: float = 1.0, decimals: int = 3) -> str:
    """`"mean ± std"` scaled (e.g. 100 for %), `"mean"` alone for a single value, `"—"` for none."""
    if not summary["n"]:
        return "—"
    mean = f"{summary['mean'] * scale:.{decimals}f}"
    return mean if summary["n"] < 2 else f"{mean} ± {summary['std'] * scale:.{decimals}f}"


def summarize_runs(results: Sequence[RunResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Groups runs by label, in order of first appearance, and summarises every metric.

    Args:
        results (`Sequence[RunResult]`): the evaluated runs; only their `label` and `metrics` are read.

    Returns:
        `dict`: `{label: {metric: {"mean", "std", "n"}}}`.
    """
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(result.label, []).append(result.metrics)
    summary = {}
    for label, runs in groups.items():
        keys = list(dict.fromkeys(key for metrics in runs for key in metrics))
        summary[label] = {key: summarize([metrics.get(key, float("nan")) for metrics in runs]) for key in keys}
    return summary


def paper_checks(summary: dict, claims: Sequence[Claim]) -> list[dict]:
    """Compares the group means of `summary` against `claims` (a task's `*_CLAIMS`).

    A claim *agrees* when the means are ordered as claimed; the difference is *beyond the spread* when it exceeds the
    sum of the two standard deviations over seeds (a rough guide, not a significance test), and the spread is unknown
    with a single run per group. A claim whose metrics are missing (e.g. no logit-normalised AURC) is left out.

    Returns:
        `list[dict]`: one check per claim kept, as `results.json` lists it (`claim`, the two means and standard
        deviations, `difference`, `spread`, `agrees`, `beyond_spread`, `note`).
    """
    checks = []
    for claim in claims:
        metric_b = claim.metric_b or claim.metric
        sa, sb = summary.get(claim.a, {}).get(claim.metric), summary.get(claim.b, {}).get(metric_b)
        if not (sa and sb and sa["n"] and sb["n"]):
            continue
        diff = sa["mean"] - sb["mean"]
        agrees = {"<": diff < 0, ">": diff > 0, ">=": diff >= 0}[claim.relation]
        spread = sa["std"] + sb["std"] if sa["n"] > 1 and sb["n"] > 1 else float("nan")
        beyond = bool(abs(diff) > spread) if math.isfinite(spread) else None
        checks.append(
            {
                "claim": claim.text,
                "metric": claim.metric,
                "a": claim.a,
                "relation": claim.relation,
                "b": claim.b,
                "metric_b": metric_b,
                "mean_a": sa["mean"],
                "mean_b": sb["mean"],
                "std_a": sa["std"],
                "std_b": sb["std"],
                "difference": diff,
                "spread": spread,
                "agrees": bool(agrees),
                "beyond_spread": beyond,
                "note": claim.note(summary) if claim.note is not None else None,
            }
        )
    return checks


def regime_check(summary: dict) -> dict | None:
    """Whether the CE baseline is in the papers' regime: over-confident on the evaluation split (mean top-1
    confidence above accuracy) and fitting its training set (training accuracy of at least `FIT_ACCURACY`).

    The papers' effects of label smoothing (lower ECE, tighter classes, worse AURC) are for such models: on an
    under-confident CE, a loss that lowers the confidence makes calibration worse. `None` without CE runs.

    Returns:
        `dict | None`: `confidence_minus_accuracy` and `train_accuracy` (summaries over seeds), `over_confident`,
        `beyond_spread` (the gap exceeds its standard deviation over seeds; `None` for one run), `fits_training_set`
        (`None` when the training accuracy was not measured), `in_regime` and a `warning` (`None` when in the regime).
    """
    ce = summary.get("ce", {})
    gap = ce.get("confidence_minus_accuracy")
    if not gap or not gap["n"]:
        return None
    train = ce.get("train_accuracy", summarize([]))
    over = gap["mean"] > 0
    beyond = bool(abs(gap["mean"]) > gap["std"]) if gap["n"] > 1 else None
    fits = bool(train["mean"] >= FIT_ACCURACY) if train["n"] else None
    problems = []
    if not over:
        problems.append(f"CE is not over-confident (mean confidence − accuracy = {gap['mean']:+.3f})")
    if fits is False:
        problems.append(f"CE does not fit its training set (training accuracy {100 * train['mean']:.1f} %)")
    warning = None
    if problems:
        warning = (
            "; ".join(problems) + ": the run is too short (or the model too small) for the papers' regime, so "
            "the claims below are not expected to hold. Train longer (more epochs) until CE's training "
            "accuracy is near 100 % and its confidence exceeds its accuracy."
        )
    return {
        "confidence_minus_accuracy": gap,
        "train_accuracy": train,
        "over_confident": bool(over),
        "beyond_spread": beyond,
        "fits_training_set": fits,
        "in_regime": not problems,
        "warning": warning,
    }
