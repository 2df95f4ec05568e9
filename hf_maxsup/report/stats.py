"""The statistics of the reports: summaries of a metric over seeds, and the checks of claims against them.

[`summarize_runs`] groups evaluated runs by label and gives every metric's mean, sample standard deviation and count;
[`paper_checks`] tests the claims of the papers (each task's `*_CLAIMS`, [`Claim`]s) on the runs, each with
[`claim_test`] and Holm's correction across them ([`hf_maxsup.report.significance`]); [`regime_check`] says whether
the CE baseline is in the papers' regime (over-confident, fitting its training set).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from .runs import RunResult
from .significance import holm, one_sample_test, paired_test, verdict, welch_test

__all__ = [
    "FIT_ACCURACY",
    "Claim",
    "claim_test",
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


def _keyed_values(results: Sequence[RunResult], label: str, metric: str, by_run: bool) -> tuple[list, list, bool]:
    """The keys and finite values of `metric` over the runs of `label`, keyed by seed (or by the run itself), and
    whether the keys can pair the runs with another group's (each known and once)."""
    keys, values = [], []
    for i, result in enumerate(results):
        value = result.metrics.get(metric) if result.label == label else None
        if value is not None and math.isfinite(value):
            keys.append(i if by_run else result.seed)
            values.append(float(value))
    return keys, values, None not in keys and len(set(keys)) == len(keys)


def claim_test(results: Sequence[RunResult], claim: Claim) -> dict:
    """The test of one claim over the runs: paired by seed when both groups hold the same seeds, each once (the
    runs of a seed share their initialisation and data order), paired by run when the claim compares two metrics of
    the same runs, Welch's otherwise (see [`~hf_maxsup.report.significance`]).

    Returns:
        `dict`: the test's numbers ([`~hf_maxsup.report.significance.paired_test`]), `n_a`, `n_b` and `paired_seeds`
        (the seeds paired, `None` for Welch's test or a pairing by run).
    """
    same_runs = claim.a == claim.b
    keys_a, a, pairable_a = _keyed_values(results, claim.a, claim.metric, same_runs)
    keys_b, b, pairable_b = _keyed_values(results, claim.b, claim.metric_b or claim.metric, same_runs)
    sizes = {"n_a": len(a), "n_b": len(b)}
    if same_runs:
        common = [key for key in keys_a if key in keys_b]
        pairs = ([a[keys_a.index(k)] for k in common], [b[keys_b.index(k)] for k in common])
        return {**paired_test(*pairs), **sizes, "paired_seeds": None}
    if pairable_a and pairable_b and set(keys_a) == set(keys_b):
        order = sorted(keys_a)
        pairs = ([a[keys_a.index(k)] for k in order], [b[keys_b.index(k)] for k in order])
        return {**paired_test(*pairs), **sizes, "paired_seeds": order}
    return {**welch_test(a, b), **sizes, "paired_seeds": None}


def paper_checks(results: Sequence[RunResult], claims: Sequence[Claim]) -> list[dict]:
    """Tests `claims` (a task's `*_CLAIMS`) on the runs, with Holm's correction across them.

    Each claim kept gets the means and standard deviations of its two groups, the test of [`claim_test`], its
    Holm-adjusted p-value over the claims of this call and its verdict
    ([`~hf_maxsup.report.significance.verdict`]). A claim whose metrics are missing on a side (e.g. no
    logit-normalised AURC) is left out, and does not count in the correction.

    Returns:
        `list[dict]`: one check per claim kept, as `results.json` lists it (`claim`, `metric`, `a`, `relation`, `b`,
        `metric_b`, `mean_a`, `mean_b`, `std_a`, `std_b`, `n_a`, `n_b`, `test`, `n`, `paired_seeds`, `difference`,
        `ci_low`, `ci_high`, `t`, `df`, `p_value`, `p_adjusted`, `verdict`, `note`).
    """
    summary = summarize_runs(results)
    checks = []
    for claim in claims:
        metric_b = claim.metric_b or claim.metric
        sa, sb = summary.get(claim.a, {}).get(claim.metric), summary.get(claim.b, {}).get(metric_b)
        if not (sa and sb and sa["n"] and sb["n"]):
            continue
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
                **claim_test(results, claim._replace(metric_b=metric_b)),
                "note": claim.note(summary) if claim.note is not None else None,
            }
        )
    for check, adjusted in zip(checks, holm([check["p_value"] for check in checks])):
        check["p_adjusted"] = adjusted
        check["verdict"] = verdict(check["relation"], check["difference"], adjusted)
    return checks


def regime_check(summary: dict) -> dict | None:
    """Whether the CE baseline is in the papers' regime: over-confident on the evaluation split (mean top-1
    confidence above accuracy: a gap of exactly 0 is not) and fitting its training set (training accuracy of at least
    `FIT_ACCURACY`), with the one-sample t-test of the gap against 0 over CE's runs.

    The papers' effects of label smoothing (lower ECE, tighter classes, worse AURC) are for such models: on an
    under-confident CE, a loss that lowers the confidence makes calibration worse. `None` without CE runs.

    Returns:
        `dict | None`: `confidence_minus_accuracy` and `train_accuracy` (summaries over seeds), `over_confident`,
        `test` (the one-sample t-test of the gap: `n`, `t`, `df`, `p_value`, `ci_low`, `ci_high`; `None`s for one
        run), `fits_training_set` (`None` when the training accuracy was not measured), `in_regime` (`None` when
        over-confident but the training accuracy was not measured), `train_misclassified` (each group's summary of
        the misclassified fraction its training logged, when it did) and a `warning` (`None` unless out of regime).
    """
    ce = summary.get("ce", {})
    gap = ce.get("confidence_minus_accuracy")
    if not gap or not gap["n"]:
        return None
    train = ce.get("train_accuracy", summarize([]))
    over = gap["mean"] > 0
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
    misclassified = {
        label: metrics["train_misclassified"]
        for label, metrics in summary.items()
        if metrics.get("train_misclassified", {}).get("n")
    }
    return {
        "confidence_minus_accuracy": gap,
        "train_accuracy": train,
        "over_confident": bool(over),
        "test": one_sample_test(gap["mean"], gap["std"], gap["n"]),
        "fits_training_set": fits,
        "in_regime": False if problems else (None if fits is None else True),
        "train_misclassified": misclassified,
        "warning": warning,
    }
