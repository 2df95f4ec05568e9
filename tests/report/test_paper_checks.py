"""The report's paper checks and regime check on hand-made summaries: agreeing, disagreeing, within the spread."""

import json

import numpy as np
import pytest
from _runs import run_result

from hf_maxsup.report.classification import PAPER_CLAIMS, maxsup_ls_note, write_report
from hf_maxsup.report.markdown import regime_lines, training_time_line
from hf_maxsup.report.measures import logged_ls_terms
from hf_maxsup.report.stats import FIT_ACCURACY, paper_checks, regime_check, summarize_runs


def runs(label, **metrics):
    """One run per value of each metric list, e.g. runs("ce", ece=[0.05, 0.06])."""
    count = len(next(iter(metrics.values())))
    return [run_result(label, {key: values[i] for key, values in metrics.items()}, i) for i in range(count)]


def checks_of(summary):
    return {(c["metric"], c["a"], c["b"]): c for c in paper_checks(summary, PAPER_CLAIMS)}


def test_the_three_new_claims_agree_beyond_the_spread():
    summary = summarize_runs(
        [
            *runs("ce", r2=[0.60, 0.61, 0.62], mean_confidence_wrong=[0.80, 0.81, 0.82]),
            *runs(
                "ls",
                r2=[0.66, 0.67, 0.68],
                mean_confidence_wrong=[0.70, 0.71, 0.72],
                aurc=[0.040, 0.041, 0.042],
                aurc_logit_norm=[0.030, 0.031, 0.032],
                logit_norm_p=[2.0, 2.0, 3.0],
                train_ls_error_amplification=[-0.010, -0.012, -0.011],
            ),
            *runs("maxsup", r2=[0.70, 0.71, 0.72], mean_confidence_wrong=[0.60, 0.61, 0.62]),
        ]
    )
    checks = checks_of(summary)
    norm = checks[("aurc_logit_norm", "ls", "ls")]
    # 0.031 vs 0.041, spread 0.001 + 0.001.
    assert norm["metric_b"] == "aurc" and norm["agrees"] and norm["beyond_spread"]
    assert norm["difference"] == pytest.approx(-0.010) and "p = 2.3 ± 0.6" in norm["note"]
    r2 = checks[("r2", "maxsup", "ls")]
    assert r2["agrees"] and r2["beyond_spread"] and r2["relation"] == ">="
    wrong = checks[("mean_confidence_wrong", "maxsup", "ls")]
    assert wrong["agrees"] and wrong["beyond_spread"] and "-0.0110 ± 0.0010" in wrong["note"]


def test_claims_that_disagree_and_differences_within_the_spread():
    summary = summarize_runs(
        [
            *runs(
                "ls",
                r2=[0.70, 0.74],
                mean_confidence_wrong=[0.60, 0.62],
                aurc=[0.040, 0.050],
                aurc_logit_norm=[0.046, 0.048],
            ),
            *runs("maxsup", r2=[0.69, 0.73], mean_confidence_wrong=[0.70, 0.71]),
        ]
    )
    checks = checks_of(summary)
    # R²: 0.71 vs 0.72 disagrees, but by 0.01 within 0.028 + 0.028.
    assert not checks[("r2", "maxsup", "ls")]["agrees"] and checks[("r2", "maxsup", "ls")]["beyond_spread"] is False
    # MaxSup more confident on errors than LS by 0.095 > 0.0071 + 0.0141: disagrees beyond the spread.
    wrong = checks[("mean_confidence_wrong", "maxsup", "ls")]
    assert not wrong["agrees"] and wrong["beyond_spread"]
    assert wrong["note"] is None  # no logged LS decomposition given
    # The normalisation gains 0.045 → 0.047: agrees within the spread (0.0071 + 0.0014).
    norm = checks[("aurc_logit_norm", "ls", "ls")]
    assert not norm["agrees"] and norm["beyond_spread"] is False
    # Claims about CE are left out without CE runs; one run per group: spread unknown.
    assert ("ece", "ls", "ce") not in checks
    single = checks_of(summarize_runs([*runs("ls", r2=[0.7]), *runs("maxsup", r2=[0.8])]))
    assert single[("r2", "maxsup", "ls")]["agrees"] and single[("r2", "maxsup", "ls")]["beyond_spread"] is None


def test_regime_check_over_confident_and_fitted():
    summary = summarize_runs(
        [
            *runs(
                "ce",
                accuracy=[0.89, 0.90, 0.91],
                mean_confidence=[0.94, 0.95, 0.96],
                confidence_minus_accuracy=[0.05, 0.05, 0.05],
                train_accuracy=[0.999, 0.998, 0.997],
            ),
            *runs("ls", accuracy=[0.90, 0.90, 0.90], mean_confidence=[0.85, 0.85, 0.85]),
        ]
    )
    regime = regime_check(summary)
    assert regime["over_confident"] and regime["fits_training_set"] and regime["in_regime"]
    assert regime["beyond_spread"] and regime["warning"] is None
    text = "\n".join(regime_lines(summary, regime))
    assert "confidence − accuracy 0.050 ± 0.000, beyond its spread" in text and "**Warning**" not in text
    assert "training accuracy: 99.80 ± 0.10 %" in text and "mean confidence of ls 85.0 %" in text


def test_regime_check_warns_when_ce_is_under_confident_or_does_not_fit():
    under = summarize_runs(
        runs(
            "ce",
            accuracy=[0.70, 0.68],
            mean_confidence=[0.62, 0.58],
            confidence_minus_accuracy=[-0.08, -0.10],
            train_accuracy=[0.72, 0.70],
        )
    )
    regime = regime_check(under)
    assert not regime["over_confident"] and regime["fits_training_set"] is False and not regime["in_regime"]
    assert "CE is not over-confident (mean confidence − accuracy = -0.090)" in regime["warning"]
    assert "training accuracy 71.0 %" in regime["warning"]
    assert "> **Warning**: CE is not over-confident" in "\n".join(regime_lines(under, regime))
    # Over-confident but not fitted (a training accuracy below FIT_ACCURACY) is outside the regime too.
    unfitted = summarize_runs(
        runs(
            "ce",
            accuracy=[0.80],
            mean_confidence=[0.85],
            confidence_minus_accuracy=[0.05],
            train_accuracy=[FIT_ACCURACY - 0.1],
        )
    )
    regime = regime_check(unfitted)
    assert regime["over_confident"] and regime["beyond_spread"] is None and not regime["in_regime"]
    assert regime["warning"].startswith("CE does not fit its training set")
    # No training accuracy measured: only the confidence decides; no CE runs: no check.
    assert regime_check(summarize_runs(runs("ce", confidence_minus_accuracy=[0.02])))["in_regime"]
    assert regime_check(summarize_runs(runs("ls", confidence_minus_accuracy=[0.02]))) is None


def test_the_report_shows_the_warning_and_the_regime_table(tmp_path):
    rng = np.random.default_rng(0)
    results = []
    for seed in (0, 1):
        for label in ("ce", "ls", "maxsup"):
            labels = np.arange(60) % 3
            logits = rng.normal(size=(60, 3)) * 0.2 + 0.5 * np.eye(3)[labels]  # under-confident
            metrics = {
                "accuracy": 0.7,
                "mean_confidence": 0.5,
                "confidence_minus_accuracy": -0.2,
                "train_accuracy": 0.75,
                "aurc": 0.2,
                "aurc_logit_norm": 0.19,
                "logit_norm_p": 2.0,
                **({"train_ls_error_share": 0.0025} if label == "ls" else {}),
            }
            results.append(
                run_result(
                    label,
                    metrics,
                    seed,
                    logits=logits,
                    labels=labels,
                    features=rng.normal(size=(60, 4)),
                    class_weights=rng.normal(size=(3, 4)),
                    class_names=["a", "b", "c"],
                )
            )
    content = write_report(results, str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "> **Warning**: CE is not over-confident" in report and "CE does not fit its training set" in report
    assert "| training accuracy (%) | AURC, logit-normalised (%) |" in report
    assert "| ce | 2 | 0.500 ± 0.000 | -0.200 ± 0.000 | 75.00 ± 0.00 | 19.00 ± 0.00 | 2.0 ± 0.0 | — |" in report
    assert content["regime"]["in_regime"] is False
    assert "it was 0.25 ± 0.00 % of their logged LS term" in report  # the MaxSup-against-LS paragraph, once
    assert report.count("MaxSup against LS: ") == 1
    assert (
        "- Post-hoc logit normalisation lowers LS's AURC (Xia et al. 2024): ls 19.00 ± 0.00 vs ls "
        "20.00 ± 0.00 (aurc_logit_norm vs aurc) — agrees" in report
    )


def test_training_time_line(tmp_path):
    for name, seconds in (("a", 120.0), ("b", 240.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_results.json").write_text(json.dumps({"train_runtime": seconds}))
    line = training_time_line([str(tmp_path / "a"), str(tmp_path / "b")])
    assert line.startswith("Training time: 6.0 min for the 2 runs") and "2.0–4.0 min each" in line
    assert training_time_line([str(tmp_path / "a"), "org/hub-model"]) is None


def test_maxsup_against_ls_claims_give_the_share_of_the_error_amplification(tmp_path):
    # A trainer_state.json as the trainer logs it: two windows of the LS decomposition, by hand: mean regularisation
    # 3.0, mean error amplification -0.03, share 0.03 / (3.0 + 0.03) = 0.0099.
    history = [
        {"loss": 1.0, "ls_regularization": 2.0, "ls_error_amplification": -0.05, "step": 10},
        {"loss": 0.5, "ls_regularization": 4.0, "ls_error_amplification": -0.01, "step": 20},
        {"eval_loss": 0.7, "step": 20},
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    terms = logged_ls_terms(str(tmp_path))
    assert terms["train_ls_error_share"] == pytest.approx(0.03 / 3.03)
    shares = [0.0099, 0.0101]
    summary = summarize_runs(
        [
            *runs("ce", d_within=[0.20, 0.21]),
            *runs(
                "ls", d_within=[0.16, 0.17], train_ls_error_amplification=[-0.03, -0.03], train_ls_error_share=shares
            ),
            *runs("maxsup", d_within=[0.15, 0.16]),
        ]
    )
    assert "it was 1.00 ± 0.01 % of their logged LS term" in maxsup_ls_note(summary)
    assert maxsup_ls_note(summarize_runs(runs("ls", train_ls_error_share=shares))) is None  # no MaxSup runs
