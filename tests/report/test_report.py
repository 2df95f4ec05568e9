"""The report's aggregation, checks against the papers, writing, and the linear probe (no training here)."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _runs import classifier_result, run_result

from hf_maxsup.analysis import digits_probe_dataset, linear_probe
from hf_maxsup.report.claims import PAPER_CLAIMS
from hf_maxsup.report.classification import REPORT_FILES, TABLE_METRICS, write_report
from hf_maxsup.report.measures import compute_metrics
from hf_maxsup.report.stats import format_summary, paper_checks, summarize, summarize_runs

# --- aggregation -----------------------------------------------------------------------------------------------------


def test_summarize_mean_and_sample_std_by_hand():
    # mean 0.9; squared deviations 0.01 + 0 + 0.01 = 0.02, / (3 - 1) = 0.01 -> std 0.1.
    summary = summarize([0.8, 0.9, 1.0])
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx(0.9)
    assert summary["std"] == pytest.approx(0.1)
    # Two values 1 and 3: mean 2, std sqrt((1 + 1) / 1) = sqrt(2); NaN and None (no errors to average) are skipped.
    summary = summarize([1.0, float("nan"), 3.0, None])
    assert (summary["n"], summary["mean"], summary["std"]) == (2, pytest.approx(2.0), pytest.approx(math.sqrt(2)))


def test_summarize_one_or_no_value():
    one = summarize([0.25])
    assert one["n"] == 1 and one["mean"] == 0.25 and math.isnan(one["std"])
    none = summarize([float("nan")])
    assert none["n"] == 0 and math.isnan(none["mean"])


def test_format_summary():
    # 0.91 and 0.93: mean 0.92, std sqrt(2 * 0.01**2) = 0.0141; in % with 2 decimals.
    assert format_summary(summarize([0.91, 0.93]), scale=100, decimals=2) == "92.00 ± 1.41"
    assert format_summary(summarize([0.5]), scale=100, decimals=2) == "50.00"
    assert format_summary(summarize([]), 1.0, 3) == "—"
    assert format_summary(summarize([0.3311, 0.3289, 0.3300]), 1.0, 3) == "0.330 ± 0.001"


def test_summarize_runs_groups_by_label_in_order():
    results = [
        run_result("ls", {"accuracy": 0.80, "ece": 0.02}),
        run_result("ce", {"accuracy": 0.70, "ece": 0.10}),
        run_result("ls", {"accuracy": 0.90, "ece": 0.04}),
    ]
    summary = summarize_runs(results)
    assert list(summary) == ["ls", "ce"]
    assert summary["ls"]["accuracy"] == {"mean": pytest.approx(0.85), "std": pytest.approx(math.sqrt(0.005)), "n": 2}
    assert summary["ls"]["ece"]["mean"] == pytest.approx(0.03)
    assert summary["ce"]["accuracy"]["n"] == 1 and summary["ce"]["accuracy"]["mean"] == 0.70


def test_paper_checks_verdicts_and_tests():
    metrics = {
        "ce": {"ece": [0.050, 0.060, 0.055], "d_within": [0.30, 0.32, 0.31], "accuracy": [0.900, 0.910, 0.905]},
        "ls": {"ece": [0.020, 0.022, 0.021], "d_within": [0.25, 0.27, 0.26], "accuracy": [0.906, 0.913, 0.910]},
        "maxsup": {"ece": [0.030, 0.031, 0.029], "d_within": [0.24, 0.26, 0.262], "accuracy": [0.90, 0.91, 0.903]},
    }
    results = [
        run_result(label, {key: values[seed] for key, values in columns.items()}, seed)
        for label, columns in metrics.items()
        for seed in range(3)
    ]
    checks = {(c["metric"], c["a"], c["b"]): c for c in paper_checks(results, PAPER_CLAIMS)}
    # The claims measured here: ECE, the three on accuracy, the three on d_within; Holm over these seven.
    assert len(checks) == 7
    ece = checks[("ece", "ls", "ce")]
    # Per-seed differences -0.030, -0.038, -0.034: mean -0.034, sd 0.004, t = -14.7 on 2 df, p = 0.0046.
    assert ece["test"] == "paired t-test" and ece["paired_seeds"] == [0, 1, 2] and ece["n"] == 3
    assert ece["difference"] == pytest.approx(-0.034) and ece["p_value"] == pytest.approx(0.004582, rel=1e-3)
    assert ece["ci_high"] < 0 and ece["verdict"] == "supported"
    assert checks[("d_within", "ls", "ce")]["verdict"] == "supported"  # -0.05 on every seed: p = 0
    d_max_ls = checks[("d_within", "maxsup", "ls")]
    assert d_max_ls["verdict"] == "not significant" and d_max_ls["difference"] == pytest.approx(-0.006)
    accuracy = checks[("accuracy", "maxsup", "ls")]
    # -0.006, -0.003, -0.007: below LS's but not significantly: consistent with "at least".
    assert accuracy["difference"] == pytest.approx(-0.016 / 3) and accuracy["verdict"] == "consistent"
    # No AURC or probe numbers given: those claims are left out; one run per group: untestable.
    assert ("aurc", "ls", "ce") not in checks
    single = paper_checks([run_result("ce", {"ece": 0.1}), run_result("ls", {"ece": 0.05})], PAPER_CLAIMS)
    assert single[0]["verdict"] == "untestable" and single[0]["p_adjusted"] is None


# --- metrics and writing ---------------------------------------------------------------------------------------------


def fake_result(label, seed, rng, n=90, k=4, d=6):
    labels = np.arange(n) % k
    logits = rng.normal(size=(n, k)) + 3.0 * np.eye(k)[labels]
    features = rng.normal(size=(n, d)) + np.eye(k, d)[labels] * 4
    metrics = compute_metrics(logits, labels, features)
    metrics["linear_probe_digits"] = 0.8 + 0.01 * seed
    return classifier_result(label, metrics, seed, rng, logits, labels, ["a", "b", "c", "d"], features=features)


def test_compute_metrics_keys():
    rng = np.random.default_rng(0)
    metrics = fake_result("ce", 0, rng).metrics
    for key, *_ in TABLE_METRICS:
        assert key in metrics and math.isfinite(metrics[key])
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["r2"] <= 1


def test_write_report_files_and_table(tmp_path):
    rng = np.random.default_rng(0)
    results = [fake_result(label, seed, rng) for seed in (0, 1) for label in ("ce", "ls", "maxsup")]
    content = write_report(results, str(tmp_path), command="hf-maxsup compare ...", data_note="Synthetic.")
    for name in REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| loss |"))
    for _, column, _, _ in TABLE_METRICS:
        assert column in header
    rows = {}
    for line in report.splitlines():  # the first table's row of each loss (the regime table comes next)
        if line.startswith(("| ce |", "| ls |", "| maxsup |")):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    assert set(rows) == {"ce", "ls", "maxsup"}
    # Two seeds per loss: "mean ± std"; the probe column is 80.50 ± 0.71 (80 and 81 %).
    assert "| 2 |" in rows["ce"] and rows["ce"].rstrip(" |").endswith("80.50 ± 0.71")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 6 and saved["summary"]["ls"]["accuracy"]["n"] == 2
    assert saved["summary"]["ce"]["accuracy"]["mean"] == pytest.approx(
        np.mean([r.metrics["accuracy"] for r in results if r.label == "ce"])
    )
    assert {check["metric"] for check in saved["checks"]} >= {"ece", "d_within", "accuracy"}
    assert content["figures"]["projections"] == "projections.png"
    assert "CE's mean top-1 confidence is" in report and "## Regime check" in report
    assert saved["regime"]["confidence_minus_accuracy"]["n"] == 2


# --- linear probe ----------------------------------------------------------------------------------------------------


def test_linear_probe_separable_and_chance():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2
    separable = rng.normal(size=(200, 5)) + 5.0 * labels[:, None]
    assert linear_probe(separable[:100], labels[:100], separable[100:], labels[100:]) == 1.0
    noise = rng.normal(size=(400, 5))
    labels = rng.integers(0, 2, 400)
    assert 0.3 < linear_probe(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.7
    with pytest.raises(ValueError, match="width"):
        linear_probe(noise[:10, :3], labels[:10], noise[:10], labels[:10])


def test_few_shot_probe_is_the_mean_of_probes_on_drawn_labels():
    from hf_maxsup.analysis import few_shot_probe

    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    features = rng.normal(size=(300, 4)) + 1.5 * np.eye(3, 4)[labels]
    train, test = slice(0, 150), slice(150, 300)
    probe = few_shot_probe(features[train], labels[train], features[test], labels[test], shots=5, draws=4, seed=3)
    # The same draws by hand: 5 examples of each class, without replacement, with the seed's generator.
    draws = np.random.default_rng(3)
    expected = []
    for _ in range(4):
        chosen = np.concatenate([draws.choice(np.flatnonzero(labels[train] == c), 5, replace=False) for c in range(3)])
        expected.append(linear_probe(features[train][chosen], labels[train][chosen], features[test], labels[test]))
    assert probe == pytest.approx(np.mean(expected)) and 0.5 < probe <= 1.0
    assert probe == few_shot_probe(
        features[train], labels[train], features[test], labels[test], shots=5, draws=4, seed=3
    )
    with pytest.raises(ValueError, match="fewer than 60 shots"):
        few_shot_probe(features[train], labels[train], features[test], labels[test], shots=60)
    with pytest.raises(ValueError, match="at least 1"):
        few_shot_probe(features[train], labels[train], features[test], labels[test], draws=0)


def test_digits_probe_dataset():
    data = digits_probe_dataset()
    assert len(data["train"]) + len(data["test"]) == 1797 and abs(len(data["train"]) - len(data["test"])) <= 1
    image = data["train"][0]["image"]
    assert image.size == (28, 28) and image.mode == "L"
    # Ink is bright on a dark background, as in Fashion-MNIST.
    pixels = np.asarray(image)
    assert pixels[0, 0] < 30 and pixels.max() > 150
    small = digits_probe_dataset(max_samples=100)
    assert len(small["train"]) == 50 and sorted(set(small["train"]["label"])) == list(range(10))
    assert small["test"]["label"] == digits_probe_dataset(max_samples=100)["test"]["label"]  # fixed split


# --- labels of the evaluation data -----------------------------------------------------------------------------------


def test_labels_are_mapped_to_the_models_ids():
    from types import SimpleNamespace

    from datasets import ClassLabel, Dataset, Features, Value

    from hf_maxsup.report.evaluate import label_lookup, relabel

    config = SimpleNamespace(num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"})
    same = Dataset.from_dict({"label": [0, 2]}, features=Features({"label": ClassLabel(names=["cat", "dog", "fox"])}))
    assert label_lookup(same, "label", config) is None
    shuffled = Dataset.from_dict(
        {"label": [0, 1, 2]}, features=Features({"label": ClassLabel(names=["fox", "cat", "dog"])})
    )
    mapping = label_lookup(shuffled, "label", config)
    assert relabel(shuffled, "label", mapping)["label"] == [2, 0, 1]
    strings = Dataset.from_dict({"label": ["dog", "cat"], "x": [1, 2]})
    assert relabel(strings, "label", label_lookup(strings, "label", config))["label"] == [1, 0]
    integers = Dataset.from_dict({"label": [2, 0]}, features=Features({"label": Value("int64")}))
    assert label_lookup(integers, "label", config) is None
    with pytest.raises(ValueError, match="not classes of the model"):
        label_lookup(
            Dataset.from_dict({"label": [0]}, features=Features({"label": ClassLabel(names=["cow"])})), "label", config
        )
    with pytest.raises(ValueError, match="do not match"):
        label_lookup(Dataset.from_dict({"label": ["cow"]}), "label", config)


def test_a_run_result_is_what_results_json_lists(tmp_path):
    from pathlib import Path

    from hf_maxsup.report import RunResult
    from hf_maxsup.report.markdown import json_safe

    rng = np.random.default_rng(0)
    results = [fake_result(label, 0, rng) for label in ("ce", "ls", "maxsup")]
    write_report(results, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert saved == [json_safe(result.to_json()) for result in results]
    assert RunResult(**saved[0]).to_json() == saved[0]  # and back: the figures' arrays are not in it
    # The same entries as the committed reports'.
    committed = json.loads((Path(__file__).parents[2] / "docs/compare_fmnist/results.json").read_text())
    assert (
        list(saved[0])
        == list(committed["runs"][0])
        == [
            "label",
            "seed",
            "path",
            "task",
            "split",
            "num_examples",
            "metrics",
        ]
    )
