"""The names the loss settings take, without torch: which losses there are and where label smoothing puts its mass.

The losses (`hf_maxsup.losses`), their settings ([`~hf_maxsup.trainer.LossConfig`]) and the loss flags of the recipes
(whose `--help` answers before torch loads) read them here.
"""

__all__ = ["LOSS_NAMES", "LS_MASSES", "check_loss_name"]

LOSS_NAMES = ("ce", "ls", "maxsup")
# Where label smoothing puts its mass alpha (see `hf_maxsup.losses.smoothing_weight`).
LS_MASSES = ("all", "others")


def check_loss_name(loss: str) -> None:
    """Refuse a loss that hf_maxsup does not have.

    Raises:
        `ValueError`: `loss` is not one of [`LOSS_NAMES`]; the message lists them.
    """
    if loss not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(LOSS_NAMES)}.")
