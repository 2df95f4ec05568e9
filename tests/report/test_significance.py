"""The tests behind the reports' verdicts against `scipy.stats` on hand-made numbers: paired and Welch t-tests with
their 95 % intervals, one run a side, ties, Holm's correction, the pairing of runs by seed, and the verdicts."""

import math
import warnings

import numpy as np
import pytest
from _runs import run_result

pytest.importorskip("scipy")

from scipy import stats

from hf_maxsup.report.significance import PAIRED, WELCH, holm, one_sample_test, paired_test, verdict, welch_test
from hf_maxsup.report.stats import Claim, claim_test, paper_checks

A = [0.912, 0.905, 0.921, 0.899, 0.917]
B = [0.901, 0.899, 0.915, 0.897, 0.903]


def test_paired_test_is_scipys_ttest_rel():
    result = paired_test(A, B)
    reference = stats.ttest_rel(A, B)
    interval = reference.confidence_interval()
    assert result["test"] == PAIRED and result["n"] == 5 and result["df"] == 4
    assert result["difference"] == pytest.approx(np.mean(A) - np.mean(B), abs=1e-15)
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-12)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert (result["ci_low"], result["ci_high"]) == (
        pytest.approx(interval.low, rel=1e-10),
        pytest.approx(interval.high, rel=1e-10),
    )


def test_welch_test_is_scipys_unequal_variance_ttest():
    a, b = [3.1, 2.7, 3.9, 3.3], [2.2, 2.9, 2.4, 2.0, 2.6, 2.5]
    result = welch_test(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    interval = reference.confidence_interval()
    assert result["test"] == WELCH and result["n"] is None
    assert result["df"] == pytest.approx(reference.df, rel=1e-12)
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-12)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert result["ci_low"] == pytest.approx(interval.low, rel=1e-10)
    assert result["ci_high"] == pytest.approx(interval.high, rel=1e-10)


def test_one_sample_test_is_scipys_ttest_1samp():
    gaps = [0.061, 0.055, 0.058, 0.063, 0.057]
    result = one_sample_test(float(np.mean(gaps)), float(np.std(gaps, ddof=1)), len(gaps))
    reference = stats.ttest_1samp(gaps, 0.0)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert result["ci_low"] == pytest.approx(reference.confidence_interval().low, rel=1e-10)
    assert one_sample_test(0.2, math.nan, 1)["p_value"] is None


def test_one_run_a_side_is_untestable():
    single = paired_test([0.9], [0.8])
    assert single["p_value"] is None and single["difference"] == pytest.approx(0.1)
    assert welch_test([0.9], [0.8, 0.7])["p_value"] is None and welch_test([0.9, 0.8], [0.8])["p_value"] is None
    assert verdict(">", 0.1, None) == "untestable"


def test_ties_and_constant_differences():
    # Equal runs: a tie, p = 1 (scipy has no value: 0 / 0).
    tie = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert math.isnan(stats.ttest_rel([0.5, 0.6], [0.5, 0.6]).pvalue)
    assert tie["difference"] == 0 and tie["p_value"] == 1.0
    assert verdict(">=", 0.0, 1.0) == "tie" and verdict("<", 0.0, None) == "tie"
    # The same non-zero difference on every seed: t infinite, p = 0, as scipy says.
    constant = paired_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert constant["p_value"] == stats.ttest_rel([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]).pvalue == 0.0
    assert constant["ci_low"] == constant["ci_high"] == 1.0
    assert welch_test([1.0, 1.0], [2.0, 2.0, 2.0])["p_value"] == 0.0


def test_holm_by_hand():
    # m = 4 tested: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> 0.06 (monotone); None untested.
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == [
        pytest.approx(0.03),
        pytest.approx(0.06),
        pytest.approx(0.06),
        None,
        pytest.approx(0.02),
    ]
    assert holm([0.6, 0.9]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]


def test_verdicts():
    assert verdict("<", -0.1, 0.01) == "supported" and verdict("<", 0.1, 0.01) == "contradicted"
    assert verdict(">", 0.1, 0.049) == "supported" and verdict(">", -0.1, 0.01) == "contradicted"
    assert verdict(">", 0.1, 0.05) == "not significant" and verdict("<", 0.1, 0.3) == "not significant"
    # An "at least" claim is consistent when the difference is not significant, either way.
    assert verdict(">=", -0.1, 0.3) == "consistent" and verdict(">=", 0.1, 0.3) == "consistent"
    assert verdict(">=", -0.1, 0.01) == "contradicted" and verdict(">=", 0.1, 0.01) == "supported"


def runs_of(label, values, seeds, metric="accuracy"):
    return [run_result(label, {metric: value}, seed) for value, seed in zip(values, seeds)]


def test_runs_of_the_same_seeds_are_paired_others_are_not():
    claim = Claim("a above b", "accuracy", "a", ">", "b")
    # Same seeds in another order: paired by seed, not by position.
    paired = claim_test([*runs_of("a", A, [0, 1, 2, 3, 4]), *runs_of("b", B[::-1], [4, 3, 2, 1, 0])], claim)
    assert paired["test"] == PAIRED and paired["paired_seeds"] == [0, 1, 2, 3, 4]
    assert paired["p_value"] == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-10)
    # Other seeds, a seed twice, or an unknown seed: Welch.
    for seeds_b in ([5, 6, 7, 8, 9], [0, 1, 2, 3, 3], [0, 1, 2, 3, None]):
        welch = claim_test([*runs_of("a", A, [0, 1, 2, 3, 4]), *runs_of("b", B, seeds_b)], claim)
        assert welch["test"] == WELCH and welch["paired_seeds"] is None and (welch["n_a"], welch["n_b"]) == (5, 5)
        assert welch["p_value"] == pytest.approx(stats.ttest_ind(A, B, equal_var=False).pvalue, rel=1e-10)
    # Two metrics of the same runs: paired by run, whatever their seeds.
    same = [run_result("ls", {"aurc": b, "aurc_logit_norm": a}, None) for a, b in zip(A, B)]
    by_run = claim_test(same, Claim("fix", "aurc_logit_norm", "ls", ">", "ls", metric_b="aurc"))
    assert by_run["test"] == PAIRED and by_run["paired_seeds"] is None
    assert by_run["p_value"] == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-10)


def test_paper_checks_correct_across_the_claims_of_one_report():
    claims = (
        Claim("a above b", "accuracy", "a", ">", "b"),
        Claim("a's error below b's", "error", "a", "<", "b"),
        Claim("c at least b", "accuracy", "c", ">=", "b"),
        Claim("nobody measured this", "brier", "a", "<", "b"),
    )
    seeds = [0, 1, 2, 3, 4]
    results = [
        *(run_result("a", {"accuracy": x, "error": 1 - x}, s) for x, s in zip(A, seeds)),
        *(run_result("b", {"accuracy": x, "error": 1 - x}, s) for x, s in zip(B, seeds)),
        *(run_result("c", {"accuracy": x - 0.02}, s) for x, s in zip(B, seeds)),
    ]
    checks = paper_checks(results, claims)
    assert [check["claim"] for check in checks] == ["a above b", "a's error below b's", "c at least b"]
    raw = stats.ttest_rel(A, B).pvalue
    # The first two are one test seen from both sides; the third (c = b − 0.02 on every seed) has p = 0.
    assert checks[0]["p_value"] == pytest.approx(raw) and checks[1]["p_value"] == pytest.approx(raw)
    assert checks[2]["p_value"] == 0.0 and checks[2]["difference"] == pytest.approx(-0.02)
    assert [check["p_adjusted"] for check in checks] == [pytest.approx(2 * raw), pytest.approx(2 * raw), 0.0]
    assert [check["verdict"] for check in checks] == ["supported", "supported", "contradicted"]
    assert checks[0]["n_a"] == checks[0]["n_b"] == checks[0]["n"] == 5 and checks[0]["ci_low"] > 0
