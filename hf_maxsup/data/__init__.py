"""The recipes' data: [`load_task_dataset`] and its checks (`loading`), the class labels checked against the training
split ([`encode_labels`], `labels`), and the functions the recipes map over it (`preprocess`)."""

from .labels import encode_labels
from .loading import TASKS, check_columns, load_embedded_dataset, load_task_dataset
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
