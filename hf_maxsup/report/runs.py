"""What the reports compare: a trained run, and what its evaluation gives."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Run", "RunResult"]


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
class RunResult:
    """One evaluated run: what `results.json` records of it ([`to_json`]), and the arrays its figures are drawn from.

    Args:
        label (`str`), seed (`int`, *optional*), path (`str`): those of its [`Run`].
        task (`str`): `"image-classification"`, `"text-classification"` or `"translation"`.
        split (`str`): the evaluated split.
        num_examples (`int`): how many examples of it were evaluated.
        metrics (`dict[str, float]`): every metric of the run.
        logits (`np.ndarray` of shape `(N, K)`, *optional*): a classifier's logits on the split.
        labels (`np.ndarray` of shape `(N,)`, *optional*): their labels.
        features (`np.ndarray` of shape `(N, D)`, *optional*): the penultimate features.
        class_weights (`np.ndarray` of shape `(K, D)`, *optional*): the weights of the classifier's last layer.
        class_names (`list[str]`, *optional*): the model's classes, in id order.
    """

    label: str
    seed: int | None
    path: str
    task: str
    split: str
    num_examples: int
    metrics: dict[str, float]
    # The figures' arrays: not JSON, not in results.json; None for translation runs, which have no figures.
    logits: np.ndarray | None = field(default=None, repr=False, metadata={"json": False})
    labels: np.ndarray | None = field(default=None, repr=False, metadata={"json": False})
    features: np.ndarray | None = field(default=None, repr=False, metadata={"json": False})
    class_weights: np.ndarray | None = field(default=None, repr=False, metadata={"json": False})
    class_names: list[str] | None = field(default=None, repr=False, metadata={"json": False})

    @property
    def name(self) -> str:
        return self.label if self.seed is None else f"{self.label} (seed {self.seed})"

    def to_json(self) -> dict:
        """The run as `results.json` lists it: every field but the arrays."""
        return {
            spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self) if spec.metadata.get("json", True)
        }
