"""The checks every loss of hf_maxsup makes of its inputs and options before any work, each refusal written once: the
logit losses of `hf_maxsup.losses` and the fused linear losses of `hf_maxsup.linear` share them.

Checks of shapes, dtypes and options cost nothing. Checks of values (every label in range, soft targets that are
distributions) read a result back to the host, the one synchronisation of a call on a GPU; they are made only where
values can be read: not while `torch.compile` traces the call (a graph must not wait for the device) and not on meta
tensors. There the kernels themselves guard the labels: see [`values_readable`].
"""

from __future__ import annotations

import math
import numbers

import torch

from .loss_names import check_loss_name

__all__ = [
    "REDUCTIONS",
    "check_label_range",
    "check_logit_inputs",
    "check_loss_options",
    "check_teacher",
    "class_indices",
    "values_readable",
]

REDUCTIONS = ("none", "sum", "mean")
# Soft targets are checked to be distributions; mixup of bf16 one-hots is only accurate to ~1e-2.
_SOFT_TARGET_ATOL = 1e-2


def values_readable(x: torch.Tensor) -> bool:
    """Whether the checks may read `x`'s values on the host: not while `torch.compile` traces the call, and not for
    meta tensors, which have none.

    Where they may not, a label outside `[0, K)` is not refused before the kernels run: the C kernel raises
    `IndexError` (on CPU), the Triton and torch backends give that row a NaN loss and a NaN gradient without reading
    out of bounds, so that the loss of the batch is NaN.
    """
    return not torch.compiler.is_compiling() and x.device.type != "meta"


def class_indices(target: torch.Tensor) -> torch.Tensor:
    """Integer labels as int64, the one dtype the checks and every backend read: a uint8 label 156 stays class 156
    (it never equals `ignore_index=-100`, which a uint8 comparison would wrap to 156)."""
    return target if target.dtype == torch.int64 else target.to(torch.int64)


def check_label_range(target: torch.Tensor, num_classes: int, ignore_index: int, classes: str) -> None:
    """Check that every class index of `target` other than `ignore_index` is in `[0, num_classes)`.

    Args:
        target (`torch.Tensor`): int64 class indices (see [`class_indices`]).
        num_classes (`int`): the number of classes the model scores.
        ignore_index (`int`): the label value that marks positions to skip.
        classes (`str`): where `num_classes` comes from, for the message, e.g. `"the logits have K=5 classes"`.

    Raises:
        `ValueError`: naming the first label out of range.
    """
    if not values_readable(target):
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):  # the one host synchronisation of a call on a GPU: a wrong label must not read out of bounds
        value = target[bad][0].item()
        raise ValueError(
            f"label value {value} is outside [0, {num_classes}): {classes}. Set the model's num_labels (or a language "
            f"model's vocabulary size) to the number of classes, or mark positions to skip with "
            f"ignore_index={ignore_index}."
        )


def _check_alpha(loss: str, alpha) -> None:
    if isinstance(alpha, torch.Tensor) and alpha.requires_grad:
        raise ValueError(
            "alpha is a tensor that requires grad, but the losses take alpha as a number and give it no gradient. "
            "Pass alpha.detach() (or a float); a learnt weight of the regulariser is not supported."
        )
    if loss == "ce":
        return  # accepted and ignored
    try:
        value = float(alpha)
    except (TypeError, ValueError, RuntimeError):
        value = None
    if value is None or not 0.0 <= value < 1.0:
        raise ValueError(
            f"alpha must be in [0, 1); got {alpha!r}. Pass the regulariser's weight at this point of training as a "
            "number, e.g. hf_maxsup.alpha_at(progress, 'linear', 0.1)."
        )


def check_loss_options(loss: str, alpha: float = 0.0, reduction: str = "mean", num_items_in_batch=None) -> None:
    """Check the options that every loss of hf_maxsup takes. The defaults pass, so that a caller checks only what it
    has.

    Args:
        loss (`str`): the loss, `"ce"`, `"ls"` or `"maxsup"`.
        alpha (`float`, *optional*, defaults to 0.0): the weight of the regulariser, a number in `[0, 1)` (any for
            `"ce"`, which ignores it); never a tensor that requires grad.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"`.
        num_items_in_batch (`int`, `float` or `torch.Tensor`, *optional*): the divisor of the summed loss, which
            `reduction="none"` does not have: a count, so a Python number must be >= 0 (0, an accumulated batch whose
            labels are all ignored, divides by 1, as any count below 1). A tensor is not read (that would wait for
            the device): the same, and a negative or NaN count in it gives a wrong or NaN loss.

    Raises:
        `ValueError`: saying which option is wrong and what it may be.
    """
    check_loss_name(loss)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}.")
    n = num_items_in_batch
    if n is not None and reduction == "none":
        raise ValueError("num_items_in_batch divides the summed loss: it cannot be used with reduction='none'.")
    if n is not None and not isinstance(n, torch.Tensor):
        if isinstance(n, bool) or not isinstance(n, numbers.Real) or math.isnan(n) or n < 0:
            raise ValueError(
                f"num_items_in_batch must be a number >= 0 (the count of kept labels the summed loss is divided by); "
                f"got {n!r}. Leave it unset to average over the kept labels of this call."
            )
    _check_alpha(loss, alpha)


def _row_name(flat_index: torch.Tensor, shape) -> str:
    index = torch.unravel_index(flat_index.cpu(), tuple(shape)) if len(shape) else ()
    return str(tuple(int(i) for i in index)) if len(shape) != 1 else str(int(flat_index))


def _check_soft_targets(logits: torch.Tensor, target: torch.Tensor) -> None:
    if target.shape != logits.shape:
        raise ValueError(
            f"soft targets must have the logits' shape {tuple(logits.shape)}; got {tuple(target.shape)}. "
            "For class indices pass an integer tensor of shape logits.shape[:-1]."
        )
    if not values_readable(target):
        return
    target = target.detach()
    # Row-sized reductions only (no logits-sized temporaries), and one host synchronisation for the whole check.
    row_min = target.amin(-1).float()
    row_sums = target.sum(-1, dtype=torch.float32)
    if bool(((row_min >= 0) & ((row_sums - 1).abs() <= _SOFT_TARGET_ATOL)).all()):
        return
    if bool((row_min < 0).any()):
        worst = row_min.argmin()
        raise ValueError(
            f"soft targets must be probability distributions over the last dimension; row "
            f"{_row_name(worst, row_min.shape)} has a negative entry ({row_min.flatten()[worst].item():.4g}). Clip "
            "them with `target.clamp_min(0)` (then renormalise) or check how the targets are mixed."
        )
    worst = (row_sums - 1).abs().argmax()
    raise ValueError(
        f"soft targets must be probability distributions over the last dimension (non-negative, summing to 1); "
        f"row {_row_name(worst, row_sums.shape)} sums to {row_sums.flatten()[worst].item():.4f}. Normalise them "
        "with `target / target.sum(-1, keepdim=True)`."
    )


def _check_labels(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"labels must be integer class indices or float soft targets; got dtype {target.dtype}.")
    if target.shape != logits.shape[:-1]:
        hint = " Squeeze the labels' last dimension." if target.shape == (*logits.shape[:-1], 1) else ""
        raise ValueError(
            f"labels of shape {tuple(target.shape)} do not match logits of shape {tuple(logits.shape)}: class "
            f"indices need shape {tuple(logits.shape[:-1])} (the logits' shape without the class dimension).{hint}"
        )
    labels = class_indices(target)
    check_label_range(labels, logits.shape[-1], ignore_index, f"the logits have K={logits.shape[-1]} classes")
    return labels


def check_logit_inputs(loss, logits, target, alpha, ignore_index, reduction, num_items_in_batch) -> torch.Tensor:
    """Checks the inputs of a logit loss (`hf_maxsup.losses`): logits `(..., K)`, class indices of shape
    `logits.shape[:-1]` in range or soft targets of the logits' shape that are distributions, and the options.

    Returns:
        `torch.Tensor`: the target to compute with: int64 class indices, or the soft targets as given.

    Raises:
        `ValueError`: naming what is wrong and the fix.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 2:
        raise ValueError(
            "logits must be a floating-point tensor of shape (N, K) or (B, T, V), classes last; got "
            f"{type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}."
        )
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a tensor of class indices or soft targets; got {type(target).__name__}.")
    check_loss_options(loss, alpha, reduction, num_items_in_batch)
    if target.is_floating_point():
        _check_soft_targets(logits, target)
        return target
    return _check_labels(logits, target, ignore_index)


def check_teacher(input, teacher_logits, distill_alpha, distill_temperature) -> None:
    """Checks the teacher's logits (the student's shape, floating point) and the distillation's weight (>= 0) and
    temperature (> 0).

    Raises:
        `ValueError`: naming what is wrong.
    """
    if (
        not isinstance(teacher_logits, torch.Tensor)
        or not teacher_logits.is_floating_point()
        or (isinstance(input, torch.Tensor) and teacher_logits.shape != input.shape)
    ):
        raise ValueError(
            f"teacher_logits must be a floating-point tensor of the student's logits' shape "
            f"{tuple(getattr(input, 'shape', ()))}; got {type(teacher_logits).__name__} "
            f"{tuple(getattr(teacher_logits, 'shape', ()))}. Teacher and student must share the classes."
        )
    if not float(distill_alpha) >= 0:
        raise ValueError(f"distill_alpha must be >= 0; got {distill_alpha}.")
    if not float(distill_temperature) > 0:
        raise ValueError(f"distill_temperature must be > 0; got {distill_temperature}.")
