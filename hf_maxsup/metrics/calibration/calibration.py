"""Calibration and selective-classification metrics from logits, as an `evaluate` module loadable offline by path.

Load it with `evaluate.load(hf_maxsup.metrics.path("calibration"))`. The numbers come from
`hf_maxsup.analysis`, so there is a single implementation of each metric.
"""

import datasets
import evaluate

from hf_maxsup.analysis import (
    aurc,
    brier_score,
    classwise_ece,
    e_aurc,
    expected_calibration_error,
    negative_log_likelihood,
)
from hf_maxsup.analysis._utils import check_logits_labels, softmax

_DESCRIPTION = """
Calibration of the softmax of a classifier (ECE with 15 equal-width bins, adaptive ECE with 15
equal-mass bins, class-wise ECE, NLL, Brier score) and the quality of its max-softmax confidence for
selective classification (AURC, E-AURC). See `hf_maxsup.analysis` for the exact definitions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, shape `(N, K)`): logits of each example (not probabilities).
    references (`list` of `int`, shape `(N,)`): class ids in `[0, K)`.
    n_bins (`int`, *optional*, defaults to 15): number of bins of the three ECE variants.

Returns:
    ece, adaptive_ece, classwise_ece (`float`): in [0, 1].
    nll (`float`): mean negative log-likelihood of the references, in nats.
    brier (`float`): mean multi-class Brier score, in [0, 2].
    aurc, e_aurc (`float`): area under the risk-coverage curve of the max softmax probability, and its
        excess over the optimum, as fractions (multiply by 100 for the usual %).

Examples:
    >>> import evaluate, hf_maxsup.metrics
    >>> calibration = evaluate.load(hf_maxsup.metrics.path("calibration"))
    >>> results = calibration.compute(predictions=[[2.0, 0.5], [0.1, 0.3]], references=[0, 0])
    >>> sorted(results)
    ['adaptive_ece', 'aurc', 'brier', 'classwise_ece', 'e_aurc', 'ece', 'nll']
"""

_CITATION = """
@inproceedings{guo2017calibration, title={On Calibration of Modern Neural Networks}, author={Guo, Chuan and
  Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.}, booktitle={ICML}, year={2017}}
@inproceedings{geifman2019bias, title={Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers},
  author={Geifman, Yonatan and Uziel, Guy and El-Yaniv, Ran}, booktitle={ICLR}, year={2019}}
"""


class Calibration(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, n_bins=15):
        logits, labels = check_logits_labels(predictions, references)
        confidence = softmax(logits).max(axis=1)
        correct = logits.argmax(axis=1) == labels
        return {
            "ece": expected_calibration_error(logits, labels, n_bins=n_bins),
            "adaptive_ece": expected_calibration_error(logits, labels, n_bins=n_bins, adaptive=True),
            "classwise_ece": classwise_ece(logits, labels, n_bins=n_bins),
            "nll": negative_log_likelihood(logits, labels),
            "brier": brier_score(logits, labels),
            "aurc": aurc(confidence, correct),
            "e_aurc": e_aurc(confidence, correct),
        }
