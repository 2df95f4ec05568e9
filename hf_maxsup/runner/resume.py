"""What a run checks against the checkpoint or saved model it starts from: for a resumed run, the loss settings and
the length (`max_steps`) its checkpoint was trained with (and, when they change, the history its model card records)
and that its weights fit the model this run builds; for a run that only evaluates a saved classifier, that the data
has the labels it was trained on."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from safetensors import safe_open
from transformers import TrainerCallback

from ..data import encode_labels
from ..hub import describe_loss, loss_metadata, read_card_metadata
from ..schedules import alpha_at

__all__ = [
    "ScheduleLengthCheck",
    "check_checkpoint_fits",
    "check_evaluated_labels",
    "labelled_data",
    "loss_history",
    "schedule_history",
]

# What a history entry holds beside the loss settings: where its segment starts, and the length its schedule ran to.
_SEGMENT_KEYS = ("from_step", "max_steps")

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
    last = {key: value for key, value in history[-1].items() if key not in _SEGMENT_KEYS}
    current = _settings(training_args)
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
    step = _trained(checkpoint)["global_step"]
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


def _settings(training_args) -> dict:
    """This run's loss settings, as the model card records them."""
    return loss_metadata(
        training_args.loss,
        training_args.loss_alpha,
        training_args.loss_alpha_end,
        training_args.loss_alpha_schedule,
        training_args.loss_ls_mass,
    )


def _trained(checkpoint: str) -> dict:
    """The checkpoint's Trainer state (`global_step`, `max_steps`, ...)."""
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)


def schedule_history(checkpoint: str, max_steps: int, training_args, history: list[dict], allow_change: bool):
    """The loss history of a resumed run that trains toward `max_steps` steps, when its checkpoint trained toward
    another number and its alpha schedule depends on progress (`global_step / max_steps`): alpha would jump at once
    (a linear 0.1 -> 0.2 at step 6 of 8 is 0.175; of 10, 0.16), which is refused unless `allow_change`, and then
    recorded: each segment of the history gets the `max_steps` its schedule ran toward. Otherwise `history`.

    Args:
        checkpoint (`str`): the checkpoint the run resumes.
        max_steps (`int`): the length of this run (the Trainer's `state.max_steps`).
        training_args ([`MaxSupTrainingArguments`]): this run's loss settings.
        history (`list[dict]`): the history of [`loss_history`].
        allow_change (`bool`): `--allow_loss_change`.

    Raises:
        `ValueError`: the length changed, the schedule depends on it, and `allow_change` is not set.
    """
    state = _trained(checkpoint)
    before, step = state.get("max_steps"), state["global_step"]
    schedule = training_args.loss_alpha_schedule
    settings = (schedule, training_args.loss_alpha, training_args.loss_alpha_end)
    if training_args.loss == "ce" or not before or before == max_steps:
        return history
    was, now = alpha_at(step / before, *settings), alpha_at(step / max_steps, *settings)
    if abs(was - now) < 1e-12:
        return history
    change = (
        f"{checkpoint} was trained toward {before} steps, and at its step {step} alpha was {was:.4g} on the {schedule} "
        f"schedule from {training_args.loss_alpha} to {alpha_at(1.0, *settings):.4g}; this run trains toward "
        f"{max_steps} steps, so alpha would go on from {now:.4g}"
    )
    if not allow_change:
        raise ValueError(
            f"{change}, and the model card would not say so. Resume with the checkpoint's length (--max_steps "
            f"{before}, or the --num_train_epochs and data it was trained with), or pass --allow_loss_change to go "
            "on with the new length (the model card records both), or start a new run with another --output_dir."
        )
    logger.warning(f"--allow_loss_change: {change}; the model card records both lengths.")
    segments = [{**entry, "max_steps": entry.get("max_steps", before)} for entry in history] or [
        {**_settings(training_args), "from_step": 0, "max_steps": before}
    ]
    if segments[-1]["from_step"] == step:  # the loss settings changed at this step too
        return [*segments[:-1], {**segments[-1], "max_steps": max_steps}]
    return [*segments, {**_settings(training_args), "from_step": step, "max_steps": max_steps}]


class ScheduleLengthCheck(TrainerCallback):
    """Applies [`schedule_history`] to a resumed run as its training begins, once the Trainer knows the run's length
    (from `--max_steps`, or `--num_train_epochs` and the data) and before the first step; a new history goes to the
    plan and to the cards the trainer writes from then on (its checkpoints' too).

    Args:
        plan ([`~hf_maxsup.runner.RunPlan`]): the resumed run (`checkpoint`, `training_args`, `run_args`,
            `loss_history`).
        trainer ([`MaxSupTrainer`]): the trainer that resumes it.
    """

    def __init__(self, plan, trainer):
        self.plan, self.trainer = plan, trainer

    def on_train_begin(self, args, state, control, **kwargs):
        plan = self.plan
        history = schedule_history(
            plan.checkpoint, state.max_steps, plan.training_args, plan.loss_history, plan.run_args.allow_loss_change
        )
        if history is not plan.loss_history:
            plan.loss_history = history
            self.trainer.create_model_card(loss_history=history)


def check_evaluated_labels(plan, labels: Sequence[str]) -> None:
    """A run that does not train must score the saved classifier's own head: `from_pretrained` replaces a head whose
    number of labels differs from the data's (`ignore_mismatched_sizes`, for fine-tuning), and a head of other label
    names would be scored against the wrong classes. Called before the model loads, so that the message is this one.

    Args:
        plan ([`RunPlan`]): the run (whether it trains, and the model it loads).
        labels (`Sequence[str]`): the data's class names, in the order of their ids.

    Raises:
        `ValueError`: the labels of the data differ from those the model was trained on.
    """
    model_name_or_path = plan.model_args.model_name_or_path
    config = os.path.join(model_name_or_path or "", "config.json")
    if plan.training_args.do_train or not os.path.isfile(config):
        return
    with open(config, encoding="utf-8") as f:
        saved = json.load(f).get("id2label")
    if saved is not None and [saved[key] for key in sorted(saved, key=int)] != list(labels):
        raise ValueError(
            f"{model_name_or_path} was trained on the labels {sorted(saved.values())}, but the data gives "
            f"{sorted(labels)}: its classifier would be replaced by an untrained one, or scored against "
            "other classes. Evaluate it on data labelled as its training data (the same files, "
            "--label_column_name and --max_train_samples), or train with --do_train."
        )


def labelled_data(plan) -> tuple:
    """The run's data with its labels as class ids and the class names in id order ([`hf_maxsup.data.encode_labels`]),
    checked, before the model loads, against the classifier an evaluation-only run scores ([`check_evaluated_labels`]).

    Args:
        plan ([`RunPlan`]): the run, its data loaded (`plan.raw`).

    Returns:
        `tuple`: the `datasets.DatasetDict` and the list of class names.
    """
    raw, labels = encode_labels(plan.raw, plan.data_args.label_column_name)
    check_evaluated_labels(plan, labels)
    return raw, labels
