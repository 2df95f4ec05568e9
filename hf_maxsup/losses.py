"""Cross-entropy, label smoothing (LS) and Max Suppression (MaxSup) losses.

All three share one signature, modelled on `torch.nn.functional.cross_entropy`, with two differences that follow the
Hugging Face conventions: the class dimension is the **last** one (`(N, K)` classifier logits or `(B, T, V)`
sequence logits), and `num_items_in_batch` makes the loss the sum over kept items divided by that number (the
`Trainer`'s gradient-accumulation contract).

Per kept item with logits `z` (K classes) and target `y` (or a soft target distribution `t`):

- `ce`:     `CE = logsumexp(z) - z_y`
- `ls`:     `CE + alpha * (z_y - mean_k z_k)`, identical to `F.cross_entropy(..., label_smoothing=alpha)`
- `maxsup`: `CE + alpha * (max_k z_k - mean_k z_k)`

Everything is computed in float32 (float64 for float64 logits) whatever the logits' dtype; the gradient comes back
in the logits' dtype.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import _fused

__all__ = [
    "LOSSES",
    "LabelSmoothingLoss",
    "MaxSupLoss",
    "cross_entropy",
    "get_loss_fn",
    "label_smoothing_cross_entropy",
    "maxsup_cross_entropy",
]

_REDUCTIONS = ("none", "sum", "mean")
# Soft targets are checked to be distributions; mixup of bf16 one-hots is only accurate to ~1e-2.
_SOFT_TARGET_ATOL = 1e-2


def _check_inputs(kind: str, logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int,
                  reduction: str, num_items_in_batch) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 2:
        raise ValueError(
            "logits must be a floating-point tensor of shape (N, K) or (B, T, V), classes last; got "
            f"{type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}."
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}.")
    if num_items_in_batch is not None and reduction == "none":
        raise ValueError("num_items_in_batch divides the summed loss: it cannot be used with reduction='none'.")
    if kind != "ce" and not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"alpha must be in [0, 1); got {alpha}.")
    num_classes = logits.shape[-1]
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"soft targets must have the logits' shape {tuple(logits.shape)}; got {tuple(target.shape)}. "
                "For class indices pass an integer tensor of shape logits.shape[:-1]."
            )
        target = target.detach()
        row_sums = target.float().sum(-1)
        if bool((target < 0).any()) or not torch.allclose(row_sums, torch.ones_like(row_sums), atol=_SOFT_TARGET_ATOL):
            worst = (row_sums - 1).abs().argmax()
            raise ValueError(
                "soft targets must be probability distributions over the last dimension (non-negative, summing "
                f"to 1); a row sums to {row_sums.flatten()[worst].item():.4f}. Normalise them with "
                "`target / target.sum(-1, keepdim=True)`."
            )
        return
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"labels must be integer class indices or float soft targets; got dtype {target.dtype}.")
    if target.shape != logits.shape[:-1]:
        hint = ""
        if target.shape == (*logits.shape[:-1], 1):
            hint = " Squeeze the labels' last dimension."
        raise ValueError(
            f"labels of shape {tuple(target.shape)} do not match logits of shape {tuple(logits.shape)}: class "
            f"indices need shape {tuple(logits.shape[:-1])} (the logits' shape without the class dimension).{hint}"
        )
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = target[bad][0].item()
        raise ValueError(
            f"label value {value} is outside [0, {num_classes}): the logits have K={num_classes} classes. "
            f"Set the model's num_labels to the number of classes, or mark positions to skip with "
            f"ignore_index={ignore_index}."
        )


def _eager(kind: str, logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int,
           return_components: bool):
    """Reference implementation: plain PyTorch ops on float32 copies, differentiated by autograd.

    Returns per-item losses of shape `logits.shape[:-1]` (0 where ignored), the kept mask (or None for soft targets)
    and, when asked, the components as a dict of 0-dim tensors.
    """
    num_classes = logits.shape[-1]
    # Half precisions are upcast; float64 stays float64 (gradcheck).
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, num_classes)
    lse = torch.logsumexp(z, dim=-1)
    if target.is_floating_point():
        soft = target.float().reshape(-1, num_classes)
        keep = None
        z_target = (soft * z).sum(-1)
    else:
        labels = target.reshape(-1)
        keep = labels != ignore_index
        z_target = z.gather(1, labels.masked_fill(~keep, 0).unsqueeze(1)).squeeze(1)
    ce = lse - z_target
    reg = None
    if kind == "ls":
        reg = z_target - z.mean(-1)
    elif kind == "maxsup":
        # torch.max sends the gradient to the first maximal index, the convention the fused kernel follows.
        reg = z.max(-1).values - z.mean(-1)
    per_item = ce if reg is None else ce + alpha * reg
    if keep is not None:
        # masked_fill rather than a product: it keeps NaN/inf of padded rows out of the result.
        per_item = per_item.masked_fill(~keep, 0.0)
    components = None
    if return_components:
        with torch.no_grad():
            n_kept = (keep.sum() if keep is not None else torch.tensor(z.shape[0], device=z.device)).clamp_min(1)
            mask = keep if keep is not None else torch.ones_like(ce, dtype=torch.bool)

            def kept_mean(values):
                return (values.masked_fill(~mask, 0.0).sum() / n_kept).float()

            components = {"ce": kept_mean(ce.detach())}
            if reg is not None:
                components["reg"] = kept_mean(reg.detach())
            if kind == "ls" and keep is not None:
                gap = z_target.detach().unsqueeze(1) - z.detach()
                components["ls_regularization"] = kept_mean(gap.clamp_min(0).sum(-1) / num_classes)
                components["ls_error_amplification"] = kept_mean(gap.clamp_max(0).sum(-1) / num_classes)
    return per_item.view(logits.shape[:-1]), keep, components


def _reduce(per_item: torch.Tensor, keep: torch.Tensor | None, reduction: str, num_items_in_batch):
    if num_items_in_batch is not None:
        # A micro-batch of the accumulated batch may be fully ignored; an all-ignored *accumulated* batch gives 0/1.
        if isinstance(num_items_in_batch, torch.Tensor):
            denominator = num_items_in_batch.to(per_item.device, torch.float32).clamp_min(1)
        else:
            denominator = max(float(num_items_in_batch), 1.0)
        return per_item.sum() / denominator
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    n_kept = per_item.numel() if keep is None else keep.sum().clamp_min(1)
    return per_item.sum() / n_kept


def _use_fused(logits: torch.Tensor, inplace_backward: bool) -> bool:
    if logits.device.type != "cpu" or logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    # Below ~64k elements per-call overhead dominates and eager ops are as fast.
    return _fused.is_available() and (inplace_backward or logits.numel() >= 1 << 16)


def _loss(kind, input, target, alpha, ignore_index, reduction, num_items_in_batch, inplace_backward,
          return_components):
    _check_inputs(kind, input, target, alpha, ignore_index, reduction, num_items_in_batch)
    alpha = float(alpha) if kind != "ce" else 0.0
    if _use_fused(input, inplace_backward):
        return _fused.fused_cross_entropy(
            input, target, kind=kind, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
            num_items_in_batch=num_items_in_batch, inplace_backward=inplace_backward,
            return_components=return_components,
        )
    per_item, keep, components = _eager(kind, input, target, alpha, ignore_index, return_components)
    loss = _reduce(per_item, keep, reduction, num_items_in_batch)
    return (loss, components) if return_components else loss


_SHARED_ARGS_DOC = """
    Args:
        input (`torch.Tensor` of shape `(N, K)` or `(B, T, V)`):
            Unnormalised logits, classes in the last dimension; float32, float16 or bfloat16.
        target (`torch.Tensor`):
            Either class indices (integer, shape `input.shape[:-1]`, `ignore_index` marks positions to skip) or soft
            targets (float, shape `input.shape`, each row a probability distribution, e.g. from mixup/cutmix).
        alpha (`float`):
            Weight of the regulariser, in `[0, 1)`. Pass the current value of the schedule (see
            `hf_maxsup.schedules`); the loss has no state of its own.
        ignore_index (`int`, *optional*, defaults to -100):
            Label value excluded from every term of the loss (cross-entropy, max and mean).
        reduction (`str`, *optional*, defaults to `"mean"`):
            `"none"` (per-item losses, 0 where ignored), `"sum"` or `"mean"` (over kept items; 0 if none is kept).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            When given, the loss is the sum over kept items divided by it, whatever `reduction` says. The `Trainer`
            passes the number of kept labels in the whole accumulated (and, with `average_tokens_across_devices`,
            all-process) batch, which makes gradient accumulation and data parallelism exact.
        inplace_backward (`bool`, *optional*, defaults to `False`):
            Write the gradient into `input`'s own buffer during the forward pass, saving a logits-sized allocation.
            Only for callers that never read `input` again (the logits are overwritten). Used on CPU when the
            compiled kernel is available; otherwise ignored.
        return_components (`bool`, *optional*, defaults to `False`):
            Also return a dict of detached 0-dim float32 tensors, means over kept items: `"ce"`, `"reg"` (the
            regulariser before the `alpha` weight) and, for LS with class indices, its decomposition into
            `"ls_regularization"` and `"ls_error_amplification"` (MaxSup paper, Corollary 3.4).

    Returns:
        `torch.Tensor`: the loss (float32), or `(loss, components)` when `return_components=True`.
"""


def cross_entropy(input, target, alpha: float = 0.0, *, ignore_index: int = -100, reduction: str = "mean",
                  num_items_in_batch=None, inplace_backward: bool = False, return_components: bool = False):
    """Plain cross-entropy, the baseline. `alpha` is accepted, and ignored, so that all registered losses share a
    signature.
    """
    return _loss("ce", input, target, alpha, ignore_index, reduction, num_items_in_batch, inplace_backward,
                 return_components)


def label_smoothing_cross_entropy(input, target, alpha: float, *, ignore_index: int = -100, reduction: str = "mean",
                                  num_items_in_batch=None, inplace_backward: bool = False,
                                  return_components: bool = False):
    """Label smoothing: `CE + alpha * (z_y - mean_k z_k)`, i.e. cross-entropy against `(1 - alpha) * t + alpha / K`.

    Matches `F.cross_entropy(input, target, label_smoothing=alpha)` (with classes moved last) and transformers'
    `label_smoothing_factor`. With soft targets, `z_y` becomes `sum_k t_k z_k`: the given distribution is smoothed.
    """
    return _loss("ls", input, target, alpha, ignore_index, reduction, num_items_in_batch, inplace_backward,
                 return_components)


def maxsup_cross_entropy(input, target, alpha: float, *, ignore_index: int = -100, reduction: str = "mean",
                         num_items_in_batch=None, inplace_backward: bool = False, return_components: bool = False):
    """Max Suppression: `CE + alpha * (max_k z_k - mean_k z_k)`.

    The regulariser penalises the top-1 logit whatever its class, so unlike LS it does not push the true class down
    on misclassified items. It does not involve the target, so it applies unchanged to soft targets. Ties in the max
    follow `torch.max` (the gradient goes to the first maximal index).
    """
    return _loss("maxsup", input, target, alpha, ignore_index, reduction, num_items_in_batch, inplace_backward,
                 return_components)


for _fn in (cross_entropy, label_smoothing_cross_entropy, maxsup_cross_entropy):
    _fn.__doc__ += _SHARED_ARGS_DOC

LOSSES: dict[str, Callable] = {
    "ce": cross_entropy,
    "ls": label_smoothing_cross_entropy,
    "maxsup": maxsup_cross_entropy,
}


def get_loss_fn(name: str) -> Callable:
    """Return the loss function registered under `name` (`"ce"`, `"ls"` or `"maxsup"`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}.")
    return LOSSES[name]


class _AlphaLoss(nn.Module):
    _fn: Callable

    def __init__(self, alpha: float, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        self.alpha, self.ignore_index, self.reduction = alpha, ignore_index, reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        return type(self)._fn(input, target, self.alpha, ignore_index=self.ignore_index, reduction=self.reduction,
                              num_items_in_batch=num_items_in_batch)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class MaxSupLoss(_AlphaLoss):
    """`nn.Module` form of [`maxsup_cross_entropy`]: `MaxSupLoss(alpha=0.1)(logits, labels)`.

    Args:
        alpha (`float`): weight of the max-suppression term, in `[0, 1)`.
        ignore_index (`int`, *optional*, defaults to -100): label value to skip.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"`.
    """

    _fn = staticmethod(maxsup_cross_entropy)


class LabelSmoothingLoss(_AlphaLoss):
    """`nn.Module` form of [`label_smoothing_cross_entropy`]: `LabelSmoothingLoss(alpha=0.1)(logits, labels)`.

    Args:
        alpha (`float`): smoothing factor, in `[0, 1)`.
        ignore_index (`int`, *optional*, defaults to -100): label value to skip.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"`.
    """

    _fn = staticmethod(label_smoothing_cross_entropy)
