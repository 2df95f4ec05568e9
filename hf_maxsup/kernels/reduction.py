"""The one reduction of every backend's sums: what they are divided by, the logged means, and the factors the
gradient is written and handed over with. All from device tensors: on a GPU nothing waits for the device."""

from __future__ import annotations

import math

import torch

from .job import SUMS

__all__ = ["component_means", "denominator", "grad_scales", "num_items_operands", "sums_dtype"]

# float16 gradients are stored times a power of two (undone in backward), so that small probabilities divided by
# the item count do not flush to zero before the loss scale is applied.
_F16_HEADROOM = 32768.0


def sums_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the sums every backend returns on `device`: float64, or float32 where the device has no float64
    (Apple's mps, some Intel GPUs)."""
    if device.type == "mps":
        return torch.float32
    if device.type == "xpu" and not getattr(torch.xpu.get_device_properties(device), "has_fp64", True):
        return torch.float32
    return torch.float64


def num_items_operands(num_items_in_batch) -> tuple[torch.Tensor | None, float | None]:
    """`num_items_in_batch` as the operators take it: `(tensor, None)`, `(None, float)` or `(None, None)`, a tensor
    and a number being distinct arguments of a torch operator."""
    if isinstance(num_items_in_batch, torch.Tensor):
        return num_items_in_batch, None
    return None, None if num_items_in_batch is None else float(num_items_in_batch)


def denominator(reduction: str, num_items_in_batch, n_kept: torch.Tensor) -> torch.Tensor | None:
    """What the summed loss is divided by, as a float32 tensor on `n_kept`'s device (None for `reduction="none"`):
    `num_items_in_batch` when given, else 1 (`"sum"`) or the kept count (`"mean"`)."""
    n = num_items_in_batch
    if n is not None:
        # A micro-batch of an accumulated batch may be all ignored; an all-ignored accumulated batch gives 0 / 1.
        if isinstance(n, torch.Tensor):
            return n.to(n_kept.device, torch.float32).clamp_min(1)
        return torch.full((), max(float(n), 1.0), dtype=torch.float32, device=n_kept.device)
    if reduction == "sum":
        return torch.ones((), dtype=torch.float32, device=n_kept.device)
    if reduction == "mean":
        return n_kept.clamp_min(1).float()
    return None


def grad_scales(dtype: torch.dtype, alpha: float, divisor: torch.Tensor | None, device: torch.device):
    """`(grad_scale, post)`: the factor a backend writes the gradient with (a 0-dim float32 tensor on `device`) and
    the one backward applies: `1 / divisor` and 1, or for float16 a power-of-two headroom that `post` undoes (with
    the division); `divisor` is `None` for `reduction="none"`, whose per-row weights come in backward."""
    headroom = 1.0
    if dtype == torch.float16:
        headroom = max(1.0, 2.0 ** math.floor(math.log2(_F16_HEADROOM / (1.0 + 2.0 * abs(alpha)))))
    if divisor is None:
        return torch.full((), headroom, dtype=torch.float32, device=device), 1.0 / headroom
    if dtype == torch.float16:
        return torch.full((), headroom, dtype=torch.float32, device=device), 1.0 / (divisor * headroom)
    return divisor.reciprocal(), 1.0


def component_means(loss: str, totals: torch.Tensor, *, hard: bool, distill: bool = False) -> dict[str, torch.Tensor]:
    """Means over kept rows of the logged terms (the LS halves for LS with class indices, `distill` with a teacher,
    `misclassified` with class indices: the fraction of kept rows whose label is not the first index of the max),
    detached float32 0-dim tensors on the sums' device.

    Args:
        loss (`str`): `"ce"`, `"ls"` or `"maxsup"`.
        totals (`torch.Tensor`): the sums of `SUMS` over kept rows, then the kept count (as the operators return).
        hard (`bool`): whether the targets were class indices.
        distill (`bool`, *optional*, defaults to `False`): whether there was a teacher.
    """
    totals = totals.detach()
    means = (totals[:-1] / totals[-1].clamp_min(1)).float()
    names = ["ce"] + (["reg"] if loss != "ce" else [])
    if loss == "ls" and hard:
        names += ["ls_regularization", "ls_error_amplification"]
    if distill:
        names.append("distill")
    if hard:
        names.append("misclassified")
    return {name: means[SUMS.index(name)] for name in names}
