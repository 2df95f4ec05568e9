"""Loading a pretrained model, tokenizer or image processor with `--model_name_or_path`, as the official transformers
examples do, with errors that name the path and the fix."""

import os
from collections.abc import Sequence

from transformers import AutoConfig

__all__ = ["check_model_name_or_path", "from_pretrained", "label_maps", "pretrained_classifier"]


def check_model_name_or_path(model_name_or_path: str | None) -> None:
    """Check `--model_name_or_path` before any work: an existing folder must hold a saved model, and a path that
    cannot be a Hub id (absolute, `./`, `~`, or more than one `/`) must exist, rather than fail later with a message
    about the Hub.

    Raises:
        `ValueError`: the message names the path and the fix.
    """
    path = model_name_or_path
    if path is None:
        return
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, name)) for name in ("config.json", "adapter_config.json")):
            raise ValueError(
                f"--model_name_or_path {path}: this folder has no config.json, so it is not a saved "
                "model. Give the folder that save_pretrained (or a finished run) wrote, with config.json "
                "and the weights, or a Hub id such as 'org/model'."
            )
        return
    if os.path.exists(path):
        raise ValueError(
            f"--model_name_or_path {path} is a file: give the folder holding config.json and the weights, or a Hub id."
        )
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path:
        raise ValueError(
            f"--model_name_or_path {path}: no such directory (and it cannot be a Hub id). Check the "
            "path, give a Hub id such as 'org/model', or leave it out for the offline default model."
        )


def from_pretrained(load, model_name_or_path: str, **kwargs):
    """`load(model_name_or_path, **kwargs)` (an Auto class's `from_pretrained`), with an error that says how to run
    without the Hub when the id cannot be loaded.

    Raises:
        `OSError`: the path or id could not be loaded; the message names the offline alternatives.
    """
    try:
        return load(model_name_or_path, **kwargs)
    except OSError as err:
        # Offline, a Hub id fails deep inside huggingface_hub; say how to run without the Hub instead.
        raise OSError(
            f"Could not load {model_name_or_path!r} (no local folder of that name exists either): {err}\n"
            "If you are offline or the Hub is unreachable, pass --model_name_or_path <local dir> pointing to a saved "
            "model (config, weights and tokenizer or image processor), or leave out --model_name_or_path to use the "
            "offline default model."
        ) from err


def label_maps(labels: Sequence[str]) -> dict:
    """The config fields of a classifier of `labels` (`num_labels`, `id2label`, `label2id`); index i is label id i."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def pretrained_classifier(auto_model, model_name_or_path: str, task: str, labels: Sequence[str], **hub):
    """The classifier `auto_model` loads from `model_name_or_path`, with a head for `labels`."""
    # The head is replaced when the checkpoint has another number of labels (ignore_mismatched_sizes).
    config = from_pretrained(
        AutoConfig.from_pretrained, model_name_or_path, finetuning_task=task, **label_maps(labels), **hub
    )
    return from_pretrained(
        auto_model.from_pretrained, model_name_or_path, config=config, ignore_mismatched_sizes=True, **hub
    )
