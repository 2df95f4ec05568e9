"""What a resumed run checks against its checkpoint: the loss settings it was trained with (and, when they change,
the history its model card records), and that its weights fit the model this run builds."""

from __future__ import annotations

import json
import logging
import os

from safetensors import safe_open

from ..hub import describe_loss, loss_metadata, read_card_metadata

__all__ = ["check_checkpoint_fits", "loss_history"]

logger = logging.getLogger(__name__)


def loss_history(checkpoint: str, training_args, allow_change: bool = False) -> list[dict]:
    """The loss settings of a resumed run, segment by segment, for its model card; `[]` when they never changed.

    Each entry is the card's `hf_maxsup` metadata of one segment plus `from_step`, the step it started at.

    Args:
        checkpoint (`str`): the checkpoint the run resumes.
        training_args ([`MaxSupTrainingArguments`]): this run's loss settings (`loss`, `loss_alpha`, ...).
        allow_change (`bool`, *optional*, defaults to `False`): `--allow_loss_change`.

    Raises:
        `ValueError`: the settings differ from the checkpoint's and `allow_change` is not set.
    """
    recorded = read_card_metadata(checkpoint)
    if not recorded:
        return []
    history = recorded.get("history") or [{**recorded, "from_step": 0}]
    last = {key: value for key, value in history[-1].items() if key != "from_step"}
    current = loss_metadata(
        training_args.loss,
        training_args.loss_alpha,
        training_args.loss_alpha_end,
        training_args.loss_alpha_schedule,
        training_args.loss_ls_mass,
    )
    if last == current:
        return history if len(history) > 1 else []
    if not allow_change:
        raise ValueError(
            f"{checkpoint} was trained with {describe_loss(last)}, but this run asks for "
            f"{describe_loss(current)}. Pass the checkpoint's settings (--loss, --loss_alpha, "
            "--loss_alpha_end, --loss_alpha_schedule, --loss_ls_mass) to resume it, or "
            "--allow_loss_change to go on with the new ones (the model card records both), or start a "
            "new run with another --output_dir."
        )
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        step = json.load(f)["global_step"]
    logger.warning(
        f"--allow_loss_change: {describe_loss(last)} until step {step}, {describe_loss(current)} "
        "from there; the model card records both."
    )
    return [*history, {**current, "from_step": step}]


def check_checkpoint_fits(model, checkpoint: str) -> None:
    """Refuse to resume a checkpoint whose weights do not fit the model this run built (another architecture, size or
    label set), before training starts rather than with a `size mismatch` from `load_state_dict`.

    Raises:
        `ValueError`: the checkpoint holds another model; the message names the weights that differ.
    """
    path = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(path) or hasattr(model, "peft_config"):
        return  # sharded or adapter weights: left to the Trainer
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(path, framework="pt") as f:
        saved = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    wrong = [
        f"{name} is {list(shape)} there, {list(expected[name])} here"
        for name, shape in saved.items()
        if name in expected and expected[name] != shape
    ]
    missing = sorted(set(expected) - set(saved))
    if wrong or len(missing) > len(expected) // 2:
        detail = "; ".join(wrong[:3]) or f"{len(missing)} of this model's {len(expected)} weights are missing"
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} holds another model than this run builds ({detail}). "
            "Resume it with the --model_name_or_path and data (labels) it was trained with, or start "
            "a new run with another --output_dir."
        )
