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
in the logits' dtype. The loss and its gradient come from one pass of the engine's backend for the logits' device
(`hf_maxsup.kernels`: the C kernel on CPUs, Triton on GPUs, chunked PyTorch elsewhere).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import kernels
from .loss_names import LS_MASSES
from .validation import check_logit_inputs, check_loss_options, check_teacher

__all__ = [
    "LOSSES",
    "LS_MASSES",
    "LabelSmoothingLoss",
    "MaxSupLoss",
    "cross_entropy",
    "distillation_loss",
    "get_loss_fn",
    "label_smoothing_cross_entropy",
    "maxsup_cross_entropy",
    "smoothing_weight",
]


def _loss(
    loss,
    input,
    target,
    alpha,
    ignore_index,
    reduction,
    num_items_in_batch,
    inplace_backward,
    return_components,
    mass="all",
    **distill,
):
    target = check_logit_inputs(loss, input, target, alpha, ignore_index, reduction, num_items_in_batch)
    alpha = 0.0 if loss == "ce" else smoothing_weight(float(alpha), input.shape[-1], mass)
    return kernels.fused_loss(
        input,
        target,
        loss=loss,
        alpha=alpha,
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
        inplace_backward=inplace_backward,
        return_components=return_components,
        **distill,
    )


def distillation_loss(
    input,
    teacher_logits,
    target,
    alpha: float = 0.1,
    *,
    loss: str = "maxsup",
    distill_alpha: float = 0.5,
    distill_temperature: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    inplace_backward: bool = False,
    return_components: bool = False,
):
    """A student's loss on the labels plus knowledge distillation from a teacher's logits (Hinton et al., 2015):
    per kept item, `loss(input, target, alpha) + distill_alpha * T**2 * KL(softmax(teacher / T) || softmax(input / T))`
    with `T = distill_temperature` (the `T**2` keeps the term's gradient on the scale of the labels' term).

    Computed by the engine like the other losses: the gradient of both terms in the forward, no logits-sized
    temporaries beyond it (teacher logits in float32 or the student's dtype are read as they are). Items with
    `ignore_index` are out of both terms. On a CPU the `torch` backend serves it (the C kernel has no distillation
    term); on a GPU the `triton` backend.

    Args:
        input (`torch.Tensor` of shape `(N, K)` or `(B, T, V)`): the student's logits.
        teacher_logits (`torch.Tensor`, same shape as `input`): the teacher's logits; no gradient flows to them.
        target (`torch.Tensor`): class indices (or soft targets), as for the other losses.
        alpha (`float`, *optional*, defaults to 0.1): the weight of `loss`'s regulariser (unused for `"ce"`).
        loss (`str`, *optional*, defaults to `"maxsup"`): the labels' term: `"ce"`, `"ls"` or `"maxsup"`.
        distill_alpha (`float`, *optional*, defaults to 0.5): the weight of the distillation term, >= 0.
        distill_temperature (`float`, *optional*, defaults to 2.0): the temperature T, > 0.
        ignore_index, reduction, num_items_in_batch, inplace_backward: as for the other losses.
        return_components (`bool`, *optional*, defaults to `False`): also return the components of `loss` and
            `"distill"`, the KL before its weight `distill_alpha * T**2`, means over kept items (`"misclassified"` as
            for the other losses).

    Returns:
        `torch.Tensor`: the loss (float32), or `(loss, components)` when `return_components=True`.
    """
    check_teacher(input, teacher_logits, distill_alpha, distill_temperature)
    return _loss(
        loss,
        input,
        target,
        alpha,
        ignore_index,
        reduction,
        num_items_in_batch,
        inplace_backward,
        return_components,
        teacher=teacher_logits,
        distill_alpha=float(distill_alpha),
        temperature=float(distill_temperature),
    )


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
            Only for callers that never read `input` again (the logits are overwritten). Every backend honours it;
            it has no effect when no gradient is computed.
        return_components (`bool`, *optional*, defaults to `False`):
            Also return a dict of detached 0-dim float32 tensors, means over kept items: `"ce"`, `"reg"` (the
            regulariser before the `alpha` weight) and, for LS with class indices, its decomposition into
            `"ls_regularization"` and `"ls_error_amplification"` (MaxSup paper, Corollary 3.4), and for class indices
            `"misclassified"`: the fraction of kept items whose label is not the first index of the max.

    Returns:
        `torch.Tensor`: the loss (float32), or `(loss, components)` when `return_components=True`.
"""


def cross_entropy(
    input,
    target,
    alpha: float = 0.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    inplace_backward: bool = False,
    return_components: bool = False,
):
    """Plain cross-entropy, the baseline. `alpha` is accepted, and ignored, so that all registered losses share a
    signature.
    """
    return _loss(
        "ce", input, target, alpha, ignore_index, reduction, num_items_in_batch, inplace_backward, return_components
    )


def smoothing_weight(alpha: float, num_classes: int, mass: str = "all") -> float:
    """The weight `a` of `CE + a * (z_y - mean_k z_k)` that puts label-smoothing mass `alpha` as `mass` says.

    `"all"` spreads `alpha` over all K classes, the target included (target `1 - alpha + alpha / K`): torch's
    `F.cross_entropy(label_smoothing=alpha)`, transformers' `label_smoothing_factor`, timm. `"others"` gives the target
    `1 - alpha` and each other class `alpha / (K - 1)`: fairseq's `label_smoothed_cross_entropy` and tensor2tensor's
    `smoothing_cross_entropy` (which also subtracts the smoothed target's entropy, a constant that shifts the value
    so that a perfect prediction reads 0 but leaves the gradient alone). That is the same loss with
    `a = alpha * K / (K - 1)`.
    """
    if mass not in LS_MASSES:
        raise ValueError(f"mass must be one of {', '.join(LS_MASSES)}; got {mass!r}.")
    if mass == "all":
        return alpha
    if num_classes < 2:
        raise ValueError("label smoothing with mass='others' needs at least 2 classes.")
    return alpha * num_classes / (num_classes - 1)


def label_smoothing_cross_entropy(
    input,
    target,
    alpha: float,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    inplace_backward: bool = False,
    return_components: bool = False,
    mass: str = "all",
):
    """Label smoothing: `CE + alpha * (z_y - mean_k z_k)`, i.e. cross-entropy against `(1 - alpha) * t + alpha / K`.

    Matches `F.cross_entropy(input, target, label_smoothing=alpha)` (with classes moved last) and transformers'
    `label_smoothing_factor`. With soft targets, `z_y` becomes `sum_k t_k z_k`: the given distribution is smoothed.
    `mass="others"` gives fairseq's and tensor2tensor's definition instead (`1 - alpha` on the target, `alpha / (K - 1)`
    on each other class; see [`smoothing_weight`]); the logged `reg` is the same term, weighted by
    `alpha * K / (K - 1)`.
    """
    return _loss(
        "ls",
        input,
        target,
        alpha,
        ignore_index,
        reduction,
        num_items_in_batch,
        inplace_backward,
        return_components,
        mass,
    )


def maxsup_cross_entropy(
    input,
    target,
    alpha: float,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    inplace_backward: bool = False,
    return_components: bool = False,
):
    """Max Suppression: `CE + alpha * (max_k z_k - mean_k z_k)`.

    The regulariser penalises the top-1 logit whatever its class, so unlike LS it does not push the true class down
    on misclassified items. It does not involve the target, so it applies unchanged to soft targets. Ties in the max
    follow `torch.max` (the gradient goes to the first maximal index).
    """
    return _loss(
        "maxsup", input, target, alpha, ignore_index, reduction, num_items_in_batch, inplace_backward, return_components
    )


for _fn in (cross_entropy, label_smoothing_cross_entropy, maxsup_cross_entropy):
    _fn.__doc__ += _SHARED_ARGS_DOC

LOSSES: dict[str, Callable] = {"ce": cross_entropy, "ls": label_smoothing_cross_entropy, "maxsup": maxsup_cross_entropy}


def get_loss_fn(loss: str) -> Callable:
    """Return the loss function registered under the name `loss` (`"ce"`, `"ls"` or `"maxsup"`)."""
    check_loss_options(loss)
    return LOSSES[loss]


class _AlphaLoss(nn.Module):
    _fn: Callable

    def __init__(self, alpha: float, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        self.alpha, self.ignore_index, self.reduction = alpha, ignore_index, reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        return self._fn(
            input,
            target,
            self.alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            num_items_in_batch=num_items_in_batch,
        )

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
        mass (`str`, *optional*, defaults to `"all"`): `"all"` (torch, transformers) or `"others"` (fairseq,
            tensor2tensor); see [`smoothing_weight`].
    """

    def __init__(self, alpha: float, ignore_index: int = -100, reduction: str = "mean", mass: str = "all"):
        super().__init__(alpha, ignore_index, reduction)
        smoothing_weight(0.0, 2, mass)  # an unknown mass fails here, not at the first batch
        self.mass = mass

    def _fn(self, *args, **kwargs) -> torch.Tensor:
        return label_smoothing_cross_entropy(*args, mass=self.mass, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mass={self.mass!r}"
