"""Accuracy from class ids (as the Hub's `accuracy`), or top-1 and top-5 accuracy from logits, as an `evaluate` module
loadable offline by path.

Load it with `evaluate.load(hf_maxsup.metrics.path("accuracy"))`.
"""

import datasets
import evaluate
import numpy as np

from hf_maxsup.analysis._utils import check_logits_labels

_DESCRIPTION = """
The Hub `accuracy` module's accuracy when the predictions are class ids (the same call gives the same number,
`normalize` and `sample_weight` included); given the logits instead (one row of scores per example), the top-1
accuracy of their argmax and the top-5 accuracy when there are more than 5 classes, so that one evaluation pass feeds
both this module and the `calibration` module.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, shape `(N,)`, or `list` of `list` of `float`, shape `(N, K)`): the predicted
        class ids (as for the Hub's `accuracy`), or the logits (or probabilities) of each example.
    references (`list` of `int`, shape `(N,)`): class ids (in `[0, K)` with logits).
    normalize (`bool`, *optional*, defaults to `True`): the fraction of hits; `False`: their (weighted) count.
    sample_weight (`list` of `float`, shape `(N,)`, *optional*): the weight of each example.

Returns:
    accuracy (`float`): fraction of examples whose predicted (top-1) class is the reference, in [0, 1].
    top5_accuracy (`float`, logits of K > 5 classes only): fraction whose reference is among the 5 highest scores.

Examples:
    >>> import evaluate, hf_maxsup.metrics
    >>> accuracy = evaluate.load(hf_maxsup.metrics.path("accuracy"))
    >>> accuracy.compute(predictions=[[2.0, 0.5], [0.1, 0.3]], references=[0, 0])
    {'accuracy': 0.5}
    >>> accuracy.compute(predictions=[0, 1], references=[0, 0])
    {'accuracy': 0.5}
"""

_CITATION = ""


class Accuracy(evaluate.Metric):
    def _info(self):
        class_ids = {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
        logits = {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # The first that fits the first example is used: class ids as the Hub's `accuracy`, else logits.
            features=[datasets.Features(class_ids), datasets.Features(logits)],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        if np.ndim(predictions) == 1:
            labels = np.asarray(references, dtype=np.int64)
            return {"accuracy": _mean(np.asarray(predictions) == labels, normalize, sample_weight)}
        logits, labels = check_logits_labels(predictions, references)
        results = {"accuracy": _mean(logits.argmax(axis=1) == labels, normalize, sample_weight)}
        if logits.shape[1] > 5:
            # In the top 5 iff fewer than 5 classes score strictly higher than the reference (ties count as hits).
            reference_scores = logits[np.arange(len(labels)), labels][:, None]
            results["top5_accuracy"] = _mean((logits > reference_scores).sum(axis=1) < 5, normalize, sample_weight)
        return results


def _mean(hits: np.ndarray, normalize: bool, sample_weight) -> float:
    """The (weighted) fraction of hits, or their (weighted) count without `normalize`, as sklearn's accuracy_score."""
    weights = np.ones(len(hits)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = float((weights * hits).sum())
    return total / float(weights.sum()) if normalize else total
