"""Which rows and columns of the loaded data a run uses, as the transformers example scripts choose them.

[`select_splits`] applies run_classification.py's `--remove_splits`, `--train_split_name` / `--validation_split_name` /
`--test_split_name` and `--remove_columns` to the loaded source; [`limit_samples`] applies `--shuffle_train_dataset`
and the `--max_*_samples` limits: the first rows (run_classification.py, run_glue.py, run_translation.py), or rows
drawn at random with the seed (run_image_classification.py, where the first rows of an image folder are one class).
"""

from __future__ import annotations

from datasets import DatasetDict

from ..arguments import DataArguments, DataSourceArguments, TextDataArguments

__all__ = ["limit_samples", "select_splits"]


def _missing(flag: str, names: list[str], dataset: DatasetDict, what: str = "split") -> None:
    """Refuse names that are not in the data, listing what there is."""
    missing = [name for name in names if name not in dataset]
    if missing:
        raise ValueError(
            f"{flag} {','.join(missing)}: no such {what} in the data (it has: {', '.join(dataset) or 'none'})."
        )


def select_splits(dataset: DatasetDict, source: DataSourceArguments) -> DatasetDict:
    """The splits and columns of `dataset` the run uses: `--remove_splits` dropped, the splits named by
    `--train_split_name` (...) taken as `train`, `validation` and `test`, and `--remove_columns` dropped, in
    run_classification.py's order.

    Raises:
        `ValueError`: a named split or column is not in the data; the message lists what is.
    """
    removed = source.removed_splits()
    _missing("--remove_splits", removed, dataset)
    dataset = DatasetDict({name: data for name, data in dataset.items() if name not in removed})
    for split, name in source.split_names().items():
        _missing(f"--{split}_split_name", [name], dataset)
        dataset[split] = dataset.pop(name)
    columns = source.removed_columns()
    for name, data in dataset.items():
        absent = [column for column in columns if column not in data.column_names]
        if absent:
            raise ValueError(
                f"--remove_columns {','.join(absent)}: no such column in split {name!r} (it has: "
                f"{', '.join(data.column_names)})."
            )
        dataset[name] = data.remove_columns(columns)
    return dataset


def limit_samples(raw: DatasetDict, data_args: DataArguments, seed: int) -> DatasetDict:
    """`raw` with each split cut to its `--max_*_samples`, and the training split shuffled first with
    `--shuffle_seed` when `--shuffle_train_dataset` is set (text).

    The recipes whose example script draws the kept rows at random ([`DataArguments.SAMPLES_SHUFFLED`], the image
    recipe) shuffle a split with `seed` (`--seed`) before cutting it; the others keep its first rows.
    """
    if isinstance(data_args, TextDataArguments) and data_args.shuffle_train_dataset and "train" in raw:
        raw["train"] = raw["train"].shuffle(seed=data_args.shuffle_seed)
    for split, limit in data_args.sample_limits().items():
        if split not in raw or limit is None or limit >= len(raw[split]):
            continue
        data = raw[split].shuffle(seed=seed) if data_args.SAMPLES_SHUFFLED else raw[split]
        raw[split] = data.select(range(limit))
    return raw
