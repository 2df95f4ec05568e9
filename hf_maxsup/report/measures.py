"""What the classification report measures of one classifier: its metrics from its logits, labels and features, the
regime and selective-classification measures, the linear probe of its features, and the terms its training logged.

[`ClassifierPass`] runs a loaded classifier over a split ([`~hf_maxsup.analysis.collect_features`]);
[`compute_metrics`] measures the arrays it collects; [`~hf_maxsup.report.classification.analyze_run`] puts them
together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DataCollatorWithPadding, default_data_collator

from ..analysis import (
    aurc,
    brier_score,
    classwise_ece,
    collect_features,
    confidence_stats,
    digits_probe_dataset,
    e_aurc,
    expected_calibration_error,
    feature_geometry,
    few_shot_probe,
    linear_probe,
    logit_norm_confidence,
    negative_log_likelihood,
    select_logit_norm_p,
)
from ..data import image_transform, text_preprocess_function
from .evaluate import batches, held_out_split, label_lookup, relabel
from .options import DataOptions

__all__ = [
    "ClassifierPass",
    "compute_metrics",
    "logged_training_terms",
    "probe_accuracy",
    "regime_and_selective_metrics",
]


def compute_metrics(logits: np.ndarray, labels: np.ndarray, features: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one run from its logits (N, K), labels (N,) and penultimate features (N, D)."""
    stats = confidence_stats(logits, labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    confidence, correct = probs.max(axis=1), logits.argmax(axis=1) == labels
    metrics = {
        "accuracy": stats["accuracy"],
        "nll": negative_log_likelihood(logits, labels),
        "ece": expected_calibration_error(logits, labels),
        "adaptive_ece": expected_calibration_error(logits, labels, adaptive=True),
        "classwise_ece": classwise_ece(logits, labels),
        "brier": brier_score(logits, labels),
        "aurc": aurc(confidence, correct),
        "e_aurc": e_aurc(confidence, correct),
        "mean_confidence": stats["mean_confidence"],
        "mean_confidence_correct": stats["mean_confidence_correct"],
        "mean_confidence_wrong": stats["mean_confidence_wrong"],
        "mean_logit_gap": stats["mean_logit_gap"],
        # > 0: over-confident, the regime in which the papers measured the effect of label smoothing.
        "confidence_minus_accuracy": stats["mean_confidence"] - stats["accuracy"],
    }
    if features is not None:
        metrics.update(feature_geometry(features, labels))
    return metrics


@dataclass
class ClassifierPass:
    """A loaded classifier and how it is run over a split: its inputs prepared as its recipe prepares them.

    Args:
        model (`PreTrainedModel`): the classifier, on `device`.
        processor: its image processor or tokenizer.
        task (`str`): `"image-classification"` or `"text-classification"`.
        data ([`DataOptions`]): the columns, sequence length and batch size.
        device (`str`): where the batches go.
    """

    model: object
    processor: object
    task: str
    data: DataOptions
    device: str

    def _inputs(self, dataset, label_column: str):
        """(dataset yielding model inputs + `labels`, collate function) for the task."""
        data = self.data
        if self.task == "image-classification":
            transform = image_transform(self.processor, data.image_column_name, label_column, augment=False)
            return dataset.with_transform(transform), default_data_collator
        preprocess = text_preprocess_function(
            self.processor,
            data.text_columns(),
            data.text_pair_column_name,
            label_column,
            data.max_seq_length,
            delimiter=data.text_column_delimiter,
        )
        encoded = dataset.map(preprocess, batched=True, remove_columns=dataset.column_names)
        return encoded, DataCollatorWithPadding(self.processor)

    @torch.inference_mode()
    def features(self, dataset, label_column: str) -> dict[str, np.ndarray]:
        """Features, logits and labels of the dataset's examples, its labels already the model's ids."""
        prepared, collate = self._inputs(dataset, label_column)
        return collect_features(self.model, batches(prepared, self.data.batch_size, collate), device=self.device)

    def collect(self, dataset) -> dict[str, np.ndarray]:
        """[`features`] of a split of the evaluation data, its labels first mapped to the model's ids."""
        label_column = self.data.label_column_name
        label_map = label_lookup(dataset, label_column, self.model.config)
        if label_map is not None:
            dataset = relabel(dataset, label_column, label_map)
        return self.features(dataset, label_column)


def logged_training_terms(path: str) -> dict[str, float]:
    """Means over the training log of what the trainer logged per logging window, from the run's
    `trainer_state.json`: the LS decomposition (`ls_regularization`, `ls_error_amplification`) and the error
    amplification's share of the two (`train_ls_error_share`), and the fraction of training rows whose label is not
    the top-1 logit (`misclassified` -> `train_misclassified`); each only when logged (not for a Hub id, another
    loss, or a run trained before the fraction was logged)."""
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        return {}
    with open(state, encoding="utf-8") as f:
        history = json.load(f).get("log_history", [])
    terms = {}
    # Training windows only: an evaluation logs its components with an `eval_` prefix.
    for key in ("ls_regularization", "ls_error_amplification", "misclassified"):
        values = [float(entry[key]) for entry in history if key in entry]
        if values:
            terms[f"train_{key}"] = float(np.mean(values))
    if "train_ls_regularization" in terms and "train_ls_error_amplification" in terms:
        # The part of LS's term that MaxSup does not have: where it is small, the two losses train alike.
        amplification, regularization = (
            abs(terms["train_ls_error_amplification"]),
            abs(terms["train_ls_regularization"]),
        )
        terms["train_ls_error_share"] = amplification / (amplification + regularization) if amplification else 0.0
    return terms


def regime_and_selective_metrics(collect: Callable, raw, split: str, logits, labels, data: DataOptions) -> dict:
    """Training accuracy and confidence (the regime check), and the AURC with post-hoc logit normalisation, its p
    chosen on held-out data (Xia et al. 2024).

    Args:
        collect (`Callable`): `raw split -> collect_features output` for this model ([`ClassifierPass.collect`]).
        raw (`DatasetDict`): every split of the source.
        split (`str`): the evaluated split, whose `logits` and `labels` are given.
    """
    metrics = {}
    if data.train_samples and "train" in raw and split != "train":
        train = raw["train"].select(range(min(data.train_samples, len(raw["train"]))))
        stats = confidence_stats(**{k: v for k, v in collect(train).items() if k in ("logits", "labels")})
        metrics.update(train_accuracy=stats["accuracy"], train_mean_confidence=stats["mean_confidence"])
    held_out_name, held_out = held_out_split(raw, split)
    held = collect(held_out) if held_out is not None else {"logits": logits, "labels": labels}
    p, _ = select_logit_norm_p(held["logits"], held["labels"])
    metrics["logit_norm_p"] = float(p)
    metrics["aurc_logit_norm"] = aurc(logit_norm_confidence(logits, p), logits.argmax(axis=1) == labels)
    return metrics


def probe_accuracy(features_of: Callable, data: DataOptions, probe=None) -> float:
    """Accuracy of the linear probe on the model's frozen features of scikit-learn's digits: fitted on the training
    half, or with `data.probe_shots` the mean of [`~hf_maxsup.analysis.few_shot_probe`]s.

    Args:
        features_of (`Callable`): `(dataset, label column) -> collect_features output` ([`ClassifierPass.features`]).
        probe (`DatasetDict`, *optional*): the digits probe data, shared between runs (default: loaded here).
    """
    probe = probe if probe is not None else digits_probe_dataset(max_samples=data.probe_samples)
    features = {}
    for name in ("train", "test"):
        images = probe[name]
        if data.image_column_name != "image":
            images = images.rename_column("image", data.image_column_name)
        features[name] = features_of(images, "label")
    arrays = (features[name][key] for name in ("train", "test") for key in ("features", "labels"))
    if data.probe_shots:
        return few_shot_probe(*arrays, shots=data.probe_shots, draws=data.probe_draws)
    return linear_probe(*arrays)
