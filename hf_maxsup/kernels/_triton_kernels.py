"""The Triton kernels of the `_triton` backend: `loss_row_kernel` (one program per row: the row's terms and, when asked,
its gradient; what it computes is described in `_triton`'s docstring and `job.py`) and `scale_kernel`. Importing this
module needs triton; `_triton` imports it only where triton imported.
"""

import triton
import triton.language as tl

from .job import SUMS

__all__ = ["loss_row_kernel", "scale_kernel"]

# The terms of a row (`SUMS`): the columns of the kernel's per-row output.
NUM_SUMS = tl.constexpr(len(SUMS))


@triton.jit
def _block_sum(v, WIDE: tl.constexpr):
    """The sum of a block, in float64 with `WIDE`: summed in float32, and summed again scaled by 2**-64 only when
    that overflowed (logits near the float32 limit) or met a NaN, so that such rows stay exact at no cost
    otherwise (a float64 copy of the block spilled registers)."""
    part = tl.sum(v, axis=0)
    if WIDE:
        part = part.to(tl.float64)
        if part - part != 0.0:
            part = tl.sum(v * 5.421010862427522e-20, axis=0).to(tl.float64) * 1.8446744073709552e19
    return part


@triton.jit
def _over_k(x, K):
    """`x / K`; for float64 `x` times `1 / K` refined from float32 by two Newton steps (within an ulp), because
    ptxas compiles a float64 division into a subroutine call, around which it spilled registers."""
    if x.dtype == tl.float64:
        k = K.to(tl.float64)
        r = (1.0 / K.to(tl.float32)).to(tl.float64)
        r = r * (2.0 - k * r)
        r = r * (2.0 - k * r)
        return x * r
    return x / K


@triton.jit
def _split_sums(x, zy, mask, WIDE: tl.constexpr):
    """The block's two halves of the LS term, `sum max(z_y - z_k, 0)` and `sum min(z_y - z_k, 0)`; with `WIDE`
    in float64, the differences taken again scaled by 2**-64 (as in `_block_sum`) when the float32 ones
    overflowed."""
    d = zy - tl.where(mask, x, zy)  # masked tail: d = 0
    pos = tl.sum(tl.maximum(d, 0.0), axis=0)
    neg = tl.sum(tl.minimum(d, 0.0), axis=0)
    if WIDE:
        pos = pos.to(tl.float64)
        neg = neg.to(tl.float64)
        if (pos - pos) + (neg - neg) != 0.0:
            d = zy * 5.421010862427522e-20 - tl.where(mask, x, zy) * 5.421010862427522e-20
            pos = tl.sum(tl.maximum(d, 0.0), axis=0).to(tl.float64) * 1.8446744073709552e19
            neg = tl.sum(tl.minimum(d, 0.0), axis=0).to(tl.float64) * 1.8446744073709552e19
    return pos, neg


@triton.jit
def _row_stats(
    z_row, t_row, K, y, zy,
    KIND: tl.constexpr, HARD: tl.constexpr, WRITE_GRAD: tl.constexpr, SPLIT: tl.constexpr, WIDE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Sweep 1 over one row: max, log-sum-exp, first argmax (MaxSup gradient), the max before the label (hard
    labels), sum z, sum t*z (soft), LS halves; the sums in float64 with `WIDE`."""
    cols = tl.arange(0, BLOCK)
    m = tl.full([], float("-inf"), tl.float32)  # running max
    s = tl.zeros([], tl.float32)  # running sum of exp(z - m)
    if WIDE:  # the sums' type
        sum_z = tl.zeros([], tl.float64)
    else:
        sum_z = tl.zeros([], tl.float32)
    sum_tz = sum_z
    pos = sum_z
    neg = sum_z
    arg = tl.zeros([], tl.int32)
    m_before = tl.full([], float("-inf"), tl.float32)  # max over the classes before the label
    if HARD:
        # its part in the label's block read before the sweep (which reads it again from the cache): inside the
        # sweep, the masked max added live values that made ptxas spill in some variants
        k = y - y % BLOCK + cols
        m_before = tl.max(tl.load(z_row + k, mask=k < y, other=float("-inf")).to(tl.float32), axis=0)
    for k0 in range(0, K, BLOCK):
        k = k0 + cols
        mask = k < K
        x = tl.load(z_row + k, mask=mask, other=float("-inf")).to(tl.float32)
        xs = tl.where(mask, x, 0.0)  # masked tail: 0 in the sums (-inf * 0 would be NaN)
        block_max = tl.max(x, axis=0)
        if KIND == 2 and WRITE_GRAD:  # the argmax only matters to MaxSup's gradient
            # first index within the block; only a strictly greater block max moves it, so ties keep the
            # earliest block (torch.max's rule)
            block_arg = tl.argmax(x, axis=0, tie_break_left=True).to(tl.int32)
            arg = tl.where(block_max > m, k0 + block_arg, arg)
        m_new = tl.maximum(m, block_max)
        # all -inf so far: subtract 0 instead of -inf, so that exp(-inf - -inf) = NaN never appears
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        m = m_new
        if HARD:  # and in the blocks before the label's
            m_before = tl.where(k0 + BLOCK <= y, tl.maximum(m_before, block_max), m_before)
        sum_z += _block_sum(xs, WIDE)
        if not HARD:
            t = tl.load(t_row + k, mask=mask, other=0.0).to(tl.float32)
            sum_tz += _block_sum(t * xs, WIDE)
        if SPLIT:
            block_pos, block_neg = _split_sums(x, zy, mask, WIDE)
            pos += block_pos
            neg += block_neg
    lse = m + tl.log(s)
    return m, lse, arg, m_before, sum_z, sum_tz, pos, neg


@triton.jit
def _row_grad(
    z_row, g_row, t_row, u_row, y, K, lse, arg, alpha, scale, beta_t, inv_t, lse_s, lse_t,
    KIND: tl.constexpr, HARD: tl.constexpr, DISTILL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Sweep 2 over one row: grad = (softmax(z) - c0 - c1 * t + alpha * [k == argmax]
    [+ b T (softmax(z / T) - softmax(u / T))]) * scale."""
    cols = tl.arange(0, BLOCK)
    if KIND == 0:  # ce
        c0 = 0.0
        c1 = 1.0
    elif KIND == 1:  # ls
        c0 = alpha / K
        c1 = 1.0 - alpha
    else:  # maxsup
        c0 = alpha / K
        c1 = 1.0
    for k0 in range(0, K, BLOCK):
        k = k0 + cols
        mask = k < K
        x = tl.load(z_row + k, mask=mask, other=float("-inf")).to(tl.float32)
        if HARD:
            t = tl.where(k == y, 1.0, 0.0)
        else:
            t = tl.load(t_row + k, mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) - c0 - c1 * t
        if KIND == 2:
            g += tl.where(k == arg, alpha, 0.0)
        if DISTILL:
            u = tl.load(u_row + k, mask=mask, other=float("-inf")).to(tl.float32)
            g += beta_t * (tl.exp(x * inv_t - lse_s) - tl.exp(u * inv_t - lse_t))
        tl.store(g_row + k, (g * scale).to(g_row.dtype.element_ty), mask=mask)


@triton.jit
def _distill_stats(z_row, u_row, K, inv_t, BLOCK: tl.constexpr):
    """The tempered student and teacher over one row: running max and sum-exp of z / T and u / T, and
    sum_k exp(u_k / T - mu) (u_k - z_k) / T, rescaled like the sum when the teacher's max grows."""
    cols = tl.arange(0, BLOCK)
    ms = tl.full([], float("-inf"), tl.float32)
    ss = tl.zeros([], tl.float32)
    mt = tl.full([], float("-inf"), tl.float32)
    st = tl.zeros([], tl.float32)
    a = tl.zeros([], tl.float32)
    for k0 in range(0, K, BLOCK):
        k = k0 + cols
        mask = k < K
        x = tl.load(z_row + k, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        u = tl.load(u_row + k, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        ms_new = tl.maximum(ms, tl.max(x, axis=0))
        ms_safe = tl.where(ms_new == float("-inf"), 0.0, ms_new)
        ss = ss * tl.exp(ms - ms_safe) + tl.sum(tl.exp(x - ms_safe), axis=0)
        ms = ms_new
        mt_new = tl.maximum(mt, tl.max(u, axis=0))
        mt_safe = tl.where(mt_new == float("-inf"), 0.0, mt_new)
        rescale = tl.exp(mt - mt_safe)
        e = tl.exp(u - mt_safe)  # 0 on the masked tail
        st = st * rescale + tl.sum(e, axis=0)
        # the tail's difference taken on zeros: -inf - -inf would be NaN (times the 0 of e, still NaN)
        a = a * rescale + tl.sum(e * (tl.where(mask, u, 0.0) - tl.where(mask, x, 0.0)), axis=0)
        mt = mt_new
    lse_s = ms + tl.log(ss)
    lse_t = mt + tl.log(st)
    kl = a / st - lse_t + lse_s
    return kl, lse_s, lse_t


@triton.jit
def _constant_row(g_row, stats_row, K, value, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """A row whose gradient (when it is written) and terms are all `value`: 0 for an ignored label, NaN for a
    label outside [0, K) (never read: inside a compiled graph nothing checked the labels before)."""
    if WRITE_GRAD:
        cols = tl.arange(0, BLOCK)
        for k0 in range(0, K, BLOCK):
            k = k0 + cols
            tl.store(g_row + k, tl.full([BLOCK], value, tl.float32).to(g_row.dtype.element_ty), mask=k < K)
    for j in tl.static_range(NUM_SUMS):
        tl.store(stats_row + j, value)


@triton.jit
def _label_terms(m, lse, zy, sum_z, sum_tz, K, alpha, KIND: tl.constexpr, HARD: tl.constexpr):
    """The labels' terms of one row from its statistics: `(ce, reg, ce + alpha * reg)`, in the sums' type."""
    target_z = zy.to(sum_z.dtype) if HARD else sum_tz  # sum_k t_k z_k
    ce = lse.to(sum_z.dtype) - target_z
    if KIND == 0:
        reg = 0.0
    elif KIND == 1:
        reg = target_z - _over_k(sum_z, K)
    else:
        reg = m.to(sum_z.dtype) - _over_k(sum_z, K)
    return ce, reg, ce + alpha * reg


@triton.jit
def loss_row_kernel(
    z_ptr, g_ptr, y_ptr, t_ptr, u_ptr, stats_ptr, scale_ptr,
    n_inner, s_outer, s_inner, gs_outer, gs_inner, K, ignore_index, alpha, beta, temperature,
    KIND: tl.constexpr, HARD: tl.constexpr, WRITE_GRAD: tl.constexpr, SPLIT: tl.constexpr,
    DISTILL: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One program per row `r = o * n_inner + i`: the row's terms (`SUMS`) into `stats_ptr[r]` (float64 with
    `WIDE`, float32 on devices without float64) and, with `WRITE_GRAD`, its gradient into `g_ptr`."""
    # the row split in int32 (a grid's rows and n_inner fit: a 64-bit division is a subroutine call, around which
    # ptxas spilled), the offsets in int64 (N * K may exceed 2**31)
    o32 = tl.program_id(0) // n_inner.to(tl.int32)
    r = tl.program_id(0).to(tl.int64)
    o = o32.to(tl.int64)
    i = r - o * n_inner
    z_row = z_ptr + (o * s_outer + i * s_inner)
    g_row = g_ptr + (o * gs_outer + i * gs_inner)
    t_row = t_ptr + r * K
    u_row = u_ptr + r * K
    stats_row = stats_ptr + r * NUM_SUMS
    y = 0
    zy = 0.0
    if HARD:
        label = tl.load(y_ptr + r)
        if label == ignore_index:
            _constant_row(g_row, stats_row, K, 0.0, WRITE_GRAD, BLOCK)
            return
        out_of_range = (label < 0) | (label >= K)
        if out_of_range:
            _constant_row(g_row, stats_row, K, float("nan"), WRITE_GRAD, BLOCK)
            return
        y = label.to(tl.int32)
        zy = tl.load(z_row + y).to(tl.float32)
    m, lse, arg, m_before, sum_z, sum_tz, pos, neg = _row_stats(
        z_row, t_row, K, y, zy, KIND, HARD, WRITE_GRAD, SPLIT, WIDE, BLOCK
    )
    ce, reg, loss = _label_terms(m, lse, zy, sum_z, sum_tz, K, alpha, KIND, HARD)
    # the terms stored before the teacher's sweep, so that none stays live across it: the labels' loss here, its
    # distillation term added by `forward` (a value kept across the sweep spilled)
    tl.store(stats_row + 0, loss)
    tl.store(stats_row + 1, ce)
    tl.store(stats_row + 2, reg)
    tl.store(stats_row + 3, _over_k(pos, K))
    tl.store(stats_row + 4, _over_k(neg, K))
    if HARD:  # the label is not the first index of the max: a larger logit, or an equal one before it
        missed = tl.where((m > zy) | (m_before >= zy), 1.0, 0.0)
        tl.store(stats_row + 6, tl.where(ce == ce, missed, float("nan")))  # NaN for a NaN row, as its terms
    else:
        tl.store(stats_row + 6, 0.0)
    inv_t = 1.0 / temperature
    kl = 0.0
    lse_s = 0.0
    lse_t = 0.0
    if DISTILL:
        kl, lse_s, lse_t = _distill_stats(z_row, u_row, K, inv_t, BLOCK)
    tl.store(stats_row + 5, kl)
    if WRITE_GRAD:
        scale = tl.load(scale_ptr)  # a device scalar: no host synchronisation to learn it
        _row_grad(z_row, g_row, t_row, u_row, y, K, lse, arg, alpha, scale, beta * temperature, inv_t, lse_s, lse_t,
                  KIND, HARD, DISTILL, BLOCK)  # fmt: skip


@triton.jit
def scale_kernel(g_ptr, factor_ptr, n, BLOCK: tl.constexpr):
    """`g *= factor` over `n` contiguous elements, in fp32; nothing is read or written when factor == 1."""
    factor = tl.load(factor_ptr)
    if factor != 1.0:  # decided on the device, so that the caller never waits for the factor
        k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = k < n
        g = tl.load(g_ptr + k, mask=mask).to(tl.float32)
        tl.store(g_ptr + k, (g * factor).to(g_ptr.dtype.element_ty), mask=mask)
