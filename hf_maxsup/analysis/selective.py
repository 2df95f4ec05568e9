"""Selective classification: risk-coverage curves, AURC / E-AURC and post-hoc logit normalisation.

Conventions used throughout:

- Examples are accepted in order of decreasing confidence. At coverage k/N (k = 1, ..., N) the
  selective risk is the error rate among the k accepted examples.
- Ties in confidence are resolved by their expectation over a uniformly random order within the
  tie: if the k-th accepted example falls inside a block of m tied examples holding e errors, each
  accepted member of the block counts e/m errors. The curve therefore depends only on the
  confidence values, never on the input order; a constant confidence gives risk r at every coverage.
- AURC is the mean of the N risks, i.e. the area under the step curve over coverages k/N
  (the convention of Geifman et al., 2019). For a perfect ranking with m = rN errors,
  AURC = r − (1 − r)(H_N − H_{N−m}) with H_n the n-th harmonic number, which tends to
  r + (1 − r) ln(1 − r) as N grows.
"""

import numpy as np

from ._utils import check_logits_labels, new_figure, to_numpy

__all__ = [
    "aurc",
    "e_aurc",
    "logit_norm_confidence",
    "risk_coverage_curve",
    "risk_coverage_plot",
    "select_logit_norm_p",
]


def _check_confidence_correct(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    confidence = to_numpy(confidence)
    correct = to_numpy(correct)
    if confidence.ndim != 1 or confidence.shape[0] == 0:
        raise ValueError(f"confidence must have shape (N,) with N >= 1, got {confidence.shape}.")
    if correct.shape != confidence.shape:
        raise ValueError(
            f"correct must have the same shape as confidence {confidence.shape}, got {correct.shape}. "
            "Pass one boolean per example: predictions == labels."
        )
    if np.isnan(confidence).any():
        raise ValueError("confidence contains NaN.")
    if not np.isin(correct, (0.0, 1.0)).all():
        raise ValueError("correct must hold booleans or 0/1 values (1 = prediction is right).")
    return confidence, correct


def risk_coverage_curve(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve of a confidence score (see the module docstring for the tie convention).

    Args:
        confidence (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Confidence score of each prediction; higher means accepted first.
        correct (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Whether each prediction is right (bool or 0/1).

    Returns:
        `tuple[np.ndarray, np.ndarray]`: `coverage` of shape `(N,)`, equal to k/N for k = 1, ..., N, and
        `risk` of shape `(N,)`, the (tie-averaged) error rate among the k most confident examples.
    """
    confidence, correct = _check_confidence_correct(confidence, correct)
    n = len(confidence)
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence, errors = confidence[order], 1.0 - correct[order]
    # Cumulative errors are exact at the end of each tie block and linear inside it.
    block_ends = np.flatnonzero(np.append(sorted_confidence[1:] != sorted_confidence[:-1], True)) + 1
    cumulative_errors = np.interp(
        np.arange(1, n + 1), np.append(0, block_ends), np.append(0.0, errors.cumsum()[block_ends - 1])
    )
    k = np.arange(1, n + 1, dtype=np.float64)
    return k / n, cumulative_errors / k


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve: the mean selective risk over coverages k/N, k = 1, ..., N.

    Args:
        confidence (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Confidence score of each prediction; higher means accepted first. Ties are averaged.
        correct (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Whether each prediction is right (bool or 0/1).

    Returns:
        `float`: the AURC, in [0, 1] (multiply by 100 for the usual percentage).
    """
    return float(risk_coverage_curve(confidence, correct)[1].mean())


def e_aurc(confidence, correct) -> float:
    """Excess AURC: AURC − [r + (1 − r) ln(1 − r)], with r the error rate.

    The bracket is the AURC of a perfect ranking in the limit of many examples, so a perfect
    ranking of finitely many examples gives a value of order 1/N rather than exactly 0.
    r = 0 and r = 1 use the limits 0 and 1 of the bracket (both give E-AURC 0 for any ranking).

    Args:
        confidence (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Confidence score of each prediction; higher means accepted first. Ties are averaged.
        correct (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Whether each prediction is right (bool or 0/1).

    Returns:
        `float`: the E-AURC.
    """
    confidence, correct = _check_confidence_correct(confidence, correct)
    r = 1.0 - correct.mean()
    optimal = 1.0 if r == 1.0 else r + (1.0 - r) * np.log1p(-r)
    return aurc(confidence, correct) - float(optimal)


def logit_norm_confidence(logits, p: float) -> np.ndarray:
    """Post-hoc logit-normalised confidence (Xia et al., 2024): max_k (z_k − μ) / ‖z − μ‖_p, μ = mean_k z_k.

    Invariant to shifting and to positive scaling of the logits. Xia et al. show that it recovers much
    of the selective-classification quality (AURC) that label smoothing costs. An example whose logits
    are all equal gets 0.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        p (`float`):
            Order of the norm, > 0 (`np.inf` allowed).

    Returns:
        `np.ndarray` of shape `(N,)`: the confidence of each example.
    """
    logits = to_numpy(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {logits.shape}.")
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p!r}.")
    centered = logits - logits.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centered, ord=p, axis=1)
    return np.divide(centered.max(axis=1), norm, out=np.zeros(len(norm)), where=norm > 0)


def select_logit_norm_p(logits, labels, ps=range(1, 11)) -> tuple[float, dict[float, float]]:
    """Chooses the norm order p of [`logit_norm_confidence`] that minimises the AURC.

    Call it on held-out data (not the test set) and reuse the returned p at test time.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores of the held-out examples.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.
        ps (iterable of `float`, *optional*, defaults to `range(1, 11)`):
            Candidate norm orders; among equal AURCs the first wins.

    Returns:
        `tuple[float, dict[float, float]]`: the best p and the AURC of every candidate p.
    """
    logits, labels = check_logits_labels(logits, labels)
    correct = logits.argmax(axis=1) == labels
    scores = {p: aurc(logit_norm_confidence(logits, p), correct) for p in ps}
    if not scores:
        raise ValueError("ps is empty; pass candidate norm orders, e.g. range(1, 11).")
    return min(scores, key=scores.get), scores


def risk_coverage_plot(curves: dict, title: str | None = None, ax=None):
    """Plots risk-coverage curves, one line per named curve, with its AURC in the legend.

    Args:
        curves (`dict[str, tuple[np.ndarray, np.ndarray]]`):
            Name → `(coverage, risk)` as returned by [`risk_coverage_curve`].
        title (`str`, *optional*):
            Axes title.
        ax (`matplotlib.axes.Axes`, *optional*):
            Axes to draw on; a new figure is created if not given.

    Returns:
        `matplotlib.figure.Figure`: the figure holding the plot.
    """
    fig, ax = new_figure(ax)
    for name, (coverage, risk) in curves.items():
        coverage, risk = to_numpy(coverage), to_numpy(risk)
        if coverage.shape != risk.shape or coverage.ndim != 1:
            raise ValueError(f"curve {name!r}: coverage and risk must be 1-D arrays of equal length.")
        ax.plot(coverage, 100 * risk, label=f"{name} (AURC {100 * risk.mean():.2f}%)")
    ax.set(xlim=(0, 1), xlabel="coverage", ylabel="selective risk (%)", title=title)
    ax.legend(fontsize=8)
    return fig
