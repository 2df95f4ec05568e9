"""The gradients of the contract (`job.py`) in plain, differentiable torch ops: what the autograd `Function` returns
when autograd records the backward itself (`create_graph=True`: a gradient penalty, a Hessian-vector product), and the
gradient of soft targets.

The backends compute the logits' gradient in the forward, in one pass and without a graph; differentiating that
gradient needs it as a function of the logits, which these formulas give (logits-sized temporaries, only on these
rare paths). MaxSup's max and argmax are piecewise constant, so its one-hot term has no derivative, as in the
reference formula.
"""

from __future__ import annotations

import torch

__all__ = ["logits_grad", "soft_target_grad"]


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def logits_grad(
    z: torch.Tensor,
    labels: torch.Tensor | None,
    soft: torch.Tensor | None,
    teacher: torch.Tensor | None,
    *,
    loss: str,
    alpha: float,
    ignore_index: int,
    distill_alpha: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """`d loss_row / d z` of every row, `(..., K)`, differentiable w.r.t. `z`, `soft` and `teacher` (float32, or
    float64 for float64 logits); 0 on ignored rows.

    Args:
        z (`torch.Tensor`): the logits `(..., K)`.
        labels (`torch.Tensor` or `None`): int64 class indices `z.shape[:-1]`, or `None` with `soft`.
        soft (`torch.Tensor` or `None`): soft targets of `z`'s shape.
        teacher (`torch.Tensor` or `None`): the teacher's logits (distillation), of `z`'s shape.
        loss, alpha, ignore_index, distill_alpha, temperature: the call's settings, as in `LossJob`.
    """
    dtype = _compute_dtype(z)
    zc = z.to(dtype)
    num_classes = z.shape[-1]
    c0 = alpha / num_classes if loss != "ce" else 0.0
    c1 = 1.0 - alpha if loss == "ls" else 1.0
    grad = torch.softmax(zc, -1) - c0
    keep = None
    if labels is not None:
        keep = labels != ignore_index
        grad = grad - c1 * torch.nn.functional.one_hot(labels.masked_fill(~keep, 0), num_classes).to(dtype)
    else:
        grad = grad - c1 * soft.to(dtype)
    if loss == "maxsup" and alpha:
        first = zc.argmax(-1)  # the first index of the max, as the kernels take it
        grad = grad + alpha * torch.nn.functional.one_hot(first, num_classes).to(dtype)
    if teacher is not None:
        student_t = torch.softmax(zc / temperature, -1)
        teacher_t = torch.softmax(teacher.to(dtype) / temperature, -1)
        grad = grad + distill_alpha * temperature * (student_t - teacher_t)
    return grad if keep is None else grad * keep.unsqueeze(-1).to(dtype)


def soft_target_grad(z: torch.Tensor, *, loss: str, alpha: float) -> torch.Tensor:
    """`d loss_row / d t` for soft targets `t`: `-(1 - alpha) z` for LS, `-z` otherwise (the regularisers of MaxSup
    and of the distillation do not involve `t`), float32 (float64 for float64 logits), differentiable w.r.t. `z`.

    `F.cross_entropy`'s differs by `logsumexp(z)` on every entry of a row: it scales `logsumexp` by `sum_k t_k`,
    which is 1 for the distributions the losses accept, where ours does not. Through targets that stay on the simplex
    (e.g. `t = softmax(theta)`) the two give the same gradient.
    """
    c1 = 1.0 - alpha if loss == "ls" else 1.0
    return -c1 * z.to(_compute_dtype(z))
