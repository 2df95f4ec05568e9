"""The side-by-side report of trained translation models: BLEU, chrF, the references' NLL and token-level ECE.

[`analyze_translation_checkpoints`] loads each sequence-to-sequence checkpoint with its tokenizer, and on the same
evaluation split (the source's `test` split by default):

- runs the model (loaded with [`~hf_maxsup.hub.load_for_analysis`]: safetensors only, no remote code)
  teacher-forced on the references: the token-level NLL of the references, and the next-token predictions (top-1
  softmax probability against whether it is the reference token) for the token-level accuracy, mean confidence and
  ECE (15 equal-width bins, as Müller et al. 2019 measure translation calibration);
- generates translations (beam search with `num_beams`) and scores them with sacreBLEU's default BLEU and chrF;

then writes `report.md` (table of mean ± std over seeds, the regime check, the claims of Müller et al. 2019) and
`results.json` into one folder. `hf-maxsup compare` calls it when the recipe trains a translation model. A new claim
is one [`~hf_maxsup.report.stats.Claim`] in [`TRANSLATION_CLAIMS`].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import DataCollatorForSeq2Seq, EvalPrediction

from ..data import translation_preprocess_function
from ..metrics import translation_compute_metrics
from .claims import TRANSLATION_CLAIMS
from .device import resolve_device
from .evaluate import RECIPE_SEED, analyze_all, batches, evaluation_split, load_checkpoint, load_source
from .markdown import Column, claims_lines, percent, regime_lines, side_by_side, summary_table, write_files
from .options import TranslationDataOptions
from .runs import Run, RunResult

__all__ = [
    "TRANSLATION_METRICS",
    "analyze_translation_checkpoints",
    "analyze_translation_run",
    "token_calibration",
    "write_translation_report",
]

# The columns of the table, in order.
TRANSLATION_METRICS = (
    Column("bleu", "BLEU", decimals=2),
    Column("chrf", "chrF", decimals=2),
    Column("nll", "NLL of the references (per token)"),
    percent("token_ece", "token-level ECE"),
    percent("accuracy", "next-token accuracy"),
    Column("mean_confidence", "mean next-token confidence"),
)


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


def _encoded_batches(model, tokenizer, raw, data: TranslationDataOptions):
    """Padded batches of `input_ids`, `attention_mask` and `labels` (-100 on padding), as the recipe trains on."""
    encoded = raw.map(
        translation_preprocess_function(tokenizer, data, evaluation=True),
        batched=True,
        remove_columns=raw.column_names,
    )
    return batches(encoded, data.batch_size, DataCollatorForSeq2Seq(tokenizer, model=model))


def _score_batches(model, tokenizer, batches, data: TranslationDataOptions, device: str) -> dict[str, float]:
    """Teacher-forced NLL and token calibration of the references, and BLEU / chrF of the generations."""
    nll, confidence, correct, generated, references = [], [], [], [], []
    for batch in batches:
        batch = {key: value.to(device) for key, value in batch.items()}
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
                max_new_tokens=data.eval_target_length(),
            ).cpu()
        )
        references += list(labels.cpu())
    metrics = token_calibration(torch.cat(confidence).cpu().numpy(), torch.cat(correct).cpu().numpy())
    metrics["nll"] = float(torch.cat(nll).mean())
    width = max(len(ids) for ids in generated + references)

    def padded(rows):
        return np.stack([np.pad(row.numpy(), (0, width - len(row)), constant_values=-100) for row in rows])

    scores = translation_compute_metrics(tokenizer)(
        EvalPrediction(predictions=padded(generated), label_ids=padded(references))
    )
    metrics.update(bleu=float(scores["bleu"]), chrf=float(scores["chrf"]))
    return metrics


def analyze_translation_run(
    run: Run, data: TranslationDataOptions, eval_data: Callable, log: Callable = print, *, device: str | None = None
) -> RunResult:
    """Evaluates one sequence-to-sequence checkpoint (see the module docstring).

    Args:
        run ([`Run`]): the checkpoint.
        data ([`TranslationDataOptions`]): evaluation data and options.
        eval_data (`Callable[[int], tuple]`): `seed -> (split name, split)`, to share the data between runs.
        log (`Callable`): progress messages.
        device (`str`, *optional*): where the model runs (default: see [`resolve_device`]).
    """
    device = resolve_device(device)
    model, tokenizer, _ = load_checkpoint(
        run.path,
        device,
        data.token,
        tasks=("text2text-generation",),
        covers="sequence-to-sequence (translation) models",
    )
    split, raw = eval_data(RECIPE_SEED if run.seed is None else run.seed)
    log(f"  evaluating {run.path} on the {split} split ({len(raw)} pairs, beam {data.num_beams})")
    with torch.inference_mode():
        metrics = _score_batches(model, tokenizer, _encoded_batches(model, tokenizer, raw, data), data, device)
    return RunResult(
        label=run.label,
        seed=run.seed,
        path=run.path,
        task="translation",
        split=split,
        num_examples=len(raw),
        metrics=metrics,
    )


def _sections(summary: dict, checks: list[dict], regime: dict | None) -> list[str]:
    """The table of the translation report with the words it needs, the regime check and the claims."""
    lines = [
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
        lines += claims_lines("Müller et al. 2019", checks, TRANSLATION_METRICS)
    return lines


def write_translation_report(
    results: Sequence[RunResult],
    output_dir: str,
    *,
    title: str = "CE / LS / MaxSup translation side by side",
    **settings,
) -> dict:
    """Writes `report.md` and `results.json` of analysed translation runs.

    Args:
        title (`str`): the report's title.
        **settings: `command`, `data_note`, `notes`, `extra` and `training_time`, as
            [`~hf_maxsup.report.markdown.side_by_side`] takes them.

    Returns:
        `dict`: the content of `results.json`.
    """
    lines, content = side_by_side(results, TRANSLATION_METRICS, TRANSLATION_CLAIMS, _sections, title=title, **settings)
    return write_files(output_dir, lines, content)


def _data_note(data: TranslationDataOptions, results: Sequence[RunResult]) -> str:
    """What the runs were evaluated on, in words: the source, each split and its size, the languages and the beam."""
    origin = data.dataset_name or data.test_file or data.validation_file or "the embedded Bible en→fr pairs"
    splits = sorted({(result.split, result.num_examples) for result in results})
    pairs = f"{data.source_lang}→{data.target_lang}"
    note = "; ".join(f"{origin}, {split} split ({n} pairs, {pairs}), beam {data.num_beams}" for split, n in splits)
    return f"Evaluated on {note}."


def analyze_translation_checkpoints(
    runs: Sequence[Run], output_dir: str, data: TranslationDataOptions | None = None, **kwargs
) -> dict:
    """Evaluates every translation checkpoint on the same data and writes the report (see the module docstring).

    Args:
        runs (`Sequence[Run]`), output_dir (`str`): as for [`~hf_maxsup.report.classification.analyze_checkpoints`].
        data ([`TranslationDataOptions`], *optional*): evaluation data and generation (default: the embedded pairs).
        **kwargs: `device` and `log`, as [`~hf_maxsup.report.evaluate.analyze_all`] takes them, and the keywords of
            [`write_translation_report`] (`title`, `command`, `notes`, `extra`).

    Returns:
        `dict`: the content of `results.json`.
    """
    data = data or TranslationDataOptions()
    # Loaded once per seed: only a validation split cut from train depends on the training seed.
    eval_data = functools.cache(lambda seed: evaluation_split(load_source("translation", data, seed), data))
    return analyze_all(
        runs,
        output_dir,
        data,
        lambda run, device, log: analyze_translation_run(run, data, eval_data, log, device=device),
        functools.partial(_data_note, data),
        write_translation_report,
        **kwargs,
    )
