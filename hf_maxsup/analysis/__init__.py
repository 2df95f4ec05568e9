"""Analyses of trained classifiers: calibration, selective classification, feature geometry, logit statistics and
linear-probe transfer.

Plain functions taking numpy arrays or torch tensors (logits of shape (N, K), integer labels of shape
(N,), features of shape (N, D)) and returning numbers or matplotlib figures. Plotting needs the
`analysis` extra: `pip install hf_maxsup[analysis]`.
"""

from .calibration import (
    brier_score,
    classwise_ece,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    reliability_diagram,
)
from .features import collect_features, find_feature_layer
from .geometry import feature_geometry, penultimate_projection, projection_plot
from .logits import confidence_stats, ls_decomposition
from .selective import (
    aurc,
    e_aurc,
    logit_norm_confidence,
    risk_coverage_curve,
    risk_coverage_plot,
    select_logit_norm_p,
)
from .transfer import digits_probe_dataset, few_shot_probe, linear_probe

__all__ = [
    "aurc",
    "brier_score",
    "classwise_ece",
    "collect_features",
    "find_feature_layer",
    "confidence_stats",
    "digits_probe_dataset",
    "few_shot_probe",
    "e_aurc",
    "expected_calibration_error",
    "feature_geometry",
    "linear_probe",
    "logit_norm_confidence",
    "ls_decomposition",
    "negative_log_likelihood",
    "penultimate_projection",
    "projection_plot",
    "reliability_bins",
    "reliability_diagram",
    "risk_coverage_curve",
    "risk_coverage_plot",
    "select_logit_norm_p",
]
