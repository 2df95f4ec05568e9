"""The loss engine: one dispatcher, three backends, one contract.

Backends (each a module behind the same three functions, `unavailable(device, dtype)`, `forward(job)` and
`scale_(grad, factor)`, working on the `LossJob` of `_args.py`):

- `c`: the one-pass C kernel, on CPU tensors (`_c.py`, `csrc/fused_loss.c`);
- `triton`: the Triton kernel, on GPUs (CUDA, ROCm, XPU where Triton runs; `_triton.py`);
- `torch`: plain PyTorch chunked over rows, on any device (`_torch.py`).

Each computes the loss and its gradient in the same pass (the gradient is stored by the forward and handed to
autograd by the backward, into the logits' own buffer with `inplace_backward=True`); beyond the gradient they use
only row- or chunk-sized temporaries. `auto` picks `c` on a CPU, `triton` on a GPU when Triton imports, `torch`
otherwise (and for float64). `HF_MAXSUP_BACKEND=auto|c|triton|torch` forces one; [`kernel_info`] says which backend
serves a device and why the faster ones do not. The reduction (`mean`, `sum`, `none`, `num_items_in_batch`) is done
here, once for all backends, from device tensors: on a GPU the engine never waits for the device.

Inputs are validated by the public losses (`hf_maxsup.losses`) before they reach [`fused_loss`].
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from ._args import LOSS_NAMES, SUMS, LossJob
from ._layout import row_layout, rows_disjoint

__all__ = [
    "BACKENDS",
    "LOSS_NAMES",
    "SUMS",
    "LossJob",
    "component_means",
    "denominator",
    "fused_loss",
    "kernel_info",
    "rows_loss_and_grad_",
    "select_backend",
]

logger = logging.getLogger(__name__)

BACKENDS = ("c", "triton", "torch")
# Fastest first, per device type.
_PREFERENCE = {"cpu": ("c", "torch")}
_GPU_PREFERENCE = ("triton", "torch")
# float16 gradients are stored times a power of two (undone in backward), so that small probabilities divided by
# the item count do not flush to zero before the loss scale is applied.
_F16_HEADROOM = 32768.0
# The dtypes every fast backend serves: a backend missing for one of these is worth a warning.
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_warned: set[str] = set()


def _module(name: str):
    return importlib.import_module(f"._{name}", __name__)


def _forced() -> str:
    value = os.environ.get("HF_MAXSUP_BACKEND", "").strip().lower() or "auto"
    if value not in ("auto", *BACKENDS):
        raise ValueError(f"HF_MAXSUP_BACKEND={value!r} is not a backend; use one of auto, {', '.join(BACKENDS)}.")
    return value


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def select_backend(device: torch.device, dtype: torch.dtype, distill: bool = False):
    """The backend module that serves `dtype` logits on `device` (with a distillation term when `distill`): the
    forced one, or the fastest that can.

    A faster backend that should serve this device but cannot (no compiler, Triton not installed, an unusable
    cache) is reported once, as a warning with its reason; float64 simply goes to `torch`.

    Raises:
        `RuntimeError`: when `HF_MAXSUP_BACKEND` forces a backend that cannot serve these logits.
    """
    forced = _forced()
    if forced != "auto":
        reason = _module(forced).unavailable(device, dtype)
        if reason is None and distill and not _module(forced).DISTILLS:
            reason = "it has no distillation term"
        if reason is not None:
            raise RuntimeError(
                f"HF_MAXSUP_BACKEND={forced} cannot serve {str(dtype).removeprefix('torch.')} logits "
                f"on {device.type}: {reason}. Unset HF_MAXSUP_BACKEND (or set it to auto) to let "
                "hf_maxsup choose."
            )
        return _module(forced)
    for name in _PREFERENCE.get(device.type, _GPU_PREFERENCE):
        module = _module(name)
        if distill and not module.DISTILLS:
            continue
        reason = module.unavailable(device, dtype)
        if reason is None:
            note = getattr(module, "build_info", dict)().get("note")
            if note:
                _warn_once(f"hf_maxsup: {note}")
            return module
        if dtype in _FAST_DTYPES:
            _warn_once(
                f"hf_maxsup: the {name} backend is not used on {device.type}: {reason}. The loss falls "
                "back to a slower backend (hf_maxsup.kernels.kernel_info() says which)."
            )
    raise RuntimeError(f"no hf_maxsup backend serves {dtype} logits on {device}")  # torch serves all float dtypes


def kernel_info(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Which backend serves `dtype` logits on `device`, and why each of the others does not.

    Returns:
        `dict`: `backend` (the name in use, or `None` with `error` when a forced backend cannot serve), `forced`
        (the value of `HF_MAXSUP_BACKEND`), `reasons` (for every backend, `None` if it could serve, else why not)
        and `c` (where the C kernel was built, and any note from its build).
    """
    device = torch.device(device)
    info = {
        "device": str(device),
        "dtype": str(dtype),
        "forced": _forced(),
        "reasons": {name: _module(name).unavailable(device, dtype) for name in BACKENDS},
    }
    try:
        info["backend"], info["error"] = select_backend(device, dtype).NAME, None
    except RuntimeError as err:
        info["backend"], info["error"] = None, str(err)
    info["c"] = _module("c").build_info() if device.type == "cpu" else None
    return info


# ---------------------------------------------------------------------------------------------------
# one call: rows, targets, scales, the backend's pass, the reduction


@dataclass
class _Call:
    backend: object
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


def _rows_of(logits: torch.Tensor, writable: bool):
    """Logits whose rows a backend can walk (class dimension contiguous, at most two levels of row strides; rows
    disjoint when the gradient goes over them), copied only when they are not."""
    z = logits if logits.stride(-1) == 1 or logits.shape[-1] == 1 else logits.contiguous()
    layout = row_layout(z)
    if layout is None or (writable and not rows_disjoint(z, layout)):
        z = z.contiguous()
        layout = row_layout(z)
    return z, layout


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


def denominator(reduction: str, num_items_in_batch, n_kept: torch.Tensor) -> torch.Tensor | None:
    """What the summed loss is divided by, as a float32 tensor on `n_kept`'s device (None for `reduction="none"`):
    `num_items_in_batch` when given, else 1 (`"sum"`) or the kept count (`"mean"`)."""
    n = num_items_in_batch
    if n is not None:
        # A micro-batch of an accumulated batch may be all ignored; an all-ignored accumulated batch gives 0 / 1.
        if isinstance(n, torch.Tensor):
            return n.to(n_kept.device, torch.float32).clamp_min(1)
        return torch.full((), max(float(n), 1.0), dtype=torch.float32, device=n_kept.device)
    if reduction == "sum":
        return torch.ones((), dtype=torch.float32, device=n_kept.device)
    if reduction == "mean":
        return n_kept.clamp_min(1).float()
    return None


def _grad_scales(dtype: torch.dtype, alpha: float, divisor, device):
    """`(grad_scale, post)`: the factor the backend writes the gradient with, and the one backward applies."""
    headroom = 1.0
    if dtype == torch.float16:
        headroom = max(1.0, 2.0 ** math.floor(math.log2(_F16_HEADROOM / (1.0 + 2.0 * abs(alpha)))))
    if divisor is None:
        return torch.full((), headroom, dtype=torch.float32, device=device), 1.0 / headroom
    if dtype == torch.float16:
        return torch.full((), headroom, dtype=torch.float32, device=device), 1.0 / (divisor * headroom)
    return divisor.reciprocal(), 1.0


def _execute(call: _Call, logits: torch.Tensor, target: torch.Tensor, inplace_backward: bool, want_grad: bool):
    """Runs the backend over the rows; returns `(loss, grad or None, post factor)` and fills `call.components`."""
    z, layout = _rows_of(logits, inplace_backward and want_grad)
    num_classes, device = z.shape[-1], z.device
    labels, soft = _targets(target, z)
    n_rows = layout[0] * layout[1]
    n_kept = labels.ne(call.ignore_index).sum() if labels is not None else torch.full((), n_rows, device=device)
    divisor = denominator(call.reduction, call.num_items_in_batch, n_kept)
    grad_scale, post = _grad_scales(z.dtype, call.alpha, divisor, device)
    grad, grad_strides = None, (0, 0)
    if want_grad:
        grad, grad_strides = (
            (z, layout[2:])
            if inplace_backward
            else (torch.empty(z.shape, dtype=z.dtype, device=device), (layout[1] * num_classes, num_classes))
        )
    out_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    row_loss = torch.empty(n_rows, dtype=out_dtype, device=device) if call.reduction == "none" else None
    teacher = _rows_like(call.teacher, z) if call.teacher is not None else None
    job = LossJob(
        call.loss,
        call.alpha,
        call.ignore_index,
        z,
        layout,
        labels,
        soft,
        grad,
        grad_strides,
        grad_scale,
        row_loss,
        call.want_components,
        teacher,
        call.distill_alpha,
        call.temperature,
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


def component_means(
    loss: str, sums: torch.Tensor, n_kept: torch.Tensor, *, hard: bool, distill: bool = False
) -> dict[str, torch.Tensor]:
    """Means over kept rows of the logged terms (the LS halves for LS with class indices, `distill` with a teacher),
    detached float32 0-dim tensors on the sums' device."""
    means = (sums / n_kept.clamp_min(1)).float()
    names = ["ce"] + (["reg"] if loss != "ce" else [])
    if loss == "ls" and hard:
        names += ["ls_regularization", "ls_error_amplification"]
    if distill:
        names.append("distill")
    return {name: means[SUMS.index(name)] for name in names}


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
    logits of the same shape, the distillation term of `_args.py` is added (weight `distill_alpha`, temperature
    `temperature`) by a backend that has it.

    With `inplace_backward=True` the gradient is written into the logits' storage: the logits are destroyed (they
    hold the gradient afterwards). Their autograd version counter is bumped, so that a node that saved them for its
    own backward raises instead of using destroyed values. Without a gradient to compute (no grad mode, or logits
    that do not require grad) the logits are never written.
    """
    call = _Call(
        select_backend(logits.device, logits.dtype, distill=teacher is not None),
        loss,
        float(alpha),
        ignore_index,
        reduction,
        num_items_in_batch,
        return_components,
        teacher,
        float(distill_alpha),
        float(temperature),
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
    scale = torch.ones((), dtype=torch.float32, device=logits.device)
    job = LossJob(
        loss,
        float(alpha),
        ignore_index,
        logits,
        (1, n_rows, 0, num_classes),
        labels,
        None,
        logits if want_grad else None,
        (0, num_classes),
        scale,
        row_loss,
        want_components,
    )
    return select_backend(logits.device, logits.dtype).forward(job)
