"""The recipes' data: [`load_task_dataset`] and its checks (`loading`), and the functions the recipes map over it
(`preprocess`)."""

from .loading import TASKS, check_columns, encode_labels, load_embedded_dataset, load_task_dataset
from .preprocess import image_transform, text_preprocess_function, translation_preprocess_function

__all__ = [
    "TASKS",
    "check_columns",
    "encode_labels",
    "image_transform",
    "load_embedded_dataset",
    "load_task_dataset",
    "text_preprocess_function",
    "translation_preprocess_function",
]
