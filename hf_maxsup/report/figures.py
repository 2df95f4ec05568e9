"""The report's figures: reliability diagrams, penultimate-feature projections and risk-coverage curves.

One panel per run, the runs of one label in one column, groups side by side.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from ..analysis import (
    penultimate_projection,
    projection_plot,
    reliability_diagram,
    risk_coverage_curve,
    risk_coverage_plot,
)
from .runs import RunResult

__all__ = ["save_figures"]

logger = logging.getLogger(__name__)


def _grid(results: Sequence[RunResult], panel_size=(4.2, 3.8)):
    """A figure with one column per label and one row per run of that label, and the axes of each result."""
    # matplotlib is optional (the `analysis` extra): imported when a report draws its figures.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(result.label for result in results))
    rows = max(sum(result.label == label for result in results) for label in labels)
    fig = Figure(figsize=(panel_size[0] * len(labels), panel_size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(labels), squeeze=False)
    used, placed = set(), []
    counts = dict.fromkeys(labels, 0)
    for result in results:
        column, row = labels.index(result.label), counts[result.label]
        counts[result.label] += 1
        placed.append(axes[row][column])
        used.add((row, column))
    for row in range(rows):
        for column in range(len(labels)):
            if (row, column) not in used:
                axes[row][column].set_axis_off()
    return fig, placed


def save_figures(results: Sequence[RunResult], output_dir: str, projection_classes: Sequence[int] = (0, 1, 2)) -> dict:
    """Writes the reliability diagrams, the projections and the risk-coverage curves; returns {figure: file name}."""
    written = {}
    fig, axes = _grid(results)
    for result, ax in zip(results, axes, strict=True):
        reliability_diagram(result.logits, result.labels, title=result.name, ax=ax)
    fig.savefig(os.path.join(output_dir, "reliability_diagrams.png"), dpi=90)
    written["reliability"] = "reliability_diagrams.png"

    classes = [int(c) for c in projection_classes]
    if all(len(result.class_names) > max(classes) for result in results) and len(set(classes)) == 3:
        fig, axes = _grid(results)
        for result, ax in zip(results, axes, strict=True):
            coords, labels = penultimate_projection(result.features, result.labels, result.class_weights, classes)
            projection_plot(coords, labels, class_names=dict(enumerate(result.class_names)), title=result.name, ax=ax)
        fig.savefig(os.path.join(output_dir, "projections.png"), dpi=90)
        written["projections"] = "projections.png"
    else:
        logger.warning(f"no projection plot: classes {classes} are not 3 distinct classes of every model.")

    curves = {}
    for result in results:
        correct = result.logits.argmax(axis=1) == result.labels
        shifted = result.logits - result.logits.max(axis=1, keepdims=True)
        confidence = 1.0 / np.exp(shifted).sum(axis=1)  # the top-1 softmax probability
        curves[result.name] = risk_coverage_curve(confidence, correct)
    fig = risk_coverage_plot(curves, title="Risk-coverage (softmax confidence)")
    fig.set_size_inches(6.5, 5.0)
    fig.savefig(os.path.join(output_dir, "risk_coverage.png"), dpi=90)
    written["risk_coverage"] = "risk_coverage.png"
    return written
