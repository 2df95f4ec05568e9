"""Where a run's data comes from and how much of it the run uses: the source (a Hub dataset, local files or the
embedded data, and which of its splits and columns are kept), the recipe's limits and preprocessing, and how a run
treats an `output_dir` that holds an earlier run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

__all__ = ["DataArguments", "DataSourceArguments", "RunArguments", "chain_post_init", "comma_names"]


def chain_post_init(instance, cls: type) -> None:
    """Runs the next `__post_init__` after `cls`'s in `instance`'s class order, if any: these dataclasses are mixed
    (a recipe's and a report's data arguments combine several), so each one's checks must run whatever the order."""
    after = getattr(super(cls, instance), "__post_init__", None)
    if after is not None:
        after()


def comma_names(value: str | None) -> list[str]:
    """The names of a comma-separated flag value (`--remove_splits a,b`), blanks dropped."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


@dataclass
class DataSourceArguments:
    """Where the data comes from: a Hub dataset, local files, or (nothing given) the embedded real data, and which of
    its splits and columns are kept. The recipes train on it, and the reports evaluate on the same source."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the Hub (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of that dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (csv, json, jsonl, parquet)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (for --do_predict)."})
    train_val_split: float = field(
        default=0.15,
        metadata={
            "help": "Share of train held out, shuffled with --seed, for validation when there is no validation split."
        },
    )
    validation_split_percentage: float | None = field(
        default=None, metadata={"help": "The same share as a percentage; when given, it replaces --train_val_split."}
    )
    train_split_name: str | None = field(
        default=None, metadata={"help": "Split of the data to train on (default: train)."}
    )
    validation_split_name: str | None = field(
        default=None, metadata={"help": "Split of the data to evaluate on (default: validation)."}
    )
    test_split_name: str | None = field(
        default=None, metadata={"help": "Split of the data to predict on (default: test)."}
    )
    remove_splits: str | None = field(default=None, metadata={"help": "Splits to drop from the data, comma-separated."})
    remove_columns: str | None = field(
        default=None, metadata={"help": "Columns to drop from every split, comma-separated."}
    )

    def __post_init__(self):
        if not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split must be in [0, 1); got {self.train_val_split}.")
        if self.validation_split_percentage is not None and not 0 <= self.validation_split_percentage < 100:
            raise ValueError(
                f"--validation_split_percentage must be in [0, 100); got {self.validation_split_percentage}."
            )
        chain_post_init(self, DataSourceArguments)

    def data_files(self) -> dict[str, str]:
        """The local data files given, by split (`train`, `validation`, `test`)."""
        files = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}
        return {split: path for split, path in files.items() if path is not None}

    def validation_fraction(self) -> float:
        """The share of train held out for validation when the data has no validation split."""
        if self.validation_split_percentage is not None:
            return self.validation_split_percentage / 100
        return self.train_val_split

    def split_names(self) -> dict[str, str]:
        """The splits of the source that the run uses as `train`, `validation` and `test`, where they are named."""
        names = {"train": self.train_split_name, "validation": self.validation_split_name, "test": self.test_split_name}
        return {split: name for split, name in names.items() if name is not None}

    def removed_splits(self) -> list[str]:
        """The splits `--remove_splits` drops."""
        return comma_names(self.remove_splits)

    def removed_columns(self) -> list[str]:
        """The columns `--remove_columns` drops."""
        return comma_names(self.remove_columns)


@dataclass
class DataArguments(DataSourceArguments):
    """The data of a recipe: its source, how much of it to use and how to preprocess it."""

    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the training set to this many examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Preprocess again rather than reuse the datasets cache of an earlier run."}
    )

    # Whether the max_*_samples are drawn at random (shuffled with the seed) rather than the first rows, as the
    # task's example script does.
    SAMPLES_SHUFFLED: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "preprocessing_num_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1; got {getattr(self, name)}. Leave it out for no limit.")

    def sample_limits(self) -> dict[str, int | None]:
        """The number of examples kept of each split (`None`: all)."""
        return {"train": self.max_train_samples, "validation": self.max_eval_samples, "test": self.max_predict_samples}

    def columns(self) -> dict[str | None, str]:
        """The columns the task reads, each mapped to the flag that names it: none here, each task's subclass takes
        them from its column group (e.g. [`ImageColumns.columns`])."""
        return {}


@dataclass
class RunArguments:
    """How a run treats an `output_dir` that holds an earlier run."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that holds a finished run or checkpoints, replacing them "
            "(their checkpoint-* folders are deleted). Without it such a run is refused."
        },
    )
    allow_loss_change: bool = field(
        default=False,
        metadata={
            "help": "Resume a checkpoint with other loss settings (--loss, --loss_alpha*) than it was trained "
            "with; the model card then records both. Without it such a resume is refused."
        },
    )
