"""The recipes' data: [`load_task_dataset`] and its checks (`loading`), the class labels checked against the training
split ([`encode_labels`], `labels`), which splits, columns and rows a run uses (`selection`), and the functions the
recipes map over it (`preprocess`)."""

from .labels import encode_labels
from .loading import TASKS, check_columns, load_embedded_dataset, load_task_dataset
from .preprocess import image_transform, text_preprocess_function, translation_preprocess_function
from .selection import limit_samples, select_splits

__all__ = [
    "TASKS",
    "check_columns",
    "encode_labels",
    "image_transform",
    "limit_samples",
    "load_embedded_dataset",
    "load_task_dataset",
    "select_splits",
    "text_preprocess_function",
    "translation_preprocess_function",
]
