"""Row layouts: how the rows of a `(..., K)` tensor sit in memory, so that backends can walk views without copies."""

from __future__ import annotations

import torch

__all__ = ["row_layout", "rows_disjoint", "walkable_rows", "writable_in_place"]


def row_layout(x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """`(n_outer, n_inner, s_outer, s_inner)` such that row `r = o * n_inner + i` of `x` (class dimension last, stride
    1) starts `o * s_outer + i * s_inner` elements after `x.data_ptr()`; `None` when the rows need more than two
    levels of strides (the caller then makes a contiguous copy).
    """
    num_classes = x.shape[-1]
    dims = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1]
    merged: list[tuple[int, int]] = []
    for size, stride in reversed(dims):  # innermost first
        if merged and merged[-1][1] * merged[-1][0] == stride:
            merged[-1] = (merged[-1][0] * size, merged[-1][1])
        else:
            merged.append((size, stride))
    merged.reverse()
    if not merged:
        return 1, 1, 0, num_classes
    if len(merged) == 1:
        return 1, merged[0][0], 0, merged[0][1]
    if len(merged) == 2:
        (n_outer, s_outer), (n_inner, s_inner) = merged
        return n_outer, n_inner, s_outer, s_inner
    return None


def rows_disjoint(x: torch.Tensor, layout: tuple[int, int, int, int]) -> bool:
    """Whether no two rows of `x` share memory, so that a gradient can be written over them (not so for `expand`)."""
    num_classes = x.shape[-1]
    n_outer, n_inner, s_outer, s_inner = layout
    if n_inner > 1 and abs(s_inner) < num_classes:
        return False
    return not (n_outer > 1 and abs(s_outer) < (n_inner - 1) * abs(s_inner) + num_classes)


def walkable_rows(logits: torch.Tensor, writable: bool) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """`(logits, layout)`: logits whose rows a backend can walk (class dimension contiguous, at most two levels of row
    strides; rows disjoint when `writable`, as the gradient goes over them), copied only when they are not."""
    z = logits if logits.stride(-1) == 1 or logits.shape[-1] == 1 else logits.contiguous()
    layout = row_layout(z)
    if layout is None or (writable and not rows_disjoint(z, layout)):
        z = z.contiguous()
        layout = row_layout(z)
    return z, layout


def writable_in_place(logits: torch.Tensor) -> bool:
    """Whether the gradient can be written over `logits` themselves: their rows walkable as they are (class dimension
    contiguous, two levels of row strides at most) and disjoint."""
    if logits.stride(-1) != 1 and logits.shape[-1] != 1:
        return False
    layout = row_layout(logits)
    return layout is not None and rows_disjoint(logits, layout)
