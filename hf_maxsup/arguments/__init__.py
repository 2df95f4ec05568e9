"""The recipes' command-line arguments: the model, the data of each task, and how a run treats its `output_dir`.

Each dataclass is one group of flags of [`hf_maxsup.runner.parse_args`]. Every flag of the `ModelArguments` and
`DataTrainingArguments` of transformers' example scripts (`run_image_classification.py`, `run_classification.py`,
`run_glue.py`, `run_translation.py`) is here, with its meaning and default; where a default differs on purpose, its
help says so. Each task's column group (`ImageColumns`, `TextColumns`, `TranslationColumns`) names the columns the
task reads, with the flag of each ([`~ImageColumns.columns`]), for the recipes and the reports alike.

- `model`: the model flags ([`ModelArguments`] and each task's);
- `source`: where the data comes from and how much of it a run uses ([`DataSourceArguments`], [`DataArguments`]),
  and [`RunArguments`];
- `columns`: the column groups, and GLUE's columns;
- `tasks`: each recipe's data arguments.
"""

from .columns import GLUE_DATASET, GLUE_TASKS, ImageColumns, TextColumns, TranslationColumns
from .model import (
    HubArguments,
    ImageModelArguments,
    ModelArguments,
    TextModelArguments,
    TokenizerArguments,
    TranslationModelArguments,
)
from .source import DataArguments, DataSourceArguments, RunArguments
from .tasks import ImageDataArguments, TextDataArguments, TranslationDataArguments

__all__ = [
    "GLUE_DATASET",
    "GLUE_TASKS",
    "DataArguments",
    "DataSourceArguments",
    "HubArguments",
    "ImageColumns",
    "ImageDataArguments",
    "ImageModelArguments",
    "ModelArguments",
    "RunArguments",
    "TextColumns",
    "TextDataArguments",
    "TextModelArguments",
    "TokenizerArguments",
    "TranslationColumns",
    "TranslationDataArguments",
    "TranslationModelArguments",
]
