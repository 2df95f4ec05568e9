"""The one float64 reference every loss test compares against, written from the direct formulas.

CE and LS come from `F.cross_entropy` (with `label_smoothing=alpha`), MaxSup from `CE + alpha * (max - mean)` with
`torch.max`'s first-index rule for ties; gradients from autograd in float64. Nothing here shares code with the
package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGN = -100


def per_item(kind: str, logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int = IGN):
    """Per-item float64 losses `(N,)` (0 where ignored, differentiable w.r.t. `logits`) and the kept mask."""
    num_classes = logits.shape[-1]
    z = logits.double().reshape(-1, num_classes)
    if target.is_floating_point():
        t = target.double().reshape(-1, num_classes)
        ce = F.cross_entropy(z, t, reduction="none")
        ls = F.cross_entropy(z, t, reduction="none", label_smoothing=alpha)
        keep = torch.ones(z.shape[0], dtype=torch.bool)
    else:
        y = target.reshape(-1)
        ce = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="none")
        ls = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="none", label_smoothing=alpha)
        keep = y != ignore_index
    top = z.gather(-1, z.argmax(-1, keepdim=True)).squeeze(-1)  # first index of the max
    maxsup = ce + alpha * (top - z.mean(-1))
    value = {"ce": ce, "ls": ls, "maxsup": maxsup}[kind]
    return torch.where(keep, value, torch.zeros_like(value)), keep


def loss_and_grad(kind, logits, target, alpha, reduction="mean", num_items=None, weight=None,
                  ignore_index: int = IGN):
    """`(loss, grad)` in float64; `weight` multiplies the loss before backward (a non-trivial `grad_output`)."""
    x = logits.detach().double().requires_grad_(True)
    items, keep = per_item(kind, x, target, alpha, ignore_index)
    if num_items is not None:
        loss = items.sum() / max(float(num_items), 1.0)
    elif reduction == "sum":
        loss = items.sum()
    elif reduction == "mean":
        loss = items.sum() / keep.sum().clamp_min(1)
    else:
        loss = items.view(logits.shape[:-1])
    weighted = loss * (weight.double() if isinstance(weight, torch.Tensor) else (1.0 if weight is None else weight))
    weighted.sum().backward()
    return loss.detach(), x.grad


def components(kind, logits, target, alpha, ignore_index: int = IGN) -> dict[str, float]:
    """Means over kept items of the logged terms: `ce`, `reg` and, for LS with labels, its two halves."""
    num_classes = logits.shape[-1]
    z = logits.double().reshape(-1, num_classes)
    ce, keep = per_item("ce", z, target, 0.0, ignore_index)
    n = max(int(keep.sum()), 1)
    out = {"ce": float(ce.sum()) / n}
    if kind == "ce":
        return out
    total, _ = per_item(kind, z, target, alpha, ignore_index)
    out["reg"] = float(((total - ce) / alpha)[keep].sum()) / n
    if kind == "ls" and not target.is_floating_point():
        y = target.reshape(-1)
        gap = z.gather(-1, y.masked_fill(~keep, 0).unsqueeze(-1)) - z
        out["ls_regularization"] = float((gap.clamp(min=0).sum(-1) / num_classes)[keep].sum()) / n
        out["ls_error_amplification"] = float((gap.clamp(max=0).sum(-1) / num_classes)[keep].sum()) / n
    return out


def grad_terms_magnitude(kind, logits, target, alpha, scale, ignore_index: int = IGN) -> torch.Tensor:
    """Per entry, the sum of the magnitudes of the terms of its gradient, `(|p| + c0 + c1 |t| + alpha [argmax])`
    times `|scale|` per row: what the rounding error of a correct entry is relative to (a cancellation of two large
    terms can leave a tiny entry).
    """
    num_classes = logits.shape[-1]
    z = logits.double().reshape(-1, num_classes)
    p = torch.softmax(z, -1)
    c0 = alpha / num_classes if kind != "ce" else 0.0
    c1 = 1.0 - alpha if kind == "ls" else 1.0
    if target.is_floating_point():
        t = target.double().reshape(-1, num_classes)
        keep = torch.ones(z.shape[0], dtype=torch.bool)
    else:
        y = target.reshape(-1)
        keep = y != ignore_index
        t = F.one_hot(y.masked_fill(~keep, 0), num_classes).double()
    size = p + c0 + c1 * t.abs()
    if kind == "maxsup":
        size = size + alpha * F.one_hot(z.argmax(-1), num_classes).double()
    scale = scale.double().reshape(-1, 1) if isinstance(scale, torch.Tensor) else scale
    return (size * torch.as_tensor(scale).abs() * keep.unsqueeze(-1)).view(logits.shape)


def assert_grad_close(grad, ref, size, rtol, what=""):
    """Every entry within `rtol` of the size of its own terms (plus the gradient dtype's spacing at zero, which bounds
    the rounding of subnormal float16 entries), and every row summing to 0 (to `rtol` of its size)."""
    spacing = torch.finfo(grad.dtype).smallest_normal * torch.finfo(grad.dtype).eps
    grad, ref = grad.double(), ref.double()
    err = (grad - ref).abs()
    tol = rtol * size + spacing
    worst = (err / tol).max()
    assert float(worst) <= 1.0, f"{what}: an entry is {float(worst):.3g}x its tolerance"
    row_sums = grad.reshape(-1, grad.shape[-1]).sum(-1).abs()
    row_size = size.reshape(-1, grad.shape[-1]).sum(-1)
    assert bool((row_sums <= rtol * row_size + 1e-30).all()), f"{what}: a gradient row does not sum to 0"
