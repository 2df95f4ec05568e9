"""The tests behind a report's verdicts: the difference of two groups of runs, its 95 % interval and its p-value,
Holm's correction across the claims of one report, and the verdict of each claim.

A claim compares group `a` with group `b` over runs. When both groups hold the same seeds (each once), the runs of
one seed share their initialisation and data order, so the test is a paired t-test on the per-seed differences
([`paired_test`]); otherwise Welch's t-test ([`welch_test`]). Both are two-sided: a significant difference the other
way contradicts the claim. With fewer than two runs (or pairs) a side is *untestable*; an exact tie is a *tie*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "LEVEL",
    "PAIRED",
    "WELCH",
    "holm",
    "one_sample_test",
    "paired_test",
    "verdict",
    "welch_test",
]

# The significance level of every verdict, applied to Holm-adjusted p-values, and the confidence of the intervals.
LEVEL = 0.05
# The names of the two tests, as results.json records them.
PAIRED = "paired t-test"
WELCH = "Welch t-test"


def _t_distribution():
    # scipy is optional (the `analysis` extra): only the t distribution is taken from it.
    from scipy.stats import t

    return t


def _t_result(difference: float, standard_error: float, df: float) -> dict:
    """t, two-sided p and the 95 % interval of `difference` with this standard error and degrees of freedom.

    A zero standard error gives t = ±inf and p = 0 for a non-zero difference (as `scipy.stats` does), and p = 1 for
    an exact tie, where scipy has no value: nothing then tells the groups apart.
    """
    if standard_error == 0:
        if difference == 0:
            return {"t": 0.0, "df": df, "p_value": 1.0, "ci_low": 0.0, "ci_high": 0.0}
        infinite = math.copysign(math.inf, difference)
        return {"t": infinite, "df": df, "p_value": 0.0, "ci_low": difference, "ci_high": difference}
    t = _t_distribution()
    statistic = difference / standard_error
    half_width = float(t.ppf(1 - LEVEL / 2, df)) * standard_error
    return {
        "t": statistic,
        "df": df,
        "p_value": float(2 * t.sf(abs(statistic), df)),
        "ci_low": difference - half_width,
        "ci_high": difference + half_width,
    }


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """The paired t-test of `a[i] - b[i]` (the same seed on both sides) against 0, as `scipy.stats.ttest_rel`.

    Returns:
        `dict`: `test`, `n` (pairs), `difference` (mean of the differences), `t`, `df` (n − 1), `p_value` (two-sided,
        `None` with fewer than two pairs), `ci_low`, `ci_high` (95 % interval of the mean difference).
    """
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(differences)
    result = {"test": PAIRED, "n": n, "difference": float(differences.mean()) if n else math.nan}
    if n < 2:
        return {**result, "t": None, "df": None, "p_value": None, "ci_low": None, "ci_high": None}
    standard_error = float(differences.std(ddof=1)) / math.sqrt(n)
    return {**result, **_t_result(result["difference"], standard_error, n - 1)}


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Welch's t-test of mean(a) − mean(b) against 0 (unequal variances), as `scipy.stats.ttest_ind(equal_var=False)`.

    Returns:
        `dict`: as [`paired_test`], `n` being `None`; the degrees of freedom are Welch–Satterthwaite's. `p_value` is
        `None` when a side has fewer than two runs (no variance to estimate).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    result = {"test": WELCH, "n": None, "difference": difference}
    if len(a) < 2 or len(b) < 2:
        return {**result, "t": None, "df": None, "p_value": None, "ci_low": None, "ci_high": None}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    standard_error = math.sqrt(va + vb)
    # Welch–Satterthwaite; undefined (NaN) when neither side varies.
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if standard_error else math.nan
    return {**result, **_t_result(difference, standard_error, float(df))}


def one_sample_test(mean: float, std: float, n: int) -> dict:
    """The one-sample t-test of a mean over `n` runs against 0, from its summary (as `scipy.stats.ttest_1samp`):
    `t`, `df`, `p_value` and the 95 % interval, all `None` for a single run."""
    if n < 2:
        return {"n": n, "t": None, "df": None, "p_value": None, "ci_low": None, "ci_high": None}
    return {"n": n, **_t_result(mean, std / math.sqrt(n), n - 1)}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values of one report's claims (`None`, an untestable claim, stays `None`
    and does not count): the i-th smallest of m becomes max over j ≤ i of min(1, (m − j + 1)·p_(j))."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(relation: str, difference: float, p_adjusted: float | None) -> str:
    """The verdict of a claim that `a relation b` (`"<"`, `">"` or `">="`) from the difference a − b and its
    Holm-adjusted p-value: `"tie"` (an exact tie), `"untestable"` (no p-value), `"supported"`, `"contradicted"`
    (significant the other way), else `"not significant"`, or `"consistent"` for a `">="` claim."""
    if difference == 0:
        return "tie"
    if p_adjusted is None:
        return "untestable"
    if p_adjusted < LEVEL:
        along = difference < 0 if relation == "<" else difference > 0
        return "supported" if along else "contradicted"
    return "consistent" if relation == ">=" else "not significant"
