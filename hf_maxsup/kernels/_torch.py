"""The portable backend: plain PyTorch ops, chunked over rows, for any device and dtype (float64 included).

The gradient is computed in the forward, chunk by chunk, and written straight into the gradient buffer; the only
temporaries are chunk-sized (about `_CHUNK_ELEMS` float32 values), so memory beyond the logits is the gradient
itself (nothing in place). Nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch

from .job import SUMS, LossJob
from .reduction import sums_dtype

__all__ = ["DISTILLS", "NAME", "forward", "scale_", "unavailable"]

NAME = "torch"
DISTILLS = True
# Rows per chunk hold about this many logits: enough to amortise per-op (and, on a GPU, per-launch) overhead, few
# enough that the chunk's float32 temporaries stay small beside the logits (a CPU's cache holds them).
_CHUNK_ELEMS = {"cpu": 1 << 20}
_CHUNK_ELEMS_ELSEWHERE = 1 << 24


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """None: plain PyTorch serves every device and floating-point dtype."""
    return None


def _rows(x: torch.Tensor, layout, num_classes: int) -> torch.Tensor:
    """`(n_outer, n_inner, K)` view of the rows of `x` described by `layout` (no copy)."""
    n_outer, n_inner, s_outer, s_inner = layout
    return x.as_strided((n_outer, n_inner, num_classes), (s_outer, s_inner, 1), x.storage_offset())


def _distill_terms(job: LossJob, z: torch.Tensor, u: torch.Tensor):
    """Per row `KL(softmax(u / T) || softmax(z / T))`, and the tempered student and teacher distributions."""
    student = torch.log_softmax(z / job.temperature, -1)
    teacher = torch.log_softmax(u / job.temperature, -1)
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    return kl, student.exp_(), teacher.exp_()


def _chunk_terms(job: LossJob, z: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor | None, distill, acc):
    """Per-row terms of one chunk (float32/float64 `z`): stats `(rows, 6)` in `acc` (float64 where the device has it,
    so that rows near the float32 limit stay exact), argmax, lse, the mask of kept rows with a label in range and
    that of those out of range."""
    top, argmax = z.max(-1, keepdim=True)  # the first index of the max, as torch.max defines it
    lse = (z - top).exp_().sum(-1).log_().add_(top.squeeze(-1))
    # Sums of z / K: no partial sum can leave the float32 range where the logits are near its limit (sums of z, or
    # gaps z_y - z_k, could), and no float64 copy of the chunk is needed.
    z_k = z * (1.0 / job.num_classes)
    mean = z_k.sum(-1).to(acc)
    stats = torch.zeros(z.shape[0], len(SUMS), dtype=acc, device=z.device)
    keep = bad = None
    if y is not None:
        keep = y != job.ignore_index
        # a label outside [0, K) (not checked inside a compiled graph) is never read: its row gets NaN
        bad = keep & ((y < 0) | (y >= job.num_classes))
        safe_y = y.masked_fill(~keep | bad, 0).unsqueeze(-1)
        z_target = z.gather(-1, safe_y).squeeze(-1).to(acc)
        stats[:, 6] = argmax.squeeze(-1) != safe_y.squeeze(-1)  # torch.max's index is the first one
        if job.want_split:
            gap = z_k.neg_().add_(z_target.to(z.dtype).unsqueeze(-1) * (1.0 / job.num_classes))  # (z_y - z_k) / K
            stats[:, 3] = gap.clamp_min(0).sum(-1)
            stats[:, 4] = gap.clamp_max_(0).sum(-1)
    else:
        z_target = (t * z).sum(-1).to(acc)  # sum_k t_k |z_k| <= max |z|: within range
    stats[:, 1] = lse.to(acc) - z_target
    if y is not None:  # a NaN row's misclassified is NaN, as its other terms
        stats[:, 6].masked_fill_(stats[:, 1].isnan(), float("nan"))
    if job.loss == "maxsup":
        stats[:, 2] = top.squeeze(-1).to(acc) - mean
    elif job.loss == "ls":
        stats[:, 2] = z_target - mean
    stats[:, 0] = stats[:, 1] + job.alpha * stats[:, 2]
    if distill is not None:
        stats[:, 5] = distill[0]
        stats[:, 0] += job.distill_alpha * job.temperature**2 * stats[:, 5]
    if keep is not None:
        # masked_fill, not a product: NaN/inf of ignored rows must not leak into the sums.
        stats.masked_fill_(~keep.unsqueeze(-1), 0.0).masked_fill_(bad.unsqueeze(-1), float("nan"))
        keep = keep & ~bad
    return stats, argmax, lse, keep, bad


def _write_grad(job: LossJob, out: torch.Tensor, z, y, t, distill, argmax, lse, masks, scale: torch.Tensor) -> None:
    """`out = (softmax(z) - c1 t - c0 + alpha onehot(argmax) [+ b T (s - q)]) * scale`, written into `out` (maybe z's
    own rows); `masks` are `(kept rows with a label in range, rows whose label is out of range)`, `None`s for soft
    targets."""
    c0 = job.alpha / job.num_classes if job.loss != "ce" else 0.0
    c1 = 1.0 - job.alpha if job.loss == "ls" else 1.0
    keep, bad = masks
    grad = z.sub(lse.unsqueeze(-1)).exp_()  # every read of z is done before `out` (maybe z itself) is written
    if c0:
        grad.sub_(c0)
    if y is not None:
        grad.scatter_add_(-1, y.masked_fill(~keep, 0).unsqueeze(-1), torch.full_like(lse, -c1).unsqueeze(-1))
    else:
        grad.add_(t, alpha=-c1)
    if job.loss == "maxsup" and job.alpha:
        grad.scatter_add_(-1, argmax, torch.full_like(lse, job.alpha).unsqueeze(-1))
    if distill is not None:
        _, student, teacher = distill
        grad.add_(student.sub_(teacher), alpha=job.distill_alpha * job.temperature)
    if keep is not None:
        grad.masked_fill_(~keep.unsqueeze(-1), 0.0).masked_fill_(bad.unsqueeze(-1), float("nan"))
    out.copy_(grad.mul_(scale))


def forward(job: LossJob) -> torch.Tensor:
    """One chunked pass over `job`'s rows; returns the sums of `SUMS` (float64; float32 on devices without it)."""
    num_classes = job.num_classes
    device = job.logits.device
    compute = torch.float64 if job.logits.dtype == torch.float64 else torch.float32
    acc = sums_dtype(device)
    logits = _rows(job.logits, job.layout, num_classes)
    grad = None
    if job.grad is not None:
        n_outer, n_inner = job.layout[:2]
        grad = _rows(job.grad, (n_outer, n_inner, *job.grad_strides), num_classes)
    scale = job.grad_scale.to(compute)
    sums = torch.zeros(len(SUMS), dtype=acc, device=device)
    n_inner = job.layout[1]
    step = max(1, _CHUNK_ELEMS.get(device.type, _CHUNK_ELEMS_ELSEWHERE) // max(num_classes, 1))
    for o in range(job.layout[0]):
        for i in range(0, n_inner, step):
            rows = slice(o * n_inner + i, o * n_inner + min(i + step, n_inner))
            z = logits[o, i : i + step].to(compute)  # an alias for float32/float64, a chunk-sized copy otherwise
            y = job.labels[rows] if job.labels is not None else None
            t = job.soft[rows].to(compute) if job.soft is not None else None
            u = job.teacher[rows].to(compute) if job.teacher is not None else None
            distill = _distill_terms(job, z, u) if u is not None else None  # before z is overwritten (in place)
            stats, argmax, lse, keep, bad = _chunk_terms(job, z, y, t, distill, acc)
            sums += stats.sum(0)
            if job.row_loss is not None:
                job.row_loss[rows] = stats[:, 0]
            if grad is not None:
                _write_grad(job, grad[o, i : i + step], z, y, t, distill, argmax, lse, (keep, bad), scale)
    return sums


def scale_(grad: torch.Tensor, factor: torch.Tensor) -> None:
    """`grad *= factor`; on a CPU the factor is read and a factor of 1 skips the pass, elsewhere it never is."""
    if factor.device.type == "cpu":
        if float(factor) != 1.0:
            grad.mul_(float(factor))
    else:
        grad.mul_(factor)
