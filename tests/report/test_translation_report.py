"""`recipes/translation.py --compare` end to end at tiny size, and the token-level calibration by hand."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _runs import run_result, tiny_training_args

from hf_maxsup.report.claims import TRANSLATION_CLAIMS
from hf_maxsup.report.stats import paper_checks
from hf_maxsup.report.translation import token_calibration

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "translation.py")
# A tiny Marian, a few steps: the point is the plumbing (train, teacher-forced pass, generation, report).
TINY = [
    *tiny_training_args(48, 8),
    "--model_d_model",
    "32",
    "--model_layers",
    "1",
    "--vocab_size",
    "300",
    "--max_source_length",
    "24",
    "--max_target_length",
    "24",
]


def test_token_calibration_by_hand():
    confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.05])
    correct = np.array([1, 0, 1, 1, 0])
    metrics = token_calibration(confidence, correct)
    # Bins: [0.933, 1] holds 0.95 twice (accuracy 0.5, gap 0.45); [0.533, 0.6) 0.55 twice (gap 0.45); 0.05 (gap 0.05).
    assert metrics["token_ece"] == pytest.approx((2 * 0.45 + 2 * 0.45 + 0.05) / 5)
    assert metrics["accuracy"] == pytest.approx(0.6) and metrics["mean_confidence"] == pytest.approx(0.61)
    assert metrics["confidence_minus_accuracy"] == pytest.approx(0.01)
    assert token_calibration(np.ones(3), np.ones(3))["token_ece"] == 0.0
    with pytest.raises(ValueError, match="same non-empty"):
        token_calibration(np.ones(3), np.ones(2))


def test_translation_claims_supported_contradicted_and_untestable():
    results = [
        run_result("ce", {"bleu": 10.0, "nll": 3.0, "token_ece": 0.06}, 0),
        run_result("ce", {"bleu": 10.4, "nll": 3.1, "token_ece": 0.05}, 1),
        run_result("ce", {"bleu": 10.1, "nll": 3.05, "token_ece": 0.055}, 2),
        run_result("ls", {"bleu": 10.3, "nll": 3.5, "token_ece": 0.09}, 0),
        run_result("ls", {"bleu": 10.5, "nll": 3.62, "token_ece": 0.10}, 1),
        run_result("ls", {"bleu": 10.0, "nll": 3.56, "token_ece": 0.094}, 2),
    ]
    checks = {c["metric"]: c for c in paper_checks(results, TRANSLATION_CLAIMS)}
    assert checks["bleu"]["verdict"] == "not significant"  # +0.3, +0.1, -0.1
    assert checks["nll"]["verdict"] == "supported" and checks["nll"]["test"] == "paired t-test"
    assert checks["token_ece"]["verdict"] == "contradicted" and checks["token_ece"]["difference"] > 0
    # One run per loss (the committed translation runs): untestable, however large the difference; a tie is a tie.
    single = {c["metric"]: c for c in paper_checks([results[0], results[3]], TRANSLATION_CLAIMS)}
    assert {c["verdict"] for c in single.values()} == {"untestable"}
    tie = paper_checks([results[0], run_result("ls", {"bleu": 10.0}, 0)], TRANSLATION_CLAIMS)
    assert tie[0]["verdict"] == "tie"


def test_translation_recipe_compare_writes_the_report(tmp_path):
    command = [
        sys.executable,
        RECIPE,
        "--compare",
        "--output_dir",
        str(tmp_path / "report"),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--seeds",
        "0",
        "--max_analysis_samples",
        "6",
        "--analysis_batch_size",
        "4",
        *TINY,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| loss | runs | BLEU | chrF | NLL of the references (per token) | token-level ECE (%) |" in report
    for loss in ("ce", "ls", "maxsup"):
        assert f"| {loss} | 1 |" in report
    assert "- LS improves BLEU over CE (Müller et al. 2019)" in report and "## Regime check" in report
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == ["ce", "ls", "maxsup"]
    for run in results["runs"]:
        metrics = run["metrics"]
        assert run["split"] == "test" and run["num_examples"] == 6
        assert 0 <= metrics["bleu"] <= 100 and metrics["nll"] > 0 and 0 <= metrics["token_ece"] <= 1
    assert {check["metric"] for check in results["checks"]} == {"bleu", "nll", "token_ece"}
