"""What the report and recipe tests share: evaluated runs made by hand (`run_result`, `classifier_result`), the
recipe arguments of a tiny training run, and the recipes themselves, run in-process as users run them (`run_recipe`)
with tiny sizes (`TINY`)."""

import os
import runpy
import sys

from hf_maxsup.report import RunResult

ROOT = os.path.join(os.path.dirname(__file__), "..")
RECIPES = {
    name: os.path.join(ROOT, "recipes", f"{name}.py")
    for name in ("image_classification", "text_classification", "translation")
}
TINY = [
    "--max_train_samples",
    "32",
    "--max_eval_samples",
    "16",
    "--max_predict_samples",
    "16",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "16",
    "--num_train_epochs",
    "1",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--use_cpu",
    "true",
]


def run_result(label: str, metrics: dict, seed: int | None = 0, **arrays) -> RunResult:
    """A run of `label` with these metrics, as `analyze_run` would return it; `arrays` are the figures' arrays."""
    return RunResult(
        label=label,
        seed=seed,
        path=f"runs/{label}-seed{seed}",
        task="image-classification",
        split="test",
        num_examples=len(arrays["labels"]) if "labels" in arrays else 0,
        metrics=metrics,
        **arrays,
    )


def classifier_result(label: str, metrics: dict, seed: int, rng, logits, labels, class_names, features=None):
    """A run of a classifier with these logits, as `analyze_run` would return it for the figures: its penultimate
    `features` (by default 4-d, drawn from `rng`) and class templates drawn from `rng`."""
    features = rng.normal(size=(len(labels), 4)) if features is None else features
    return run_result(
        label,
        metrics,
        seed,
        logits=logits,
        labels=labels,
        features=features,
        class_weights=rng.normal(size=(logits.shape[1], features.shape[1])),
        class_names=class_names,
    )


def tiny_training_args(train_samples: int, eval_samples: int) -> list[str]:
    """Recipe arguments of a run of a few optimizer steps, saved once at its end: the point is the plumbing."""
    return [
        "--max_train_samples",
        str(train_samples),
        "--max_eval_samples",
        str(eval_samples),
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "16",
        "--save_strategy",
        "epoch",
        "--disable_tqdm",
        "true",
    ]


def run_recipe(name, *args):
    old = sys.argv
    sys.argv = [RECIPES[name], *args]
    try:
        runpy.run_path(RECIPES[name], run_name="__main__")
    finally:
        sys.argv = old
