"""Fused linear losses: CE, label smoothing and MaxSup of `hidden @ weight.T + bias` without the full logits.

The logits of a large-vocabulary head, `(tokens, V)`, and their gradient are the biggest buffers of a training step.
These functions never hold more than one chunk of rows of them: per chunk of tokens, the chunk's logits are computed
by a matmul, the loss and its gradient come from one in-place pass of the engine's backend (`hf_maxsup.kernels`: C
on CPUs, Triton on GPUs, chunked PyTorch elsewhere), and the chunk's contributions to the gradients of `hidden`,
`weight` and `bias` are computed at once (accumulated in float32 for half-precision inputs). Rows whose label is
`ignore_index` are dropped before the first matmul.

The conventions are those of `hf_maxsup.losses` (`ignore_index` out of every term, `reduction`,
`num_items_in_batch`, `return_components`, float32 accumulation), with two limits: targets are class indices (no
soft targets: use the logit losses for mixup), and on a GPU a call synchronises with the host twice (the label-range
check, and the count of kept rows that sizes the matmuls).
"""

from __future__ import annotations

import torch

from . import kernels
from .losses import smoothing_weight
from .validation import check_label_range, check_loss_options, class_indices

__all__ = [
    "default_chunk_size",
    "fused_linear_loss",
    "label_smoothing_linear_cross_entropy",
    "linear_cross_entropy",
    "maxsup_linear_cross_entropy",
]

# The smallest chunk of logits worth a matmul: fewer rows than this make every chunk re-read the whole weight for
# too little work (measured on a CPU: 32-row chunks of a 32k x 512 head ran 1.5x slower than 64-row ones).
_MIN_CHUNK_ELEMS = 1 << 21
# Chunks of at least 1/16 of the rows (each chunk re-reads the weight three times: forward, grad of the hidden
# states, grad of the weight), and at most this many logits (256 MiB of float16 logits).
_MIN_CHUNKS_FRACTION = 16
_MAX_CHUNK_ELEMS = 1 << 27


def default_chunk_size(num_rows: int, hidden_size: int, vocab_size: int) -> int:
    """Rows per chunk: a chunk of logits about as large as the hidden states (Liger-Kernel's rule) and at least
    `_MIN_CHUNK_ELEMS` logits, or 1/16 of the rows when that is more, at most `_MAX_CHUNK_ELEMS` logits; a power of
    two, rounded down so that a chunk stays within its budget, and no more than `num_rows` rounded up to one."""
    vocab_size = max(vocab_size, 1)
    rows = max(max(num_rows * hidden_size, _MIN_CHUNK_ELEMS) // vocab_size, num_rows // _MIN_CHUNKS_FRACTION)
    rows = max(1, min(rows, _MAX_CHUNK_ELEMS // vocab_size))
    rows = 1 << (rows.bit_length() - 1)
    return min(rows, 1 << max(num_rows - 1, 0).bit_length())


def _check(hidden, weight, bias, target, loss, alpha, reduction, num_items_in_batch, ignore_index) -> torch.Tensor:
    """Checks the inputs and options; returns the labels as int64."""
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.dim() < 2:
        raise ValueError(
            f"hidden must be a floating-point tensor of shape (N, H) or (B, T, H); got "
            f"{type(hidden).__name__} {tuple(getattr(hidden, 'shape', ()))}."
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape (V, H) = (V, {hidden.shape[-1]}), the output layer's "
            f"`nn.Linear.weight`; got {tuple(weight.shape)}."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape (V,) = ({weight.shape[0]},); got {tuple(bias.shape)}.")
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(
            f"hidden ({hidden.dtype}, {hidden.device}) and weight ({weight.dtype}, {weight.device}) "
            "must share dtype and device, as for F.linear."
        )
    if target.is_floating_point():
        raise ValueError(
            "the fused linear losses take class indices, not soft targets: for soft targets "
            "(mixup, cutmix) compute the logits and use hf_maxsup.losses."
        )
    if target.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(target.shape)} do not match hidden states of shape "
            f"{tuple(hidden.shape)}: they need shape {tuple(hidden.shape[:-1])}."
        )
    check_loss_options(loss, alpha, reduction, num_items_in_batch)
    labels = class_indices(target)
    check_label_range(labels, weight.shape[0], ignore_index, f"the head has V={weight.shape[0]} outputs")
    return labels


def fused_linear_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str = "maxsup",
    alpha: float = 0.1,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    return_components: bool = False,
    chunk_size: int | None = None,
    mass: str = "all",
):
    """CE / LS / MaxSup of the logits `hidden @ weight.T + bias`, computed chunk by chunk without the full logits.

    Args:
        hidden (`torch.Tensor` of shape `(N, H)` or `(B, T, H)`):
            The last hidden states (what the output layer reads).
        weight (`torch.Tensor` of shape `(V, H)`):
            The output layer's weight (`lm_head.weight`), same dtype and device as `hidden`.
        target (`torch.Tensor`):
            Class indices of shape `hidden.shape[:-1]`; `ignore_index` marks positions to skip.
        loss (`str`, *optional*, defaults to `"maxsup"`): `"ce"`, `"ls"` or `"maxsup"`.
        alpha (`float`, *optional*, defaults to 0.1): weight of the regulariser, in `[0, 1)` (unused for `"ce"`).
        bias (`torch.Tensor` of shape `(V,)`, *optional*): the output layer's bias (e.g. Marian's
            `final_logits_bias`).
        ignore_index (`int`, *optional*, defaults to -100): label value excluded from every term.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` (over kept items).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): when given, the loss is the sum over kept items
            divided by it (the `Trainer`'s gradient-accumulation contract).
        return_components (`bool`, *optional*, defaults to `False`): also return the logged terms (`"ce"`,
            `"reg"`, for LS its decomposition, and `"misclassified"`), means over kept items, as in `hf_maxsup.losses`.
        chunk_size (`int`, *optional*): rows per chunk; by default [`default_chunk_size`].
        mass (`str`, *optional*, defaults to `"all"`): for `"ls"`, where the smoothing mass goes: `"all"` (torch,
            transformers) or `"others"` (fairseq, tensor2tensor); see `hf_maxsup.losses.smoothing_weight`.

    Returns:
        `torch.Tensor`: the loss (float32), or `(loss, components)` when `return_components=True`.
    """
    target = _check(hidden, weight, bias, target, loss, alpha, reduction, num_items_in_batch, ignore_index)
    n_rows = hidden.numel() // hidden.shape[-1]
    alpha = 0.0 if loss == "ce" else smoothing_weight(float(alpha), weight.shape[0], mass if loss == "ls" else "all")
    value, totals = kernels.fused_linear_loss(
        hidden,
        weight,
        target,
        loss=loss,
        alpha=alpha,
        bias=bias,
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
        chunk_size=chunk_size or default_chunk_size(n_rows, weight.shape[1], weight.shape[0]),
        want_split=return_components and loss == "ls",
    )
    if not return_components:
        return value
    return value, kernels.component_means(loss, totals, hard=True)


def linear_cross_entropy(hidden, weight, target, alpha: float = 0.0, **kwargs):
    """Cross-entropy of `hidden @ weight.T + bias` without materialising the logits.

    Arguments as in [`fused_linear_loss`], with `alpha` positional and the others by keyword (`bias`,
    `ignore_index`, `reduction`, `num_items_in_batch`, `return_components`, `chunk_size`, ...)."""
    return fused_linear_loss(hidden, weight, target, loss="ce", alpha=alpha, **kwargs)


def label_smoothing_linear_cross_entropy(hidden, weight, target, alpha: float = 0.1, **kwargs):
    """Label smoothing of `hidden @ weight.T + bias` without materialising the logits (torch's
    `F.linear_cross_entropy` falls back to the full logits when `label_smoothing != 0`).

    Arguments as in [`fused_linear_loss`], with `alpha` positional and the others by keyword (`bias`,
    `ignore_index`, `reduction`, `num_items_in_batch`, `return_components`, `chunk_size`, ...)."""
    return fused_linear_loss(hidden, weight, target, loss="ls", alpha=alpha, **kwargs)


def maxsup_linear_cross_entropy(hidden, weight, target, alpha: float = 0.1, **kwargs):
    """MaxSup of `hidden @ weight.T + bias` without materialising the logits.

    Arguments as in [`fused_linear_loss`], with `alpha` positional and the others by keyword (`bias`,
    `ignore_index`, `reduction`, `num_items_in_batch`, `return_components`, `chunk_size`, ...)."""
    return fused_linear_loss(hidden, weight, target, loss="maxsup", alpha=alpha, **kwargs)
