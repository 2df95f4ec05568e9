"""The one float64 reference every loss test compares against, written from the direct formulas.

CE and LS come from `F.cross_entropy` (with `label_smoothing=alpha`), MaxSup from `CE + alpha * (max - mean)` with
the first index of the max for ties (found here without `torch.max`); gradients from autograd in float64. Nothing
here shares code with the package. Also fairseq's label smoothing, written out (the reference of `mass="others"`),
and `AllocSpy`, which records the blocks a loss allocates, op by op (the reference of the memory checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

IGN = -100


TERMS = ("loss", "ce", "reg", "ls_regularization", "ls_error_amplification")


def row_terms(kind: str, logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int = IGN):
    """The per-row float64 terms of the loss (0 on ignored rows), differentiable w.r.t. `logits`, and the kept mask.

    Returns:
        `(dict, torch.Tensor)`: `TERMS` -> `(N,)` tensors, and the `(N,)` kept mask. The LS halves are 0 for soft
        targets (they are defined for class indices).
    """
    num_classes = logits.shape[-1]
    z = logits.double().reshape(-1, num_classes)
    n = z.shape[0]
    if target.is_floating_point():
        t = target.double().reshape(-1, num_classes)
        keep = torch.ones(n, dtype=torch.bool)
        ce = F.cross_entropy(z, t, reduction="none")
        ls = F.cross_entropy(z, t, reduction="none", label_smoothing=alpha)
        target_z = (t * z).sum(-1)
        # The losses' ce is lse - sum_k t_k z_k; torch's is sum(t) lse - sum_k t_k z_k: they differ when soft targets
        # rounded to a half precision do not sum to exactly 1, by (1 - sum t) lse (times 1 - alpha for LS).
        excess = (1 - t.sum(-1)) * torch.logsumexp(z, -1)
        ce, ls = ce + excess, ls + (1 - alpha) * excess
    else:
        y = target.reshape(-1)
        keep = y != ignore_index
        ce = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="none")
        ls = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="none", label_smoothing=alpha)
        target_z = z.gather(1, y.masked_fill(~keep, 0).unsqueeze(1)).squeeze(1)
    mean = z.mean(-1)
    # the first index of the max, found without relying on torch.max's tie rule
    cols = torch.arange(num_classes).expand(n, num_classes)
    first = torch.where(z == z.max(-1, keepdim=True).values, cols, num_classes).min(-1).values
    top = z.gather(1, first.clamp(max=num_classes - 1).unsqueeze(1)).squeeze(1)
    reg = {"ce": torch.zeros_like(ce), "ls": target_z - mean, "maxsup": top - mean}[kind]
    loss = {"ce": ce, "ls": ls, "maxsup": ce + alpha * (top - mean)}[kind]
    if target.is_floating_point():
        halves = torch.zeros_like(ce), torch.zeros_like(ce)
    else:
        gap = target_z.unsqueeze(1) - z
        halves = gap.clamp(min=0).sum(-1) / num_classes, gap.clamp(max=0).sum(-1) / num_classes
    terms = dict(zip(TERMS, (loss, ce, reg, *halves)))
    # torch.where, not a product: NaN/inf of ignored rows stay out
    return {name: torch.where(keep, value, torch.zeros_like(value)) for name, value in terms.items()}, keep


def per_item(kind: str, logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int = IGN):
    """Per-item float64 losses `(N,)` (0 where ignored, differentiable w.r.t. `logits`) and the kept mask."""
    terms, keep = row_terms(kind, logits, target, alpha, ignore_index)
    return terms["loss"], keep


def loss_and_grad(kind, logits, target, alpha, reduction="mean", num_items=None, weight=None, ignore_index: int = IGN):
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
    """Means over kept items of the logged terms: `ce`, `reg`, for LS with labels its two halves, and with labels
    the fraction misclassified."""
    with torch.no_grad():
        terms, keep = row_terms(kind, logits, target, alpha, ignore_index)
    n = max(int(keep.sum()), 1)
    names = ["ce"] + (["reg"] if kind != "ce" else [])
    if kind == "ls" and not target.is_floating_point():
        names += ["ls_regularization", "ls_error_amplification"]
    means = {name: float(terms[name].sum()) / n for name in names}
    if not target.is_floating_point():
        means["misclassified"] = float((misclassified(logits, target) & keep).sum()) / n
    return means


def misclassified(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row `(N,)`, whether the label is not the first index of the max (a tie with an earlier class counts),
    found without `torch.max`."""
    num_classes = logits.shape[-1]
    z, y = logits.detach().double().reshape(-1, num_classes), target.reshape(-1)
    cols = torch.arange(num_classes).expand_as(z)
    first = torch.where(z == z.max(-1, keepdim=True).values, cols, num_classes).min(-1).values
    return first != y


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


def distill_per_item(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float, ignore_index: int = IGN
) -> torch.Tensor:
    """Per-item `KL(softmax(teacher / T) || softmax(student / T))` in float64 (0 where ignored), from
    `F.kl_div`, differentiable w.r.t. `student`."""
    num_classes = student.shape[-1]
    s = torch.log_softmax(student.double().reshape(-1, num_classes) / temperature, -1)
    t = torch.log_softmax(teacher.double().reshape(-1, num_classes) / temperature, -1)
    kl = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    keep = target.reshape(-1) != ignore_index if not target.is_floating_point() else torch.ones_like(kl, dtype=bool)
    return torch.where(keep, kl, torch.zeros_like(kl))


def fairseq_label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=-100):
    """fairseq's `label_smoothed_nll_loss` (fairseq/criterions/label_smoothed_cross_entropy.py), written out: mass
    `1 - epsilon` on the target and `epsilon / (K - 1)` on each other class; summed over kept tokens."""
    target = target.unsqueeze(-1)
    pad_mask = target.eq(ignore_index)
    target = target.masked_fill(pad_mask, 0)
    nll_loss = -lprobs.gather(dim=-1, index=target).masked_fill(pad_mask, 0.0)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True).masked_fill(pad_mask, 0.0)
    eps_i = epsilon / (lprobs.size(-1) - 1)
    return ((1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss).sum()


class AllocSpy:
    """Records the size of every block the CPU allocator hands out while it is active, with the aten op that asked
    for it (`torch.profiler`'s memory events, the op's own allocations net of what it freed itself): inside the
    engine's torch operators too, which a dispatch mode would see as one opaque call.
    """

    def __enter__(self):
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc):
        self._profile.__exit__(*exc)
        events = self._profile.events()
        self.allocs = [(e.name, e.self_cpu_memory_usage) for e in events if e.self_cpu_memory_usage > 0]
        return False
