"""The CPU backend: a one-pass C kernel (`csrc/fused_loss.c`), built on first use (`_cbuild`), loaded by ctypes.

The kernel reads each row once (online softmax over L1-sized blocks, 16-lane vector code), writes the gradient in
the same sweep and runs threads over rows.

Environment: `HF_MAXSUP_NUM_THREADS` (kernel threads; default `torch.get_num_threads()`, one thread below 128k
logits), `HF_MAXSUP_STREAM` (0/1: force off/on the non-temporal stores used for a big resident gradient buffer), and
the build's `HF_MAXSUP_CACHE`, `HF_MAXSUP_CFLAGS` and `CC` (see `_cbuild`). [`check_environment`] checks them.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import threading

import torch

from . import _cbuild
from .job import LOSS_CODES, LossJob

__all__ = [
    "DISTILLS",
    "NAME",
    "build_info",
    "check_environment",
    "forward",
    "num_threads_setting",
    "scale_",
    "unavailable",
]

NAME = "c"
# Whether `forward` computes the distillation term of a job with teacher logits.
DISTILLS = False
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# Below this many logits the kernel runs on one thread: starting threads costs more than it saves.
_MT_MIN_ELEMS = 1 << 17


class _Args(ctypes.Structure):
    # Mirrors hfm_args in csrc/fused_loss.c (same order, same types).
    _fields_ = [
        ("logits", ctypes.c_void_p),
        ("grad", ctypes.c_void_p),
        ("labels", ctypes.c_void_p),
        ("soft", ctypes.c_void_p),
        ("row_loss", ctypes.c_void_p),
        ("n_outer", ctypes.c_int64),
        ("n_inner", ctypes.c_int64),
        ("ls_outer", ctypes.c_int64),
        ("ls_inner", ctypes.c_int64),
        ("gs_outer", ctypes.c_int64),
        ("gs_inner", ctypes.c_int64),
        ("K", ctypes.c_int64),
        ("ignore_index", ctypes.c_int64),
        ("out", ctypes.c_double * 8),
        ("alpha", ctypes.c_float),
        ("gscale", ctypes.c_float),
        ("dtype", ctypes.c_int32),
        ("soft_dtype", ctypes.c_int32),
        ("kind", ctypes.c_int32),
        ("want_split", ctypes.c_int32),
        ("nthreads", ctypes.c_int32),
    ]


class _State:
    """What the one build attempt of this process found."""

    lock = threading.Lock()
    tried = False
    lib = None
    path: str | None = None
    error: str | None = None  # why the kernel is not used, or why the preferred flags were not
    dtypes: frozenset = frozenset()


def _lib():
    if not _State.tried:
        with _State.lock:
            if not _State.tried:
                try:
                    build = _cbuild.build_and_load(ctypes.sizeof(_Args))
                except Exception as err:  # noqa: BLE001 - a failed build must never stop training: torch serves
                    build = _cbuild.Build(error=f"{type(err).__name__}: {err}")
                if build.lib is not None:
                    build.lib.hfm_supports_dtype.restype = ctypes.c_int
                    build.lib.hfm_supports_dtype.argtypes = [ctypes.c_int]
                    build.lib.hfm_run.restype = ctypes.c_int
                    build.lib.hfm_run.argtypes = [ctypes.POINTER(_Args)]
                    _State.dtypes = frozenset(d for d, code in _DTYPES.items() if build.lib.hfm_supports_dtype(code))
                _State.lib, _State.path, _State.error = build.lib, build.path, build.error
                _State.tried = True
    return _State.lib


# ---------------------------------------------------------------------------------------------------
# the backend interface


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the kernel cannot serve `dtype` logits on `device` (None when it can): CPU tensors of float32, bfloat16
    and float16 (float16 where the compiler has `_Float16`), once the kernel is built."""
    if device.type != "cpu":
        return "the C kernel runs on CPU tensors only"
    if dtype not in _DTYPES:
        return f"the C kernel takes float32, bfloat16 or float16 logits, not {str(dtype).removeprefix('torch.')}"
    if _lib() is None:
        return _State.error
    if dtype not in _State.dtypes:
        return f"the C kernel was built without {str(dtype).removeprefix('torch.')} support by this compiler"
    return None


def build_info() -> dict:
    """Where the loaded library lives, and what went wrong on the way (a fallback flag set, a private cache)."""
    _lib()
    return {
        "path": _State.path,
        "note": _State.error if _State.lib is not None else None,
        "dtypes": sorted(str(d) for d in _State.dtypes),
    }


def num_threads_setting() -> int | None:
    """`HF_MAXSUP_NUM_THREADS` as a number of kernel threads, `None` when it is unset.

    Raises:
        `ValueError`: the value is not a positive integer.
    """
    value = os.environ.get("HF_MAXSUP_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"HF_MAXSUP_NUM_THREADS={value!r} is not a number of threads: set a positive integer (e.g. 2), or unset "
            "it to let the C kernel use torch.get_num_threads()."
        )
    return int(value)


def check_environment() -> None:
    """Checks the C kernel's settings: `HF_MAXSUP_NUM_THREADS` (a positive integer), `HF_MAXSUP_STREAM` (0 or 1) and
    `HF_MAXSUP_CFLAGS` (flags a shell could split). `CC` is checked when the kernel is built: a compiler that cannot
    build it leaves the loss to the torch backend, with a warning naming `CC` and the compiler's output.

    Raises:
        `ValueError`: naming the variable and what it may be.
    """
    num_threads_setting()
    stream = os.environ.get("HF_MAXSUP_STREAM", "").strip()
    if stream not in ("", "0", "1"):
        raise ValueError(
            f"HF_MAXSUP_STREAM={stream!r}: set 0 or 1 (force the C kernel's non-temporal stores off or on), or unset "
            "it to let the kernel decide."
        )
    try:
        shlex.split(os.environ.get("HF_MAXSUP_CFLAGS", ""))
    except ValueError as err:
        raise ValueError(f"HF_MAXSUP_CFLAGS cannot be split into flags ({err}): check its quotes.") from None


def _num_threads(n_elems: int) -> int:
    setting = num_threads_setting()
    if setting is not None:
        return setting
    return 1 if n_elems < _MT_MIN_ELEMS else max(1, torch.get_num_threads())


def forward(job: LossJob) -> torch.Tensor:
    """Runs the kernel over `job`'s rows; returns the sums of `SUMS` (float64, CPU). It has no distillation term:
    the dispatcher sends jobs with a teacher elsewhere ([`DISTILLS`])."""
    a = _Args()
    a.logits = job.logits.data_ptr()
    a.grad = job.grad.data_ptr() if job.grad is not None else None
    a.labels = job.labels.data_ptr() if job.labels is not None else None
    a.soft = job.soft.data_ptr() if job.soft is not None else None
    a.row_loss = job.row_loss.data_ptr() if job.row_loss is not None else None
    a.n_outer, a.n_inner, a.ls_outer, a.ls_inner = job.layout
    a.gs_outer, a.gs_inner = job.grad_strides
    a.K, a.ignore_index, a.alpha = job.num_classes, job.ignore_index, job.alpha
    a.gscale = float(job.grad_scale)
    a.dtype = _DTYPES[job.logits.dtype]
    a.soft_dtype = _DTYPES[job.soft.dtype] if job.soft is not None else 0
    a.kind, a.want_split = LOSS_CODES[job.loss], int(job.want_split)
    a.nthreads = _num_threads(job.num_rows * job.num_classes)
    rc = _lib().hfm_run(ctypes.byref(a))
    if rc == 2:
        raise IndexError(f"a label is outside [0, {job.num_classes}) and not ignore_index={job.ignore_index}")
    if rc == 3:
        raise MemoryError("hf_maxsup kernel: could not allocate its per-thread row buffers")
    if rc != 0:
        raise RuntimeError(f"hf_maxsup kernel failed ({rc})")
    # no distillation term (the dispatcher knows)
    return torch.tensor([*a.out[:5], 0.0, a.out[5]], dtype=torch.float64)


def scale_(grad: torch.Tensor, factor: torch.Tensor) -> None:
    """`grad *= factor`, skipped when the factor is 1 (the usual case: reading it costs nothing on a CPU)."""
    value = float(factor)
    if value != 1.0:
        grad.mul_(value)
