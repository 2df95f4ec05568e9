import io
import math
import sys

import numpy as np
import pytest
import torch

from hf_maxsup.analysis import (
    aurc,
    brier_score,
    classwise_ece,
    collect_features,
    confidence_stats,
    e_aurc,
    expected_calibration_error,
    feature_geometry,
    logit_norm_confidence,
    ls_decomposition,
    negative_log_likelihood,
    penultimate_projection,
    projection_plot,
    reliability_bins,
    reliability_diagram,
    risk_coverage_curve,
    risk_coverage_plot,
    select_logit_norm_p,
)


def binary_logits(p_class0):
    """Logits of two classes whose softmax gives class 0 the probability p_class0."""
    p = np.asarray(p_class0, dtype=np.float64)
    return np.stack([np.log(p), np.log1p(-p)], axis=1)


def random_case(n=200, k=7, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)) * scale, rng.integers(0, k, size=n)


def naive_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def naive_ece(values, outcomes, n_bins):
    """ECE by explicit loops over bins (lo, hi], with 0 in the first bin."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, v in enumerate(values) if (lo < v <= hi) or (b == 0 and v == 0)]
        if members:
            gap = abs(np.mean([outcomes[i] for i in members]) - np.mean([values[i] for i in members]))
            total += len(members) / len(values) * gap
    return total


# --- calibration -----------------------------------------------------------------------------------


def test_ece_perfectly_calibrated_is_zero():
    # Confidence 0.6 with 3/5 right, 0.8 with 8/10 right, 0.9 with 9/10 right.
    confidence = [0.6] * 5 + [0.8] * 10 + [0.9] * 10
    right = [1, 1, 1, 0, 0] + [1] * 8 + [0] * 2 + [1] * 9 + [0]
    labels = [0 if r else 1 for r in right]
    logits = binary_logits(confidence)
    assert expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(0.0, abs=1e-12)


def test_ece_always_certain_at_70_percent_accuracy():
    logits = np.tile([50.0, 0.0], (10, 1))
    labels = [0] * 7 + [1] * 3
    assert expected_calibration_error(logits, labels) == pytest.approx(0.3)
    assert expected_calibration_error(logits, labels, adaptive=True) == pytest.approx(0.3)


def test_ece_hand_computed():
    # Confidences 0.55 (right), 0.65 (wrong), 0.70 (right), 0.95 (right); 5 bins of width 0.2:
    # (0.4, 0.6]: |1 - 0.55| · 1/4; (0.6, 0.8]: |0.5 - 0.675| · 2/4; (0.8, 1]: |1 - 0.95| · 1/4.
    logits = binary_logits([0.55, 0.35, 0.70, 0.95])
    labels = [0, 0, 0, 0]  # the second example predicts class 1 with confidence 0.65: wrong
    assert expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(0.2125)
    # Two equal-mass bins {0.55, 0.65}, {0.70, 0.95}: |0.5 - 0.6| / 2 + |1 - 0.825| / 2.
    assert expected_calibration_error(logits, labels, n_bins=2, adaptive=True) == pytest.approx(0.1375)


def test_ece_matches_loop_implementation():
    logits, labels = random_case()
    probs = naive_softmax(logits)
    right = (probs.argmax(1) == labels).astype(float)
    expected = naive_ece(probs.max(1), right, 15)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, rel=1e-12)
    assert expected_calibration_error(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(expected, rel=1e-12)
    bf16 = torch.tensor(logits).bfloat16()
    assert expected_calibration_error(bf16, labels) == expected_calibration_error(bf16.float().numpy(), labels)


def test_classwise_ece_matches_loop_implementation():
    logits, labels = random_case(k=4, scale=1.0)
    probs = naive_softmax(logits)
    per_class = [naive_ece(probs[:, k], (labels == k).astype(float), 10) for k in range(4)]
    assert classwise_ece(logits, labels, n_bins=10) == pytest.approx(np.mean(per_class), rel=1e-12)


def test_nll_and_brier_match_direct_formulas():
    logits, labels = random_case()
    probs = naive_softmax(logits)
    onehot = np.eye(logits.shape[1])[labels]
    assert negative_log_likelihood(logits, labels) == pytest.approx(
        -np.log(probs[np.arange(len(labels)), labels]).mean()
    )
    assert brier_score(logits, labels) == pytest.approx(((probs - onehot) ** 2).sum(1).mean())


def test_nll_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert negative_log_likelihood(logits, [0, 0]) == pytest.approx(500.0)
    assert brier_score(logits, [0, 0]) == pytest.approx(1.0)


def two_class_logits(confidences):
    """Logits of 2 classes whose top-1 softmax probability (class 0) is each given confidence."""
    p = np.asarray(confidences, dtype=np.float64)
    return np.stack([np.log(p), np.log1p(-p)], axis=1)


def test_ece_puts_a_bin_edge_in_the_lower_bin():
    """(b/n, (b+1)/n]: a confidence of exactly 0.5 (2 equal logits) is in bin (0.25, 0.5] of 4, not with the 0.6."""
    logits = np.concatenate([np.zeros((1, 2)), two_class_logits([0.6])])
    labels = np.array([0, 1])  # the 0.5 is right, the 0.6 is wrong
    # bins apart: (1/2)|1 - 0.5| + (1/2)|0 - 0.6| = 0.55; had the edge gone up: |1/2 - 0.55| = 0.05
    assert expected_calibration_error(logits, labels, n_bins=4) == pytest.approx(0.55)
    # 0.25 exactly (4 equal logits) is in the first bin of 4, with the 0.1 below it
    quarter = np.concatenate([np.zeros((1, 4)), np.log([[0.1, 0.9 / 3, 0.9 / 3, 0.9 / 3]])[:, [1, 0, 2, 3]]])
    assert expected_calibration_error(quarter, np.array([1, 0]), n_bins=4) == pytest.approx(
        abs(0.0 - 0.25) / 2 + abs(1 - 0.3) / 2
    )


def test_reliability_bins_and_diagram():
    confidences = [0.5, 0.6, 0.95, 0.99, 0.97]
    labels = np.array([0, 1, 0, 0, 1])  # right, wrong, right, right, wrong
    stats = reliability_bins(two_class_logits(confidences), labels, n_bins=4)
    # bins (0, .25], (.25, .5], (.5, .75], (.75, 1]: counts, accuracies and mean confidences by hand
    np.testing.assert_array_equal(stats["count"], [0, 1, 1, 3])
    assert np.isnan(stats["accuracy"][0]) and np.isnan(stats["confidence"][0])
    np.testing.assert_allclose(stats["accuracy"][1:], [1.0, 0.0, 2 / 3])
    np.testing.assert_allclose(stats["confidence"][1:], [0.5, 0.6, (0.95 + 0.99 + 0.97) / 3])

    fig = reliability_diagram(two_class_logits(confidences), labels, n_bins=4, title="hand-made")
    assert {t.get_text() for t in fig.axes[0].texts} == {"1", "3"}
    fig.savefig(io.BytesIO(), format="png")


def test_plots_name_the_extra_when_matplotlib_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install hf_maxsup\\[analysis\\]"):
        reliability_diagram(*random_case())


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (np.zeros((3, 2)), [0, 1], "shape \\(3,\\)"),
        (np.zeros((3, 2)), [0, 1, 2], "\\[0, 2\\)"),
        (np.zeros(3), [0, 1, 1], "shape \\(N, K\\)"),
        (np.full((2, 2), np.nan), [0, 1], "NaN"),
        (np.zeros((2, 2)), [0.5, 1], "integer"),
    ],
)
def test_calibration_rejects_bad_input(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(logits, labels)


# --- selective classification ------------------------------------------------------------------------


def test_aurc_hand_computed_and_ties():
    # Risks at coverage 1/4..4/4: 0, 1/2, 1/3, 1/4.
    assert aurc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 1]) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # 0.8 tied between a wrong and a right example: each counts half an error.
    coverage, risk = risk_coverage_curve([0.9, 0.8, 0.8, 0.6], [1, 0, 1, 1])
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0.25, 1 / 3, 1 / 4])
    assert aurc([0.6, 0.8, 0.9, 0.8], [1, 1, 1, 0]) == pytest.approx(np.mean([0, 0.25, 1 / 3, 1 / 4]))


def test_aurc_constant_confidence_equals_error_rate():
    correct = np.random.default_rng(0).random(100) < 0.7
    assert aurc(np.ones(100), correct) == pytest.approx(1 - correct.mean())


@pytest.mark.parametrize("n, m", [(10, 3), (1000, 250), (20000, 1000)])
def test_aurc_perfect_ranking_closed_form(n, m):
    correct = np.r_[np.ones(n - m), np.zeros(m)]
    confidence = np.linspace(1, 0, n)
    r = m / n
    harmonic = lambda j: np.sum(1.0 / np.arange(1, j + 1))  # noqa: E731
    assert aurc(confidence, correct) == pytest.approx(r - (1 - r) * (harmonic(n) - harmonic(n - m)), rel=1e-10)
    # E-AURC subtracts the large-N limit r + (1 - r) ln(1 - r): what is left is O(1/N).
    assert abs(e_aurc(confidence, correct)) < 1.0 / (n - m)
    assert e_aurc(confidence[::-1], correct) > 0.1  # worst ranking


def test_e_aurc_extreme_error_rates():
    confidence = np.linspace(0, 1, 5)
    assert aurc(confidence, np.ones(5)) == 0.0 and e_aurc(confidence, np.ones(5)) == 0.0
    assert aurc(confidence, np.zeros(5)) == 1.0 and e_aurc(confidence, np.zeros(5)) == 0.0


def test_logit_norm_confidence():
    z = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # Centered [2, -1, -1]: L1 norm 4, L2 norm sqrt(6); constant logits give 0.
    np.testing.assert_allclose(logit_norm_confidence(z, 1), [0.5, 0.0])
    np.testing.assert_allclose(logit_norm_confidence(z, 2), [2 / math.sqrt(6), 0.0])
    logits, _ = random_case()
    np.testing.assert_allclose(logit_norm_confidence(3.0 * logits + 7.0, 4), logit_norm_confidence(logits, 4))
    with pytest.raises(ValueError, match="p must be > 0"):
        logit_norm_confidence(z, 0)


def test_select_logit_norm_p():
    """The chosen p is the one whose confidence max_k (z_k - mu) / ||z - mu||_p ranks errors last, by an AURC
    computed here from its definition (mean over k of the error rate among the k most confident)."""
    logits, labels = random_case(n=300)
    correct = logits.argmax(1) == labels

    def hand_aurc(p):
        centred = logits - logits.mean(1, keepdims=True)
        confidence = centred.max(1) / (np.abs(centred) ** p).sum(1) ** (1 / p)
        errors = ~correct[np.argsort(-confidence, kind="stable")]
        return np.mean(np.cumsum(errors) / np.arange(1, len(errors) + 1))

    best, scores = select_logit_norm_p(logits, labels, ps=[1, 2, 8])
    expected = {p: hand_aurc(p) for p in (1, 2, 8)}
    assert scores == pytest.approx(expected, rel=1e-12)
    assert best == min(expected, key=expected.get)


def test_risk_coverage_plot():
    curves = {
        "a": risk_coverage_curve([0.9, 0.8, 0.7], [1, 0, 1]),
        "b": risk_coverage_curve([0.1, 0.8, 0.7], [1, 0, 1]),
    }
    fig = risk_coverage_plot(curves, title="rc")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == f"a (AURC {100 * aurc([0.9, 0.8, 0.7], [1, 0, 1]):.2f}%)"
    with pytest.raises(ValueError, match="same shape"):
        aurc([0.9, 0.8], [1, 0, 1])


# --- geometry ----------------------------------------------------------------------------------------


def test_feature_geometry_identical_features_per_class():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    labels = np.repeat([0, 1, 2], [4, 5, 6])
    # Different scales per row: normalisation makes each class a single point.
    features = centers[labels] * rng.uniform(0.5, 2.0, size=(len(labels), 1))
    geometry = feature_geometry(features, labels)
    assert geometry["d_within"] == pytest.approx(0.0, abs=1e-12)
    assert geometry["r2"] == pytest.approx(1.0)


def test_feature_geometry_hand_computed():
    e1, e2 = np.eye(2)
    # Class 0 = {e1}: mean e1. Class 1 = {e2, -e2}: mean 0.
    geometry = feature_geometry(np.stack([e1, e2, -e2]), [0, 1, 1])
    assert geometry["d_within"] == pytest.approx(1 - (1 + 0) / 2)
    assert geometry["d_total"] == pytest.approx(1 - 0.25)
    assert geometry["r2"] == pytest.approx(1 - 0.5 / 0.75)


def test_feature_geometry_matches_pairwise_cosine_distances():
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(30, 5)) + 1.0, np.repeat([0, 1, 2], 10)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distance = 1 - unit @ unit.T
    d_within = np.mean([distance[np.ix_(labels == k, labels == k)].mean() for k in range(3)])
    # Equal class sizes: the class-balanced d_total is the mean over all pairs.
    geometry = feature_geometry(torch.tensor(features, dtype=torch.float32), labels)
    assert geometry["d_within"] == pytest.approx(d_within, rel=1e-6)
    assert geometry["d_total"] == pytest.approx(distance.mean(), rel=1e-6)
    with pytest.raises(ValueError, match="non-zero rows"):
        feature_geometry(np.zeros((2, 3)), [0, 1])


def test_penultimate_projection_preserves_in_plane_distances():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(5, 8))
    labels = np.array([0, 1, 2, 3, 4, 3, 1])
    features = weights[labels]  # every example sits on its class template
    coords, kept = penultimate_projection(features, labels, weights, classes=[1, 3, 4])
    np.testing.assert_array_equal(kept, [1, 3, 4, 3, 1])
    assert coords.shape == (5, 2)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert np.linalg.norm(coords[i] - coords[j]) == pytest.approx(
            np.linalg.norm(features[[1, 3, 4]][i] - features[[1, 3, 4]][j])
        )
    np.testing.assert_allclose(coords[:3].mean(axis=0), 0.0, atol=1e-12)  # triangle centred on the origin
    fig = projection_plot(coords, kept, class_names={1: "cat", 3: "dog", 4: "bird"})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["cat", "dog", "bird"]
    collinear = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="collinear"):
        penultimate_projection(np.zeros((1, 2)), [0], collinear, [0, 1, 2])


# --- logits ------------------------------------------------------------------------------------------


def test_ls_decomposition_hand_computed():
    # z = [2, 0, 1], y = 2: regularisation (1 - 0)/3, error amplification (1 - 2)/3.
    result = ls_decomposition(np.array([[2.0, 0.0, 1.0]]), [2])
    assert result["regularization"] == pytest.approx(1 / 3)
    assert result["error_amplification"] == pytest.approx(-1 / 3)
    # Correct predictions: no error amplification.
    assert ls_decomposition(np.array([[2.0, 0.0, 1.0]]), [0])["error_amplification"] == 0.0


def test_ls_decomposition_sums_to_target_minus_mean():
    logits, labels = random_case()
    result = ls_decomposition(logits, labels)
    expected = (logits[np.arange(len(labels)), labels] - logits.mean(1)).mean()
    assert result["regularization"] + result["error_amplification"] == pytest.approx(expected)
    assert result["error_amplification"] < 0 < result["regularization"]


def test_confidence_stats():
    logits = binary_logits([0.9, 0.6, 0.3, 0.8])  # confidences 0.9, 0.6, 0.7, 0.8
    stats = confidence_stats(logits, [0, 1, 1, 0])  # right, wrong, right, right
    assert stats["accuracy"] == pytest.approx(0.75)
    assert stats["mean_confidence"] == pytest.approx(0.75)
    assert stats["mean_confidence_correct"] == pytest.approx(0.8)
    assert stats["mean_confidence_wrong"] == pytest.approx(0.6)
    assert stats["mean_entropy"] == pytest.approx(
        np.mean([-(p * np.log(p) + (1 - p) * np.log(1 - p)) for p in [0.9, 0.6, 0.3, 0.8]])
    )
    assert math.isnan(confidence_stats(logits, [0, 0, 1, 0])["mean_confidence_wrong"])


# --- features ----------------------------------------------------------------------------------------

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def text_batches(vocab_size=50, n_batches=2, batch_size=3, length=7, pad=None):
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        input_ids = torch.randint(1, vocab_size, (batch_size, length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        if pad is not None:  # right padding of different lengths
            for row, n_pad in enumerate(range(batch_size)):
                if n_pad:
                    input_ids[row, -n_pad:], attention_mask[row, -n_pad:] = pad, 0
        labels = torch.randint(0, 3, (batch_size,), generator=generator)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


def reference_logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches]).numpy()


def test_collect_features_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, num_labels=3, **TINY)).train()
    batches = text_batches()
    out = collect_features(model, batches)
    assert model.training  # restored
    assert out["features"].shape == (6, 32) and out["features"].dtype == np.float32
    np.testing.assert_array_equal(out["labels"], torch.cat([b["labels"] for b in batches]).numpy())
    np.testing.assert_allclose(out["logits"], reference_logits(model.eval(), batches), atol=1e-5)
    weight, bias = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(out["features"] @ weight.T + bias, out["logits"], atol=1e-5)


def test_collect_features_peft_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=50, num_labels=3, **TINY))
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2))
    out = collect_features(model, text_batches())
    head = model.base_model.model.classifier.modules_to_save["default"]
    np.testing.assert_allclose(
        out["features"] @ head.weight.detach().numpy().T + head.bias.detach().numpy(), out["logits"], atol=1e-5
    )


def test_collect_features_decoder_score_head_with_padding():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=16, num_labels=3, pad_token_id=0)
    model = GPT2ForSequenceClassification(config)
    batches = text_batches(pad=0)
    out = collect_features(model, batches)
    assert out["features"].shape == (6, 32)
    np.testing.assert_allclose(out["logits"], reference_logits(model.eval(), batches), atol=1e-5)
    # The feature of each sequence is the last hidden state at its last non-padding token.
    with torch.no_grad():
        hidden = torch.cat(
            [
                model.transformer(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
                for b in batches
            ]
        )
    last = torch.cat([b["attention_mask"].sum(1) - 1 for b in batches])
    np.testing.assert_allclose(out["features"], hidden[torch.arange(6), last].numpy(), atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_collect_features_image_models(family):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if family == "vit":
        model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_labels=4, **TINY))
        dim = 32
    else:
        config = ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=4)
        model, dim = ConvNextForImageClassification(config), 32
    batches = [{"pixel_values": torch.randn(2, 3, 16, 16), "labels": torch.tensor([0, 3])} for _ in range(2)]
    out = collect_features(model, batches)
    assert out["features"].shape == (4, dim)
    weight, bias = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(out["features"] @ weight.T + bias, out["logits"], atol=1e-5)


def test_collect_features_sequential_head_and_errors():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 6)
            # Two layers with num_labels outputs: the feature is the input of the last one.
            self.classifier = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3))
            self.config = type("Config", (), {"num_labels": 3})()

        def forward(self, x):
            return {"logits": self.classifier(self.body(x))}

    model = Tiny()
    batches = [{"x": torch.randn(5, 4), "labels": torch.zeros(5, dtype=torch.long)}]
    with torch.no_grad():
        hidden = model.body(batches[0]["x"])
        penultimate = model.classifier[:2](hidden)
    np.testing.assert_allclose(collect_features(model, batches)["features"], penultimate.numpy(), atol=1e-6)
    by_name = collect_features(model, batches, feature_layer="classifier.0")["features"]
    np.testing.assert_allclose(by_name, hidden.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        collect_features(model, [{"x": torch.randn(5, 4)}])
