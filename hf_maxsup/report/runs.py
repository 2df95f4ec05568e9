"""What the reports compare: a trained run, where it comes from (a checkpoint and its label), what its evaluation gives.

[`checkpoint_runs`] turns the paths given to `hf-maxsup analyze` into [`Run`]s: each path checked before anything is
loaded, and labelled by the member record a comparison left beside it ([`MEMBER_FILE`]), else by the loss its model
card names, else by its folder's name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..hub import read_card_metadata

__all__ = ["MEMBER_FILE", "Run", "RunResult", "check_checkpoint_path", "checkpoint_runs", "read_member_record"]

# What `hf-maxsup compare` records in each member's folder (its recipe, loss, seed and recipe arguments): the report
# labels the member's checkpoints from it.
MEMBER_FILE = "hf_maxsup_compare.json"


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


def read_member_record(folder: str) -> dict | None:
    """The record `hf-maxsup compare` left in a member's folder ([`MEMBER_FILE`]), `None` when there is none."""
    path = os.path.join(folder, MEMBER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            recorded = json.load(f)
        except ValueError as err:
            raise ValueError(
                f"{path} is not a readable record of hf-maxsup compare ({err}): delete it or its folder."
            ) from err
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} is not a record of hf-maxsup compare (not a JSON object): delete it or its folder.")
    return recorded


def check_checkpoint_path(path: str) -> None:
    """Refuses, before loading anything, a local path that is missing or holds no saved model.

    Raises:
        `ValueError`: a folder without `config.json` (naming the checkpoints inside), a file, or a missing path that
            cannot be a Hub id.
    """
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, name)) for name in ("config.json", "adapter_config.json")):
            inside = sorted(name for name in os.listdir(path) if name.startswith("checkpoint-"))
            hint = f" It holds {', '.join(inside[-3:])}: give one of those." if inside else ""
            raise ValueError(
                f"{path} is not a checkpoint: it has no config.json.{hint} Give a run's output folder "
                "(after training finished), a checkpoint-* folder, or a Hub id."
            )
    elif os.path.exists(path):
        raise ValueError(f"{path} is a file, not a checkpoint: give the folder holding config.json and the weights.")
    elif os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1:
        raise ValueError(f"{path}: no such folder (and it is not a Hub id of the form org/model). Check the path.")


def _loss_and_seed(path: str) -> tuple[str | None, int | None]:
    """The loss and seed of a local checkpoint: from the member record of its run folder or itself, else the loss
    its model card names (no seed)."""
    loss = seed = None
    for folder in (path, os.path.dirname(os.path.normpath(path))):
        recorded = read_member_record(folder)
        if recorded is not None:
            loss, seed = recorded.get("loss"), recorded.get("seed")
            break
    if loss is None:
        try:
            loss = (read_card_metadata(path) or {}).get("loss")
        except ValueError:  # a card we did not write: use the folder name
            loss = None
    return loss, seed


def checkpoint_runs(paths: Sequence[str], labels: Sequence[str] | None = None) -> list[Run]:
    """The runs of checkpoints given by path or Hub id, each checked ([`check_checkpoint_path`]) before any is read.

    Args:
        paths (`Sequence[str]`): run output folders, `checkpoint-*` folders or Hub ids.
        labels (`Sequence[str]`, *optional*): a group name per path; by default the loss of the member record or the
            model card, else the folder's name.
    """
    for path in paths:
        check_checkpoint_path(path)
    runs = []
    for i, path in enumerate(paths):
        loss, seed = _loss_and_seed(path) if os.path.isdir(path) else (None, None)
        label = labels[i] if labels else loss or os.path.basename(os.path.normpath(path))
        runs.append(Run(path=path, label=label, seed=seed))
    return runs
