"""What the report tests share: evaluated runs made by hand, and the recipe arguments of a tiny training run."""

from hf_maxsup.report import RunResult


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
