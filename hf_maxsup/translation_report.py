"""The side-by-side report of trained translation models: BLEU, chrF, the references' NLL and token-level ECE.

[`analyze_translation_checkpoints`] loads each sequence-to-sequence checkpoint with its tokenizer, and on the same
evaluation split (the source's `test` split by default):

- runs the model teacher-forced on the references: the token-level NLL of the references, and the next-token
  predictions (top-1 softmax probability against whether it is the reference token) for the token-level accuracy,
  mean confidence and ECE (15 equal-width bins, as Müller et al. 2019 measure translation calibration);
- generates translations (beam search with `num_beams`) and scores them with sacreBLEU's default BLEU and chrF;

then writes `report.md` (table of mean ± std over seeds, the regime check, the claims of Müller et al. 2019) and
`results.json` into one folder. `hf-maxsup compare` calls it when the recipe trains a translation model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .report import (
    Run,
    check_line,
    json_safe,
    markdown_table,
    paper_checks,
    regime_check,
    regime_lines,
    summarize_runs,
    summary_table,
    training_time_line,
)

__all__ = [
    "TRANSLATION_CLAIMS",
    "TRANSLATION_METRICS",
    "TranslationDataOptions",
    "analyze_translation_checkpoints",
    "token_calibration",
    "write_translation_report",
]

# (key, column header, scale, decimals) of the Markdown table, in order.
TRANSLATION_METRICS = (
    ("bleu", "BLEU", 1.0, 2),
    ("chrf", "chrF", 1.0, 2),
    ("nll", "NLL of the references (per token)", 1.0, 3),
    ("token_ece", "token-level ECE (%)", 100.0, 2),
    ("accuracy", "next-token accuracy (%)", 100.0, 2),
    ("mean_confidence", "mean next-token confidence", 1.0, 3),
)

# Müller, Kornblith, Hinton 2019 (EN-DE Transformer): BLEU improves with LS while the NLL of the references gets
# worse, and the token-level ECE drops from 0.056 to 0.019.
TRANSLATION_CLAIMS = (
    ("LS improves BLEU over CE (Müller et al. 2019)", "bleu", "ls", ">", "ce", None),
    ("LS makes the references' NLL worse than CE's (Müller et al. 2019)", "nll", "ls", ">", "ce", None),
    (
        "LS improves token-level calibration: lower ECE of the next-token predictions (Müller et al. 2019: 0.056 → "
        "0.019)",
        "token_ece",
        "ls",
        "<",
        "ce",
        None,
    ),
)


@dataclass
class TranslationDataOptions:
    """Which translation data the checkpoints are evaluated on (default: the embedded Bible en→fr test split)."""

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    split: str | None = None  # default: "test" if the source has one, else "validation"
    source_lang: str = "en"
    target_lang: str = "fr"
    translation_column_name: str = "translation"
    source_prefix: str = ""
    max_source_length: int = 128
    max_target_length: int = 128
    validation_split_percentage: int = 10
    cache_dir: str | None = None
    token: str | None = None
    max_samples: int | None = None
    batch_size: int = 32
    num_beams: int = 1


def token_calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, mean confidence and ECE of next-token predictions: Σ_b (n_b/N)·|acc_b − conf_b| over `n_bins`
    equal-width bins of the top-1 confidence (the upper edge of the last bin included).

    Args:
        confidence (`np.ndarray` of shape `(T,)`): top-1 softmax probability of each kept target position.
        correct (`np.ndarray` of shape `(T,)`): whether that top-1 token is the reference token.
    """
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1 or not len(confidence):
        raise ValueError(f"confidence {confidence.shape} and correct {correct.shape} must be the same non-empty 1-D.")
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    gaps = np.abs(
        np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=confidence, minlength=n_bins)
    )
    return {
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "token_ece": float(gaps.sum() / counts.sum()),
        "confidence_minus_accuracy": float(confidence.mean() - correct.mean()),
    }


def _eval_split(data: TranslationDataOptions, seed: int):
    from .data import load_task_dataset

    raw = load_task_dataset(
        "translation",
        dataset_name=data.dataset_name,
        dataset_config_name=data.dataset_config_name,
        train_file=data.train_file,
        validation_file=data.validation_file,
        test_file=data.test_file,
        cache_dir=data.cache_dir,
        token=data.token,
        validation_split_percentage=data.validation_split_percentage,
        seed=seed,
    )
    split = data.split or next((name for name in ("test", "validation") if name in raw), None)
    if split not in raw:
        raise ValueError(
            f"the data has no {split or 'test or validation'} split (it has {', '.join(raw)}); pass "
            "--split, or --test_file with held-out pairs."
        )
    evaluation = raw[split]
    if data.max_samples is not None:
        evaluation = evaluation.select(range(min(data.max_samples, len(evaluation))))
    return split, evaluation


def _batches(model, tokenizer, raw, data: TranslationDataOptions):
    """Padded batches of `input_ids`, `attention_mask` and `labels` (-100 on padding), as the recipe trains on."""
    from transformers import DataCollatorForSeq2Seq

    from .data import translation_preprocess_function

    encoded = raw.map(
        translation_preprocess_function(
            tokenizer,
            data.source_lang,
            data.target_lang,
            data.source_prefix,
            data.max_source_length,
            data.max_target_length,
            data.translation_column_name,
        ),
        batched=True,
        remove_columns=raw.column_names,
    )
    collate = DataCollatorForSeq2Seq(tokenizer, model=model)
    for start in range(0, len(encoded), data.batch_size):
        rows = encoded[start : start + data.batch_size]
        yield collate([dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)])


def _score_batches(model, tokenizer, batches, data: TranslationDataOptions) -> dict[str, float]:
    """Teacher-forced NLL and token calibration of the references, and BLEU / chrF of the generations."""
    import torch
    from transformers import EvalPrediction

    from .metrics import translation_compute_metrics

    nll, confidence, correct, generated, references = [], [], [], [], []
    for batch in batches:
        labels = batch["labels"]
        logits = model(**batch).logits
        keep = labels != -100
        log_probs = torch.log_softmax(logits.float(), dim=-1)[keep]
        targets = labels[keep]
        nll.append(-log_probs.gather(1, targets[:, None])[:, 0])
        top_log_prob, top = log_probs.max(dim=-1)
        confidence.append(top_log_prob.exp())
        correct.append(top == targets)
        generated += list(
            model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                num_beams=data.num_beams,
                max_new_tokens=data.max_target_length,
            )
        )
        references += list(labels)
    metrics = token_calibration(torch.cat(confidence).numpy(), torch.cat(correct).numpy())
    metrics["nll"] = float(torch.cat(nll).mean())
    width = max(len(ids) for ids in generated + references)

    def padded(rows):
        return np.stack([np.pad(row.numpy(), (0, width - len(row)), constant_values=-100) for row in rows])

    scores = translation_compute_metrics(tokenizer)(
        EvalPrediction(predictions=padded(generated), label_ids=padded(references))
    )
    metrics.update(bleu=float(scores["bleu"]), chrf=float(scores["chrf"]))
    return metrics


def analyze_translation_run(run: Run, data: TranslationDataOptions, eval_data: Callable, log: Callable = print) -> dict:
    """Evaluates one sequence-to-sequence checkpoint; returns `label`, `seed`, `path`, `split`, `num_examples` and
    `metrics` (see the module docstring). `eval_data(seed) -> (split, raw split)` shares the data between runs."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(run.path, token=data.token).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.path, token=data.token)
    split, raw = eval_data(42 if run.seed is None else run.seed)
    log(f"  evaluating {run.path} on the {split} split ({len(raw)} pairs, beam {data.num_beams})")
    with torch.inference_mode():
        metrics = _score_batches(model, tokenizer, _batches(model, tokenizer, raw, data), data)
    return {
        "label": run.label,
        "seed": run.seed,
        "path": run.path,
        "task": "translation",
        "split": split,
        "num_examples": len(raw),
        "metrics": metrics,
    }


def write_translation_report(
    results: Sequence[dict],
    output_dir: str,
    *,
    title: str = "CE / LS / MaxSup translation side by side",
    command: str | None = None,
    data_note: str | None = None,
    notes: Sequence[str] = (),
    extra: dict | None = None,
) -> dict:
    """Writes `report.md` and `results.json` of analysed translation runs; returns the content of `results.json`."""
    os.makedirs(output_dir, exist_ok=True)
    summary = summarize_runs(results)
    checks = paper_checks(summary, TRANSLATION_CLAIMS)
    regime = regime_check(summary)
    several = any(max(s["n"] for s in metrics.values()) > 1 for metrics in summary.values())
    lines = [f"# {title}", ""]
    lines += ["```", command, "```", ""] if command else []
    lines += [data_note, ""] if data_note else []
    lines += [
        (
            "Mean ± sample standard deviation (ddof=1) over the runs of each row."
            if several
            else "One run per row: no spread over seeds."
        ),
        (
            "BLEU and chrF: sacreBLEU defaults on the generations. The NLL, next-token accuracy, confidence and ECE "
            "are of the model run teacher-forced on the references (every kept target token; ECE over 15 equal-width "
            "bins of the top-1 probability). Lower is better for the NLL and the ECE."
        ),
        "",
        summary_table(summary, "loss", TRANSLATION_METRICS),
        "",
        *regime_lines(summary, regime),
    ]
    if checks:
        lines += ["## What Müller et al. 2019 report, and what these runs show", ""]
        lines += [check_line(check, TRANSLATION_METRICS) for check in checks]
        lines += [""]
    lines += [*notes, ""] if notes else []
    time_line = training_time_line([r["path"] for r in results])
    lines += [time_line, ""] if time_line else []
    per_run = [
        [
            f"{r['label']} (seed {r['seed']})",
            f"`{r['path']}`",
            *(f"{r['metrics'][key] * scale:.{decimals}f}" for key, _, scale, decimals in TRANSLATION_METRICS),
        ]
        for r in results
    ]
    header = ["run", "checkpoint", *(name for _, name, _, _ in TRANSLATION_METRICS)]
    lines += ["## Every run", "", markdown_table(header, per_run), ""]
    Path(output_dir, "report.md").write_text("\n".join(lines), encoding="utf-8")
    content = {
        "title": title,
        "command": command,
        "data": data_note,
        **(extra or {}),
        "table_metrics": [{"key": key, "header": name} for key, name, _, _ in TRANSLATION_METRICS],
        "runs": [
            {key: r[key] for key in ("label", "seed", "path", "task", "split", "num_examples", "metrics")}
            for r in results
        ],
        "summary": summary,
        "checks": checks,
        "regime": regime,
    }
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(content), f, indent=2)
    return content


def analyze_translation_checkpoints(
    runs: Sequence[Run],
    output_dir: str,
    data: TranslationDataOptions | None = None,
    *,
    log: Callable = print,
    **report_kwargs,
) -> dict:
    """Evaluates every translation checkpoint on the same data and writes the report (see the module docstring)."""
    data = data or TranslationDataOptions()
    if not runs:
        raise ValueError("no checkpoints to analyze.")
    cache = {}

    def eval_data(seed):
        # Only a validation split carved out of train depends on the training seed.
        if seed not in cache:
            cache[seed] = _eval_split(data, seed)
        return cache[seed]

    results = []
    for i, run in enumerate(runs, 1):
        log(f"[hf-maxsup] analyzing {i}/{len(runs)}: {run.name}")
        results.append(analyze_translation_run(run, data, eval_data, log))
    splits = sorted({(r["split"], r["num_examples"]) for r in results})
    origin = data.dataset_name or data.test_file or data.validation_file or "the embedded Bible en→fr pairs"
    report_kwargs.setdefault(
        "data_note",
        "Evaluated on "
        + "; ".join(
            f"{origin}, {split} split ({n} pairs, {data.source_lang}→{data.target_lang}), beam {data.num_beams}"
            for split, n in splits
        )
        + ".",
    )
    extra = {"data_options": {k: v for k, v in asdict(data).items() if k != "token"}}
    extra.update(report_kwargs.pop("extra", None) or {})
    return write_translation_report(results, output_dir, extra=extra, **report_kwargs)
