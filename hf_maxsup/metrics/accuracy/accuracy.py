"""Top-1 (and top-5) accuracy from logits, as an `evaluate` module loadable offline by path.

Load it with `evaluate.load(hf_maxsup.metrics.path("accuracy"))`.
"""

import datasets
import evaluate
import numpy as np

from hf_maxsup.analysis._utils import check_logits_labels

_DESCRIPTION = """
Top-1 accuracy of the argmax of the logits, and top-5 accuracy when there are more than 5 classes.
Unlike the Hub `accuracy` module, predictions are the logits, so that one evaluation pass feeds both
this module and the `calibration` module.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, shape `(N, K)`): logits (or probabilities) of each example.
    references (`list` of `int`, shape `(N,)`): class ids in `[0, K)`.

Returns:
    accuracy (`float`): fraction of examples whose top-1 class is the reference, in [0, 1].
    top5_accuracy (`float`, only when K > 5): fraction whose reference is among the 5 highest scores.

Examples:
    >>> import evaluate, hf_maxsup.metrics
    >>> accuracy = evaluate.load(hf_maxsup.metrics.path("accuracy"))
    >>> accuracy.compute(predictions=[[2.0, 0.5], [0.1, 0.3]], references=[0, 0])
    {'accuracy': 0.5}
"""

_CITATION = ""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        logits, labels = check_logits_labels(predictions, references)
        results = {"accuracy": float((logits.argmax(axis=1) == labels).mean())}
        if logits.shape[1] > 5:
            # In the top 5 iff fewer than 5 classes score strictly higher than the reference (ties count as hits).
            reference_scores = logits[np.arange(len(labels)), labels][:, None]
            results["top5_accuracy"] = float(((logits > reference_scores).sum(axis=1) < 5).mean())
        return results
