"""The engine's torch operators, namespace `hf_maxsup`: what `torch.compile`, `torch.export`, meta and fake tensors see
of it. Each has its real implementation (rows laid out without copies, the selected backend's one pass, the
reduction) and a fake one (the shapes and dtypes of the results, nothing computed), and takes only tensors and
numbers, so that a compiled graph holds it as one opaque node:

- `hf_maxsup::fused_loss(logits, target, teacher?, num_items?, ...) -> (value, totals, grad, factors)`: the loss and
  its gradient into a new buffer; `hf_maxsup::fused_loss_` the same with the gradient written over `logits` (declared
  as mutated; used in eager only, see `function.fused_loss`).
- `hf_maxsup::scale_grad_(grad, factor)`: the backward's `grad *= factor` (per row for `reduction="none"`), skipped on
  a CPU when the factor is 1 and decided on the device elsewhere.

`totals` are the sums of `job.SUMS` over kept rows, then the kept count; `factors` are `(post, unit)`: what backward
multiplies the stored gradient by (besides `grad_output`), and the weight of each row's unscaled gradient (`1 /
denominator`, or 1 for `reduction="none"`). The autograd of these operators is `function.py`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._layout import walkable_rows
from .dispatch import select_backend
from .job import SUMS, LossJob
from .reduction import denominator, grad_scales, sums_dtype

__all__ = ["fused_loss", "fused_loss_", "rows_loss_and_grad_", "scale_grad_"]


def _rows_like(x: Tensor, z: Tensor) -> Tensor:
    """`(N, K)` contiguous rows of soft targets or teacher logits, in float32 or the logits' dtype."""
    rows = x.detach().reshape(-1, z.shape[-1])
    if rows.dtype not in (torch.float32, z.dtype):
        rows = rows.float()
    return rows.to(z.device).contiguous()


def _loss_pass(logits, target, teacher, num_items, num_items_value, settings, want_grad: bool, inplace: bool):
    """The backend's pass over the rows: `(value, totals, grad, factors)`, `grad` the logits themselves when
    `inplace`, an empty tensor without `want_grad`."""
    loss, alpha, ignore_index, reduction, distill_alpha, temperature, want_split = settings
    z, layout = walkable_rows(logits, inplace)
    device, n_rows = z.device, layout[0] * layout[1]
    hard = not target.is_floating_point()
    labels = target.reshape(-1).to(device=device, dtype=torch.int64).contiguous() if hard else None
    n_kept = labels.ne(ignore_index).sum() if hard else torch.full((), n_rows, device=device)
    divisor = denominator(reduction, num_items if num_items is not None else num_items_value, n_kept)
    grad_scale, post = grad_scales(z.dtype, alpha, divisor, device)
    grad, grad_strides = logits.new_empty(0), (0, 0)
    if want_grad:
        grad = z if inplace else torch.empty(z.shape, dtype=z.dtype, device=device)
        grad_strides = layout[2:] if inplace else (layout[1] * z.shape[-1], z.shape[-1])
    out_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    row_loss = torch.empty(n_rows, dtype=out_dtype, device=device) if reduction == "none" else None
    job = LossJob(
        loss=loss,
        alpha=alpha,
        ignore_index=ignore_index,
        logits=z,
        layout=layout,
        labels=labels,
        soft=None if hard else _rows_like(target, z),
        grad=grad if want_grad else None,
        grad_strides=grad_strides,
        grad_scale=grad_scale,
        row_loss=row_loss,
        want_components=want_split,
        teacher=_rows_like(teacher, z) if teacher is not None else None,
        distill_alpha=distill_alpha,
        temperature=temperature,
    )
    backend = select_backend(device, z.dtype, distill=teacher is not None)
    sums = backend.forward(job) if n_rows else torch.zeros(len(SUMS), dtype=sums_dtype(device), device=device)
    value = row_loss.view(z.shape[:-1]) if row_loss is not None else (sums[0] / divisor).to(out_dtype)
    totals = torch.cat([sums, n_kept.to(sums.dtype).reshape(1)])
    factors = torch.stack([torch.as_tensor(post, dtype=torch.float32, device=device), grad_scale * post])
    return value, totals, grad, factors


def _fake_results(logits: Tensor, reduction: str, want_grad: bool, with_grad: bool = True):
    """The results' shapes and dtypes, for the fake implementations."""
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    value = logits.new_empty(logits.shape[:-1] if reduction == "none" else (), dtype=out_dtype)
    totals = logits.new_empty(len(SUMS) + 1, dtype=sums_dtype(logits.device))
    factors = logits.new_empty(2, dtype=torch.float32)
    if not with_grad:
        return value, totals, factors
    return value, totals, logits.new_empty(logits.shape if want_grad else (0,)), factors


@torch.library.custom_op("hf_maxsup::fused_loss", mutates_args=())
def fused_loss(
    logits: Tensor,
    target: Tensor,
    teacher: Tensor | None,
    num_items: Tensor | None,
    num_items_value: float | None,
    loss: str,
    alpha: float,
    ignore_index: int,
    reduction: str,
    distill_alpha: float,
    temperature: float,
    want_split: bool,
    want_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CE / LS / MaxSup of `logits` against `target` (int64 class indices or soft targets) in one pass: `(value,
    totals, grad, factors)` (see the module's docstring), `grad` a new buffer (empty without `want_grad`)."""
    settings = (loss, alpha, ignore_index, reduction, distill_alpha, temperature, want_split)
    return _loss_pass(logits, target, teacher, num_items, num_items_value, settings, want_grad, inplace=False)


@fused_loss.register_fake
def _(logits, target, teacher, num_items, num_items_value, loss, alpha, ignore_index, reduction, distill_alpha,
      temperature, want_split, want_grad):  # fmt: skip
    return _fake_results(logits, reduction, want_grad)


@torch.library.custom_op("hf_maxsup::fused_loss_", mutates_args=("logits",))
def fused_loss_(
    logits: Tensor,
    target: Tensor,
    teacher: Tensor | None,
    num_items: Tensor | None,
    num_items_value: float | None,
    loss: str,
    alpha: float,
    ignore_index: int,
    reduction: str,
    distill_alpha: float,
    temperature: float,
    want_split: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """[`fused_loss`] with the gradient written over `logits`, whose rows must be disjoint and walkable without a
    copy (`_layout.writable_in_place`): `(value, totals, factors)`."""
    settings = (loss, alpha, ignore_index, reduction, distill_alpha, temperature, want_split)
    value, totals, _, factors = _loss_pass(logits, target, teacher, num_items, num_items_value, settings, True, True)
    return value, totals, factors


@fused_loss_.register_fake
def _(logits, target, teacher, num_items, num_items_value, loss, alpha, ignore_index, reduction, distill_alpha,
      temperature, want_split):  # fmt: skip
    return _fake_results(logits, reduction, want_grad=True, with_grad=False)


@torch.library.custom_op("hf_maxsup::scale_grad_", mutates_args=("grad",))
def scale_grad_(grad: Tensor, factor: Tensor) -> None:
    """`grad *= factor`: a 0-dim factor for the whole gradient, or one per row (`grad.shape[:-1]`)."""
    if factor.dim() == 0:
        select_backend(grad.device, grad.dtype).scale_(grad, factor)
    elif not (factor.device.type == "cpu" and bool((factor == 1).all())):
        grad.mul_(factor.unsqueeze(-1).to(grad.dtype))


@scale_grad_.register_fake
def _(grad, factor):
    return None


def rows_loss_and_grad_(
    logits: Tensor,
    labels: Tensor,
    *,
    loss: str,
    alpha: float,
    ignore_index: int = -100,
    want_grad: bool = True,
    want_components: bool = False,
    row_loss: Tensor | None = None,
    grad_scale: Tensor | None = None,
) -> Tensor:
    """One backend pass over contiguous `(n, K)` logits with int64 labels `(n,)`, for callers that chunk their own
    rows (the fused linear losses' implementation): with `want_grad`, each row's unscaled gradient `d loss_row / d z`
    is written over the logits, times `grad_scale` (a 0-dim float32 tensor, 1 when not given). Returns the sums of
    `SUMS` over kept rows; `row_loss` `(n,)` float32, if given, gets each row's loss.
    """
    n_rows, num_classes = logits.shape
    if n_rows == 0:
        return torch.zeros(len(SUMS), dtype=sums_dtype(logits.device), device=logits.device)
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
        grad_scale=grad_scale if grad_scale is not None else torch.ones((), dtype=torch.float32, device=logits.device),
        row_loss=row_loss,
        want_components=want_components,
    )
    return select_backend(logits.device, logits.dtype).forward(job)
