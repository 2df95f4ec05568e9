"""The report's paper checks and regime check on hand-made runs: supported, contradicted, not significant,
untestable; the regime said only as far as it was measured."""

import json

import numpy as np
import pytest
from _runs import classifier_result, run_result

from hf_maxsup.report.claims import PAPER_CLAIMS, maxsup_ls_note
from hf_maxsup.report.classification import write_report
from hf_maxsup.report.markdown import regime_lines, training_time_line
from hf_maxsup.report.measures import logged_training_terms
from hf_maxsup.report.stats import FIT_ACCURACY, paper_checks, regime_check, summarize_runs


def runs(label, **metrics):
    """One run per value of each metric list, e.g. runs("ce", ece=[0.05, 0.06])."""
    count = len(next(iter(metrics.values())))
    return [run_result(label, {key: values[i] for key, values in metrics.items()}, i) for i in range(count)]


def checks_of(results):
    return {(c["metric"], c["a"], c["b"]): c for c in paper_checks(results, PAPER_CLAIMS)}


def test_the_three_new_claims_are_supported():
    summary_runs = [
        *runs("ce", r2=[0.60, 0.61, 0.62], mean_confidence_wrong=[0.80, 0.81, 0.82]),
        *runs(
            "ls",
            r2=[0.66, 0.67, 0.68],
            mean_confidence_wrong=[0.70, 0.71, 0.72],
            aurc=[0.040, 0.041, 0.042],
            aurc_logit_norm=[0.030, 0.0312, 0.0318],
            logit_norm_p=[2.0, 2.0, 3.0],
            train_ls_error_amplification=[-0.010, -0.012, -0.011],
        ),
        *runs("maxsup", r2=[0.70, 0.715, 0.72], mean_confidence_wrong=[0.60, 0.612, 0.621]),
    ]
    checks = checks_of(summary_runs)
    norm = checks[("aurc_logit_norm", "ls", "ls")]
    # 0.031 vs 0.041 on the same three runs: differences -0.010, -0.0098, -0.0102, paired by run.
    assert norm["metric_b"] == "aurc" and norm["verdict"] == "supported" and norm["test"] == "paired t-test"
    assert norm["difference"] == pytest.approx(-0.010) and "p = 2.3 ± 0.6" in norm["note"]
    r2 = checks[("r2", "maxsup", "ls")]
    assert r2["verdict"] == "supported" and r2["relation"] == ">" and r2["paired_seeds"] == [0, 1, 2]
    wrong = checks[("mean_confidence_wrong", "maxsup", "ls")]
    assert wrong["verdict"] == "supported" and "-0.0110 ± 0.0010" in wrong["note"]
    # The R² order CE < LS < MaxSup: LS's above CE's too.
    assert checks[("r2", "ls", "ce")]["verdict"] == "supported"
    # Holm across the claims kept (those of CE's confidence on errors are not claims).
    assert all(check["p_adjusted"] >= check["p_value"] for check in checks.values())


def test_claims_contradicted_not_significant_untestable_or_left_out():
    checks = checks_of(
        [
            *runs(
                "ls",
                r2=[0.70, 0.74, 0.72],
                mean_confidence_wrong=[0.60, 0.62, 0.61],
                aurc=[0.040, 0.050, 0.045],
                aurc_logit_norm=[0.046, 0.048, 0.047],
            ),
            *runs("maxsup", r2=[0.69, 0.745, 0.715], mean_confidence_wrong=[0.70, 0.71, 0.705]),
        ]
    )
    # R²: 0.7167 vs 0.72, differences -0.01, +0.005, -0.005: not significant.
    assert checks[("r2", "maxsup", "ls")]["verdict"] == "not significant"
    # MaxSup more confident on errors than LS by 0.095 on every seed give or take 0.005: contradicted.
    wrong = checks[("mean_confidence_wrong", "maxsup", "ls")]
    assert wrong["verdict"] == "contradicted" and wrong["p_adjusted"] < 0.05 < wrong["difference"] + 0.05
    assert wrong["note"] is None  # no logged LS decomposition given
    # The normalisation gains 0.045 → 0.047, differences +0.006, -0.002, +0.002: not significant.
    norm = checks[("aurc_logit_norm", "ls", "ls")]
    assert norm["difference"] > 0 and norm["verdict"] == "not significant"
    # Claims about CE are left out without CE runs; one run per group: untestable.
    assert ("ece", "ls", "ce") not in checks
    single = checks_of([*runs("ls", r2=[0.7]), *runs("maxsup", r2=[0.8])])
    assert single[("r2", "maxsup", "ls")]["verdict"] == "untestable"
    assert single[("r2", "maxsup", "ls")]["p_value"] is None and single[("r2", "maxsup", "ls")]["n_a"] == 1


def test_regime_check_over_confident_and_fitted():
    summary = summarize_runs(
        [
            *runs(
                "ce",
                accuracy=[0.89, 0.90, 0.91],
                mean_confidence=[0.94, 0.95, 0.96],
                confidence_minus_accuracy=[0.04, 0.05, 0.06],
                train_accuracy=[0.999, 0.998, 0.997],
            ),
            *runs("ls", accuracy=[0.90, 0.90, 0.90], mean_confidence=[0.85, 0.85, 0.85]),
        ]
    )
    regime = regime_check(summary)
    assert regime["over_confident"] and regime["fits_training_set"] and regime["in_regime"]
    # t = 0.05 / (0.01 / √3) = 8.66 on 2 degrees of freedom: p = 0.0131.
    assert regime["test"]["p_value"] == pytest.approx(0.013072, abs=1e-5) and regime["warning"] is None
    text = "\n".join(regime_lines(summary, regime))
    assert "confidence − accuracy 0.050 ± 0.010 over 3 runs, 95 % CI +0.025 to +0.075" in text
    assert "one-sample t-test against 0: p = 0.013" in text and "**Warning**" not in text
    assert "training accuracy: 99.80 ± 0.10 %" in text and "mean confidence of ls 85.0 %" in text
    assert "CE is over-confident and fits its training set" in text


def test_a_ce_gap_of_exactly_zero_is_not_over_confident():
    # Kills the mutant `gap > 0` -> `gap >= 0` of the regime check (#23.23).
    summary = summarize_runs(runs("ce", confidence_minus_accuracy=[-0.01, 0.01], train_accuracy=[0.999, 0.999]))
    regime = regime_check(summary)
    assert regime["confidence_minus_accuracy"]["mean"] == 0
    assert not regime["over_confident"] and regime["in_regime"] is False
    assert regime["warning"].startswith("CE is not over-confident (mean confidence − accuracy = +0.000)")


def test_regime_sentences_only_for_what_was_measured():
    # No training accuracy measured (a translation report, --train_samples 0): nothing said of fitting.
    summary = summarize_runs(runs("ce", accuracy=[0.158], mean_confidence=[0.446], confidence_minus_accuracy=[0.287]))
    regime = regime_check(summary)
    assert regime["fits_training_set"] is None and regime["in_regime"] is None and regime["warning"] is None
    text = "\n".join(regime_lines(summary, regime))
    assert "fits its training set" not in text and "training accuracy" in text and "was not measured" in text
    assert "one run: untestable" in text and "CE is over-confident" in text
    assert "misclassified" not in text  # not logged by these runs: not mentioned
    # Only the gap measured: no sentence on confidence or accuracy either.
    only_gap = summarize_runs(runs("ce", confidence_minus_accuracy=[0.02, 0.03]))
    text = "\n".join(regime_lines(only_gap, regime_check(only_gap)))
    assert text.count("CE's confidence − accuracy 0.025 ± 0.007 over 2 runs") == 1 and "top-1" not in text


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
    assert regime["over_confident"] and regime["test"]["p_value"] is None and regime["in_regime"] is False
    assert regime["warning"].startswith("CE does not fit its training set")
    # No training accuracy measured: only the confidence decides, and the regime is not claimed; no CE runs: no check.
    assert regime_check(summarize_runs(runs("ce", confidence_minus_accuracy=[0.02])))["in_regime"] is None
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
            results.append(classifier_result(label, metrics, seed, rng, logits, labels, ["a", "b", "c"]))
    content = write_report(results, str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "> **Warning**: CE is not over-confident" in report and "CE does not fit its training set" in report
    assert "| training accuracy (%) | AURC, logit-normalised (%) |" in report
    assert "| ce | 2 | 0.500 ± 0.000 | -0.200 ± 0.000 | 75.00 ± 0.00 | 19.00 ± 0.00 | 2.0 ± 0.0 | — |" in report
    assert content["regime"]["in_regime"] is False
    assert "error amplification was 0.25 ± 0.00 % of their logged LS term" in report  # the MaxSup-against-LS note
    assert report.count("MaxSup against LS: ") == 1
    line = next(line for line in report.splitlines() if line.startswith("- Post-hoc logit normalisation"))
    assert (
        "- Post-hoc logit normalisation lowers LS's AURC (Xia et al. 2024): ls 19.00 ± 0.00 (2 runs) vs ls "
        "20.00 ± 0.00 (2 runs) (aurc_logit_norm vs aurc) — difference -1.00" in line
    )
    assert line.endswith("**supported** (p = 2.0 ± 0.0, chosen per run on held-out data from 1..10).")
    # Nothing logged a misclassified fraction: no number, column or sentence of it (nor of the LS error amplification)
    # beyond the note saying that it was not logged.
    assert "Training rows misclassified" not in report and "misclassified training rows, mean" not in report
    assert "misclassified training rows are" not in report and "error amplification is" not in report
    assert "These runs did not log the fraction of misclassified training rows" in report


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
    terms = logged_training_terms(str(tmp_path))
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
    note = maxsup_ls_note(summary)
    assert "error amplification was 1.00 ± 0.01 % of their logged LS term" in note and "understates" in note
    # With the misclassified fraction logged, the note gives it instead of the share.
    logged = summarize_runs([*runs("ls", train_misclassified=[0.2, 0.3]), *runs("maxsup", train_misclassified=[0.3])])
    assert "Training rows misclassified, mean over training: ls 25.0 ± 7.1 %, maxsup 30.0 %." in maxsup_ls_note(logged)
    assert maxsup_ls_note(summarize_runs(runs("ls", train_ls_error_share=shares))) is None  # no MaxSup runs


def test_the_misclassified_fraction_logged_over_training_beside_ces_gap(tmp_path):
    # A trainer_state.json with the per-window `misclassified` fraction the trainer logs (and its evaluation's, which
    # is not a training window): mean over training (0.40 + 0.20 + 0.15) / 3 = 0.25.
    history = [
        {"loss": 1.9, "ce": 1.9, "misclassified": 0.40, "step": 50},
        {"loss": 0.9, "ce": 0.9, "misclassified": 0.20, "step": 100},
        {"eval_loss": 0.8, "eval_misclassified": 0.9, "step": 100},
        {"loss": 0.7, "ce": 0.7, "misclassified": 0.15, "step": 150},
        {"train_runtime": 60.0, "step": 150},
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert logged_training_terms(str(tmp_path)) == {"train_misclassified": pytest.approx(0.25)}
    summary = summarize_runs(
        [
            *runs(
                "ce",
                accuracy=[0.80, 0.82],
                mean_confidence=[0.70, 0.71],
                confidence_minus_accuracy=[-0.10, -0.11],
                train_misclassified=[0.25, 0.27],
            ),
            *runs("maxsup", train_misclassified=[0.30, 0.32]),
        ]
    )
    regime = regime_check(summary)
    assert regime["train_misclassified"] == {
        "ce": summary["ce"]["train_misclassified"],
        "maxsup": summary["maxsup"]["train_misclassified"],
    }
    text = "\n".join(regime_lines(summary, regime))
    # Beside CE's confidence − accuracy, in the same paragraph.
    paragraph = next(line for line in text.splitlines() if line.startswith("CE's mean top-1 confidence"))
    assert (
        "Training rows misclassified (label not the top-1 logit), mean of the logged fraction over training: "
        "ce 26.0 ± 1.4 %, maxsup 31.0 ± 1.4 %" in paragraph
    )
    # Absent from the log (runs trained before it was logged): nothing said.
    (tmp_path / "trainer_state.json").write_text(
        json.dumps({"log_history": [h for h in history if "misclassified" not in h]})
    )
    assert logged_training_terms(str(tmp_path)) == {}
