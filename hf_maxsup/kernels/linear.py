"""The fused linear loss of the engine: the loss of `hidden @ weight.T + bias` chunk by chunk, as torch operators
under one autograd `Function`.

Per chunk of kept rows (the rows of ignored labels are left out), the chunk's hidden states are gathered, its logits
computed by one matmul into a buffer that every chunk reuses, their loss and gradient (already divided by the
denominator) come from one in-place pass of the selected backend, and the chunk's contributions to the gradients of
`hidden`, `weight` and `bias` from two more matmuls (summed in float32 for half-precision inputs). Beyond the inputs
and those gradients, a call holds one chunk of logits and a few chunk-sized or row-sized tensors.

- `hf_maxsup::fused_linear_loss(hidden, weight, bias?, labels, num_items?, ...) -> (value, totals, grad_hidden,
  grad_weight, grad_bias, factors)`: the loss and, with `want_grad`, the gradients; `totals` and `factors` as in
  `ops.py`; empty tensors for what is not computed; `grad_weight` and `grad_bias` in float32 for half inputs.
- `hf_maxsup::fused_linear_loss_rows_backward(...)`: the gradients of `reduction="none"`, whose per-row weights
  come in backward (a second sweep).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .function import refuse_vmap
from .job import SUMS
from .reduction import denominator, grad_scales, num_items_operands, sums_dtype

__all__ = ["fused_linear_loss"]


def _acc_dtype(weight: Tensor) -> torch.dtype:
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def _sweep(h, weight, bias, labels, kept, settings, grad_scale=None, row_scale=None, row_loss=None):
    """One pass over the rows `kept` (indices into `h` `(N, H)`, or `None` for all) in chunks: the sums of `SUMS`
    and, with `grad_scale` (the factor the backend writes each row's gradient with) or `row_scale` (one factor per
    kept row), the gradients `(grad_h (N, H), grad_weight, grad_bias)`; `labels` are those of the kept rows."""
    loss, alpha, ignore_index, chunk_size, want_split = settings
    want_grad = grad_scale is not None or row_scale is not None
    n, device, acc = labels.shape[0], h.device, _acc_dtype(weight)
    buffer = torch.empty(min(chunk_size, n), weight.shape[0], dtype=weight.dtype, device=device)
    grads = (None, None, None)
    if want_grad:
        grad_h = torch.zeros_like(h) if kept is not None else torch.empty_like(h)
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=device) if bias is not None else None
        grads = (grad_h, torch.zeros(weight.shape, dtype=acc, device=device), grad_b)
    sums = torch.zeros(len(SUMS), dtype=sums_dtype(device), device=device)
    for start in range(0, n, chunk_size):
        rows = slice(start, start + chunk_size)
        h_chunk = h[rows] if kept is None else h.index_select(0, kept[rows])
        logits = buffer[: h_chunk.shape[0]]
        if bias is not None:
            torch.addmm(bias, h_chunk, weight.t(), out=logits)
        else:
            torch.mm(h_chunk, weight.t(), out=logits)
        sums += ops.rows_loss_and_grad_(
            logits, labels[rows], loss=loss, alpha=alpha, ignore_index=ignore_index, want_grad=want_grad,
            want_components=want_split, row_loss=row_loss[rows] if row_loss is not None else None,
            grad_scale=grad_scale,
        ).to(sums.dtype)  # fmt: skip
        if want_grad:
            _accumulate(grads, logits, h_chunk, weight, rows if kept is None else kept[rows], row_scale, rows)
    return sums, grads


def _accumulate(grads, logits, h_chunk, weight, where, row_scale, rows) -> None:
    """Adds one chunk's contributions (its logits' gradient in `logits`) to the gradients; `where` are the chunk's
    rows of `grad_h` (a slice, or indices)."""
    grad_h, grad_w, grad_b = grads
    if row_scale is not None:
        logits.mul_(row_scale[rows].unsqueeze(-1).to(logits.dtype))
    if isinstance(where, slice):
        torch.mm(logits, weight, out=grad_h[where])
    else:
        grad_h.index_copy_(0, where, logits @ weight)
    # a transposed view, which the BLAS reads as it is; half inputs: upcast chunks summed into float32
    grad_w.addmm_(logits.t().to(grad_w.dtype), h_chunk.to(grad_w.dtype))
    if grad_b is not None:
        grad_b += logits.sum(0, dtype=grad_b.dtype)


def _kept_rows(hidden: Tensor, labels: Tensor, ignore_index: int):
    """`(h (N, H), labels of the kept rows, their indices or None when every row is kept)`."""
    h = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1).to(device=h.device, dtype=torch.int64)
    kept = labels.ne(ignore_index).nonzero().squeeze(1)  # sizes the matmuls: a host synchronisation on a GPU
    if kept.numel() == labels.numel():
        return h, labels, None
    return h, labels.index_select(0, kept), kept


@torch.library.custom_op("hf_maxsup::fused_linear_loss", mutates_args=())
def _fused_linear_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    num_items: Tensor | None,
    num_items_value: float | None,
    loss: str,
    alpha: float,
    ignore_index: int,
    reduction: str,
    chunk_size: int,
    want_split: bool,
    want_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The loss of `hidden @ weight.T + bias` and, with `want_grad`, its gradients (see the module's docstring)."""
    h, y, kept = _kept_rows(hidden, labels, ignore_index)
    device, n_kept = h.device, torch.full((), y.shape[0], device=h.device)
    settings = (loss, alpha, ignore_index, chunk_size, want_split)
    divisor = denominator(reduction, num_items if num_items is not None else num_items_value, n_kept)
    grad_scale, post = grad_scales(weight.dtype, alpha, divisor, device)
    row_loss = torch.empty(y.shape[0], dtype=torch.float32, device=device) if reduction == "none" else None
    sums, grads = _sweep(h, weight, bias, y, kept, settings, grad_scale=grad_scale if want_grad else None,
                         row_loss=row_loss)  # fmt: skip
    if row_loss is None:
        value = (sums[0] / divisor).float()
    else:
        value = (
            row_loss if kept is None else h.new_zeros(h.shape[0], dtype=torch.float32).index_copy_(0, kept, row_loss)
        )
        value = value.view(labels.shape)
    totals = torch.cat([sums, n_kept.to(sums.dtype).reshape(1)])
    factors = torch.stack([torch.as_tensor(post, dtype=torch.float32, device=device), grad_scale * post])
    grad_h, grad_w, grad_b = (g if g is not None else hidden.new_empty(0) for g in grads)  # distinct: no aliases
    return value, totals, grad_h.view(hidden.shape) if want_grad else grad_h, grad_w, grad_b, factors


@_fused_linear_loss.register_fake
def _(hidden, weight, bias, labels, num_items, num_items_value, loss, alpha, ignore_index, reduction, chunk_size,
      want_split, want_grad):  # fmt: skip
    value = hidden.new_empty(labels.shape if reduction == "none" else (), dtype=torch.float32)
    totals = hidden.new_empty(len(SUMS) + 1, dtype=sums_dtype(hidden.device))
    acc, factors = _acc_dtype(weight), hidden.new_empty(2, dtype=torch.float32)
    if not want_grad:
        return value, totals, hidden.new_empty(0), hidden.new_empty(0), hidden.new_empty(0), factors
    grad_b = hidden.new_empty(weight.shape[0], dtype=acc) if bias is not None else hidden.new_empty(0)
    grad_w = hidden.new_empty(weight.shape, dtype=acc)
    return value, totals, torch.empty_like(hidden), grad_w, grad_b, factors


@torch.library.custom_op("hf_maxsup::fused_linear_loss_rows_backward", mutates_args=())
def _rows_backward(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    row_weights: Tensor,
    loss: str,
    alpha: float,
    ignore_index: int,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of `sum_rows row_weights * loss_row` (`reduction="none"`): a second sweep."""
    h, y, kept = _kept_rows(hidden, labels, ignore_index)
    row_scale = row_weights.reshape(-1).float()
    row_scale = row_scale if kept is None else row_scale.index_select(0, kept)
    _, (grad_h, grad_w, grad_b) = _sweep(h, weight, bias, y, kept, (loss, alpha, ignore_index, chunk_size, False),
                                         row_scale=row_scale)  # fmt: skip
    return grad_h.view(hidden.shape), grad_w, grad_b if grad_b is not None else hidden.new_empty(0)


@_rows_backward.register_fake
def _(hidden, weight, bias, labels, row_weights, loss, alpha, ignore_index, chunk_size):
    acc = _acc_dtype(weight)
    grad_b = hidden.new_empty(weight.shape[0], dtype=acc) if bias is not None else hidden.new_empty(0)
    return torch.empty_like(hidden), hidden.new_empty(weight.shape, dtype=acc), grad_b


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(hidden, weight, bias, labels, num_items, num_items_value, settings, want_split, want_grad):
        return _fused_linear_loss(hidden, weight, bias, labels, num_items, num_items_value, *settings, want_split,
                                  want_grad)  # fmt: skip

    @staticmethod
    def setup_context(ctx, inputs, output):
        hidden, weight, bias, labels, _, _, settings, _, _ = inputs
        _, totals, grad_h, grad_w, grad_b, factors = output
        ctx.mark_non_differentiable(totals, grad_h, grad_w, grad_b, factors)
        ctx.set_materialize_grads(False)
        ctx.settings, ctx.dtype = settings, weight.dtype
        if settings[3] == "none":  # the gradients come from a second sweep, with the rows' weights
            ctx.save_for_backward(hidden, weight, bias, labels)
        else:
            ctx.save_for_backward(grad_h, grad_w, grad_b if bias is not None else None, factors)

    @staticmethod
    def backward(ctx, grad_output, *_):
        if torch.is_grad_enabled():  # create_graph=True: autograd would record gradients that have no graph
            raise RuntimeError(
                "hf_maxsup fused linear loss: double backward (create_graph=True, e.g. a gradient penalty) is not "
                "supported: its gradients are computed chunk by chunk without a graph. Use the logit losses of "
                "hf_maxsup.losses on the logits (hidden @ weight.T + bias), whose double backward is exact."
            )
        loss, alpha, ignore_index, reduction, chunk_size = ctx.settings
        if reduction == "none":
            hidden, weight, bias, labels = ctx.saved_tensors
            grad_h, grad_w, grad_b = _rows_backward(hidden, weight, bias, labels, grad_output, loss, alpha,
                                                    ignore_index, chunk_size)  # fmt: skip
            grad_b = grad_b if bias is not None else None
        else:
            if not torch.compiler.is_compiling():  # in eager the buffers are scaled in place and handed over
                if getattr(ctx, "handed_over", False):
                    raise RuntimeError(
                        "hf_maxsup fused linear loss: backward twice through the same loss is not supported (the "
                        "gradients were handed over). Recompute the loss."
                    )
                ctx.handed_over = True
            grad_h, grad_w, grad_b, factors = ctx.saved_tensors
            factor = grad_output.to(torch.float32) * factors[0]
            for grad in (grad_h, grad_w, grad_b):
                if grad is not None:
                    ops.scale_grad_(grad, factor)
        grad_w = grad_w.to(ctx.dtype)
        return grad_h, grad_w, grad_b.to(ctx.dtype) if grad_b is not None else None, *(None,) * 6


def fused_linear_loss(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    loss: str,
    alpha: float,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    chunk_size: int,
    want_split: bool = False,
) -> tuple[Tensor, Tensor]:
    """CE / LS / MaxSup of `hidden @ weight.T + bias` against int64 `labels`, in chunks of `chunk_size` rows, with
    the gradients of `hidden`, `weight` and `bias` computed in the forward. Arguments as in `hf_maxsup.linear`
    (which validates them). Double backward is refused; `torch.compile` traces it without a graph break.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the loss, and the `totals` of the components (see `ops.py`).
    """
    refuse_vmap(hidden, weight, labels)
    num_items, num_items_value = num_items_operands(num_items_in_batch)
    settings = (loss, float(alpha), ignore_index, reduction, chunk_size)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if needs_grad:
        want_grad = reduction != "none"  # "none": the gradients need the rows' weights of backward
        value, totals, *_ = _FusedLinearLoss.apply(hidden, weight, bias, labels, num_items, num_items_value,
                                                    settings, want_split, want_grad)  # fmt: skip
    else:
        value, totals, *_ = _fused_linear_loss(hidden, weight, bias, labels, num_items, num_items_value, *settings,
                                               want_split, False)  # fmt: skip
    return value, totals
