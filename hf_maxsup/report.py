"""The side-by-side report of trained classifiers: metrics table, figures and `results.json`.

[`analyze_checkpoints`] loads each checkpoint with [`load_for_analysis`] and the processor saved beside it, runs it
over an evaluation split batch by batch ([`collect_features`]), and writes into one folder:

- `report.md`: one row per group of runs (a loss, over its seeds) with accuracy, NLL, ECE, adaptive ECE, AURC,
  d_within, R², mean confidence on errors and the digits linear probe, as mean ± standard deviation; a second table
  for the regime check (CE's confidence − accuracy and training accuracy, with a warning when CE is not over-confident
  or does not fit its training set) and the logit-normalised AURC and logged LS error amplification; the nine claims
  of the papers, each agreeing or not and beyond the seeds' spread or not; the figures; one row per run.
- `reliability_diagrams.png`, `projections.png` (penultimate features of three classes on the plane of their
  templates, Müller et al. 2019) and `risk_coverage.png`, one panel per run, groups side by side.
- `results.json`: every metric of every run, the summaries and the checks.

`hf-maxsup analyze` (see [`hf_maxsup.cli`]) calls it on existing checkpoints; `hf-maxsup compare` after training.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "TABLE_METRICS",
    "DataOptions",
    "Run",
    "analyze_checkpoints",
    "compute_metrics",
    "format_summary",
    "paper_checks",
    "summarize",
    "summarize_runs",
    "write_report",
]

logger = logging.getLogger(__name__)

# (key, column header, scale, decimals) of the Markdown table, in order.
TABLE_METRICS = (
    ("accuracy", "accuracy (%)", 100.0, 2),
    ("nll", "NLL", 1.0, 3),
    ("ece", "ECE (%)", 100.0, 2),
    ("adaptive_ece", "adaptive ECE (%)", 100.0, 2),
    ("aurc", "AURC (%)", 100.0, 2),
    ("d_within", "d_within", 1.0, 3),
    ("r2", "R²", 1.0, 3),
    ("mean_confidence_wrong", "mean confidence on errors", 1.0, 3),
    ("linear_probe_digits", "linear probe (digits) (%)", 100.0, 2),
)

# The second table: the regime check and the numbers behind the three checks that the first table does not show.
REGIME_METRICS = (
    ("mean_confidence", "mean confidence", 1.0, 3),
    ("confidence_minus_accuracy", "confidence − accuracy", 1.0, 3),
    ("train_accuracy", "training accuracy (%)", 100.0, 2),
    ("aurc_logit_norm", "AURC, logit-normalised (%)", 100.0, 2),
    ("logit_norm_p", "p of the normalisation", 1.0, 1),
    ("train_ls_error_amplification", "logged LS error amplification", 1.0, 4),
)

REPORT_FILES = ("report.md", "results.json", "reliability_diagrams.png", "projections.png", "risk_coverage.png")

# What the papers report, as (claim, metric, group a, relation, group b, metric of b): "a < b" means a's metric
# should be lower; the metric of b is a's metric unless given (a claim about one group with and without a fix).
PAPER_CLAIMS = (
    ("LS lowers ECE compared with CE (Müller et al. 2019)", "ece", "ls", "<", "ce", None),
    ("LS lowers d_within (tighter classes) compared with CE (MaxSup paper)", "d_within", "ls", "<", "ce", None),
    ("MaxSup keeps d_within above LS (MaxSup paper)", "d_within", "maxsup", ">", "ls", None),
    ("MaxSup accuracy is at least LS's (MaxSup paper)", "accuracy", "maxsup", ">=", "ls", None),
    ("LS makes AURC worse than CE (Xia et al. 2024)", "aurc", "ls", ">", "ce", None),
    (
        "LS loses linear-probe transfer accuracy; MaxSup keeps it (MaxSup paper)",
        "linear_probe_digits",
        "maxsup",
        ">",
        "ls",
        None,
    ),
    ("Post-hoc logit normalisation lowers LS's AURC (Xia et al. 2024)", "aurc_logit_norm", "ls", "<", "ls", "aurc"),
    (
        "MaxSup's inter-class separability R² is at least LS's (MaxSup paper: CE 0.445, LS 0.461, MaxSup 0.497)",
        "r2",
        "maxsup",
        ">=",
        "ls",
        None,
    ),
    (
        "MaxSup is less confident than LS on misclassified examples: no error-amplification term (MaxSup paper)",
        "mean_confidence_wrong",
        "maxsup",
        "<",
        "ls",
        None,
    ),
)
# CE is taken to fit its training set from this training accuracy on (the report says "near 100 %").
FIT_ACCURACY = 0.98


@dataclass
class Run:
    """One trained model in the report.

    Args:
        path (`str`): checkpoint directory or Hub id.
        label (`str`): group it belongs to (the loss in a comparison); runs of one label are averaged.
        seed (`int`, *optional*): training seed, shown in the figures.
    """

    path: str
    label: str
    seed: int | None = None

    @property
    def name(self) -> str:
        return self.label if self.seed is None else f"{self.label} (seed {self.seed})"


@dataclass
class DataOptions:
    """Which data the checkpoints are evaluated on (default: the embedded data of their task) and how much of it."""

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    test_file: str | None = None
    validation_file: str | None = None
    train_file: str | None = None
    train_dir: str | None = None
    validation_dir: str | None = None
    split: str | None = None  # default: "test" if the source has one, else "validation"
    image_column_name: str = "image"
    label_column_name: str = "label"
    text_column_name: str = "text"
    text_pair_column_name: str | None = None
    max_seq_length: int = 128
    validation_split_percentage: int = 10
    cache_dir: str | None = None
    token: str | None = None
    max_samples: int | None = None
    batch_size: int = 128
    probe: bool = True
    probe_samples: int | None = None
    train_samples: int = 2000  # training examples of the regime check (training accuracy); 0 skips it
    projection_classes: Sequence[int] = (0, 1, 2)
    extra: dict = field(default_factory=dict)


# --- numbers ---------------------------------------------------------------------------------------------------------


def compute_metrics(logits: np.ndarray, labels: np.ndarray, features: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one run from its logits (N, K), labels (N,) and penultimate features (N, D)."""
    from .analysis import (
        aurc,
        brier_score,
        classwise_ece,
        confidence_stats,
        e_aurc,
        expected_calibration_error,
        feature_geometry,
        negative_log_likelihood,
    )

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


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1) and count of the finite values; std is NaN for fewer than two."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(finite)
    return {
        "mean": float(finite.mean()) if n else float("nan"),
        "std": float(finite.std(ddof=1)) if n > 1 else float("nan"),
        "n": n,
    }


def format_summary(summary: dict[str, float], scale: float = 1.0, decimals: int = 3) -> str:
    """`"mean ± std"` scaled (e.g. 100 for %), `"mean"` alone for a single value, `"—"` for none."""
    if not summary["n"]:
        return "—"
    mean = f"{summary['mean'] * scale:.{decimals}f}"
    return mean if summary["n"] < 2 else f"{mean} ± {summary['std'] * scale:.{decimals}f}"


def summarize_runs(results: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Groups per-run results (`{"label", "metrics"}`) by label, in order of first appearance, and summarises every
    metric: `{label: {metric: {"mean", "std", "n"}}}`."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(result["label"], []).append(result["metrics"])
    summary = {}
    for label, runs in groups.items():
        keys = list(dict.fromkeys(key for metrics in runs for key in metrics))
        summary[label] = {key: summarize([metrics.get(key, float("nan")) for metrics in runs]) for key in keys}
    return summary


def paper_checks(summary: dict, claims: Sequence[tuple] = PAPER_CLAIMS) -> list[dict]:
    """Compares the group means against the claims of the papers (for the labels `ce`, `ls`, `maxsup`): by default
    the classification claims of `PAPER_CLAIMS`, or other `(claim, metric, a, relation, b, metric of b)` tuples.

    A claim *agrees* when the means are ordered as claimed; the difference is *beyond the spread* when it exceeds the
    sum of the two standard deviations over seeds (a rough guide, not a significance test), and the spread is unknown
    with a single run per group. A claim whose metrics are missing (e.g. no logit-normalised AURC) is left out.
    """
    checks = []
    for claim, metric, a, relation, b, metric_b in claims:
        metric_b = metric_b or metric
        sa, sb = summary.get(a, {}).get(metric), summary.get(b, {}).get(metric_b)
        if not (sa and sb and sa["n"] and sb["n"]):
            continue
        diff = sa["mean"] - sb["mean"]
        agrees = {"<": diff < 0, ">": diff > 0, ">=": diff >= 0}[relation]
        spread = sa["std"] + sb["std"] if sa["n"] > 1 and sb["n"] > 1 else float("nan")
        beyond = bool(abs(diff) > spread) if math.isfinite(spread) else None
        checks.append(
            {
                "claim": claim,
                "metric": metric,
                "a": a,
                "relation": relation,
                "b": b,
                "metric_b": metric_b,
                "mean_a": sa["mean"],
                "mean_b": sb["mean"],
                "std_a": sa["std"],
                "std_b": sb["std"],
                "difference": diff,
                "spread": spread,
                "agrees": bool(agrees),
                "beyond_spread": beyond,
                "note": _claim_note(summary, metric),
            }
        )
    return checks


def _claim_note(summary: dict, metric: str) -> str | None:
    """The numbers that go with a claim beyond its two means: the norm order p of the logit normalisation, the
    error-amplification term the LS runs logged during training."""
    ls = summary.get("ls", {})
    if metric == "aurc_logit_norm" and ls.get("logit_norm_p", {}).get("n"):
        return f"p = {format_summary(ls['logit_norm_p'], 1.0, 1)}, chosen per run on held-out data from 1..10"
    logged = ls.get("train_ls_error_amplification", {})
    if metric == "mean_confidence_wrong" and logged.get("n"):
        return (
            f"the LS runs logged an error-amplification term (1/K)Σ_(z_n>z_y)(z_y − z_n) of "
            f"{format_summary(logged, 1.0, 4)} per example (mean over training), which MaxSup does not have"
        )
    return None


def regime_check(summary: dict) -> dict | None:
    """Whether the CE baseline is in the papers' regime: over-confident on the evaluation split (mean top-1
    confidence above accuracy) and fitting its training set (training accuracy of at least `FIT_ACCURACY`).

    The papers' effects of label smoothing (lower ECE, tighter classes, worse AURC) are for such models: on an
    under-confident CE, a loss that lowers the confidence makes calibration worse. `None` without CE runs.

    Returns:
        `dict | None`: `confidence_minus_accuracy` and `train_accuracy` (summaries over seeds), `over_confident`,
        `beyond_spread` (the gap exceeds its standard deviation over seeds; `None` for one run), `fits_training_set`
        (`None` when the training accuracy was not measured), `in_regime` and a `warning` (`None` when in the regime).
    """
    ce = summary.get("ce", {})
    gap = ce.get("confidence_minus_accuracy")
    if not gap or not gap["n"]:
        return None
    train = ce.get("train_accuracy", summarize([]))
    over = gap["mean"] > 0
    beyond = bool(abs(gap["mean"]) > gap["std"]) if gap["n"] > 1 else None
    fits = bool(train["mean"] >= FIT_ACCURACY) if train["n"] else None
    problems = []
    if not over:
        problems.append(f"CE is not over-confident (mean confidence − accuracy = {gap['mean']:+.3f})")
    if fits is False:
        problems.append(f"CE does not fit its training set (training accuracy {100 * train['mean']:.1f} %)")
    warning = None
    if problems:
        warning = (
            "; ".join(problems) + ": the run is too short (or the model too small) for the papers' regime, so "
            "the claims below are not expected to hold. Train longer (more epochs) until CE's training "
            "accuracy is near 100 % and its confidence exceeds its accuracy."
        )
    return {
        "confidence_minus_accuracy": gap,
        "train_accuracy": train,
        "over_confident": bool(over),
        "beyond_spread": beyond,
        "fits_training_set": fits,
        "in_regime": not problems,
        "warning": warning,
    }


# --- data ------------------------------------------------------------------------------------------------------------


def _load_source(task: str, data: DataOptions, seed: int = 42):
    """Every split of the data source (`DatasetDict`); the seed matters only for a validation split carved out of
    train."""
    from .data import load_task_dataset

    source = {}
    if task == "image-classification":
        source = {"train_dir": data.train_dir, "validation_dir": data.validation_dir}
    return load_task_dataset(
        task,
        dataset_name=data.dataset_name,
        dataset_config_name=data.dataset_config_name,
        train_file=data.train_file,
        validation_file=data.validation_file,
        test_file=data.test_file,
        cache_dir=data.cache_dir,
        token=data.token,
        validation_split_percentage=data.validation_split_percentage,
        seed=seed,
        **source,
    )


def _eval_split(raw, data: DataOptions):
    """(name, split) to evaluate on: `data.split`, else the source's `test` split, else its `validation` split."""
    split = data.split or next((name for name in ("test", "validation") if name in raw), None)
    if split not in raw:
        raise ValueError(
            f"the data has no {split or 'test or validation'} split (it has {', '.join(raw)}); pass "
            "--split, or --test_file with held-out examples."
        )
    evaluation = raw[split]
    if data.max_samples is not None:
        evaluation = evaluation.select(range(min(data.max_samples, len(evaluation))))
    return split, evaluation


def _held_out_split(raw, split: str):
    """(name, split) on which to choose the logit normalisation's p: the validation split when the report evaluates
    on another one, else the test split, else None (then p is chosen on the evaluated split itself)."""
    name = next((name for name in ("validation", "test") if name in raw and name != split), None)
    return (name, raw[name]) if name else (None, None)


def _label_lookup(dataset, label_column: str, config) -> dict | None:
    """Maps the dataset's labels to the model's ids, or None when they already agree. Class names (`ClassLabel`),
    string and integer labels are looked up in the model's `id2label` (integers by their string, as `encode_labels`
    names them when training)."""
    from datasets import ClassLabel

    if label_column not in dataset.column_names:
        raise ValueError(
            f"label column {label_column!r} not found; available columns: "
            f"{', '.join(dataset.column_names)}. Pass --label_column_name."
        )
    model_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    label2id = {name: i for i, name in enumerate(model_names)}
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        if names == model_names[: len(names)] or all(name.startswith("LABEL_") for name in model_names):
            return None
        missing = [name for name in names if name not in label2id]
        if missing:
            raise ValueError(f"the data's classes {missing} are not classes of the model ({', '.join(model_names)}).")
        return {i: label2id[name] for i, name in enumerate(names)}
    values = sorted(dataset.unique(label_column), key=lambda value: (isinstance(value, str), value))
    if all(str(value) in label2id for value in values):
        if all(isinstance(value, (int, np.integer)) and label2id[str(value)] == value for value in values):
            return None
        return {value: label2id[str(value)] for value in values}
    if all(isinstance(value, (int, np.integer)) and 0 <= value < config.num_labels for value in values):
        return None
    raise ValueError(
        f"labels {values[:10]} of column {label_column!r} do not match the model's classes ({', '.join(model_names)})."
    )


def _relabel(dataset, label_column: str, label_map: dict):
    """The dataset with its label column replaced by the model's ids (only that column is read and rewritten)."""
    from datasets import Value

    features = dataset.features.copy()
    features[label_column] = Value("int64")
    return dataset.map(
        lambda labels: {label_column: [label_map[label] for label in labels]},
        input_columns=[label_column],
        batched=True,
        features=features,
    )


def _batches(dataset, batch_size: int, collate: Callable):
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        yield collate([dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)])


def _prepare(task: str, dataset, processor, data: DataOptions, label_column: str):
    """Returns (dataset yielding model inputs + `labels`, collate function) for the task."""
    from transformers import DataCollatorWithPadding, default_data_collator

    if task == "image-classification":
        from .data import image_transform

        if data.image_column_name not in dataset.column_names:
            raise ValueError(
                f"image column {data.image_column_name!r} not found; available columns: "
                f"{', '.join(dataset.column_names)}. Pass --image_column_name."
            )
        transform = image_transform(processor, data.image_column_name, label_column, augment=False)
        return dataset.with_transform(transform), default_data_collator
    if task == "text-classification":
        from .data import text_preprocess_function

        for column in (data.text_column_name, data.text_pair_column_name):
            if column is not None and column not in dataset.column_names:
                raise ValueError(
                    f"text column {column!r} not found; available columns: "
                    f"{', '.join(dataset.column_names)}. Pass --text_column_name."
                )
        encoded = dataset.map(
            text_preprocess_function(
                processor, data.text_column_name, data.text_pair_column_name, label_column, data.max_seq_length
            ),
            batched=True,
            remove_columns=dataset.column_names,
        )
        return encoded, DataCollatorWithPadding(processor)
    raise ValueError(f"cannot analyze a {task} model: the report covers image and text classification.")


def _load(path: str, token=None):
    """(model, processor, task) of a checkpoint; PEFT adapters are merged into their base model."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from .hub import load_for_analysis, task_of

    model = load_for_analysis(path, token=token)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload().eval()
    task = task_of(type(model).__name__)
    if task == "image-classification":
        processor = AutoImageProcessor.from_pretrained(path, token=token)
    elif task == "text-classification":
        processor = AutoTokenizer.from_pretrained(path, token=token)
    else:
        raise ValueError(f"{path}: a {type(model).__name__} ({task}); the report covers image and text classifiers.")
    return model, processor, task


def _collect(model, task, dataset, processor, data, label_column="label"):
    from .analysis import collect_features

    prepared, collate = _prepare(task, dataset, processor, data, label_column)
    return collect_features(model, _batches(prepared, data.batch_size, collate), device="cpu")


def _logged_ls_terms(path: str) -> dict[str, float]:
    """Mean over the training log of the LS decomposition the trainer logged (`ls_regularization`,
    `ls_error_amplification`, per logging window), from the run's `trainer_state.json`; empty when absent (a Hub id,
    another loss)."""
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        return {}
    with open(state, encoding="utf-8") as f:
        history = json.load(f).get("log_history", [])
    terms = {}
    for key in ("ls_regularization", "ls_error_amplification"):
        values = [float(entry[key]) for entry in history if key in entry]
        if values:
            terms[f"train_{key}"] = float(np.mean(values))
    return terms


def _regime_and_selective_metrics(collect: Callable, raw, split: str, logits, labels, data: DataOptions) -> dict:
    """Training accuracy and confidence (the regime check), and the AURC with post-hoc logit normalisation, its p
    chosen on held-out data (Xia et al. 2024).

    Args:
        collect (`Callable`): `raw split -> collect_features output` for this model.
        raw (`DatasetDict`): every split of the source.
        split (`str`): the evaluated split, whose `logits` and `labels` are given.
    """
    from .analysis import aurc, confidence_stats, logit_norm_confidence, select_logit_norm_p

    metrics = {}
    if data.train_samples and "train" in raw and split != "train":
        train = raw["train"].select(range(min(data.train_samples, len(raw["train"]))))
        stats = confidence_stats(**{k: v for k, v in collect(train).items() if k in ("logits", "labels")})
        metrics.update(train_accuracy=stats["accuracy"], train_mean_confidence=stats["mean_confidence"])
    held_out_name, held_out = _held_out_split(raw, split)
    held = collect(held_out) if held_out is not None else {"logits": logits, "labels": labels}
    p, _ = select_logit_norm_p(held["logits"], held["labels"])
    metrics["logit_norm_p"] = float(p)
    metrics["aurc_logit_norm"] = aurc(logit_norm_confidence(logits, p), logits.argmax(axis=1) == labels)
    return metrics


def analyze_run(
    run: Run, data: DataOptions, source: Callable | None = None, probe_data=None, log: Callable = print
) -> dict:
    """Evaluates one checkpoint: metrics, and the arrays the figures need.

    Args:
        run ([`Run`]): the checkpoint.
        data ([`DataOptions`]): evaluation data and options.
        source (`Callable[[str, int], DatasetDict]`, *optional*): `(task, seed) -> every split of the data`, to share
            the loaded data between runs; defaults to loading it.
        probe_data (`DatasetDict`, *optional*): the digits probe data, shared between runs.
        log (`Callable`): progress messages.

    Returns:
        `dict` with `label`, `seed`, `path`, `split`, `num_examples`, `metrics` and the arrays `logits`, `labels`,
        `features`, `class_weights`, `class_names` (not JSON-serialisable: dropped from `results.json`).
    """
    import torch

    from .analysis.features import find_feature_layer
    from .analysis.transfer import digits_probe_dataset, linear_probe

    model, processor, task = _load(run.path, data.token)
    seed = 42 if run.seed is None else run.seed  # the recipe's default seed
    splits = (source or (lambda task, seed: _load_source(task, data, seed)))(task, seed)
    split, raw = _eval_split(splits, data)
    log(f"  evaluating {run.path} on the {split} split ({len(raw)} examples)")

    @torch.inference_mode()
    def collect(dataset, label_column=data.label_column_name):
        label_map = _label_lookup(dataset, label_column, model.config)
        if label_map is not None:
            dataset = _relabel(dataset, label_column, label_map)
        return _collect(model, task, dataset, processor, data, label_column)

    collected = collect(raw)
    metrics = compute_metrics(collected["logits"], collected["labels"], collected["features"])
    metrics.update(
        _regime_and_selective_metrics(collect, splits, split, collected["logits"], collected["labels"], data)
    )
    metrics.update(_logged_ls_terms(run.path) if os.path.isdir(run.path) else {})
    metrics["linear_probe_digits"] = float("nan")
    if data.probe and task == "image-classification":
        probe = probe_data if probe_data is not None else digits_probe_dataset(max_samples=data.probe_samples)
        features = {}
        for name in ("train", "test"):
            probe_split = (
                probe[name].rename_column("image", data.image_column_name)
                if data.image_column_name != "image"
                else probe[name]
            )
            with torch.inference_mode():
                features[name] = _collect(model, task, probe_split, processor, data)
        metrics["linear_probe_digits"] = linear_probe(
            features["train"]["features"],
            features["train"]["labels"],
            features["test"]["features"],
            features["test"]["labels"],
        )
    weights = find_feature_layer(model, None).weight.detach().float().cpu().numpy()
    names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    return {
        "label": run.label,
        "seed": run.seed,
        "path": run.path,
        "task": task,
        "split": split,
        "num_examples": len(raw),
        "metrics": metrics,
        "logits": collected["logits"],
        "labels": collected["labels"],
        "features": collected["features"],
        "class_weights": weights,
        "class_names": names,
    }


# --- figures ---------------------------------------------------------------------------------------------------------


def _grid(results: Sequence[dict], panel_size=(4.2, 3.8)):
    """A figure with one column per label and one row per run of that label, and the axes of each result."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(result["label"] for result in results))
    rows = max(sum(result["label"] == label for result in results) for label in labels)
    fig = Figure(figsize=(panel_size[0] * len(labels), panel_size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(labels), squeeze=False)
    used, placed = set(), []
    counts = dict.fromkeys(labels, 0)
    for result in results:
        column, row = labels.index(result["label"]), counts[result["label"]]
        counts[result["label"]] += 1
        placed.append(axes[row][column])
        used.add((row, column))
    for row in range(rows):
        for column in range(len(labels)):
            if (row, column) not in used:
                axes[row][column].set_axis_off()
    return fig, placed


def _title(result: dict) -> str:
    return result["label"] if result["seed"] is None else f"{result['label']} (seed {result['seed']})"


def save_figures(results: Sequence[dict], output_dir: str, projection_classes: Sequence[int] = (0, 1, 2)) -> dict:
    """Writes the reliability diagrams, the projections and the risk-coverage curves; returns {figure: file name}."""
    from .analysis import (
        penultimate_projection,
        projection_plot,
        reliability_diagram,
        risk_coverage_curve,
        risk_coverage_plot,
    )

    written = {}
    fig, axes = _grid(results)
    for result, ax in zip(results, axes, strict=True):
        reliability_diagram(result["logits"], result["labels"], title=_title(result), ax=ax)
    fig.savefig(os.path.join(output_dir, "reliability_diagrams.png"), dpi=90)
    written["reliability"] = "reliability_diagrams.png"

    classes = [int(c) for c in projection_classes]
    if all(len(result["class_names"]) > max(classes) for result in results) and len(set(classes)) == 3:
        fig, axes = _grid(results)
        for result, ax in zip(results, axes, strict=True):
            coords, labels = penultimate_projection(
                result["features"], result["labels"], result["class_weights"], classes
            )
            projection_plot(
                coords, labels, class_names=dict(enumerate(result["class_names"])), title=_title(result), ax=ax
            )
        fig.savefig(os.path.join(output_dir, "projections.png"), dpi=90)
        written["projections"] = "projections.png"
    else:
        logger.warning(f"no projection plot: classes {classes} are not 3 distinct classes of every model.")

    curves = {}
    for result in results:
        correct = result["logits"].argmax(axis=1) == result["labels"]
        shifted = result["logits"] - result["logits"].max(axis=1, keepdims=True)
        confidence = 1.0 / np.exp(shifted).sum(axis=1)  # the top-1 softmax probability
        curves[_title(result)] = risk_coverage_curve(confidence, correct)
    fig = risk_coverage_plot(curves, title="Risk-coverage (softmax confidence)")
    fig.set_size_inches(6.5, 5.0)
    fig.savefig(os.path.join(output_dir, "risk_coverage.png"), dpi=90)
    written["risk_coverage"] = "risk_coverage.png"
    return written


# --- writing ---------------------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def check_line(check: dict, columns: Sequence[tuple] = (*TABLE_METRICS, *REGIME_METRICS)) -> str:
    """A claim as a Markdown list item: both means ± std (scaled as in `columns`), agrees or not, the spread."""
    scale, decimals = next(((s, d) for key, _, s, d in columns if key == check["metric"]), (1.0, 3))

    def value(mean, std):
        text = f"{mean * scale:.{decimals}f}"
        return text if not math.isfinite(std) else f"{text} ± {std * scale:.{decimals}f}"

    verdict = "agrees" if check["agrees"] else "**disagrees**"
    if check["beyond_spread"] is None:
        spread = "one run per loss: spread unknown"
    else:
        spread = (
            "difference beyond the seeds' spread" if check["beyond_spread"] else "difference within the seeds' spread"
        )
    metrics = check["metric"] if check["metric_b"] == check["metric"] else f"{check['metric']} vs {check['metric_b']}"
    note = f" ({check['note']})" if check.get("note") else ""
    return (
        f"- {check['claim']}: {check['a']} {value(check['mean_a'], check['std_a'])} vs {check['b']} "
        f"{value(check['mean_b'], check['std_b'])} ({metrics}) — {verdict}; {spread}{note}."
    )


def regime_lines(summary: dict, regime: dict | None) -> list[str]:
    """The regime check in words: CE's confidence against its accuracy and its training accuracy, and a warning when
    the run is outside the papers' regime."""
    if regime is None:
        return []
    ce, gap, train = summary["ce"], regime["confidence_minus_accuracy"], regime["train_accuracy"]
    others = ", ".join(
        f"{label} {100 * metrics['mean_confidence']['mean']:.1f} %"
        for label, metrics in summary.items()
        if label != "ce" and metrics.get("mean_confidence", {}).get("n")
    )
    spread = {
        None: "one run: spread unknown",
        True: "beyond its spread over seeds",
        False: "within its spread over seeds",
    }[regime["beyond_spread"]]
    text = (
        f"CE's mean top-1 confidence is {100 * ce['mean_confidence']['mean']:.1f} % for an accuracy of "
        f"{100 * ce['accuracy']['mean']:.1f} % (confidence − accuracy {format_summary(gap, 1.0, 3)}, {spread})"
        + (f"; mean confidence of {others}" if others else "")
        + (f". CE's training accuracy: {format_summary(train, 100.0, 2)} %" if train["n"] else "")
        + "."
    )
    if regime["in_regime"]:
        text += (
            " CE is over-confident and fits its training set: the regime in which the papers measured their "
            "effects, where label smoothing improves calibration by lowering the confidence."
        )
        return ["## Regime check", "", text, ""]
    return ["## Regime check", "", text, "", f"> **Warning**: {regime['warning']}", ""]


def training_time_line(paths: Sequence[str]) -> str | None:
    """How long the runs trained in all: the sum of the `train_runtime` the recipe saved in each run's
    `train_results.json` (None when a run has none, e.g. a Hub id), which a resumed or re-run comparison keeps."""
    seconds = []
    for path in paths:
        file = os.path.join(path, "train_results.json")
        if not os.path.isfile(file):
            return None
        with open(file, encoding="utf-8") as f:
            seconds.append(float(json.load(f).get("train_runtime", float("nan"))))
    if not seconds or not all(math.isfinite(s) for s in seconds):
        return None
    return (
        f"Training time: {sum(seconds) / 60:.1f} min for the {len(seconds)} runs (sum of their `train_runtime`; "
        f"{min(seconds) / 60:.1f}–{max(seconds) / 60:.1f} min each)."
    )


def summary_table(summary: dict, first: str, columns: Sequence[tuple]) -> str:
    """One row per group: its number of runs and the mean ± std of each (key, header, scale, decimals) column."""
    rows = [
        [
            label,
            str(max(s["n"] for s in metrics.values())),
            *(format_summary(metrics.get(key, summarize([])), scale, decimals) for key, _, scale, decimals in columns),
        ]
        for label, metrics in summary.items()
    ]
    return markdown_table([first, "runs", *(name for _, name, _, _ in columns)], rows)


def json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_report(
    results: Sequence[dict],
    output_dir: str,
    *,
    title: str = "CE / LS / MaxSup side by side",
    command: str | None = None,
    data_note: str | None = None,
    notes: Sequence[str] = (),
    projection_classes: Sequence[int] = (0, 1, 2),
    extra: dict | None = None,
) -> dict:
    """Writes `report.md`, `results.json` and the figures of analysed runs (as returned by [`analyze_run`]).

    Returns:
        `dict`: the content of `results.json`.
    """
    os.makedirs(output_dir, exist_ok=True)
    summary = summarize_runs(results)
    checks = paper_checks(summary)
    regime = regime_check(summary)
    figures = save_figures(results, output_dir, projection_classes)

    first = "loss" if set(summary) <= {"ce", "ls", "maxsup"} else "model"
    header = [first, "runs", *(name for _, name, _, _ in TABLE_METRICS)]
    per_run = [
        [
            _title(result),
            f"`{result['path']}`",
            *(
                format_summary(summarize([result["metrics"].get(key, float("nan"))]), scale, decimals)
                for key, _, scale, decimals in TABLE_METRICS
            ),
        ]
        for result in results
    ]
    several = any(max(s["n"] for s in metrics.values()) > 1 for metrics in summary.values())
    lines = [f"# {title}", ""]
    if command:
        lines += ["```", command, "```", ""]
    if data_note:
        lines += [data_note, ""]
    lines += [
        (
            "Mean ± sample standard deviation (ddof=1) over the runs of each row."
            if several
            else "One run per row: no spread over seeds."
        ),
        (
            "Lower is better for NLL, ECE, AURC and the confidence on errors; d_within is the intra-class cosine "
            "distance of the normalised penultimate features, R² = 1 − d_within/d_total their inter-class "
            "separability; the linear probe is a logistic regression on the frozen penultimate features of "
            "scikit-learn's digits (8×8 upscaled to the model's input), scored on held-out digits."
        ),
        "",
        summary_table(summary, first, TABLE_METRICS),
        "",
        (
            "The regime and the numbers behind the last checks: confidence − accuracy > 0 is over-confidence; the "
            "training accuracy is measured on training examples; the logit-normalised AURC ranks by "
            "max_k (z_k − μ)/‖z − μ‖_p (Xia et al. 2024) with p chosen on held-out data; the LS error amplification is "
            "the term the LS run logged during training (mean over its logging windows)."
        ),
        "",
        summary_table(summary, first, REGIME_METRICS),
        "",
        *regime_lines(summary, regime),
    ]
    if checks:
        lines += ["## What the papers report, and what these runs show", ""]
        lines += [check_line(check) for check in checks]
        lines += [
            "",
            (
                "For scale: MaxSup paper, ResNet-50 on ImageNet: d_within / R² CE 0.331 / 0.445, LS 0.254 / "
                "0.461, MaxSup 0.300 / 0.497; linear probe on CIFAR-10 CE 81.4, LS 74.6, MaxSup 81.0. Müller "
                "et al.: ECE 0.071 → 0.035 with LS (Inception-v4, ImageNet)."
            ),
            "",
        ]
    lines += [*notes, ""] if notes else []
    time_line = training_time_line([result["path"] for result in results])
    lines += [time_line, ""] if time_line else []
    lines += [
        "## Figures",
        "",
        "Reliability diagrams (15 equal-width bins; counts on top of the bars):",
        "",
        f"![reliability diagrams]({figures['reliability']})",
        "",
    ]
    if "projections" in figures:
        classes = ", ".join(results[0]["class_names"][c] for c in projection_classes)
        lines += [
            (
                f"Penultimate features of the classes {classes} projected on the plane through their templates "
                "(Müller et al. 2019):"
            ),
            "",
            f"![projections]({figures['projections']})",
            "",
        ]
    lines += [
        "Risk-coverage curves:",
        "",
        f"![risk-coverage]({figures['risk_coverage']})",
        "",
        "## Every run",
        "",
        markdown_table(["run", "checkpoint", *header[2:]], per_run),
        "",
    ]
    Path(output_dir, "report.md").write_text("\n".join(lines), encoding="utf-8")

    content = {
        "title": title,
        "command": command,
        "data": data_note,
        **(extra or {}),
        "table_metrics": [{"key": key, "header": name} for key, name, _, _ in TABLE_METRICS],
        "runs": [
            {key: result[key] for key in ("label", "seed", "path", "task", "split", "num_examples", "metrics")}
            for result in results
        ],
        "summary": summary,
        "checks": checks,
        "regime": regime,
        "figures": figures,
    }
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(content), f, indent=2)
    return content


def analyze_checkpoints(
    runs: Sequence[Run], output_dir: str, data: DataOptions | None = None, *, log: Callable = print, **report_kwargs
) -> dict:
    """Evaluates every run on the same data and writes the report (see the module docstring).

    Returns:
        `dict`: the content of `results.json`.
    """
    from .analysis.transfer import digits_probe_dataset

    data = data or DataOptions()
    if not runs:
        raise ValueError("no checkpoints to analyze.")
    cache = {}

    def source(task, seed):
        # Only a validation split carved out of train depends on the training seed.
        if (task, seed) not in cache:
            cache[(task, seed)] = _load_source(task, data, seed)
        return cache[(task, seed)]

    probe = digits_probe_dataset(max_samples=data.probe_samples) if data.probe else None
    results = []
    for i, run in enumerate(runs, 1):
        log(f"[hf-maxsup] analyzing {i}/{len(runs)}: {run.name}")
        results.append(analyze_run(run, data, source, probe, log))
    splits = {(r["task"], r["split"], r["num_examples"]) for r in results}
    origin = data.dataset_name or data.test_file or data.validation_file or "the embedded data of the task"
    data_note = "Evaluated on " + "; ".join(f"{origin}, {split} split ({n} examples)" for _, split, n in sorted(splits))
    if data.train_samples:
        data_note += f"; training accuracy on the first {data.train_samples} training examples"
    if data.probe:
        probe_sizes = f"{len(probe['train'])} / {len(probe['test'])}"
        data_note += f"; linear probe on scikit-learn digits ({probe_sizes} train / test images)."
    report_kwargs.setdefault("data_note", data_note)
    report_kwargs.setdefault("projection_classes", data.projection_classes)
    extra = {"data_options": {k: v for k, v in asdict(data).items() if k != "token"}}
    extra.update(report_kwargs.pop("extra", None) or {})
    return write_report(results, output_dir, extra=extra, **report_kwargs)
