"""Fused cross-entropy / label smoothing / Max Suppression: loss and gradient in one pass.

``fused_cross_entropy`` computes, for every kept row ``z`` (class dimension last), in float32 whatever
the input dtype, with ``lse = logsumexp(z)`` and ``t`` the one-hot label or the soft target::

    ce   = lse - sum_k t_k z_k
    reg  = max_k z_k - mean_k z_k        (kind="maxsup")
         = sum_k t_k z_k - mean_k z_k    (kind="ls"; CE + alpha*reg == F.cross_entropy(label_smoothing=alpha))
    loss = ce + alpha * reg
    dloss/dz = softmax(z) - t + alpha * (onehot(first argmax) - 1/K)   (maxsup)
             = softmax(z) - t + alpha * (t - 1/K)                      (ls)

The gradient is computed *during the forward*, in the same sweep over the logits, and stored; the
backward only multiplies it by ``grad_output`` (nothing at all when ``grad_output == 1``, the usual case).

Two implementations with the same contract:

* a C kernel (``csrc/fused_loss.c``), compiled with the system C compiler on first use into a cache
  directory (``$HF_MAXSUP_CACHE``, else ``$XDG_CACHE_HOME/hf_maxsup``, else ``~/.cache/hf_maxsup``),
  keyed by a hash of the source, the flags, the compiler and the CPU, published with an atomic rename
  (safe with several DDP processes building at once), loaded with :mod:`ctypes`.  One read of the
  logits, one write of the gradient per row (online softmax over L1-sized blocks), threads over rows.
* a pure PyTorch chunked fallback, used when no compiler is available, for devices other than the CPU,
  or when ``HF_MAXSUP_DISABLE_KERNEL=1`` is set.  Correct, not fast.  Temporaries are chunk-sized.

:func:`is_available` says whether the kernel is in use.

Memory.  The stored gradient has the logits' dtype and layout (it is what autograd would hand to the
next node anyway); beyond it the kernel uses one fp32 row of scratch per thread.  With
``inplace_backward=True`` the gradient is written into the logits' own storage: **the logits are
destroyed by the call** (they hold the gradient afterwards) and no logits-sized buffer is allocated.
Only use it when nothing else needs the logits (e.g. ``logits = hidden @ W.T`` feeding only this loss).
The logits' autograd version counter is bumped, so if another autograd node saved the logits for its
backward (e.g. a ``tanh`` soft-cap), autograd raises instead of silently using destroyed values.

If the logits are not laid out with the class dimension contiguous (or their rows overlap, e.g. an
``expand``), a contiguous copy is made and the in-place gradient goes into that copy (correct, but the
memory saving is lost).

The loss is returned as float32 (also for bf16/fp16 logits; float64 logits, which only the fallback
handles, give float64).  The stored gradient can be consumed by
one backward only (it is handed to autograd without a copy); a second backward through the same graph
raises, and so does double backward.

Environment: ``HF_MAXSUP_DISABLE_KERNEL=1`` (use the fallback), ``HF_MAXSUP_CACHE`` (build cache
directory), ``HF_MAXSUP_CFLAGS`` (compiler flags instead of ``-march=native``, e.g. ``-march=x86-64-v3``
for a cache shared by different CPUs), ``HF_MAXSUP_NUM_THREADS`` (kernel threads; default
``torch.get_num_threads()``, one thread below 128k logits), ``HF_MAXSUP_STREAM`` (0/1: force off/on the
non-temporal stores the kernel uses for a big gradient buffer that is already resident), ``CC`` (the
compiler).
The kernel is a ctypes call: under ``torch.compile`` it is a graph break (wrap the call site in
``torch.compiler.disable`` if needed).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

__all__ = ["fused_cross_entropy", "is_available", "kernel_info"]

_KINDS = {"ce": 0, "ls": 1, "maxsup": 2}
_REDUCTIONS = ("none", "sum", "mean")
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_ABI_VERSION = 3
_SRC = Path(__file__).resolve().parent / "csrc" / "fused_loss.c"
# fp16 gradients are stored multiplied by a power of two (undone in backward) so that small
# probabilities do not flush to zero before the loss scale / 1/n is applied.
_F16_HEADROOM = 32768.0
# fallback: rows per chunk so that a chunk holds about this many elements
_CHUNK_ELEMS = 1 << 20
# below this many logits the kernel runs on one thread (thread start-up costs more than it saves)
_MT_MIN_ELEMS = 1 << 17


# ---------------------------------------------------------------------------------------------------
# building and loading the kernel


class _Args(ctypes.Structure):
    # mirrors hfm_args in csrc/fused_loss.c
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
        ("scale_mode", ctypes.c_int32),
        ("want_comps", ctypes.c_int32),
        ("nthreads", ctypes.c_int32),
    ]


_lock = threading.Lock()
_lib = None  # ctypes.CDLL once loaded
_lib_tried = False
_lib_error: str | None = None
_lib_path: str | None = None
_lib_dtypes: frozenset = frozenset()

_BASE_FLAGS = [
    "-O3",
    "-std=gnu11",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-Wno-psabi",
]
# tried in order; the first that compiles is used.  No -ffast-math: NaN/inf and the max tie rule must hold.
_FLAG_SETS = [
    ["-march=native"],
    [],
    ["-march=native", "-DHFM_NO_F16"],
    ["-DHFM_NO_F16"],
]


def _cache_dir() -> Path:
    d = os.environ.get("HF_MAXSUP_CACHE")
    if d:
        return Path(d)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hf_maxsup"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and, on Linux, the CPU flags."""
    sig = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    sig.append(line.strip())
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return "\n".join(sig)


def _compiler() -> str | None:
    for c in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    lib.hfm_abi_version.restype = ctypes.c_int
    lib.hfm_args_size.restype = ctypes.c_int64
    lib.hfm_supports_dtype.restype = ctypes.c_int
    lib.hfm_supports_dtype.argtypes = [ctypes.c_int]
    lib.hfm_run.restype = ctypes.c_int
    lib.hfm_run.argtypes = [ctypes.POINTER(_Args)]
    if lib.hfm_abi_version() != _ABI_VERSION or lib.hfm_args_size() != ctypes.sizeof(
        _Args
    ):
        raise RuntimeError("hf_maxsup kernel ABI mismatch")
    return lib


def _writable_cache_dir() -> Path:
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise OSError("not writable")
    except OSError:
        uid = os.getuid() if hasattr(os, "getuid") else "u"
        cache = Path(tempfile.gettempdir()) / f"hf_maxsup-{uid}"
        cache.mkdir(parents=True, exist_ok=True)
    return cache


def _build(cache: Path, cc: str, extra_flags) -> Path:
    """Compile the kernel into ``cache`` unless a build with the same key is already there; returns the
    path.  Compiles into a private temporary file and publishes it with an atomic rename, so concurrent
    builders (DDP ranks) never see a partial file.  Raises RuntimeError with the compiler's message."""
    src = _SRC.read_bytes()
    try:
        st = os.stat(cc)
        cc_id = f"{os.path.realpath(cc)}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        cc_id = cc
    flags = _BASE_FLAGS + list(extra_flags)
    key = hashlib.sha256(
        b"\0".join(
            [
                src,
                " ".join(flags).encode(),
                cc_id.encode(),
                _cpu_signature().encode(),
                str(_ABI_VERSION).encode(),
            ]
        )
    ).hexdigest()[:20]
    out = cache / f"fused_loss-{key}.so"
    if out.exists():
        return out
    fd, tmp = tempfile.mkstemp(prefix=".fused_loss-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        try:
            proc = subprocess.run(
                [cc, *flags, str(_SRC), "-o", tmp, "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"{' '.join(flags)}: {e}") from e
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(flags)}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)  # atomic: concurrent builders publish identical files
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _build_and_load():
    global _lib, _lib_error, _lib_path, _lib_dtypes
    cc = _compiler()
    if cc is None:
        _lib_error = "no C compiler found (set CC)"
        return
    cache = _writable_cache_dir()
    errors = []
    flag_sets = _FLAG_SETS
    if os.environ.get(
        "HF_MAXSUP_CFLAGS"
    ):  # e.g. "-march=x86-64-v3" for a cache shared by different CPUs
        flag_sets = [shlex.split(os.environ["HF_MAXSUP_CFLAGS"])]
    for extra in flag_sets:
        try:
            out = _build(cache, cc, extra)
            lib = _load(out)
        except (OSError, RuntimeError) as e:
            errors.append(str(e))
            continue
        _lib, _lib_path = lib, str(out)
        _lib_dtypes = frozenset(
            dt for dt, code in _DTYPES.items() if lib.hfm_supports_dtype(code)
        )
        # keep why better flag sets failed (e.g. -march=native rejected): visible in kernel_info()
        _lib_error = (
            ("built with fallback flags; " + "; ".join(errors)) if errors else None
        )
        return
    _lib_error = "; ".join(errors) or "kernel build failed"


def _get_lib():
    global _lib_tried
    if os.environ.get("HF_MAXSUP_DISABLE_KERNEL", "") not in ("", "0"):
        return None
    if not _lib_tried:
        with _lock:
            if not _lib_tried:
                try:
                    _build_and_load()
                except Exception as e:  # noqa: BLE001 - never let the build break training: fall back
                    global _lib_error
                    _lib_error = f"{type(e).__name__}: {e}"
                _lib_tried = True
    return _lib


def is_available() -> bool:
    """True when the compiled kernel could be built/loaded (and is not disabled by
    ``HF_MAXSUP_DISABLE_KERNEL=1``)."""
    return _get_lib() is not None


def kernel_info() -> dict:
    """Diagnostics: whether the kernel is used, where it lives, why it is not."""
    lib = _get_lib()
    return {
        "available": lib is not None,
        "path": _lib_path,
        "error": _lib_error,
        "dtypes": sorted(str(d) for d in _lib_dtypes),
        "disabled_by_env": os.environ.get("HF_MAXSUP_DISABLE_KERNEL", "")
        not in ("", "0"),
    }


def _num_threads(n_elems: int) -> int:
    env = os.environ.get("HF_MAXSUP_NUM_THREADS")
    if env:
        return max(1, int(env))
    if n_elems < _MT_MIN_ELEMS:
        return 1
    return max(1, torch.get_num_threads())


# ---------------------------------------------------------------------------------------------------
# layout


def _row_layout(x: torch.Tensor):
    """(n_outer, n_inner, s_outer, s_inner) so that row r = o*n_inner + i of ``x`` (class dim last,
    stride 1) starts at element o*s_outer + i*s_inner, or None when the rows need more than 2 levels."""
    K = x.shape[-1]
    dims = [(s, st) for s, st in zip(x.shape[:-1], x.stride()[:-1]) if s != 1]
    merged = []
    for s, st in reversed(dims):  # innermost first
        if merged and merged[-1][1] * merged[-1][0] == st:
            ps, pst = merged[-1]
            merged[-1] = (ps * s, pst)
        else:
            merged.append((s, st))
    merged.reverse()
    if not merged:
        return 1, 1, 0, K
    if len(merged) == 1:
        return 1, merged[0][0], 0, merged[0][1]
    if len(merged) == 2:
        (so, sto), (si, sti) = merged
        return so, si, sto, sti
    return None


def _rows_disjoint(x: torch.Tensor, layout) -> bool:
    """True when no two rows of ``x`` share memory (so a gradient can be written over them)."""
    K = x.shape[-1]
    if layout is None:
        layout = _row_layout(x)
        if layout is None:
            return x.is_contiguous()
    n_outer, n_inner, s_outer, s_inner = layout
    if n_inner > 1 and abs(s_inner) < K:
        return False
    return not (n_outer > 1 and abs(s_outer) < (n_inner - 1) * abs(s_inner) + K)


# ---------------------------------------------------------------------------------------------------
# the two implementations; both fill ``grad`` (if given) and return (sums[5], n_kept)


def _kernel_forward(
    lib,
    z,
    layout,
    labels,
    soft,
    kind,
    alpha,
    ignore_index,
    grad,
    glayout,
    gscale,
    scale_mode,
    row_loss,
    want_comps,
    soft_dtype,
):
    a = _Args()
    a.logits = z.data_ptr()
    a.grad = grad.data_ptr() if grad is not None else None
    a.labels = labels.data_ptr() if labels is not None else None
    a.soft = soft.data_ptr() if soft is not None else None
    a.row_loss = row_loss.data_ptr() if row_loss is not None else None
    a.n_outer, a.n_inner, a.ls_outer, a.ls_inner = layout
    if glayout is not None:
        _, _, a.gs_outer, a.gs_inner = glayout
    K = z.shape[-1]
    a.K = K
    a.ignore_index = ignore_index
    a.alpha = alpha
    a.gscale = gscale
    a.dtype = _DTYPES[z.dtype]
    a.soft_dtype = soft_dtype
    a.kind = _KINDS[kind]
    a.scale_mode = scale_mode
    a.want_comps = int(want_comps)
    a.nthreads = _num_threads(layout[0] * layout[1] * K)
    rc = lib.hfm_run(ctypes.byref(a))
    if rc == 2:
        raise IndexError(
            f"target label out of range [0, {K}) (and not ignore_index={ignore_index})"
        )
    if rc == 3:
        raise MemoryError(
            "hf_maxsup kernel: could not allocate its per-thread row buffers"
        )
    if rc != 0:
        raise RuntimeError(f"hf_maxsup kernel failed ({rc})")
    return list(a.out[:5]), int(a.out[5])


def _torch_forward(
    z2d,
    labels,
    soft2d,
    kind,
    alpha,
    ignore_index,
    grad2d,
    gscale,
    scale_mode,
    row_loss,
    want_comps,
):
    """Pure PyTorch, chunked over rows; any device.  Same outputs as the kernel."""
    N, K = z2d.shape
    cdtype = torch.float64 if z2d.dtype == torch.float64 else torch.float32
    if labels is not None:
        n_kept = int((labels != ignore_index).sum())
    else:
        n_kept = N
    if scale_mode == 1:
        gscale = gscale / n_kept if n_kept else 0.0
    c0 = alpha / K if kind in ("ls", "maxsup") else 0.0
    c1 = 1.0 - alpha if kind == "ls" else 1.0
    sums = torch.zeros(5, dtype=torch.float64, device=z2d.device)
    rows = max(1, _CHUNK_ELEMS // max(K, 1))
    for s in range(0, N, rows):
        e = min(N, s + rows)
        z = z2d[s:e].to(
            cdtype
        )  # chunk-sized copy for half inputs, alias for fp32 / fp64
        amax = z.argmax(
            -1, keepdim=True
        )  # first index of the max (NaN counts as max, like torch.max)
        lse = torch.logsumexp(z, -1)
        meanz = z.mean(-1)
        keep = None
        if labels is not None:
            y = labels[s:e]
            keep = y != ignore_index
            ysafe = torch.where(keep, y, torch.zeros_like(y)).unsqueeze(-1)
            tz = z.gather(-1, ysafe).squeeze(-1)
            t = None
        else:
            t = soft2d[s:e].to(cdtype)
            tz = (t * z).sum(-1)
        ce = lse - tz
        if kind == "maxsup":
            reg = z.gather(-1, amax).squeeze(-1) - meanz
        elif kind == "ls":
            reg = tz - meanz
        else:
            reg = torch.zeros_like(ce)
        loss = ce + alpha * reg
        part = [loss, ce, reg]
        if want_comps and kind == "ls" and labels is not None:
            d = tz.unsqueeze(-1) - z
            part.append(d.clamp_min(0).sum(-1) / K)
            part.append(d.clamp_max(0).sum(-1) / K)
            del d
        if keep is not None:
            part = [torch.where(keep, p, torch.zeros_like(p)) for p in part]
        if row_loss is not None:
            row_loss[s:e] = part[0]
        for q, p in enumerate(part):
            sums[q] += p.double().sum()
        if grad2d is not None:
            g = torch.softmax(
                z, -1
            )  # all reads of z are done before the (maybe in-place) write below
            if c0:
                g.sub_(c0)
            if labels is not None:
                g.scatter_add_(-1, ysafe, torch.full_like(ysafe, -c1, dtype=g.dtype))
            else:
                g.add_(t, alpha=-c1)
            if kind == "maxsup" and alpha:
                g.scatter_add_(-1, amax, torch.full_like(amax, alpha, dtype=g.dtype))
            if keep is not None:
                g.masked_fill_(~keep.unsqueeze(-1), 0.0)
            g.mul_(gscale)
            grad2d[s:e].copy_(g)
            del g
        del z
    return sums.tolist(), n_kept


# ---------------------------------------------------------------------------------------------------
# forward / backward


def _denominator(reduction, num_items_in_batch):
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.item()
        return float(num_items_in_batch)
    if reduction == "sum":
        return 1.0
    return None  # mean over kept rows (known after the pass) or "none"


def _run(
    logits,
    target,
    kind,
    alpha,
    ignore_index,
    reduction,
    num_items_in_batch,
    inplace,
    want_grad,
    want_comps,
):
    """Returns (loss, grad_or_None, post_factor, components_or_None)."""
    if logits.dim() == 0:
        raise ValueError("logits must have a class dimension")
    K = logits.shape[-1]
    lead = logits.shape[:-1]
    dtype = logits.dtype
    if dtype not in _DTYPES and dtype != torch.float64:
        raise TypeError(f"unsupported logits dtype {dtype}")
    out_dtype = (
        torch.float64 if dtype == torch.float64 else torch.float32
    )  # float64 -> fallback, in float64
    hard = not torch.is_floating_point(target)
    alpha = float(alpha) if kind != "ce" else 0.0
    denom = _denominator(reduction, num_items_in_batch)

    lib = _get_lib() if logits.device.type == "cpu" else None
    if lib is not None and dtype not in _lib_dtypes:  # also float64: fallback
        lib = None
    soft_dtype = 0
    if not hard:
        soft = target
        if lib is not None and soft.dtype not in _lib_dtypes:
            soft = soft.float()
        if soft.device != logits.device:
            soft = soft.to(logits.device)
        soft = soft.reshape(-1, K).contiguous()
        soft_dtype = _DTYPES.get(soft.dtype, 0)
        labels = None
    else:
        soft = None
        labels = (
            target.reshape(-1).to(device=logits.device, dtype=torch.int64).contiguous()
        )
        if labels.numel() * K != logits.numel():
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
            )

    z = logits if logits.stride(-1) == 1 or K == 1 else logits.contiguous()
    layout = _row_layout(z) if lib is not None else None
    if lib is not None and layout is None:
        z = z.contiguous()
        layout = _row_layout(z)
    if inplace and want_grad and not _rows_disjoint(z, layout):
        z = z.contiguous()  # e.g. expanded (stride-0) logits: rows share memory, cannot hold distinct gradients
        layout = _row_layout(z) if lib is not None else None
    if lib is None:
        try:
            z.view(-1, K)
        except RuntimeError:
            z = z.contiguous()

    # gradient buffer: the logits' dtype; fp16 carries a power-of-two headroom factor (undone in backward)
    grad = None
    if want_grad:
        grad = z if inplace else torch.empty(lead + (K,), dtype=dtype, device=z.device)
    headroom = 1.0
    if dtype == torch.float16:
        headroom = 2.0 ** math.floor(
            math.log2(_F16_HEADROOM / (1.0 + 2.0 * abs(alpha)))
        )
        headroom = max(headroom, 1.0)
    if reduction == "none" and denom is None:
        gscale, scale_mode = headroom, 0
    elif denom is None:  # mean over kept rows
        gscale, scale_mode = (headroom, 0) if dtype == torch.float16 else (1.0, 1)
    else:
        gscale, scale_mode = (
            (headroom, 0)
            if dtype == torch.float16
            else ((1.0 / denom if denom else 0.0), 0)
        )

    row_loss = (
        torch.empty(lead, dtype=out_dtype, device=z.device)
        if reduction == "none"
        else None
    )
    N = z.numel() // K if K else 0

    if lib is not None:
        sums, n_kept = _kernel_forward(
            lib,
            z,
            layout,
            labels,
            soft,
            kind,
            alpha,
            ignore_index,
            grad,
            layout if inplace else (0, 0, layout[1] * K, K),
            gscale,
            scale_mode,
            row_loss,
            want_comps,
            soft_dtype,
        )
    else:
        sums, n_kept = _torch_forward(
            z.view(-1, K) if N else z.reshape(0, K),
            labels,
            soft,
            kind,
            alpha,
            ignore_index,
            grad.view(-1, K) if grad is not None else None,
            gscale,
            scale_mode,
            row_loss.view(-1) if row_loss is not None else None,
            want_comps,
        )

    if denom is None and reduction != "none":
        denom = float(n_kept)
    inv = (1.0 / denom) if denom else 0.0
    if reduction == "none":
        loss = row_loss
        post = 1.0 / headroom
    else:
        loss = torch.tensor(sums[0] * inv, dtype=out_dtype, device=z.device)
        post = (inv / headroom) if dtype == torch.float16 else 1.0

    comps = None
    if want_comps:
        ik = 1.0 / n_kept if n_kept else 0.0
        dev = z.device
        comps = {"ce": torch.tensor(sums[1] * ik, dtype=torch.float32, device=dev)}
        if kind != "ce":
            comps["reg"] = torch.tensor(sums[2] * ik, dtype=torch.float32, device=dev)
        if kind == "ls" and hard:
            comps["ls_regularization"] = torch.tensor(
                sums[3] * ik, dtype=torch.float32, device=dev
            )
            comps["ls_error_amplification"] = torch.tensor(
                sums[4] * ik, dtype=torch.float32, device=dev
            )
    if inplace and grad is not None:
        torch.autograd.graph.increment_version(z)
        grad = (
            z.detach()
        )  # a fresh alias, so autograd can adopt it as .grad without a copy
    return loss, grad, post, comps


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        logits,
        target,
        kind,
        alpha,
        ignore_index,
        reduction,
        num_items_in_batch,
        inplace,
        holder,
    ):
        loss, grad, post, comps = _run(
            logits,
            target,
            kind,
            alpha,
            ignore_index,
            reduction,
            num_items_in_batch,
            inplace,
            True,
            holder is not None,
        )
        if holder is not None:
            holder.update(comps)
        ctx.grad = grad
        ctx.post = post
        ctx.reduction_none = reduction == "none"
        ctx.shape = logits.shape
        ctx.inplace = inplace
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        g = ctx.grad
        if g is None:
            raise RuntimeError(
                "hf_maxsup fused loss: the stored gradient was already handed to autograd by a previous "
                "backward; backward twice through the same fused loss (retain_graph=True) is not supported. "
                "Recompute the loss instead."
            )
        ctx.grad = (
            None  # hand the buffer over: autograd may adopt it as .grad without a copy
        )
        if ctx.reduction_none:
            f = grad_output.to(torch.float32)
            if ctx.post != 1.0:
                f = f * ctx.post
            if ctx.post != 1.0 or not bool((f == 1.0).all()):
                g.mul_(f.unsqueeze(-1))
        elif grad_output.device.type == "cpu":
            f = float(grad_output) * ctx.post
            if f != 1.0:
                g.mul_(f)
        else:
            g.mul_(grad_output.to(torch.float32) * ctx.post)
        if g.shape != ctx.shape:
            g = g.view(ctx.shape)
        return g, None, None, None, None, None, None, None, None


def fused_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str,
    alpha: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    inplace_backward: bool = False,
    return_components: bool = False,
):
    """CE / LS / MaxSup loss of ``logits`` (..., K) against ``target`` with the gradient computed in the
    same pass.  See the module docstring for the formulas, memory and the in-place mode.

    ``target``: int64 labels of shape ``logits.shape[:-1]`` (rows equal to ``ignore_index`` are excluded
    from every term), or float soft targets of ``logits``' shape.  ``reduction``: "none" (per-row loss,
    0 on ignored rows), "sum", "mean" (over kept rows; 0 when none is kept).  ``num_items_in_batch``:
    when given the loss is sum / num_items_in_batch whatever ``reduction`` is (not allowed with "none").
    ``inplace_backward=True``: the gradient is written into the logits' storage (the logits are
    destroyed).  ``return_components=True``: returns ``(loss, components)`` with detached float32 means
    over kept rows: "ce", "reg" (not for kind="ce"), and for kind="ls" with hard labels
    "ls_regularization" and "ls_error_amplification".
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if reduction == "none" and num_items_in_batch is not None:
        raise ValueError("num_items_in_batch cannot be combined with reduction='none'")
    holder = {} if return_components else None
    if torch.is_grad_enabled() and logits.requires_grad:
        loss = _FusedLoss.apply(
            logits,
            target,
            kind,
            alpha,
            ignore_index,
            reduction,
            num_items_in_batch,
            bool(inplace_backward),
            holder,
        )
        comps = holder
    else:  # no gradient wanted: value only, logits untouched even with inplace_backward
        loss, _, _, comps = _run(
            logits,
            target,
            kind,
            alpha,
            ignore_index,
            reduction,
            num_items_in_batch,
            False,
            False,
            return_components,
        )
    if return_components:
        return loss, comps
    return loss
