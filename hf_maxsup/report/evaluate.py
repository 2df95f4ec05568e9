"""Evaluating the checkpoints of classifiers: loading a run, collecting its logits and features, measuring it.

[`analyze_run`] loads a checkpoint with [`~hf_maxsup.hub.load_for_analysis`] and the processor saved beside it, runs
it over the evaluation split batch by batch ([`~hf_maxsup.analysis.collect_features`]) and measures it;
[`analyze_checkpoints`] does so for every run on the same data and writes the report of [`write_report`].
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from .markdown import write_report
from .options import DataOptions, SourceOptions
from .runs import Run, RunResult
from .summary import compute_metrics

__all__ = [
    "analyze_checkpoints",
    "analyze_run",
    "batches",
    "evaluate_all",
    "evaluation_split",
    "label_lookup",
    "logged_ls_terms",
    "load_source",
    "relabel",
    "resolve_device",
]

# The recipes' default seed: that of a run whose seed is unknown, for a validation split cut from train.
RECIPE_SEED = 42


def resolve_device(device: str | None = None) -> str:
    """The device to evaluate on: `device`, checked to exist here, or `"cuda"` when a GPU is available, else `"cpu"`.

    Raises:
        `ValueError`: an unknown device, or one this machine does not have (before any model is loaded).
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device}: not a device ({err}); use e.g. cpu, cuda or cuda:1.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s); use --device cpu.")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: the report runs on cpu, cuda or mps.")
    return str(parsed)


# --- data ------------------------------------------------------------------------------------------------------------


def load_source(task: str, data: SourceOptions, seed: int = RECIPE_SEED):
    """Every split of the data source (`DatasetDict`, see [`~hf_maxsup.data.load_task_dataset`]); the seed matters
    only for a validation split cut from train, which then is the one the run with that seed held out. The columns
    the task reads are checked in every split, as the recipes check them ([`~hf_maxsup.data.check_columns`])."""
    from ..data import check_columns, load_task_dataset

    folders = data.task_image_folders(task)
    raw = load_task_dataset(task, data, image_folders=folders, cache_dir=data.cache_dir, token=data.token, seed=seed)
    check_columns(raw, data.task_columns(task))
    return raw


def evaluation_split(raw, data: SourceOptions):
    """(name, split) to evaluate on: `data.split`, else the source's `test` split, else its `validation` split; its
    first `data.max_samples` examples."""
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


def label_lookup(dataset, label_column: str, config) -> dict | None:
    """Maps the dataset's labels to the model's ids, or None when they already agree. Class names (`ClassLabel`),
    string and integer labels are looked up in the model's `id2label` (integers by their string, as `encode_labels`
    names them when training)."""
    from datasets import ClassLabel

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


def relabel(dataset, label_column: str, label_map: dict):
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


def batches(dataset, batch_size: int, collate: Callable):
    """The dataset's rows in batches of `batch_size`, each collated."""
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        yield collate([dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)])


def _prepare(task: str, dataset, processor, data: DataOptions, label_column: str):
    """Returns (dataset yielding model inputs + `labels`, collate function) for the task."""
    from transformers import DataCollatorWithPadding, default_data_collator

    if task == "image-classification":
        from ..data import image_transform

        transform = image_transform(processor, data.image_column_name, label_column, augment=False)
        return dataset.with_transform(transform), default_data_collator
    from ..data import text_preprocess_function

    encoded = dataset.map(
        text_preprocess_function(
            processor, data.text_column_name, data.text_pair_column_name, label_column, data.max_seq_length
        ),
        batched=True,
        remove_columns=dataset.column_names,
    )
    return encoded, DataCollatorWithPadding(processor)


# --- one run ---------------------------------------------------------------------------------------------------------


def _load(path: str, device: str, token=None):
    """(model on `device`, processor, task) of a checkpoint; PEFT adapters are merged into their base model."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from ..auto import task_of
    from ..hub import load_for_analysis

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
    return model.to(device), processor, task


def logged_ls_terms(path: str) -> dict[str, float]:
    """Mean over the training log of the LS decomposition the trainer logged (`ls_regularization`,
    `ls_error_amplification`, per logging window), from the run's `trainer_state.json`, and the error amplification's
    share of the two (`train_ls_error_share`); empty when absent (a Hub id, another loss)."""
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
    if len(terms) == 2:
        # The part of LS's term that MaxSup does not have: where it is small, the two losses train alike.
        amplification, regularization = (
            abs(terms["train_ls_error_amplification"]),
            abs(terms["train_ls_regularization"]),
        )
        terms["train_ls_error_share"] = amplification / (amplification + regularization) if amplification else 0.0
    return terms


def _regime_and_selective_metrics(collect: Callable, raw, split: str, logits, labels, data: DataOptions) -> dict:
    """Training accuracy and confidence (the regime check), and the AURC with post-hoc logit normalisation, its p
    chosen on held-out data (Xia et al. 2024).

    Args:
        collect (`Callable`): `raw split -> collect_features output` for this model.
        raw (`DatasetDict`): every split of the source.
        split (`str`): the evaluated split, whose `logits` and `labels` are given.
    """
    from ..analysis import aurc, confidence_stats, logit_norm_confidence, select_logit_norm_p

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


def _probe_accuracy(features_of: Callable, data: DataOptions, probe) -> float:
    """Accuracy of the linear probe on the model's frozen features of scikit-learn's digits."""
    from ..analysis.transfer import digits_probe_dataset, linear_probe

    probe = probe if probe is not None else digits_probe_dataset(max_samples=data.probe_samples)
    features = {}
    for name in ("train", "test"):
        images = probe[name]
        if data.image_column_name != "image":
            images = images.rename_column("image", data.image_column_name)
        features[name] = features_of(images, "label")
    return linear_probe(
        features["train"]["features"],
        features["train"]["labels"],
        features["test"]["features"],
        features["test"]["labels"],
    )


def analyze_run(
    run: Run,
    data: DataOptions,
    source: Callable | None = None,
    probe_data=None,
    log: Callable = print,
    *,
    device: str | None = None,
) -> RunResult:
    """Evaluates one checkpoint: metrics, and the arrays the figures need.

    Args:
        run ([`Run`]): the checkpoint.
        data ([`DataOptions`]): evaluation data and options.
        source (`Callable[[str, int], DatasetDict]`, *optional*): `(task, seed) -> every split of the data`, to share
            the loaded data between runs; defaults to loading it.
        probe_data (`DatasetDict`, *optional*): the digits probe data, shared between runs.
        log (`Callable`): progress messages.
        device (`str`, *optional*): where the model runs (default: see [`resolve_device`]).
    """
    import torch

    from ..analysis import collect_features
    from ..analysis.features import find_feature_layer

    device = resolve_device(device)
    model, processor, task = _load(run.path, device, data.token)
    source = source or (lambda task, seed: load_source(task, data, seed))
    splits = source(task, RECIPE_SEED if run.seed is None else run.seed)
    split, raw = evaluation_split(splits, data)
    log(f"  evaluating {run.path} on the {split} split ({len(raw)} examples)")

    @torch.inference_mode()
    def features_of(dataset, label_column):
        prepared, collate = _prepare(task, dataset, processor, data, label_column)
        return collect_features(model, batches(prepared, data.batch_size, collate), device=device)

    def collect(dataset):
        label_map = label_lookup(dataset, data.label_column_name, model.config)
        if label_map is not None:
            dataset = relabel(dataset, data.label_column_name, label_map)
        return features_of(dataset, data.label_column_name)

    collected = collect(raw)
    metrics = compute_metrics(collected["logits"], collected["labels"], collected["features"])
    metrics.update(
        _regime_and_selective_metrics(collect, splits, split, collected["logits"], collected["labels"], data)
    )
    metrics.update(logged_ls_terms(run.path) if os.path.isdir(run.path) else {})
    probed = data.probe and task == "image-classification"
    metrics["linear_probe_digits"] = _probe_accuracy(features_of, data, probe_data) if probed else float("nan")
    return RunResult(
        label=run.label,
        seed=run.seed,
        path=run.path,
        task=task,
        split=split,
        num_examples=len(raw),
        metrics=metrics,
        logits=collected["logits"],
        labels=collected["labels"],
        features=collected["features"],
        class_weights=find_feature_layer(model, None).weight.detach().float().cpu().numpy(),
        class_names=[str(model.config.id2label[i]) for i in range(model.config.num_labels)],
    )


# --- every run -------------------------------------------------------------------------------------------------------


def evaluate_all(runs: Sequence[Run], evaluate: Callable[[Run], RunResult], log: Callable = print) -> list[RunResult]:
    """`evaluate` on each run in turn, with a progress line each."""
    if not runs:
        raise ValueError("no checkpoints to analyze.")
    results = []
    for i, run in enumerate(runs, 1):
        log(f"[hf-maxsup] analyzing {i}/{len(runs)}: {run.name}")
        results.append(evaluate(run))
    return results


def _data_note(data: DataOptions, results: Sequence[RunResult], probe) -> str:
    """What the runs were evaluated on, in words: the source, each split and its size, the extra measurements."""
    splits = {(result.task, result.split, result.num_examples) for result in results}
    origin = data.dataset_name or data.test_file or data.validation_file or "the embedded data of the task"
    note = "Evaluated on " + "; ".join(f"{origin}, {split} split ({n} examples)" for _, split, n in sorted(splits))
    if data.train_samples:
        note += f"; training accuracy on the first {data.train_samples} training examples"
    if data.probe:
        note += (
            f"; linear probe on scikit-learn digits ({len(probe['train'])} / {len(probe['test'])} train / test images)."
        )
    return note


def analyze_checkpoints(
    runs: Sequence[Run],
    output_dir: str,
    data: DataOptions | None = None,
    *,
    device: str | None = None,
    log: Callable = print,
    **report_kwargs,
) -> dict:
    """Evaluates every run on the same data and writes the report of [`write_report`] into `output_dir`.

    Args:
        runs (`Sequence[Run]`): the checkpoints, grouped by their labels.
        output_dir (`str`): the report's folder.
        data ([`DataOptions`], *optional*): evaluation data and options (default: the task's embedded data).
        device (`str`, *optional*): where the models run: `"cuda"` when a GPU is available, else `"cpu"` by default.
        log (`Callable`): progress messages.
        **report_kwargs: passed to [`write_report`] (`title`, `command`, `notes`, `extra`, ...).

    Returns:
        `dict`: the content of `results.json`.
    """
    from ..analysis.transfer import digits_probe_dataset

    data = data or DataOptions()
    device = resolve_device(device)
    cache = {}

    def source(task, seed):
        # Only a validation split cut from train depends on the training seed.
        if (task, seed) not in cache:
            cache[(task, seed)] = load_source(task, data, seed)
        return cache[(task, seed)]

    probe = digits_probe_dataset(max_samples=data.probe_samples) if data.probe and runs else None
    results = evaluate_all(runs, lambda run: analyze_run(run, data, source, probe, log, device=device), log)
    report_kwargs.setdefault("data_note", _data_note(data, results, probe))
    report_kwargs.setdefault("projection_classes", data.projection_classes)
    extra = {"data_options": data.to_json(), **(report_kwargs.pop("extra", None) or {})}
    return write_report(results, output_dir, extra=extra, **report_kwargs)
