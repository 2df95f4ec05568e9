"""The numbers of the report: each run's metrics, their summaries over seeds, and the checks against the papers.

[`compute_metrics`] measures one run from its logits, labels and features; [`summarize_runs`] groups the runs by label
and gives every metric's mean, sample standard deviation and count; [`paper_checks`] compares the group means against
what the papers report (the `*_CLAIMS` tables); [`regime_check`] says whether the CE baseline is in the papers' regime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .runs import RunResult

__all__ = [
    "FIT_ACCURACY",
    "PAPER_CLAIMS",
    "REGIME_METRICS",
    "TABLE_METRICS",
    "ACCURACY",
    "CONFIDENCE_GAP",
    "ECE",
    "NLL",
    "Column",
    "compute_metrics",
    "format_summary",
    "maxsup_ls_note",
    "paper_checks",
    "percent",
    "regime_check",
    "summarize",
    "summarize_runs",
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


ACCURACY = percent("accuracy", "accuracy")
NLL = Column("nll", "NLL")
ECE = percent("ece", "ECE")
CONFIDENCE_GAP = Column("confidence_minus_accuracy", "confidence − accuracy")
# The first table of the classification report, in order.
TABLE_METRICS = (
    ACCURACY,
    NLL,
    ECE,
    percent("adaptive_ece", "adaptive ECE"),
    percent("aurc", "AURC"),
    Column("d_within", "d_within"),
    Column("r2", "R²"),
    Column("mean_confidence_wrong", "mean confidence on errors"),
    percent("linear_probe_digits", "linear probe (digits)"),
)
# The second table: the regime check and the numbers behind the three checks that the first table does not show.
REGIME_METRICS = (
    Column("mean_confidence", "mean confidence"),
    CONFIDENCE_GAP,
    percent("train_accuracy", "training accuracy"),
    percent("aurc_logit_norm", "AURC, logit-normalised"),
    Column("logit_norm_p", "p of the normalisation", decimals=1),
    Column("train_ls_error_amplification", "logged LS error amplification", decimals=4),
    percent("train_ls_error_share", "its share of LS's logged term"),
)

# What the papers report, as (claim, metric, group a, relation, group b, metric of b): "a < b" means a's metric
# should be lower; the metric of b is a's metric unless given (a claim about one group with and without a fix).
PAPER_CLAIMS = (
    ("LS lowers ECE compared with CE (Müller et al. 2019)", "ece", "ls", "<", "ce", None),
    ("LS lowers d_within (tighter classes) compared with CE (MaxSup paper)", "d_within", "ls", "<", "ce", None),
    ("MaxSup keeps d_within above LS (MaxSup paper)", "d_within", "maxsup", ">", "ls", None),
    ("MaxSup accuracy is at least LS's (MaxSup paper)", "accuracy", "maxsup", ">=", "ls", None),
    ("LS makes AURC worse than CE (Xia et al. 2024)", "aurc", "ls", ">", "ce", None),
    (
        "LS loses linear-probe transfer accuracy; MaxSup keeps it (MaxSup paper)",
        "linear_probe_digits",
        "maxsup",
        ">",
        "ls",
        None,
    ),
    ("Post-hoc logit normalisation lowers LS's AURC (Xia et al. 2024)", "aurc_logit_norm", "ls", "<", "ls", "aurc"),
    (
        "MaxSup's inter-class separability R² is at least LS's (MaxSup paper: CE 0.445, LS 0.461, MaxSup 0.497)",
        "r2",
        "maxsup",
        ">=",
        "ls",
        None,
    ),
    (
        "MaxSup is less confident than LS on misclassified examples: no error-amplification term (MaxSup paper)",
        "mean_confidence_wrong",
        "maxsup",
        "<",
        "ls",
        None,
    ),
)
# CE is taken to fit its training set from this training accuracy on (the report says "near 100 %").
FIT_ACCURACY = 0.98


def compute_metrics(logits: np.ndarray, labels: np.ndarray, features: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one run from its logits (N, K), labels (N,) and penultimate features (N, D)."""
    from ..analysis import (
        aurc,
        brier_score,
        classwise_ece,
        confidence_stats,
        e_aurc,
        expected_calibration_error,
        feature_geometry,
        negative_log_likelihood,
    )

    stats = confidence_stats(logits, labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    confidence, correct = probs.max(axis=1), logits.argmax(axis=1) == labels
    metrics = {
        "accuracy": stats["accuracy"],
        "nll": negative_log_likelihood(logits, labels),
        "ece": expected_calibration_error(logits, labels),
        "adaptive_ece": expected_calibration_error(logits, labels, adaptive=True),
        "classwise_ece": classwise_ece(logits, labels),
        "brier": brier_score(logits, labels),
        "aurc": aurc(confidence, correct),
        "e_aurc": e_aurc(confidence, correct),
        "mean_confidence": stats["mean_confidence"],
        "mean_confidence_correct": stats["mean_confidence_correct"],
        "mean_confidence_wrong": stats["mean_confidence_wrong"],
        "mean_logit_gap": stats["mean_logit_gap"],
        # > 0: over-confident, the regime in which the papers measured the effect of label smoothing.
        "confidence_minus_accuracy": stats["mean_confidence"] - stats["accuracy"],
    }
    if features is not None:
        metrics.update(feature_geometry(features, labels))
    return metrics


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


def paper_checks(summary: dict, claims: Sequence[tuple] = PAPER_CLAIMS) -> list[dict]:
    """Compares the group means against the claims of the papers (for the labels `ce`, `ls`, `maxsup`): by default
    the classification claims of `PAPER_CLAIMS`, or other `(claim, metric, a, relation, b, metric of b)` tuples.

    A claim *agrees* when the means are ordered as claimed; the difference is *beyond the spread* when it exceeds the
    sum of the two standard deviations over seeds (a rough guide, not a significance test), and the spread is unknown
    with a single run per group. A claim whose metrics are missing (e.g. no logit-normalised AURC) is left out.
    """
    checks = []
    for claim, metric, a, relation, b, metric_b in claims:
        metric_b = metric_b or metric
        sa, sb = summary.get(a, {}).get(metric), summary.get(b, {}).get(metric_b)
        if not (sa and sb and sa["n"] and sb["n"]):
            continue
        diff = sa["mean"] - sb["mean"]
        agrees = {"<": diff < 0, ">": diff > 0, ">=": diff >= 0}[relation]
        spread = sa["std"] + sb["std"] if sa["n"] > 1 and sb["n"] > 1 else float("nan")
        beyond = bool(abs(diff) > spread) if math.isfinite(spread) else None
        checks.append(
            {
                "claim": claim,
                "metric": metric,
                "a": a,
                "relation": relation,
                "b": b,
                "metric_b": metric_b,
                "mean_a": sa["mean"],
                "mean_b": sb["mean"],
                "std_a": sa["std"],
                "std_b": sb["std"],
                "difference": diff,
                "spread": spread,
                "agrees": bool(agrees),
                "beyond_spread": beyond,
                "note": _claim_note(summary, metric, {a, b}),
            }
        )
    return checks


def _claim_note(summary: dict, metric: str, groups: set[str]) -> str | None:
    """The numbers that go with a claim beyond its two means: the norm order p of the logit normalisation, the
    error-amplification term the LS runs logged during training."""
    ls = summary.get("ls", {})
    if metric == "aurc_logit_norm" and ls.get("logit_norm_p", {}).get("n"):
        return f"p = {format_summary(ls['logit_norm_p'], 1.0, 1)}, chosen per run on held-out data from 1..10"
    logged = ls.get("train_ls_error_amplification", {})
    if metric == "mean_confidence_wrong" and groups == {"maxsup", "ls"} and logged.get("n"):
        return (
            f"the LS runs logged an error-amplification term (1/K)Σ_(z_n>z_y)(z_y − z_n) of "
            f"{format_summary(logged, 1.0, 4)} per example (mean over training), which MaxSup does not have"
        )
    return None


def maxsup_ls_note(summary: dict) -> str | None:
    """How far MaxSup's training can differ from LS's in these runs, from the LS runs' logged decomposition: the two
    terms differ only on the training examples that another class outranks, where LS has its error amplification."""
    share = summary.get("ls", {}).get("train_ls_error_share", {})
    if not share.get("n") or "maxsup" not in summary:
        return None
    return (
        "MaxSup against LS: MaxSup's term differs from LS's only on the training examples that another class "
        f"outranks, where LS has its error amplification; in the LS runs it was {format_summary(share, 100.0, 2)} % "
        "of their logged LS term (mean over training). The smaller that share, the closer the two losses are at "
        "equal alpha, and the more their difference is that of their alpha schedules."
    )


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
