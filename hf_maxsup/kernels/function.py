"""One call of the engine: the rows and targets laid out for the selected backend, its one pass (loss and gradient
together), the reduction, and the autograd `Function` whose backward hands over the gradient the forward stored."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import differentiable
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
    """Runs the backend over the rows; returns `(loss, grad or None, grad_scale, post factor)` and fills
    `call.components`."""
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
    return loss, grad, grad_scale, post


def _unit(ctx, grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What each row's unscaled gradient is multiplied by: `grad_output` per row (`reduction="none"`), else
    `grad_output / denominator`; broadcastable over the logits, in `dtype`."""
    if ctx.call.reduction == "none":
        return grad_output.to(dtype).unsqueeze(-1)
    return grad_output.to(dtype) * ctx.grad_scale.to(dtype) * ctx.post


def _graph_backward(ctx, grad_output: torch.Tensor):
    """The backward that autograd records (`create_graph=True`): the gradients from the differentiable formulas of
    the saved logits, so that their own derivatives (a gradient penalty's) are right."""
    logits, target, teacher = ctx.saved_tensors
    if logits is None:
        raise RuntimeError(
            "hf_maxsup fused loss: double backward (create_graph=True) needs the logits, which inplace_backward=True "
            "overwrote with their gradient. Compute the loss with inplace_backward=False (in MaxSupTrainer: "
            "MaxSupTrainingArguments(loss_inplace_backward=False))."
        )
    call = ctx.call
    soft = target if target.is_floating_point() else None
    unit = _unit(ctx, grad_output, torch.float64 if logits.dtype == torch.float64 else torch.float32)
    settings = dict(loss=call.loss, alpha=call.alpha)
    grad_logits = differentiable.logits_grad(
        logits,
        None if soft is not None else target,
        soft,
        teacher,
        ignore_index=call.ignore_index,
        distill_alpha=call.distill_alpha,
        temperature=call.temperature,
        **settings,
    )
    grad_target = None
    if ctx.needs_input_grad[1]:
        grad_target = (differentiable.soft_target_grad(logits, **settings) * unit).to(target.dtype)
    return (grad_logits * unit).to(logits.dtype), grad_target, None, None


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, call, inplace_backward):
        loss, grad, grad_scale, post = _execute(call, logits, target, inplace_backward, logits.requires_grad)
        ctx.call, ctx.grad, ctx.grad_scale, ctx.post, ctx.shape = call, grad, grad_scale, post, logits.shape
        # The logits are kept for the soft targets' gradient and for double backward (read only there), unless they
        # hold the gradient now.
        ctx.save_for_backward(None if inplace_backward else logits, target, call.teacher)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            return _graph_backward(ctx, grad_output)
        grad_target = None
        if ctx.needs_input_grad[1]:  # soft targets that require grad (never in place: see fused_loss)
            logits, target, _ = ctx.saved_tensors
            grad_target = differentiable.soft_target_grad(logits, loss=ctx.call.loss, alpha=ctx.call.alpha)
            grad_target = (grad_target * _unit(ctx, grad_output, grad_target.dtype)).to(target.dtype)
        if not ctx.needs_input_grad[0]:
            return None, grad_target, None, None
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
        return (grad if grad.shape == ctx.shape else grad.view(ctx.shape)), grad_target, None, None


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
    that do not require grad) the logits are never written, nor when soft targets require grad (their gradient is
    computed from the logits in backward).

    Double backward (`create_graph=True`, e.g. a gradient penalty) is exact: the backward is then the differentiable
    formula of `hf_maxsup.kernels.differentiable` on the logits, which the loss keeps; after `inplace_backward=True`
    it raises, the logits being gone.
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
    grad_target = target.is_floating_point() and target.requires_grad
    if torch.is_grad_enabled() and (logits.requires_grad or grad_target):
        # soft targets' gradient is read from the logits: they are not overwritten then
        value = _FusedLoss.apply(logits, target, call, bool(inplace_backward) and not grad_target)
    else:
        value, _, _, _ = _execute(call, logits, target, inplace_backward=False, want_grad=False)
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
