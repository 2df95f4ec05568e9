"""One call of the engine: the rows and targets laid out for the selected backend, its one pass (loss and gradient
together), the reduction, and the autograd `Function` whose backward hands over the gradient the forward stored."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from ._layout import walkable_rows
from .dispatch import select_backend
from .job import SUMS, Backend, LossJob
from .reduction import component_means, denominator, grad_scales

__all__ = ["fused_loss", "rows_loss_and_grad_"]


@dataclass(kw_only=True)
class _Call:
    """One `fused_loss` call's settings, and the components its forward fills in."""

    backend: Backend
    loss: str
    alpha: float
    ignore_index: int
    reduction: str
    num_items_in_batch: object
    want_components: bool
    teacher: torch.Tensor | None = None
    distill_alpha: float = 0.0
    temperature: float = 1.0
    components: dict = field(default_factory=dict)


def _rows_like(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`(N, K)` contiguous rows of soft targets or teacher logits, in float32 or the logits' dtype."""
    rows = x.detach().reshape(-1, z.shape[-1])
    if rows.dtype not in (torch.float32, z.dtype):
        rows = rows.float()
    return rows.to(z.device).contiguous()


def _targets(target: torch.Tensor, z: torch.Tensor):
    """`(labels, soft)`: int64 labels `(N,)` or soft targets `(N, K)` in float32 or the logits' dtype."""
    if not target.is_floating_point():
        return target.reshape(-1).to(device=z.device, dtype=torch.int64).contiguous(), None
    return None, _rows_like(target, z)


def _execute(call: _Call, logits: torch.Tensor, target: torch.Tensor, inplace_backward: bool, want_grad: bool):
    """Runs the backend over the rows; returns `(loss, grad or None, post factor)` and fills `call.components`."""
    z, layout = walkable_rows(logits, inplace_backward and want_grad)
    num_classes, device = z.shape[-1], z.device
    labels, soft = _targets(target, z)
    n_rows = layout[0] * layout[1]
    n_kept = labels.ne(call.ignore_index).sum() if labels is not None else torch.full((), n_rows, device=device)
    divisor = denominator(call.reduction, call.num_items_in_batch, n_kept)
    grad_scale, post = grad_scales(z.dtype, call.alpha, divisor, device)
    grad, grad_strides = None, (0, 0)
    if want_grad:
        grad, grad_strides = (
            (z, layout[2:])
            if inplace_backward
            else (torch.empty(z.shape, dtype=z.dtype, device=device), (layout[1] * num_classes, num_classes))
        )
    out_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    row_loss = torch.empty(n_rows, dtype=out_dtype, device=device) if call.reduction == "none" else None
    job = LossJob(
        loss=call.loss,
        alpha=call.alpha,
        ignore_index=call.ignore_index,
        logits=z,
        layout=layout,
        labels=labels,
        soft=soft,
        grad=grad,
        grad_strides=grad_strides,
        grad_scale=grad_scale,
        row_loss=row_loss,
        want_components=call.want_components,
        teacher=_rows_like(call.teacher, z) if call.teacher is not None else None,
        distill_alpha=call.distill_alpha,
        temperature=call.temperature,
    )
    sums = call.backend.forward(job) if n_rows else torch.zeros(len(SUMS), dtype=torch.float64, device=device)
    if call.want_components:
        call.components.update(
            component_means(call.loss, sums, n_kept, hard=labels is not None, distill=call.teacher is not None)
        )
    loss = row_loss.view(z.shape[:-1]) if row_loss is not None else (sums[0] / divisor).to(out_dtype)
    if inplace_backward and grad is not None:
        torch.autograd.graph.increment_version(z)
        grad = z.detach()  # a fresh alias, which autograd can adopt as .grad without a copy
    return loss, grad, post


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, call, inplace_backward):
        loss, grad, post = _execute(call, logits, target, inplace_backward, want_grad=True)
        ctx.call, ctx.grad, ctx.post, ctx.shape = call, grad, post, logits.shape
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "hf_maxsup fused loss: the stored gradient was already handed to autograd by a previous backward; "
                "backward twice through the same loss (retain_graph=True) is not supported. Recompute the loss."
            )
        ctx.grad = None  # handed over: autograd may adopt the buffer as .grad without a copy
        factor = grad_output.to(torch.float32) * ctx.post
        if ctx.call.reduction == "none":
            if not (factor.device.type == "cpu" and bool((factor == 1).all())):
                grad.mul_(factor.unsqueeze(-1))
        else:
            ctx.call.backend.scale_(grad, factor)
        return (grad if grad.shape == ctx.shape else grad.view(ctx.shape)), None, None, None


def fused_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str,
    alpha: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    inplace_backward: bool = False,
    return_components: bool = False,
    teacher: torch.Tensor | None = None,
    distill_alpha: float = 0.0,
    temperature: float = 1.0,
):
    """CE / LS / MaxSup of `logits` `(..., K)` against `target`, loss and gradient in one pass of the selected
    backend. Arguments as in `hf_maxsup.losses` (which validates them); `alpha` is 0 for `"ce"`. With `teacher`
    logits of the same shape, the distillation term of `hf_maxsup.kernels.job` is added (weight `distill_alpha`,
    temperature `temperature`) by a backend that has it.

    With `inplace_backward=True` the gradient is written into the logits' storage: the logits are destroyed (they
    hold the gradient afterwards). Their autograd version counter is bumped, so that a node that saved them for its
    own backward raises instead of using destroyed values. Without a gradient to compute (no grad mode, or logits
    that do not require grad) the logits are never written.
    """
    call = _Call(
        backend=select_backend(logits.device, logits.dtype, distill=teacher is not None),
        loss=loss,
        alpha=float(alpha),
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
        want_components=return_components,
        teacher=teacher,
        distill_alpha=float(distill_alpha),
        temperature=float(temperature),
    )
    if torch.is_grad_enabled() and logits.requires_grad:
        value = _FusedLoss.apply(logits, target, call, bool(inplace_backward))
    else:
        value, _, _ = _execute(call, logits, target, inplace_backward=False, want_grad=False)
    return (value, call.components) if return_components else value


def rows_loss_and_grad_(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: str,
    alpha: float,
    ignore_index: int = -100,
    want_grad: bool = True,
    want_components: bool = False,
    row_loss: torch.Tensor | None = None,
) -> torch.Tensor:
    """One backend pass over contiguous `(n, K)` logits with int64 labels `(n,)`, for callers that chunk their own
    rows (the fused linear losses): with `want_grad`, each row's unscaled gradient `d loss_row / d z` is written over
    the logits. Returns the sums of `SUMS` over kept rows; `row_loss` `(n,)` float32, if given, gets each row's loss.
    """
    n_rows, num_classes = logits.shape
    if n_rows == 0:
        return torch.zeros(len(SUMS), dtype=torch.float64, device=logits.device)
    job = LossJob(
        loss=loss,
        alpha=float(alpha),
        ignore_index=ignore_index,
        logits=logits,
        layout=(1, n_rows, 0, num_classes),
        labels=labels,
        soft=None,
        grad=logits if want_grad else None,
        grad_strides=(0, num_classes),
        grad_scale=torch.ones((), dtype=torch.float32, device=logits.device),
        row_loss=row_loss,
        want_components=want_components,
    )
    return select_backend(logits.device, logits.dtype).forward(job)
