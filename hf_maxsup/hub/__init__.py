"""Model cards, Hub pushes and reloading for models trained with hf_maxsup.

- `card`: the model card of a run (`write_model_card`), read off the trainer and rendered from the template;
- `metadata`: the card's machine-readable loss settings (`loss_metadata`, `read_card_metadata`, `describe_loss`);
- `push`: what a failed push raises and says (`HubPushError`, `failure_message`), uploads without pickles;
- `load`: the safe loader of a trained model (`load_for_analysis`).

The names below are imported on first use, so that reading a card's metadata does not import torch.
"""

from ..lazy import lazy_exports

# each module of this package -> the public names it defines
_EXPORTS = {
    "card": ("CardOptions", "RELIABILITY_DIAGRAM", "TEMPLATE_NAME", "write_model_card"),
    "load": ("load_for_analysis",),
    "metadata": ("describe_loss", "loss_metadata", "read_card_metadata"),
    "push": (
        "HUB_ERRORS",
        "PICKLE_PATTERNS",
        "HubPushError",
        "PickleFreeUploads",
        "failure_message",
        "uploads_without_pickles",
    ),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
