"""What every task's evaluation shares: the data a run is evaluated on, the checkpoint loaded safely, the runs in turn.

[`load_source`] loads every split of the data source as the recipes do, [`evaluation_split`] picks the split to
evaluate on, [`label_lookup`] and [`relabel`] map a dataset's labels to a classifier's ids, [`load_checkpoint`] loads
a checkpoint with [`~hf_maxsup.hub.load_for_analysis`] (safetensors only, no remote code) and the processor saved
beside it, [`evaluate_all`] evaluates every run with a progress line, and [`analyze_all`] is the flow of every task's
report: the runs evaluated in turn on one device, then the report written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from datasets import ClassLabel, Value
from transformers import AutoImageProcessor, AutoTokenizer

from ..auto import task_of
from ..data import check_columns, load_task_dataset
from ..hub import load_for_analysis
from .device import resolve_device
from .options import SourceOptions
from .runs import Run, RunResult

__all__ = [
    "RECIPE_SEED",
    "analyze_all",
    "batches",
    "evaluate_all",
    "evaluation_split",
    "held_out_split",
    "label_lookup",
    "load_checkpoint",
    "load_source",
    "relabel",
]

# The recipes' default seed: that of a run whose seed is unknown, for a validation split cut from train.
RECIPE_SEED = 42


def load_source(task: str, data: SourceOptions, seed: int = RECIPE_SEED):
    """Every split of the data source (`DatasetDict`, see [`~hf_maxsup.data.load_task_dataset`]); the seed matters
    only for a validation split cut from train, which then is the one the run with that seed held out. The columns
    the task reads are checked in every split, as the recipes check them ([`~hf_maxsup.data.check_columns`])."""
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


def held_out_split(raw, split: str):
    """(name, split) on which to choose what the evaluation tunes (e.g. the logit normalisation's p): the validation
    split when the report evaluates on another one, else the test split, else `(None, None)` (then it is chosen on
    the evaluated split itself)."""
    name = next((name for name in ("validation", "test") if name in raw and name != split), None)
    return (name, raw[name]) if name else (None, None)


def label_lookup(dataset, label_column: str, config) -> dict | None:
    """Maps the dataset's labels to the model's ids, or None when they already agree. Class names (`ClassLabel`),
    string and integer labels are looked up in the model's `id2label` (integers by their string, as `encode_labels`
    names them when training)."""
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


def load_checkpoint(path: str, device: str, token=None, *, tasks: Sequence[str], covers: str):
    """(model on `device`, in evaluation mode, its processor, its task) of a checkpoint, loaded with
    [`~hf_maxsup.hub.load_for_analysis`]: safetensors only, no remote code. PEFT adapters are merged into their base
    model. The processor is the image processor saved beside an image model's weights, else its tokenizer.

    Args:
        tasks (`Sequence[str]`): the tasks the report covers, e.g. `("text2text-generation",)`.
        covers (`str`): what the report covers, in words, for the refusal of a model of another task.

    Raises:
        `ValueError`: the checkpoint's model is not one of `tasks` (before its processor is loaded).
    """
    model = load_for_analysis(path, token=token)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload().eval()
    task = task_of(type(model).__name__)
    if task not in tasks:
        raise ValueError(f"{path}: a {type(model).__name__} ({task}); the report covers {covers}.")
    processor_class = AutoImageProcessor if task == "image-classification" else AutoTokenizer
    processor = processor_class.from_pretrained(path, token=token, trust_remote_code=False)
    return model.to(device), processor, task


def evaluate_all(runs: Sequence[Run], evaluate: Callable[[Run], RunResult], log: Callable = print) -> list[RunResult]:
    """`evaluate` on each run in turn, with a progress line each."""
    if not runs:
        raise ValueError("no checkpoints to analyze.")
    results = []
    for i, run in enumerate(runs, 1):
        log(f"[hf-maxsup] analyzing {i}/{len(runs)}: {run.name}")
        results.append(evaluate(run))
    return results


def analyze_all(
    runs: Sequence[Run],
    output_dir: str,
    data: SourceOptions,
    evaluate: Callable[[Run, str, Callable], RunResult],
    data_note: Callable[[list[RunResult]], str],
    write: Callable[..., dict],
    *,
    device: str | None = None,
    log: Callable = print,
    **report_kwargs,
) -> dict:
    """Every run evaluated in turn on one device ([`evaluate_all`]), then the task's report written into `output_dir`
    with the data options in its `results.json`: the flow of every task's `analyze_*_checkpoints`.

    Args:
        runs (`Sequence[Run]`): the checkpoints, grouped by their labels.
        output_dir (`str`): the report's folder.
        data ([`SourceOptions`]): the evaluation data and options.
        evaluate (`Callable[[Run, str, Callable], RunResult]`): `(run, device, log) -> RunResult`, the task's.
        data_note (`Callable[[list[RunResult]], str]`): the report's words on what the runs were evaluated on, unless
            `report_kwargs` gives them.
        write (`Callable[..., dict]`): the task's report writer, `(results, output_dir, **report_kwargs)`.
        device (`str`, *optional*): where the models run: `"cuda"` when a GPU is available, else `"cpu"` by default.
        log (`Callable`): progress messages.
        **report_kwargs: passed to `write` (`title`, `command`, `notes`, `extra`, ...).

    Returns:
        `dict`: the content of `results.json`.
    """
    device = resolve_device(device)
    results = evaluate_all(runs, lambda run: evaluate(run, device, log), log)
    report_kwargs.setdefault("data_note", data_note(results))
    extra = {"data_options": data.to_json(), **(report_kwargs.pop("extra", None) or {})}
    return write(results, output_dir, extra=extra, **report_kwargs)
