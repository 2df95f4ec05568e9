"""Triton backend of the loss engine: one program per row, two sweeps over the row (statistics, then gradient).

Implements the contract of `hf_maxsup.kernels.job` (`LossJob`, `SUMS`, `Backend`). For every row the first sweep keeps
an online max / sum-exp (the running sum is rescaled when the max grows), the sum of the logits, the first index of the
max, with class indices the max of the classes before the label (the label is the first index of the max, i.e. not
`misclassified`, when that is below its logit and the row max is not above it), and when needed the sum `t * z` (soft
targets) or the two halves of the LS term. The second sweep, only when a gradient is wanted, reads the row again and
writes the gradient in the logits' dtype (possibly over the logits: every block is read before the same program writes
it). Per-row terms go to an `(N, 7)` float64 buffer (float32 on devices without float64) that is summed on the device,
so the result does not depend on the order in which programs run and nothing is synchronised with the host.

Every compiled specialisation the launcher can ask for is listed by `specialisations()`, which `python -m
hf_maxsup.kernels --aot sm_80,sm_90` compiles ahead of time to check registers and spills on machines without a GPU.
On CPU tensors the kernels run under Triton's interpreter (`TRITON_INTERPRET=1` set before `import triton`), which is
how the tests check the numerics.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import torch

from .job import LOSS_CODES, LOSS_NAMES, SUMS, LossJob
from .reduction import sums_dtype

try:  # triton is optional ("hf_maxsup[gpu]"): without it this module still imports and reports itself unavailable
    import triton
    import triton.language as tl

    IMPORT_ERROR: str | None = None  # why triton did not import
except Exception as exc:  # ImportError, or a broken install failing at import time
    triton = None
    tl = None
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["DISTILLS", "IMPORT_ERROR", "NAME", "Specialisation", "forward", "scale_", "specialisations", "unavailable"]

NAME = "triton"
DISTILLS = True

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TL_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# (BLOCK, num_warps) by number of classes: the smallest block that holds the row, up to 4096 columns per block.
# 4096 fp32 columns over 8 warps are 16 per thread, which keeps a row's sweep at full bandwidth without spilling;
# small class counts (classification heads) get small blocks so that few lanes sit masked.
_ROW_CONFIGS = ((128, 1), (1024, 4), (4096, 8))
# With a teacher a block holds twice the live values (student and teacher, plain and tempered): half the columns per
# block keep the largest one within the registers (blocks of 4096 and 2048 columns spilled a few bytes).
_DISTILL_ROW_CONFIGS = ((128, 1), (1024, 4))
# The registers a thread may use with a teacher (NVIDIA GPUs): ptxas's own target for these variants (48) made it spill
# a few bytes in some of them; given this budget they use up to 90 and none spills.
_DISTILL_MAX_REGISTERS = 96
# One program scales this many gradient elements in `scale_`.
_SCALE_CONFIG = (4096, 8)


def _row_config(num_classes: int, distill: bool = False) -> tuple[int, int]:
    """`(BLOCK, num_warps)` of the row kernel for `num_classes` columns; always one of `_ROW_CONFIGS` (or of
    `_DISTILL_ROW_CONFIGS` with a teacher)."""
    configs = _DISTILL_ROW_CONFIGS if distill else _ROW_CONFIGS
    for block, num_warps in configs:
        if num_classes <= block:
            return block, num_warps
    return configs[-1]


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why this backend cannot serve `dtype` logits on `device`, or `None` when it can.

    It serves float32, bfloat16 and float16 logits on GPUs where Triton runs (`cuda`, which ROCm reports too, and
    `xpu`), and on CPU tensors only under Triton's interpreter (`TRITON_INTERPRET=1`, for tests).

    Returns:
        `str` or `None`: a short sentence naming the fix, or `None`.
    """
    if triton is None:
        return f'triton is not installed ({IMPORT_ERROR}): pip install "hf_maxsup[gpu]"'
    device = torch.device(device)
    if dtype not in _DTYPES:
        return f"the triton backend takes float32, bfloat16 or float16 logits, not {dtype}: use the torch backend"
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "triton needs a GPU; on CPU it runs only under its interpreter: set TRITON_INTERPRET=1"
        if not _interpreted():
            return "TRITON_INTERPRET=1 was set after triton was imported: set it before importing triton"
        return None
    if device.type not in ("cuda", "xpu"):  # ROCm reports "cuda"
        return f"triton does not run on {device.type} devices: use the torch backend"
    if _interpreted():
        return "TRITON_INTERPRET=1 runs triton's kernels in numpy on the CPU, far too slowly for a GPU: unset it"
    return None


def _interpreted() -> bool:
    """Whether the kernels of this module were built by the interpreter (decided when `@triton.jit` ran)."""
    # lazy: triton is optional, and this is reached only once it imported
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_loss_row_kernel, InterpretedFunction)


if triton is not None:

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
        """A row whose gradient (when it is written) and 7 terms are all `value`: 0 for an ignored label, NaN for a
        label outside [0, K) (never read: inside a compiled graph nothing checked the labels before)."""
        if WRITE_GRAD:
            cols = tl.arange(0, BLOCK)
            for k0 in range(0, K, BLOCK):
                k = k0 + cols
                tl.store(g_row + k, tl.full([BLOCK], value, tl.float32).to(g_row.dtype.element_ty), mask=k < K)
        for j in tl.static_range(7):  # len(SUMS)
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
    def _loss_row_kernel(
        z_ptr, g_ptr, y_ptr, t_ptr, u_ptr, stats_ptr, scale_ptr,
        n_inner, s_outer, s_inner, gs_outer, gs_inner, K, ignore_index, alpha, beta, temperature,
        KIND: tl.constexpr, HARD: tl.constexpr, WRITE_GRAD: tl.constexpr, SPLIT: tl.constexpr,
        DISTILL: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """One program per row `r = o * n_inner + i`: the row's 7 terms (`SUMS`) into `stats_ptr[r]` (float64 with
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
        stats_row = stats_ptr + r * 7  # len(SUMS)
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
    def _scale_kernel(g_ptr, factor_ptr, n, BLOCK: tl.constexpr):
        """`g *= factor` over `n` contiguous elements, in fp32; nothing is read or written when factor == 1."""
        factor = tl.load(factor_ptr)
        if factor != 1.0:  # decided on the device, so that the caller never waits for the factor
            k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = k < n
            g = tl.load(g_ptr + k, mask=mask).to(tl.float32)
            tl.store(g_ptr + k, (g * factor).to(g_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class Specialisation:
    """One compiled variant of a kernel of this module, as the launcher uses it and `--aot` compiles it.

    Attributes:
        name (`str`): readable name of the variant.
        kernel (`str`): name of the `@triton.jit` function in this module.
        signature (`dict[str, str]`): Triton type of every argument (`"*bf16"`, `"i64"`, `"constexpr"`, ...).
        constexprs (`dict[str, object]`): values of the constexpr arguments.
        num_warps (`int`): warps per program.
        maxnreg (`int` or `None`): the registers a thread may use (`None`: ptxas decides).
    """

    name: str
    kernel: str
    signature: dict[str, str] = field(hash=False)
    constexprs: dict[str, object] = field(hash=False)
    num_warps: int
    maxnreg: int | None = None

    def compile(self, capability: int):
        """Compiles this variant for NVIDIA GPUs of compute capability `capability` (80, 90, ...), which needs no GPU.

        Returns:
            Triton's compiled kernel (its PTX in `.asm["ptx"]`).
        """
        # lazy: triton is optional, and its compiler's entry points serve `--aot` only (the backend runs without them)
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        src = ASTSource(fn=globals()[self.kernel], signature=self.signature, constexprs=self.constexprs)
        options = {"num_warps": self.num_warps, **({"maxnreg": self.maxnreg} if self.maxnreg else {})}
        return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)


def _row_specialisation(
    loss, logits_dtype, soft_dtype, teacher_dtype, write_grad, split, block, num_warps
) -> Specialisation:
    """The row kernel's variant for these choices (`soft_dtype` `None` for class indices, `teacher_dtype` `None`
    without distillation)."""
    zt = _TL_NAMES[logits_dtype]
    tt = _TL_NAMES[soft_dtype] if soft_dtype is not None else zt  # hard labels: the logits stand in for t_ptr
    ut = _TL_NAMES[teacher_dtype] if teacher_dtype is not None else zt  # no teacher: the logits stand in for u_ptr
    # Integers as int64, the wide case (the JIT picks int32 for small values, which needs no more registers).
    signature = {"z_ptr": f"*{zt}", "g_ptr": f"*{zt}", "y_ptr": "*i64", "t_ptr": f"*{tt}", "u_ptr": f"*{ut}",
                 "stats_ptr": "*fp64", "scale_ptr": "*fp32", "n_inner": "i64", "s_outer": "i64", "s_inner": "i64",
                 "gs_outer": "i64", "gs_inner": "i64", "K": "i32", "ignore_index": "i64", "alpha": "fp32",
                 "beta": "fp32", "temperature": "fp32"}  # fmt: skip
    # WIDE (float64 terms): the GPUs `--aot` targets all have float64
    constexprs = {"KIND": LOSS_CODES[loss], "HARD": soft_dtype is None, "WRITE_GRAD": write_grad, "SPLIT": split,
                  "DISTILL": teacher_dtype is not None, "WIDE": True, "BLOCK": block}  # fmt: skip
    signature.update({name: "constexpr" for name in constexprs})
    target = "labels" if soft_dtype is None else f"soft-{_TL_NAMES[soft_dtype]}"
    teacher = f",teacher-{ut}" if teacher_dtype is not None else ""
    name = (
        f"loss_row[{loss},{zt},{target}{teacher},{'grad' if write_grad else 'value'}{',split' if split else ''},"
        f"B{block}]"
    )
    maxnreg = _DISTILL_MAX_REGISTERS if teacher_dtype is not None else None
    return Specialisation(name, "_loss_row_kernel", signature, constexprs, num_warps, maxnreg)


def specialisations() -> list[Specialisation]:
    """Every kernel variant `forward` and `scale_` can launch (kinds x targets x teacher x gradient x dtypes x block
    sizes); soft targets and teacher logits come in float32 or the logits' dtype."""
    out = []
    for loss in LOSS_NAMES:
        for dtype in _DTYPES:
            extra_dtypes = [None, torch.float32] + ([dtype] if dtype != torch.float32 else [])
            for soft_dtype, teacher_dtype in itertools.product(extra_dtypes, extra_dtypes):
                splits = (False, True) if loss == "ls" and soft_dtype is None else (False,)
                configs = _DISTILL_ROW_CONFIGS if teacher_dtype is not None else _ROW_CONFIGS
                for write_grad, split, (block, num_warps) in itertools.product((False, True), splits, configs):
                    out.append(
                        _row_specialisation(loss, dtype, soft_dtype, teacher_dtype, write_grad, split, block, num_warps)
                    )
    block, num_warps = _SCALE_CONFIG
    for dtype in _DTYPES:
        signature = {"g_ptr": f"*{_TL_NAMES[dtype]}", "factor_ptr": "*fp32", "n": "i64", "BLOCK": "constexpr"}
        name = f"scale[{_TL_NAMES[dtype]},B{block}]"
        out.append(Specialisation(name, "_scale_kernel", signature, {"BLOCK": block}, num_warps))
    return out


def forward(job: LossJob) -> torch.Tensor:
    """Runs the row kernel over `job`: fills `job.grad` and `job.row_loss` when set, returns the sums of `SUMS`.

    Args:
        job (`LossJob`): the validated work (see `hf_maxsup.kernels.job`).

    Returns:
        `torch.Tensor`: `(7,)` on the logits' device, float64 (float32 where the device has none): the sums over kept
        rows of `SUMS` (the LS halves 0 unless `job.want_split`, `distill` 0 without a teacher).
    """
    logits = job.logits
    device = logits.device
    n_outer, n_inner, s_outer, s_inner = job.layout
    num_rows, num_classes = job.num_rows, job.num_classes
    sum_dtype = sums_dtype(device)
    stats = torch.empty((num_rows, len(SUMS)), dtype=sum_dtype, device=device)  # 7 columns, as the kernel writes
    if num_rows > 0:
        hard = job.labels is not None
        # Arguments a variant does not read still get a tensor of the dtype `specialisations()` lists for them.
        labels = job.labels if hard else torch.empty(1, dtype=torch.int64, device=device)
        soft = logits if hard else job.soft
        grad = job.grad if job.grad is not None else logits
        gs_outer, gs_inner = job.grad_strides if job.grad is not None else (0, 0)
        block, num_warps = _row_config(num_classes, distill=job.teacher is not None)
        # the register budget is an option of NVIDIA's compiler only (ROCm reports "cuda" too)
        nvidia = device.type == "cuda" and torch.version.hip is None
        budget = {"maxnreg": _DISTILL_MAX_REGISTERS} if job.teacher is not None and nvidia else {}
        teacher = job.teacher if job.teacher is not None else logits
        _loss_row_kernel[(num_rows,)](
            logits, grad, labels, soft, teacher, stats, job.grad_scale,
            n_inner, s_outer, s_inner, gs_outer, gs_inner, num_classes, job.ignore_index, float(job.alpha),
            float(job.distill_alpha), float(job.temperature),
            KIND=LOSS_CODES[job.loss], HARD=hard, WRITE_GRAD=job.grad is not None, SPLIT=job.want_split,
            DISTILL=job.teacher is not None, WIDE=sum_dtype == torch.float64, BLOCK=block, num_warps=num_warps,
            **budget,
        )  # fmt: skip
    if job.teacher is not None:  # the kernel's column 0 is the labels' loss
        stats[:, 0].add_(stats[:, 5], alpha=job.distill_alpha * job.temperature**2)
    if job.row_loss is not None:
        job.row_loss.copy_(stats[:, 0])
    return stats.sum(0)


def scale_(grad: torch.Tensor, factor: torch.Tensor) -> None:
    """`grad *= factor` in place, computed in fp32 and stored in `grad`'s dtype, without a host synchronisation.

    Args:
        grad (`torch.Tensor`): the gradient to scale.
        factor (`torch.Tensor`): 0-dim float32 tensor on `grad`'s device; when it is 1 the kernel returns at once.
    """
    if not grad.is_contiguous() or unavailable(grad.device, grad.dtype) is not None:
        grad.mul_(factor)  # the kernel walks flat storage; anything else is left to torch
        return
    flat = grad.view(-1)
    if flat.numel() == 0:
        return
    block, num_warps = _SCALE_CONFIG
    _scale_kernel[(triton.cdiv(flat.numel(), block),)](flat, factor, flat.numel(), BLOCK=block, num_warps=num_warps)
