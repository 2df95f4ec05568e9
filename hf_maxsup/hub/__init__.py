"""Model cards, Hub pushes and reloading for models trained with hf_maxsup.

- `card`: the model card of a run (`write_model_card`), read off the trainer and rendered from the template;
- `metadata`: the card's machine-readable loss settings (`loss_metadata`, `read_card_metadata`, `describe_loss`);
- `push`: what a failed push raises and says (`HubPushError`, `failure_message`), uploads without pickles;
- `load`: the safe loader of a trained model (`load_for_analysis`).

The names below are imported on first use, so that reading a card's metadata does not import torch.
"""

from .._lazy import lazy_exports

# public name -> the module of this package that defines it
_EXPORTS = {
    "CardOptions": "card",
    "RELIABILITY_DIAGRAM": "card",
    "TEMPLATE_NAME": "card",
    "write_model_card": "card",
    "load_for_analysis": "load",
    "describe_loss": "metadata",
    "loss_metadata": "metadata",
    "read_card_metadata": "metadata",
    "HUB_ERRORS": "push",
    "PICKLE_PATTERNS": "push",
    "HubPushError": "push",
    "PickleFreeUploads": "push",
    "failure_message": "push",
    "uploads_without_pickles": "push",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
