"""A short MaxSup run on a small real dataset (scikit-learn's digits) learns, and its regulariser behaves."""

import importlib.util
import os

import pytest

pytest.importorskip("sklearn")
RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "quickstart_digits.py")


def test_maxsup_trains_on_digits(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart_digits", RECIPE)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    trainer, metrics = quickstart.train(str(tmp_path), "maxsup", epochs=4, disable_tqdm=True)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["loss"] < 0.7 * logs[0]["loss"]
    assert metrics["eval_accuracy"] > 0.6  # chance is 0.1
    assert all(entry["reg"] > 0 for entry in logs)
    # The weighted regulariser stays a small part of the objective next to the cross-entropy it started from.
    assert logs[-1]["alpha"] * logs[-1]["reg"] < 0.25 * logs[0]["ce"]
    # Logged alpha is the mean over each epoch of the linear 0.1 -> 0.2 schedule.
    alphas = [entry["alpha"] for entry in logs]
    assert alphas == sorted(alphas) and 0.1 < alphas[0] < 0.125 and 0.175 < alphas[-1] < 0.2
