"""One call of the engine, [`fused_loss`]: the operators of `ops.py` under one autograd `Function`, whose backward
hands over (scaled) the gradient the forward stored.

The `Function` is in the form `torch.func` needs (`forward` without `ctx`, then `setup_context`), and `torch.compile`
traces it into one graph with the operators as opaque nodes (no graph break). `torch.library`'s `register_autograd`
would not serve: it refuses an operator that mutates its input (the in-place gradient), and torch 2.13 does not
run it under `torch.func`.
"""

from __future__ import annotations

import torch

from . import differentiable, ops
from ._layout import writable_in_place
from .reduction import component_means, num_items_operands

__all__ = ["fused_loss", "refuse_vmap"]


def refuse_vmap(*tensors: torch.Tensor | None) -> None:
    """Refuses a call under `torch.vmap` (the engine's passes have no batching rule).

    Raises:
        `NotImplementedError`: saying what works instead.
    """
    if any(t is not None and torch._C._functorch.is_batchedtensor(t) for t in tensors):
        raise NotImplementedError(_VMAP_REFUSAL)


_VMAP_REFUSAL = (
    "hf_maxsup losses do not support torch.vmap. For per-sample losses call them with reduction='none' "
    "(torch.func.grad, torch.compile and meta tensors are supported)."
)


def _unit(ctx, grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What each row's unscaled gradient is multiplied by: `grad_output` per row (`reduction="none"`), else
    `grad_output / denominator`; broadcastable over the logits, in `dtype`."""
    grad_output = grad_output.to(dtype)
    return grad_output.unsqueeze(-1) if ctx.settings[3] == "none" else grad_output * ctx.factors[1].to(dtype)


def _graph_backward(ctx, grad_output: torch.Tensor, logits, target, teacher) -> tuple:
    """The backward that autograd records (`create_graph=True`): the gradients from the differentiable formulas of
    the saved logits, so that their own derivatives (a gradient penalty's) are right."""
    if logits is None:
        raise RuntimeError(
            "hf_maxsup fused loss: double backward (create_graph=True) needs the logits, which inplace_backward=True "
            "overwrote with their gradient. Compute the loss with inplace_backward=False (in MaxSupTrainer: "
            "MaxSupTrainingArguments(loss_inplace_backward=False))."
        )
    loss, alpha, ignore_index, _, distill_alpha, temperature = ctx.settings
    soft = target if target.is_floating_point() else None
    unit = _unit(ctx, grad_output, torch.float64 if logits.dtype == torch.float64 else torch.float32)
    grad_logits = differentiable.logits_grad(
        logits,
        None if soft is not None else target,
        soft,
        teacher,
        loss=loss,
        alpha=alpha,
        ignore_index=ignore_index,
        distill_alpha=distill_alpha,
        temperature=temperature,
    )
    grad_target = None
    if ctx.needs_input_grad[1]:
        grad_target = (differentiable.soft_target_grad(logits, loss=loss, alpha=alpha) * unit).to(target.dtype)
    return (grad_logits * unit).to(logits.dtype), grad_target


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(logits, target, teacher, num_items, num_items_value, settings, want_split, inplace):
        if inplace:
            value, totals, factors = ops.fused_loss_(
                logits, target, teacher, num_items, num_items_value, *settings, want_split
            )
            # The gradient is the logits now: a fresh alias, which autograd can adopt as .grad without a copy.
            return value, totals, logits.detach(), factors
        want_grad = logits.requires_grad
        return ops.fused_loss(logits, target, teacher, num_items, num_items_value, *settings, want_split, want_grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, teacher, _, _, settings, _, inplace = inputs
        _, totals, grad, factors = output
        ctx.mark_non_differentiable(totals, grad, factors)
        ctx.set_materialize_grads(False)  # no logits-sized zeros for the gradient of the `grad` output
        ctx.settings, ctx.factors = settings, factors
        # The logits are kept for the soft targets' gradient and for double backward (read only there), unless they
        # hold the gradient now.
        ctx.save_for_backward(grad, None if inplace else logits, target, teacher)

    @staticmethod
    def backward(ctx, grad_output, _totals, _grad, _factors):
        none = (None,) * 6
        if torch.is_grad_enabled():
            return *_graph_backward(ctx, grad_output, *ctx.saved_tensors[1:]), *none
        if ctx.needs_input_grad[0] and not torch.compiler.is_compiling():
            # in eager the stored buffer is scaled in place and handed over: once only
            if getattr(ctx, "handed_over", False):
                raise RuntimeError(
                    "hf_maxsup fused loss: the stored gradient was already handed to autograd by a previous "
                    "backward; backward twice through the same loss (retain_graph=True) is not supported. "
                    "Recompute the loss."
                )
            ctx.handed_over = True
        grad, logits, target, _ = ctx.saved_tensors
        grad_target = None
        if ctx.needs_input_grad[1]:  # soft targets that require grad (never in place: see fused_loss)
            grad_target = differentiable.soft_target_grad(logits, loss=ctx.settings[0], alpha=ctx.settings[1])
            grad_target = (grad_target * _unit(ctx, grad_output, grad_target.dtype)).to(target.dtype)
        if not ctx.needs_input_grad[0]:
            return None, grad_target, *none
        ops.scale_grad_(grad, grad_output.to(torch.float32) * ctx.factors[0])
        return grad, grad_target, *none

    @staticmethod
    def vmap(info, in_dims, *args):
        raise NotImplementedError(_VMAP_REFUSAL)


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
    backend. Arguments as in `hf_maxsup.losses` (which validates them; integer labels are int64 here); `alpha` is 0
    for `"ce"`. With `teacher` logits of the same shape, the distillation term of `hf_maxsup.kernels.job` is added
    (weight `distill_alpha`, temperature `temperature`) by a backend that has it.

    With `inplace_backward=True` the gradient is written into the logits' storage: the logits are destroyed (they
    hold the gradient afterwards), and their autograd version counter is bumped, so that a node that saved them for
    its own backward raises instead of using destroyed values. The logits are never written without a gradient to
    compute (no grad mode, or logits that do not require grad), when soft targets require grad (their gradient is
    computed from the logits in backward), nor when their rows overlap or are not laid out for a backend to walk
    (`expand`ed logits), inside a graph `torch.compile` traces (whether the graph reads the logits again is not known
    there; the compiler plans the buffers), nor under `torch.func` transforms: a separate buffer takes the gradient
    then.

    Double backward (`create_graph=True`, e.g. a gradient penalty) is exact: the backward is then the differentiable
    formula of `hf_maxsup.kernels.differentiable` on the logits, which the loss keeps; after `inplace_backward=True`
    it raises, the logits being gone. `torch.func.grad` works; `torch.vmap` is refused.
    """
    refuse_vmap(logits, target, teacher)
    hard = not target.is_floating_point()
    num_items, num_items_value = num_items_operands(num_items_in_batch)
    settings = (loss, float(alpha), ignore_index, reduction, float(distill_alpha), float(temperature))
    want_split = return_components and loss == "ls" and hard
    target_grad = not hard and target.requires_grad
    if torch.is_grad_enabled() and (logits.requires_grad or target_grad):
        inplace = (
            inplace_backward
            and logits.requires_grad
            and not target_grad
            and not torch.compiler.is_compiling()  # the graph may read the logits again, and tracing would see it
            and not torch._C._are_functorch_transforms_active()
            and writable_in_place(logits)
        )
        value, totals, _, _ = _FusedLoss.apply(
            logits, target, teacher, num_items, num_items_value, settings, want_split, inplace
        )
    else:
        value, totals, _, _ = ops.fused_loss(
            logits, target, teacher, num_items, num_items_value, *settings, want_split, False
        )
    if not return_components:
        return value
    return value, component_means(loss, totals, hard=hard, distill=teacher is not None)
