"""The contract between the engine and its backends: the job a backend receives (`LossJob`), what it returns
(`SUMS`) and what a backend module is (`Backend`).

A backend makes ONE pass over the rows of `LossJob.logits` and, for every row, computes the loss terms in float32
(float64 for float64 logits) and, when `LossJob.grad` is set, writes the row's gradient, multiplied by
`LossJob.grad_scale`, into `grad`. It returns the sums over kept rows of the per-row terms (`SUMS`); the dispatcher
turns them into the loss and the logged components (the one reduction shared by all backends).

Per kept row `z` (K logits), with `t` the one-hot label (or the soft target row), `lse = logsumexp(z)` and
`a = alpha`:

    ce   = lse - sum_k t_k z_k
    reg  = max_k z_k - mean_k z_k        for the loss "maxsup"
         = sum_k t_k z_k - mean_k z_k    for "ls"
         = 0                             for "ce"
    loss = ce + a * reg
    grad = (softmax(z) - c1 * t - c0 + a * onehot(first argmax) [maxsup only]) * grad_scale
           with c0 = a / K, c1 = 1 - a (ls) / 1 (ce, maxsup); c0 = 0 for ce
    ls_regularization     = sum_k max(z_y - z_k, 0) / K     (ls with hard labels, want_components only)
    ls_error_amplification = sum_k min(z_y - z_k, 0) / K
    misclassified = 1 if the label y is not the first index of the max of z, else 0  (hard labels; 0 for soft)

`misclassified` counts a row whose label ties with the max at a later index than another class as misclassified:
the same first-index rule as MaxSup's argmax and `torch.max`. It comes from the sweep's own max and label logit; the
first index of the max is looked for only when the label's logit is the max.

With teacher logits `u` (distillation; temperature `T`, weight `b`), with `q = softmax(u / T)` and
`s = softmax(z / T)`, the row also gets

    distill = KL(q || s) = sum_k q_k (u_k - z_k) / T - logsumexp(u / T) + logsumexp(z / T)
    loss   += b * T**2 * distill
    grad   += b * T * (s - q) * grad_scale

A row whose label is `ignore_index` contributes 0 to every sum, gets a zero gradient row and a 0 in `row_loss`.
Ties in the max go to the first index (torch.max's rule). A row holding NaN gives NaN terms and a NaN gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..loss_names import LOSS_NAMES

__all__ = ["LOSS_CODES", "LOSS_NAMES", "SUMS", "Backend", "LossJob"]

# The integer code of each loss in the kernels: `K_CE`, `K_LS`, `K_MAXSUP` in csrc/fused_loss.c, Triton's `KIND`.
LOSS_CODES = {loss: code for code, loss in enumerate(LOSS_NAMES)}
# The order of the sums every backend returns.
SUMS = ("loss", "ce", "reg", "ls_regularization", "ls_error_amplification", "distill", "misclassified")


@dataclass(kw_only=True)
class LossJob:
    """One call's work, already validated by the dispatcher; built by keyword.

    Attributes:
        loss (`str`): `"ce"`, `"ls"` or `"maxsup"`.
        alpha (`float`): weight of the regulariser (0.0 for `"ce"`).
        ignore_index (`int`): label value of the rows to skip.
        logits (`torch.Tensor`): `(..., K)`, the class dimension contiguous (stride 1). Float32, bfloat16, float16 (or
            float64 for the torch backend). Never written to unless `grad` is `logits` itself (in place).
        layout (`tuple[int, int, int, int]`): `(n_outer, n_inner, s_outer, s_inner)`: row `r = o * n_inner + i`
            (`0 <= o < n_outer`, `0 <= i < n_inner`) starts `o * s_outer + i * s_inner` elements after
            `logits.data_ptr()`. Covers contiguous logits and views such as `logits[:, :-1]`.
        labels (`torch.Tensor` or `None`): `(N,)` contiguous int64 class indices, `N = n_outer * n_inner`; every
            value is `ignore_index` or in `[0, K)` (checked before). `None` with soft targets.
        soft (`torch.Tensor` or `None`): `(N, K)` contiguous soft targets (float32, or the logits' dtype).
        grad (`torch.Tensor` or `None`): where the gradient goes, in the logits' dtype; `None` for the value only.
            Either `logits` itself (in place: each row is read before it is overwritten) or a separate buffer.
        grad_strides (`tuple[int, int]`): `(gs_outer, gs_inner)`: row `r` of the gradient starts
            `o * gs_outer + i * gs_inner` elements after `grad.data_ptr()`.
        grad_scale (`torch.Tensor`): 0-dim float32 on the logits' device; the gradient is written times this value
            (1/denominator, or a power-of-two headroom for float16). A device tensor, so that no host
            synchronisation is needed to know it.
        row_loss (`torch.Tensor` or `None`): `(N,)` float32 (float64 for float64 logits) to receive each row's loss
            (0 for ignored rows), for `reduction="none"`.
        want_components (`bool`): also compute the LS decomposition (only used for loss `"ls"` with labels).
        teacher (`torch.Tensor` or `None`): `(N, K)` contiguous teacher logits (float32, or the logits' dtype) for
            distillation; `None` without.
        distill_alpha (`float`): the weight `b` of the distillation term.
        temperature (`float`): the temperature `T` of the distillation term.
    """

    loss: str
    alpha: float
    ignore_index: int
    logits: torch.Tensor
    layout: tuple[int, int, int, int]
    labels: torch.Tensor | None
    soft: torch.Tensor | None
    grad: torch.Tensor | None
    grad_strides: tuple[int, int]
    grad_scale: torch.Tensor
    row_loss: torch.Tensor | None
    want_components: bool
    teacher: torch.Tensor | None = None
    distill_alpha: float = 0.0
    temperature: float = 1.0

    @property
    def num_rows(self) -> int:
        return self.layout[0] * self.layout[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[-1]

    @property
    def in_place(self) -> bool:
        return self.grad is not None and self.grad.data_ptr() == self.logits.data_ptr()

    @property
    def want_split(self) -> bool:
        """Whether the LS decomposition is asked for (and defined: LS with class indices)."""
        return self.want_components and self.loss == "ls" and self.labels is not None


@runtime_checkable
class Backend(Protocol):
    """What the dispatcher needs of a backend: a module (`_c`, `_triton`, `_torch`) with these names. A new backend
    is such a module, named in `dispatch.BACKENDS` and in its device's preference there.

    Attributes:
        NAME (`str`): the name `HF_MAXSUP_BACKEND` and `kernel_info()` use.
        DISTILLS (`bool`): whether `forward` computes the distillation term of a job with teacher logits.
    """

    NAME: str
    DISTILLS: bool

    def unavailable(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why the backend cannot serve `dtype` logits on `device` (a short sentence naming the fix), or `None`."""

    def forward(self, job: LossJob) -> torch.Tensor:
        """One pass over `job`'s rows: fills `job.grad` and `job.row_loss` when set; returns the sums of `SUMS` over
        kept rows, float64 (float32 on devices without it) on the logits' device."""

    def scale_(self, grad: torch.Tensor, factor: torch.Tensor) -> None:
        """`grad *= factor` in place; `factor` a 0-dim float32 tensor on `grad`'s device (often 1: skip the pass)."""
