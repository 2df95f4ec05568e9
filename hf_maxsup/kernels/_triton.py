"""Triton backend of the loss engine: one program per row, two sweeps over the row (statistics, then gradient).

Implements the contract of `hf_maxsup.kernels.job` (`LossJob`, `SUMS`, `Backend`). For every row the first sweep keeps
an online max / sum-exp (the running sum is rescaled when the max grows), the sum of the logits, the first index of the
max, with class indices the max of the classes before the label (the label is the first index of the max, i.e. not
`misclassified`, when that is below its logit and the row max is not above it), and when needed the sum `t * z` (soft
targets) or the two halves of the LS term. The second sweep, only when a gradient is wanted, reads the row again and
writes the gradient in the logits' dtype (possibly over the logits: every block is read before the same program writes
it). Per-row terms go to an `(N, len(SUMS))` float64 buffer (float32 on devices without float64) that is summed on the
device, so the result does not depend on the order in which programs run and nothing is synchronised with the host.

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

    from . import _triton_kernels

    IMPORT_ERROR: str | None = None  # why triton did not import
except Exception as exc:  # ImportError, or a broken install failing at import time
    triton = None
    _triton_kernels = None
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

    return isinstance(_triton_kernels.loss_row_kernel, InterpretedFunction)


@dataclass(frozen=True)
class Specialisation:
    """One compiled variant of a kernel of this backend, as the launcher uses it and `--aot` compiles it.

    Attributes:
        name (`str`): readable name of the variant.
        kernel (`str`): name of the `@triton.jit` function in `_triton_kernels`.
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

        src = ASTSource(fn=getattr(_triton_kernels, self.kernel), signature=self.signature, constexprs=self.constexprs)
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
    return Specialisation(name, "loss_row_kernel", signature, constexprs, num_warps, maxnreg)


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
        out.append(Specialisation(name, "scale_kernel", signature, {"BLOCK": block}, num_warps))
    return out


def forward(job: LossJob) -> torch.Tensor:
    """Runs the row kernel over `job`: fills `job.grad` and `job.row_loss` when set, returns the sums of `SUMS`.

    Args:
        job (`LossJob`): the validated work (see `hf_maxsup.kernels.job`).

    Returns:
        `torch.Tensor`: `(len(SUMS),)` on the logits' device, float64 (float32 where the device has none): the sums
        over kept rows of `SUMS` (the LS halves 0 unless `job.want_split`, `distill` 0 without a teacher).
    """
    logits = job.logits
    device = logits.device
    n_outer, n_inner, s_outer, s_inner = job.layout
    num_rows, num_classes = job.num_rows, job.num_classes
    sum_dtype = sums_dtype(device)
    stats = torch.empty((num_rows, len(SUMS)), dtype=sum_dtype, device=device)
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
        _triton_kernels.loss_row_kernel[(num_rows,)](
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
    _triton_kernels.scale_kernel[(triton.cdiv(flat.numel(), block),)](
        flat, factor, flat.numel(), BLOCK=block, num_warps=num_warps
    )
