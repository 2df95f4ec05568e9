"""The class labels of a classification recipe's data: one `ClassLabel` over every split, checked against the
training split the model will see (after the validation split is held out and the splits are truncated).

The model learns the classes of its training split, so that split must hold at least two, and a label that only
an evaluation split holds would be a class the model never trains on but is scored on. A test split whose labels are
all `-1` (GLUE-style: no label) is predicted without metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from datasets import ClassLabel, Dataset, DatasetDict

__all__ = ["NO_LABEL", "encode_labels"]

logger = logging.getLogger(__name__)

# The label of an unlabeled example in GLUE-style test splits (a `ClassLabel` id or an integer label).
NO_LABEL = -1


def encode_labels(dataset: DatasetDict, label_column: str = "label") -> tuple[DatasetDict, list[str]]:
    """
    Return the label names of a classification dataset, encoding the label column as a `ClassLabel` if needed.

    A `ClassLabel` column is kept as is (its names are the classes). A string or integer column is encoded over all
    splits with the classes of the `train` split: the names are its sorted unique values (integers sorted
    numerically, then turned into strings) and each value is replaced by its index in that list.

    Before any work, the data must fit a model trained on `train`: `train` holds at least two classes, and the other
    splits no label that `train` lacks (for string and integer labels; a `ClassLabel` declares its classes). A `test`
    split whose labels are all `-1` (and `-1` is not a training label) has no labels: its label column is dropped, so
    that `--do_predict` predicts without metrics, and a warning says so.

    Args:
        dataset ([`~datasets.DatasetDict`]):
            The data, with a `train` split (without one, the classes are those of all splits).
        label_column (`str`, *optional*, defaults to `"label"`):
            The label column.

    Returns:
        `tuple[DatasetDict, list[str]]`: the dataset with a `ClassLabel` label column, and the label names.

    Raises:
        `ValueError`: another label type than `ClassLabel`, string or integer; fewer than two classes in `train`; a
        label only an evaluation split holds; a test split that mixes `-1` with labels, or an evaluation split
        without labels.
    """
    splits = {split: data for split, data in dataset.items() if label_column in data.column_names}
    if not splits:
        raise ValueError(f"Label column {label_column!r} not found in any split.")
    feature = next(iter(splits.values())).features[label_column]
    class_label, dtype = isinstance(feature, ClassLabel), str(getattr(feature, "dtype", None))
    if not class_label and dtype not in ("string", "large_string") and not dtype.startswith(("int", "uint")):
        raise ValueError(
            f"Label column {label_column!r} has type {feature}; "
            "only ClassLabel, string or integer labels are supported."
        )
    values = {split: set(data.unique(label_column)) for split, data in splits.items()}
    trained = values.get("train") or set().union(*values.values())
    unlabeled = _unlabeled_splits(values, trained, class_label)
    names = list(feature.names) if class_label else [str(value) for value in sorted(trained)]
    _check_training_classes([names[i] for i in sorted(trained)] if class_label else names, label_column)
    if not class_label:
        _check_no_new_labels(values, trained, unlabeled, label_column)
    encoded = DatasetDict()
    for split, data in dataset.items():
        if split in unlabeled:
            logger.warning(
                f"split {split!r} has no labels (every {label_column!r} is {NO_LABEL}): --do_predict predicts it "
                "without metrics (no accuracy, no loss)."
            )
            data = data.remove_columns(label_column)
        elif split in splits and not class_label:
            data = _as_class_label(data, label_column, names, sorted(trained))
        encoded[split] = data
    return encoded, names


def _unlabeled_splits(values: dict[str, set], trained: set, class_label: bool) -> set[str]:
    """The evaluation splits without labels: a `test` split whose labels are all `NO_LABEL`, where that is not a
    class (never for a `ClassLabel`, whose ids start at 0)."""
    if not class_label and NO_LABEL in trained:
        return set()
    unlabeled = set()
    for split, found in values.items():
        if NO_LABEL not in found:
            continue
        if split == "train":
            raise ValueError(
                f"split 'train' has rows without a label ({NO_LABEL}): the model cannot learn from them. Remove them, "
                "or give them a label."
            )
        if found != {NO_LABEL}:
            raise ValueError(
                f"split {split!r} mixes labels with {NO_LABEL} (no label): give every row of it a label"
                + (f", or none ({NO_LABEL} everywhere, to predict it without metrics)." if split == "test" else ".")
            )
        if split != "test":
            raise ValueError(
                f"split {split!r} has no labels (every label is {NO_LABEL}): evaluating it needs labels. Give a "
                "labelled --validation_file (or leave it out to hold out part of the training data)."
            )
        unlabeled.add(split)
    return unlabeled


def _check_training_classes(names: Sequence[str], label_column: str) -> None:
    """The training split the model sees must hold at least two classes."""
    if len(names) < 2:
        raise ValueError(
            f"label column {label_column!r} has {len(names)} class{'es' if len(names) != 1 else ''} "
            f"({', '.join(names) or 'none'}) in the training split the model sees (after holding out "
            "--train_val_split and --max_train_samples): with one class ce, ls and maxsup are 0 at "
            "every step and nothing is learnt. Give training data with at least two classes (more rows, or a "
            "--validation_file instead of holding rows out), or check --label_column_name."
        )


def _check_no_new_labels(values: dict[str, set], trained: set, unlabeled: set[str], label_column: str) -> None:
    """No evaluation split may hold a label the training split lacks: it would become a class never trained on."""
    for split, found in values.items():
        new = sorted(found - trained) if split not in unlabeled else []
        if split != "train" and new:
            listed = ", ".join(repr(value) for value in new[:5]) + (" ..." if len(new) > 5 else "")
            raise ValueError(
                f"label column {label_column!r}: split {split!r} holds label(s) {listed} that the training split "
                f"lacks (it has {', '.join(map(str, sorted(trained)))}): the model would get a class it never "
                f"trains on, and be scored on it. Remove those rows from the {split} data, add training examples "
                "of them, or check that both files label the same way."
            )


def _as_class_label(data: Dataset, label_column: str, names: list[str], values: list) -> Dataset:
    """`data` with its string or integer labels replaced by their index in `values`, as a `ClassLabel` of `names`."""
    index = {value: i for i, value in enumerate(values)}
    features = data.features.copy()
    features[label_column] = ClassLabel(names=names)
    return data.map(
        lambda batch: {label_column: [index[value] for value in batch[label_column]]},
        batched=True,
        features=features,
    )
