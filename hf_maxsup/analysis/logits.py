"""Summaries of the logits: confidence on right and wrong predictions, and the two parts of the LS term."""

import numpy as np

from ._utils import check_logits_labels, log_softmax

__all__ = ["confidence_stats", "ls_decomposition"]


def confidence_stats(logits, labels) -> dict[str, float]:
    """Accuracy and confidence of the top-1 prediction, split into right and wrong predictions.

    Label smoothing's error-amplification term makes wrong predictions more confident, which shows in
    `mean_confidence_wrong`; `mean_logit_gap` is the quantity that MaxSup penalises.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.

    Returns:
        `dict[str, float]` with keys:
            - `"accuracy"`: top-1 accuracy.
            - `"mean_confidence"`: mean top-1 softmax probability.
            - `"mean_confidence_correct"`, `"mean_confidence_wrong"`: the same over right / wrong
              predictions (NaN when there are none).
            - `"mean_entropy"`: mean entropy of the softmax, in nats.
            - `"mean_logit_gap"`: mean of max_k z_k − mean_k z_k.
    """
    logits, labels = check_logits_labels(logits, labels)
    log_probs = log_softmax(logits)
    probs = np.exp(log_probs)
    predictions = logits.argmax(axis=1)
    correct = predictions == labels
    confidence = probs[np.arange(len(labels)), predictions]
    # 0 · log 0 = 0 for classes whose probability underflows.
    entropy = -np.where(probs > 0, probs * log_probs, 0.0).sum(axis=1)
    return {
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "mean_confidence_correct": float(confidence[correct].mean()) if correct.any() else float("nan"),
        "mean_confidence_wrong": float(confidence[~correct].mean()) if not correct.all() else float("nan"),
        "mean_entropy": float(entropy.mean()),
        "mean_logit_gap": float((logits.max(axis=1) - logits.mean(axis=1)).mean()),
    }


def ls_decomposition(logits, labels) -> dict[str, float]:
    """Splits the label-smoothing term z_y − mean_k z_k into regularisation and error amplification.

    For logits z and target y (MaxSup paper, Corollary 3.4):

    - regularization = (1/K) Σ_{m: z_m < z_y} (z_y − z_m) ≥ 0,
    - error_amplification = (1/K) Σ_{n: z_n > z_y} (z_y − z_n) ≤ 0, non-zero only when some class
      outranks y, i.e. on misclassified examples,

    and their sum is z_y − mean_k z_k. Multiply by α to get the part of the LS loss.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            Unnormalised scores.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Integer class ids in `[0, K)`.

    Returns:
        `dict[str, float]`: `"regularization"` and `"error_amplification"`, each the mean over the N examples.
    """
    logits, labels = check_logits_labels(logits, labels)
    gaps = logits[np.arange(len(labels)), labels][:, None] - logits
    num_classes = logits.shape[1]
    return {
        "regularization": float((np.maximum(gaps, 0.0).sum(axis=1) / num_classes).mean()),
        "error_amplification": float((np.minimum(gaps, 0.0).sum(axis=1) / num_classes).mean()),
    }
