"""Calibration of the softmax of a classifier: ECE variants, NLL, Brier score, reliability diagram.

All functions take raw logits of shape (N, K) and integer labels of shape (N,), as numpy arrays or
torch tensors, and compute in float64. Equal-width bin `b` (0-based) of `n_bins` holds the values
in (b/n_bins, (b+1)/n_bins], with 0 put in the first bin, as in Guo et al. (2017).
"""

import numpy as np

from ._utils import check_logits_labels, log_softmax, new_figure, softmax

__all__ = [
    "brier_score",
    "classwise_ece",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
    "reliability_diagram",
]


def _check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    return int(n_bins)


def _equal_width_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)


def _equal_mass_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    # Sizes differ by at most one; tied values may be split across two bins (stable order).
    order = np.argsort(values, kind="stable")
    bin_ids = np.empty(len(values), dtype=np.int64)
    bin_ids[order] = np.arange(len(values)) * n_bins // len(values)
    return bin_ids


def _binned_gap(values: np.ndarray, outcomes: np.ndarray, bin_ids: np.ndarray, n_bins: int) -> float:
    # Σ_b (n_b/N)|mean(outcome)_b − mean(value)_b| = Σ_b |Σ outcome − Σ value| / N; empty bins add 0.
    value_sums = np.bincount(bin_ids, weights=values, minlength=n_bins)
    outcome_sums = np.bincount(bin_ids, weights=outcomes, minlength=n_bins)
    return float(np.abs(outcome_sums - value_sums).sum() / len(values))


def _top1_confidence(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the top-1 softmax probability (N,) and whether the top-1 class is correct, as 0/1 floats (N,)."""
    predictions = logits.argmax(axis=1)
    confidence = softmax(logits)[np.arange(len(labels)), predictions]
    return confidence, (predictions == labels).astype(np.float64)


def expected_calibration_error(logits, labels, n_bins: int = 15, adaptive: bool = False) -> float:
    """Expected calibration error of the top-1 prediction.

    ECE = Σ_b (n_b / N) · |acc_b − conf_b|, where conf_b and acc_b are the mean top-1 confidence and
    the accuracy of the n_b examples in bin b.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.
        n_bins (`int`, *optional*, defaults to 15):
            Number of confidence bins.
        adaptive (`bool`, *optional*, defaults to `False`):
            If `False`, equal-width bins on [0, 1]. If `True`, equal-mass bins: the examples sorted by
            confidence are split into `n_bins` groups whose sizes differ by at most one ("adaptive ECE").

    Returns:
        `float`: the ECE, in [0, 1].
    """
    logits, labels = check_logits_labels(logits, labels)
    n_bins = _check_n_bins(n_bins)
    confidence, correct = _top1_confidence(logits, labels)
    bin_ids = _equal_mass_bins(confidence, n_bins) if adaptive else _equal_width_bins(confidence, n_bins)
    return _binned_gap(confidence, correct, bin_ids, n_bins)


def classwise_ece(logits, labels, n_bins: int = 15) -> float:
    """Class-wise ECE: the ECE of every class probability against its indicator, averaged over classes.

    For each class k, p_k of all N examples is put in equal-width bins and compared with 1[y = k]:
    ECE_k = Σ_b (n_b / N) · |mean_b 1[y = k] − mean_b p_k|. The result is (1/K) Σ_k ECE_k.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.
        n_bins (`int`, *optional*, defaults to 15):
            Number of equal-width probability bins per class.

    Returns:
        `float`: the class-wise ECE, in [0, 1].
    """
    logits, labels = check_logits_labels(logits, labels)
    n_bins = _check_n_bins(n_bins)
    num_classes = logits.shape[1]
    probs = softmax(logits)
    is_class = (labels[:, None] == np.arange(num_classes)).astype(np.float64)
    # One bincount over K·n_bins (class, bin) cells; dividing by N·K averages the per-class ECEs.
    bin_ids = _equal_width_bins(probs, n_bins) + n_bins * np.arange(num_classes)
    return _binned_gap(probs.ravel(), is_class.ravel(), bin_ids.ravel(), num_classes * n_bins)


def negative_log_likelihood(logits, labels) -> float:
    """Mean negative log-likelihood of the labels, −(1/N) Σ_i log softmax(z_i)_{y_i}.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores; the log-softmax is computed stably (max-shifted).
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.

    Returns:
        `float`: the mean NLL in nats.
    """
    logits, labels = check_logits_labels(logits, labels)
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def brier_score(logits, labels) -> float:
    """Multi-class Brier score, (1/N) Σ_i Σ_k (p_ik − 1[y_i = k])².

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.

    Returns:
        `float`: the Brier score, in [0, 2].
    """
    logits, labels = check_logits_labels(logits, labels)
    residual = softmax(logits)
    residual[np.arange(len(labels)), labels] -= 1.0
    return float((residual**2).sum(axis=1).mean())


def reliability_bins(logits, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics of the top-1 prediction over equal-width confidence bins.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.
        n_bins (`int`, *optional*, defaults to 15):
            Number of equal-width confidence bins.

    Returns:
        `dict[str, np.ndarray]` with keys:
            - `"edges"` (`(n_bins + 1,)`): bin edges, `np.linspace(0, 1, n_bins + 1)`.
            - `"confidence"` (`(n_bins,)`): mean top-1 confidence per bin, NaN for an empty bin.
            - `"accuracy"` (`(n_bins,)`): top-1 accuracy per bin, NaN for an empty bin.
            - `"count"` (`(n_bins,)`, int64): number of examples per bin.
    """
    logits, labels = check_logits_labels(logits, labels)
    n_bins = _check_n_bins(n_bins)
    confidence, correct = _top1_confidence(logits, labels)
    bin_ids = _equal_width_bins(confidence, n_bins)
    count = np.bincount(bin_ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_ids, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bin_ids, weights=correct, minlength=n_bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "count": count.astype(np.int64),
    }


def reliability_diagram(logits, labels, n_bins: int = 15, title: str | None = None, ax=None):
    """Reliability diagram: accuracy against confidence per equal-width bin, with the bin counts written on top.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.
        n_bins (`int`, *optional*, defaults to 15):
            Number of equal-width confidence bins.
        title (`str`, *optional*):
            Axes title; the ECE is always shown in the legend.
        ax (`matplotlib.axes.Axes`, *optional*):
            Axes to draw on; a new figure is created if not given.

    Returns:
        `matplotlib.figure.Figure`: the figure holding the diagram.
    """
    stats = reliability_bins(logits, labels, n_bins)
    ece = expected_calibration_error(logits, labels, n_bins)
    fig, ax = new_figure(ax)
    width = 1.0 / len(stats["count"])
    left, filled = stats["edges"][:-1], stats["count"] > 0
    ax.bar(
        left[filled],
        stats["accuracy"][filled],
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label=f"accuracy (ECE {100 * ece:.2f}%)",
    )
    # The gap is drawn from accuracy to confidence, so over-confidence shows as a bar above the blue.
    ax.bar(
        left[filled],
        (stats["confidence"] - stats["accuracy"])[filled],
        bottom=stats["accuracy"][filled],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    for x, acc, conf, count in zip(
        left[filled], stats["accuracy"][filled], stats["confidence"][filled], stats["count"][filled], strict=True
    ):
        ax.text(x + width / 2, max(acc, conf) + 0.01, str(count), ha="center", va="bottom", rotation=90, fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.15), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return fig
