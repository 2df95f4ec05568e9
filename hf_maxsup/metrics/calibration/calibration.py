"""Calibration and selective-classification metrics from logits (or, said so, probabilities), as an `evaluate` module
loadable offline by path.

Load it with `evaluate.load(hf_maxsup.metrics.path("calibration"))`. The numbers come from
`hf_maxsup.analysis`, so there is a single implementation of each metric.
"""

import datasets
import evaluate
import numpy as np

from hf_maxsup.analysis import (
    aurc,
    brier_score,
    classwise_ece,
    e_aurc,
    expected_calibration_error,
    negative_log_likelihood,
)
from hf_maxsup.analysis._utils import check_logits_labels, softmax, to_numpy

# How far from 1 the sum of a row of probabilities may be (float32 softmax outputs are within ~1e-6).
_SUM_TOLERANCE = 1e-4

_DESCRIPTION = """
Calibration of the softmax of a classifier (ECE with 15 equal-width bins, adaptive ECE with 15
equal-mass bins, class-wise ECE, NLL, Brier score) and the quality of its max-softmax confidence for
selective classification (AURC, E-AURC). See `hf_maxsup.analysis` for the exact definitions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, shape `(N, K)`): logits of each example, or, with
        `probabilities=True`, their softmax probabilities. Rows that are all probabilities (each in [0, 1],
        summing to 1) are refused without `probabilities=True`: a second softmax would give other numbers.
    references (`list` of `int`, shape `(N,)`): class ids in `[0, K)`.
    n_bins (`int`, *optional*, defaults to 15): number of bins of the three ECE variants.
    probabilities (`bool`, *optional*, defaults to `False`): whether `predictions` are probabilities (what the
        Hub's ECE modules take); every metric is then that of logits with these probabilities.

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
    >>> calibration.compute(predictions=[[0.8, 0.2], [0.4, 0.6]], references=[0, 0], probabilities=True)["nll"]
    0.5697171415941824
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

    def _compute(self, predictions, references, n_bins=15, probabilities=False):
        logits, labels = check_logits_labels(_as_logits(predictions, probabilities), references)
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


def _as_logits(predictions, probabilities: bool) -> np.ndarray:
    """Logits whose softmax is the given probabilities (their log), or the given logits, refused when every row is a
    probability vector: applying the softmax to probabilities would silently give other numbers."""
    rows = to_numpy(predictions)
    is_distribution = (rows.ndim == 2) and bool(
        np.all((rows >= 0) & (rows <= 1)) and np.all(np.abs(rows.sum(axis=-1) - 1) <= _SUM_TOLERANCE)
    )
    if probabilities:
        if not is_distribution:
            raise ValueError(
                "probabilities=True, but the rows of predictions are not probabilities (each in [0, 1], summing to "
                "1): pass the logits with probabilities=False (the default)."
            )
        with np.errstate(divide="ignore"):  # a probability of 0 is a logit of -inf, which the metrics accept
            return np.log(rows)
    if is_distribution:
        raise ValueError(
            "every row of predictions is in [0, 1] and sums to 1: these look like probabilities, and this module "
            "takes logits (it applies the softmax itself). Pass probabilities=True, or pass the logits."
        )
    return rows
