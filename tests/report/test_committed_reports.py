"""Every verdict of the committed reports comes from the tests: a held-out recomputation from their results.json with
`scipy.stats` (paired by seed where both groups hold the same seeds, Welch otherwise, Holm across a report's claims)
gives the same p-values to 1e-6, the same verdicts, and report.md prints them."""

import importlib.util
import json
import math
import warnings
from pathlib import Path

import pytest

pytest.importorskip("scipy")

from scipy import stats

from hf_maxsup.report.claims import DISTILLATION_CLAIMS, PAPER_CLAIMS, TRANSLATION_CLAIMS

DOCS = Path(__file__).parents[2] / "docs"
REPORTS = sorted(
    path.parent
    for study in ("compare_fmnist", "compare_translation", "distill_fmnist")
    for path in (DOCS / study).glob("**/results.json")
)


def observations(content):
    """(label, seed, metrics) of every run a report's claims are tested on."""
    if "students" in content:
        runs = [*content["students"], *content["teacher_runs"]]
    else:
        runs = content["runs"]
    return [(run["label"], run["seed"], run["metrics"]) for run in runs]


def side(runs, label, metric):
    return [
        (i, seed, metrics[metric])
        for i, (run_label, seed, metrics) in enumerate(runs)
        if run_label == label and metrics.get(metric) is not None and math.isfinite(metrics[metric])
    ]


def recompute(runs, a, metric_a, b, metric_b):
    """The test's p-value by scipy, or None when a side has fewer than two runs (pairs)."""
    left, right = side(runs, a, metric_a), side(runs, b, metric_b)
    if a == b:  # two metrics of the same runs
        keys = [i for i, _, _ in left if i in {j for j, _, _ in right}]
        x = [v for i, _, v in left if i in keys]
        y = [v for i, _, v in right if i in keys]
        paired = True
    else:
        seeds_a, seeds_b = [s for _, s, _ in left], [s for _, s, _ in right]
        paired = (
            None not in seeds_a + seeds_b
            and len(set(seeds_a)) == len(seeds_a)
            and len(set(seeds_b)) == len(seeds_b)
            and set(seeds_a) == set(seeds_b)
        )
        x = [v for _, _, v in sorted(left, key=lambda r: r[1])] if paired else [v for _, _, v in left]
        y = [v for _, _, v in sorted(right, key=lambda r: r[1])] if paired else [v for _, _, v in right]
    if (paired and len(x) < 2) or (not paired and min(len(x), len(y)) < 2):
        return None, paired
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_rel(x, y).pvalue if paired else stats.ttest_ind(x, y, equal_var=False).pvalue
    return (1.0 if math.isnan(p) else float(p)), paired


def holm(ps):
    m = sum(p is not None for p in ps)
    order = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    adjusted, running = [None] * len(ps), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def expected_verdict(relation, difference, p):
    if difference == 0:
        return "tie"
    if p is None:
        return "untestable"
    if p < 0.05:
        return "supported" if (difference < 0) == (relation == "<") else "contradicted"
    return "consistent" if relation == ">=" else "not significant"


@pytest.mark.parametrize("folder", REPORTS, ids=[str(path.relative_to(DOCS)) for path in REPORTS])
def test_the_committed_verdicts_are_recomputed_by_scipy(folder):
    content = json.loads((folder / "results.json").read_text())
    report = (folder / "report.md").read_text()
    runs = observations(content)
    claims = (
        DISTILLATION_CLAIMS
        if "students" in content
        else TRANSLATION_CLAIMS
        if content["runs"][0]["task"] == "translation"
        else PAPER_CLAIMS
    )
    # Every claim whose metrics both sides measured is checked, none other.
    measured = [c.text for c in claims if side(runs, c.a, c.metric) and side(runs, c.b, c.metric_b or c.metric)]
    assert [check["claim"] for check in content["checks"]] == measured
    recomputed = [recompute(runs, c["a"], c["metric"], c["b"], c["metric_b"]) for c in content["checks"]]
    adjusted = holm([p for p, _ in recomputed])
    for check, (p, paired), p_adjusted in zip(content["checks"], recomputed, adjusted):
        assert (check["test"] == "paired t-test") == paired, check["claim"]
        if p is None:
            assert check["p_value"] is None and check["p_adjusted"] is None, check["claim"]
        else:
            assert check["p_value"] == pytest.approx(p, abs=1e-6), check["claim"]
            assert check["p_adjusted"] == pytest.approx(p_adjusted, abs=1e-6), check["claim"]
        verdict = expected_verdict(check["relation"], check["difference"], p_adjusted)
        assert check["verdict"] == verdict, check["claim"]
        line = next(line for line in report.splitlines() if line.startswith(f"- {check['claim']}:"))
        assert f": **{verdict}**" in line, line
    # The regime check's one-sample test of CE's confidence − accuracy.
    gaps = [
        m["confidence_minus_accuracy"] for label, _, m in runs if label == "ce" and "confidence_minus_accuracy" in m
    ]
    if content.get("regime") and len(gaps) > 1:
        assert content["regime"]["test"]["p_value"] == pytest.approx(stats.ttest_1samp(gaps, 0.0).pvalue, abs=1e-6)
    # Not a word of the old rule.
    assert "the seeds' spread" not in report and "spread unknown" not in report and "agrees" not in report


def test_the_equal_alpha_claims_are_the_scripts_output(capsys):
    """docs/compare_fmnist/equal_alpha.md is what its script prints from the committed runs (the README quotes it)."""
    path = DOCS / "compare_fmnist" / "equal_alpha.py"
    spec = importlib.util.spec_from_file_location("equal_alpha", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    assert capsys.readouterr().out == (DOCS / "compare_fmnist" / "equal_alpha.md").read_text(encoding="utf-8")
