"""The report of classifiers: CE, LS and MaxSup side by side on image or text classification, checked against the
papers (Müller et al. 2019, Xia et al. 2024, the MaxSup paper).

[`analyze_checkpoints`] evaluates every run on the same data ([`analyze_run`]: loaded with
[`~hf_maxsup.hub.load_for_analysis`], measured by [`~hf_maxsup.report.measures`]) and writes `report.md`,
`results.json` and the figures ([`write_report`]); [`analyze_paths`] is `hf-maxsup analyze`: the same for
checkpoints given by path or Hub id. A new claim of a paper is one [`~hf_maxsup.report.stats.Claim`] in
[`PAPER_CLAIMS`] (its metric measured in [`~hf_maxsup.report.measures.compute_metrics`], shown in a column of
[`TABLE_METRICS`] or [`REGIME_METRICS`]).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

from ..analysis import digits_probe_dataset, find_feature_layer
from .claims import PAPER_CLAIMS, PAPERS_SCALE, maxsup_ls_note
from .device import resolve_device
from .evaluate import RECIPE_SEED, analyze_all, evaluation_split, load_checkpoint, load_source
from .figures import save_figures
from .markdown import Column, claims_lines, percent, regime_lines, side_by_side, summary_table, write_files
from .measures import (
    ClassifierPass,
    compute_metrics,
    logged_training_terms,
    probe_accuracy,
    regime_and_selective_metrics,
)
from .options import DataOptions
from .runs import Run, RunResult, checkpoint_runs

__all__ = [
    "ACCURACY",
    "CONFIDENCE_GAP",
    "ECE",
    "NLL",
    "REGIME_METRICS",
    "REPORT_FILES",
    "TABLE_METRICS",
    "analyze_checkpoints",
    "analyze_paths",
    "analyze_run",
    "write_report",
]

REPORT_FILES = ("report.md", "results.json", "reliability_diagrams.png", "projections.png", "risk_coverage.png")

ACCURACY = percent("accuracy", "accuracy")
NLL = Column("nll", "NLL")
ECE = percent("ece", "ECE")
CONFIDENCE_GAP = Column("confidence_minus_accuracy", "confidence − accuracy")
# The first table of the classification report, in order.
TABLE_METRICS = (
    ACCURACY,
    NLL,
    ECE,
    percent("adaptive_ece", "adaptive ECE"),
    percent("aurc", "AURC"),
    Column("d_within", "d_within"),
    Column("r2", "R²"),
    Column("mean_confidence_wrong", "mean confidence on errors"),
    percent("linear_probe_digits", "linear probe (digits)"),
)
# The second table: the regime check and the numbers behind the three checks that the first table does not show.
REGIME_METRICS = (
    Column("mean_confidence", "mean confidence"),
    CONFIDENCE_GAP,
    percent("train_accuracy", "training accuracy"),
    percent("aurc_logit_norm", "AURC, logit-normalised"),
    Column("logit_norm_p", "p of the normalisation", decimals=1),
    Column("train_ls_error_amplification", "logged LS error amplification", decimals=4),
    percent("train_ls_error_share", "its share of LS's logged term"),
    percent("train_misclassified", "misclassified training rows, mean over training"),
)


# --- evaluating ------------------------------------------------------------------------------------------------------


def _run_metrics(run: Run, classifier: ClassifierPass, splits, split: str, collected: dict, probe_data) -> dict:
    """Every metric of one run: those of its arrays, the regime and selective ones, the logged LS terms, the probe."""
    data = classifier.data
    metrics = compute_metrics(collected["logits"], collected["labels"], collected["features"])
    metrics.update(
        regime_and_selective_metrics(classifier.collect, splits, split, collected["logits"], collected["labels"], data)
    )
    metrics.update(logged_training_terms(run.path) if os.path.isdir(run.path) else {})
    probed = data.probe and classifier.task == "image-classification"
    metrics["linear_probe_digits"] = probe_accuracy(classifier.features, data, probe_data) if probed else float("nan")
    return metrics


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
    device = resolve_device(device)
    model, processor, task = load_checkpoint(
        run.path,
        device,
        data.token,
        tasks=("image-classification", "text-classification"),
        covers="image and text classifiers",
    )
    source = source or (lambda task, seed: load_source(task, data, seed))
    splits = source(task, RECIPE_SEED if run.seed is None else run.seed)
    split, raw = evaluation_split(splits, data)
    log(f"  evaluating {run.path} on the {split} split ({len(raw)} examples)")
    classifier = ClassifierPass(model, processor, task, data, device)
    collected = classifier.collect(raw)
    return RunResult(
        label=run.label,
        seed=run.seed,
        path=run.path,
        task=task,
        split=split,
        num_examples=len(raw),
        metrics=_run_metrics(run, classifier, splits, split, collected, probe_data),
        logits=collected["logits"],
        labels=collected["labels"],
        features=collected["features"],
        class_weights=find_feature_layer(model, None).weight.detach().float().cpu().numpy(),
        class_names=[str(model.config.id2label[i]) for i in range(model.config.num_labels)],
    )


def _data_note(data: DataOptions, results: Sequence[RunResult], probe) -> str:
    """What the runs were evaluated on, in words: the source, each split and its size, the extra measurements."""
    splits = {(result.task, result.split, result.num_examples) for result in results}
    origin = data.dataset_name or data.test_file or data.validation_file or "the embedded data of the task"
    note = "Evaluated on " + "; ".join(f"{origin}, {split} split ({n} examples)" for _, split, n in sorted(splits))
    if data.train_samples:
        note += f"; training accuracy on the first {data.train_samples} training examples"
    if data.probe:
        note += (
            f"; linear probe on scikit-learn digits ({len(probe['train'])} / {len(probe['test'])} train / test images"
        )
        shots = (
            f", fitted on {data.probe_shots} per class, mean over {data.probe_draws} draws" if data.probe_shots else ""
        )
        note += f"{shots})."
    return note


def analyze_checkpoints(runs: Sequence[Run], output_dir: str, data: DataOptions | None = None, **kwargs) -> dict:
    """Evaluates every run on the same data and writes the report of [`write_report`] into `output_dir`.

    Args:
        runs (`Sequence[Run]`): the checkpoints, grouped by their labels.
        output_dir (`str`): the report's folder.
        data ([`DataOptions`], *optional*): evaluation data and options (default: the task's embedded data).
        **kwargs: `device` and `log`, as [`~hf_maxsup.report.evaluate.analyze_all`] takes them, and the keywords of
            [`write_report`] (`title`, `command`, `notes`, `extra`, ...).

    Returns:
        `dict`: the content of `results.json`.
    """
    data = data or DataOptions()
    # Loaded once per task and seed: only a validation split cut from train depends on the training seed.
    source = functools.cache(lambda task, seed: load_source(task, data, seed))
    probe = digits_probe_dataset(max_samples=data.probe_samples) if data.probe and runs else None
    kwargs.setdefault("projection_classes", data.projection_classes)
    return analyze_all(
        runs,
        output_dir,
        data,
        lambda run, device, log: analyze_run(run, data, source, probe, log, device=device),
        lambda results: _data_note(data, results, probe),
        write_report,
        **kwargs,
    )


def analyze_paths(
    paths: Sequence[str],
    output_dir: str,
    data: DataOptions | None = None,
    *,
    labels: Sequence[str] | None = None,
    **kwargs,
) -> dict:
    """`hf-maxsup analyze`: the report of checkpoints given by path or Hub id, each checked before any is loaded and
    labelled as [`~hf_maxsup.report.runs.checkpoint_runs`] says (`labels`, else the loss the run recorded).

    Args:
        paths (`Sequence[str]`): run output folders, `checkpoint-*` folders or Hub ids.
        output_dir (`str`), data ([`DataOptions`], *optional*): as for [`analyze_checkpoints`].
        labels (`Sequence[str]`, *optional*): a group name per path.
        **kwargs: passed to [`analyze_checkpoints`] (`device`, `log`, `title`, `command`, ...).

    Returns:
        `dict`: the content of `results.json`.
    """
    return analyze_checkpoints(checkpoint_runs(paths, labels), output_dir, data, **kwargs)


# --- writing ---------------------------------------------------------------------------------------------------------


# What each table says of its columns, each clause printed only when its column was measured.
TABLE_WORDS = {
    "accuracy": "Lower is better for NLL, ECE, AURC and the confidence on errors",
    "d_within": "d_within is the intra-class cosine distance of the normalised penultimate features, R² = 1 − "
    "d_within/d_total their inter-class separability",
    "linear_probe_digits": "the linear probe is a logistic regression on the frozen penultimate features of "
    "scikit-learn's digits (8×8 upscaled to the model's input), scored on held-out digits",
}
REGIME_WORDS = {
    "confidence_minus_accuracy": "The regime and the numbers behind the last checks: confidence − accuracy > 0 is "
    "over-confidence",
    "train_accuracy": "the training accuracy is measured on training examples",
    "aurc_logit_norm": "the logit-normalised AURC ranks by max_k (z_k − μ)/‖z − μ‖_p (Xia et al. 2024) with p chosen "
    "on held-out data",
    "train_ls_error_amplification": "the LS error amplification is the term the LS runs logged during training",
    "train_misclassified": "the misclassified training rows are the fraction of training rows whose label is not the "
    "top-1 logit, as each run logged it",
}


def _words(summary: dict, clauses: dict[str, str]) -> str:
    """The clauses whose metric some group measured, as one sentence."""
    measured = [key for key in clauses if any(metrics.get(key, {}).get("n") for metrics in summary.values())]
    logged = {"train_ls_error_amplification", "train_misclassified"} & set(measured)
    ending = " (means over the logging windows)." if logged else "."
    return "; ".join(clauses[key] for key in measured) + ending if measured else ""


def _sections(summary: dict, checks: list[dict], regime: dict | None) -> list[str]:
    """The two tables of the classification report, each with the words it needs, the regime check, and the claims
    with the papers' numbers for scale."""
    first = "loss" if set(summary) <= {"ce", "ls", "maxsup"} else "model"
    lines = [
        _words(summary, TABLE_WORDS),
        "",
        summary_table(summary, first, TABLE_METRICS),
        "",
        _words(summary, REGIME_WORDS),
        "",
        summary_table(summary, first, REGIME_METRICS),
        "",
        *regime_lines(summary, regime),
    ]
    if checks:
        lines += claims_lines("the papers", checks, (*TABLE_METRICS, *REGIME_METRICS))
        note = maxsup_ls_note(summary)
        lines += [note, "", PAPERS_SCALE, ""] if note else [PAPERS_SCALE, ""]
    return lines


def _figure_lines(figures: dict, class_names: Sequence[str], projection_classes: Sequence[int]) -> list[str]:
    """The figures' section: each figure under the sentence that says what it shows."""
    lines = ["## Figures", "", "Reliability diagrams (15 equal-width bins; counts on top of the bars):", ""]
    lines += [f"![reliability diagrams]({figures['reliability']})", ""]
    if "projections" in figures:
        classes = ", ".join(class_names[c] for c in projection_classes)
        lines += [
            (
                f"Penultimate features of the classes {classes} projected on the plane through their templates "
                "(Müller et al. 2019):"
            ),
            "",
            f"![projections]({figures['projections']})",
            "",
        ]
    return [*lines, "Risk-coverage curves:", "", f"![risk-coverage]({figures['risk_coverage']})", ""]


def write_report(
    results: Sequence[RunResult],
    output_dir: str,
    *,
    title: str = "CE / LS / MaxSup side by side",
    projection_classes: Sequence[int] = (0, 1, 2),
    figures: dict | None = None,
    **settings,
) -> dict:
    """Writes `report.md`, `results.json` and the figures of analysed runs (as [`analyze_run`] returns them).

    `report.md`: one row per group of runs (a loss, over its seeds) with accuracy, NLL, ECE, adaptive ECE, AURC,
    d_within, R², mean confidence on errors and the digits linear probe, as mean ± standard deviation; a second table
    for the regime check (CE's confidence − accuracy and training accuracy, with a warning when CE is not
    over-confident or does not fit its training set) and the logit-normalised AURC and logged LS error amplification;
    the claims of the papers, each tested ([`~hf_maxsup.report.stats.paper_checks`]) with its verdict; the figures;
    one row per run.

    Args:
        title (`str`): the report's title.
        projection_classes (`Sequence[int]`): the three classes of the projection figure.
        figures (`dict`, *optional*): the figures already drawn (`{"reliability": file, ...}`), for a re-analysis of
            runs whose folders and arrays are gone; by default they are drawn.
        **settings: `command`, `data_note`, `notes`, `extra` and `training_time`, as
            [`~hf_maxsup.report.markdown.side_by_side`] takes them.

    Returns:
        `dict`: the content of `results.json`.
    """
    os.makedirs(output_dir, exist_ok=True)
    figures = figures or save_figures(results, output_dir, projection_classes)
    names = results[0].class_names
    lines, content = side_by_side(
        results,
        TABLE_METRICS,
        PAPER_CLAIMS,
        _sections,
        title=title,
        before_runs=_figure_lines(figures, names, projection_classes),
        more={"figures": figures},
        **settings,
    )
    content["projection_class_names"] = [names[c] for c in projection_classes] if names else None
    return write_files(output_dir, lines, content)
