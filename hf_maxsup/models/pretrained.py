"""Loading a pretrained model, tokenizer or image processor with `--model_name_or_path`, as the official transformers
examples do, with errors that name the path and the fix."""

import os
from collections.abc import Sequence

from transformers import AutoConfig

__all__ = [
    "check_model_name_or_path",
    "classifier_config",
    "from_pretrained",
    "hub_keywords",
    "label_maps",
    "load_pretrained",
]


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


def load_pretrained(
    auto_model,
    auto_processor,
    model_name_or_path: str,
    processor_name: str | None = None,
    *,
    config_name: str | None = None,
    config_kwargs: dict | None = None,
    ignore_mismatched_sizes: bool = False,
    **hub,
):
    """A pretrained model and its processor (tokenizer or image processor), loaded as the transformers examples load
    them from their model flags.

    Args:
        auto_model, auto_processor: the `AutoModelFor...` and `AutoTokenizer` / `AutoImageProcessor` classes.
        model_name_or_path (`str`): local folder or Hub id of the weights (`--model_name_or_path`).
        processor_name, config_name (`str`, *optional*): where the processor and the config come from, when not from
            the model (`--tokenizer_name` or `--image_processor_name`, `--config_name`).
        config_kwargs (`dict`, *optional*): config values to set (the labels of a classifier).
        ignore_mismatched_sizes (`bool`, *optional*, defaults to `False`): train new weights where the checkpoint's
            have another shape (a head for another number of labels); otherwise such a checkpoint is refused.
        **hub: `from_pretrained`'s keywords for the Hub (`cache_dir`, `token`, `revision`, `trust_remote_code`).

    Returns:
        `tuple`: the model and its processor.

    Raises:
        `OSError`: a path or id could not be loaded (see [`from_pretrained`]).
        `ValueError`: the checkpoint's weights do not fit and `ignore_mismatched_sizes` is not set.
    """
    config = from_pretrained(
        AutoConfig.from_pretrained, config_name or model_name_or_path, **(config_kwargs or {}), **hub
    )
    try:
        model = from_pretrained(
            auto_model.from_pretrained,
            model_name_or_path,
            config=config,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            **hub,
        )
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):
            raise
        raise ValueError(
            f"--model_name_or_path {model_name_or_path}: some of its weights do not fit this run (a classification "
            "head for another number of labels?). Pass --ignore_mismatched_sizes to train new ones in their place, "
            "as the transformers examples ask."
        ) from err
    return model, from_pretrained(auto_processor.from_pretrained, processor_name or model_name_or_path, **hub)


def hub_keywords(pretrained: dict) -> dict:
    """The keywords of `pretrained` (those [`load_pretrained`] takes) that every `from_pretrained` takes: the Hub's
    (`cache_dir`, `token`, `revision`, `trust_remote_code`), for loading a tokenizer alone."""
    return {
        key: value
        for key, value in pretrained.items()
        if key in ("cache_dir", "token", "revision", "trust_remote_code")
    }


def classifier_config(task: str, labels: Sequence[str]) -> dict:
    """The config values of a pretrained classifier fine-tuned on `labels` for `task` (see [`load_pretrained`])."""
    return {"finetuning_task": task, **label_maps(labels)}
