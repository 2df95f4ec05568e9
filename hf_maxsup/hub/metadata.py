"""The machine-readable loss settings of a model card (its `hf_maxsup` metadata): written by
[`~hf_maxsup.hub.write_model_card`], read back by the tools that compare runs and by the check that a resumed run
trains with the loss of its checkpoint. Reading them imports neither torch nor transformers."""

from __future__ import annotations

import os

from huggingface_hub import ModelCard

from ..schedules import alpha_at

__all__ = ["describe_loss", "loss_metadata", "read_card_metadata"]


def read_card_metadata(folder: str) -> dict | None:
    """The `hf_maxsup` metadata (loss, alpha, schedule, history) of the model card in `folder`, as written by
    [`~hf_maxsup.hub.write_model_card`]; `None` when the folder has no card or its card has no such section.

    Raises:
        `ValueError`: the card cannot be read as a model card (it names the file).
    """
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return None
    try:
        metadata = ModelCard.load(path).data.to_dict().get("hf_maxsup")
    except (ValueError, TypeError, AttributeError, OSError) as err:  # not UTF-8, bad YAML, a list for metadata, ...
        raise ValueError(f"{path} is not a readable model card: {err}") from err
    return metadata if isinstance(metadata, dict) else None


def loss_metadata(loss: str, alpha: float, alpha_end: float | None, schedule: str, ls_mass: str = "all") -> dict:
    """The machine-readable loss settings of a model card (its `hf_maxsup` metadata), for tools that compare runs
    and for checking that a resumed run trains with the loss of its checkpoint. `ls_mass` is recorded only when it
    is not the default `"all"`, so that the cards written before it existed still match."""
    if loss == "ce":
        return {"loss": loss}
    metadata = {
        "loss": loss,
        "alpha": alpha,
        "alpha_end": alpha_at(1.0, schedule, alpha, alpha_end),
        "alpha_schedule": schedule,
    }
    return {**metadata, "ls_mass": ls_mass} if ls_mass != "all" else metadata


def describe_loss(metadata: dict) -> str:
    """`metadata` of [`loss_metadata`] in words, e.g. `maxsup (alpha 0.1 to 0.2, linear)`."""
    if metadata.get("loss") == "ce":
        return "ce"
    mass = f", mass on the {metadata['ls_mass']}" if "ls_mass" in metadata else ""
    return (
        f"{metadata.get('loss')} (alpha {metadata.get('alpha')} to {metadata.get('alpha_end')}, "
        f"{metadata.get('alpha_schedule')}{mass})"
    )
