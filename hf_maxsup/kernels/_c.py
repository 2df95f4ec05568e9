"""The CPU backend: a one-pass C kernel (`csrc/fused_loss.c`), built on first use, cached, verified, loaded by ctypes.

The kernel reads each row once (online softmax over L1-sized blocks, 16-lane vector code), writes the gradient in
the same sweep and runs threads over rows. It is compiled with the system C compiler into a cache directory
(`$HF_MAXSUP_CACHE`, else `$XDG_CACHE_HOME/hf_maxsup`, else `~/.cache/hf_maxsup`) under a key that hashes the
source, the flags, the compiler and the CPU; concurrent builders (DDP ranks) publish with an atomic rename.

Safety of the cache: the directory must be owned by the user and writable by nobody else (it is created with mode
0700); a library is loaded only when it is owned by the user, not writable by others, and its SHA-256 matches the
one recorded beside it when it was built (a truncated or foreign file is rebuilt, never loaded). When the cache
cannot be used, the kernel is built into a fresh private temporary directory for this process, with a warning.

Environment: `HF_MAXSUP_CACHE` (cache directory), `HF_MAXSUP_CFLAGS` (compiler flags instead of `-march=native`,
e.g. `-march=x86-64-v3` for a cache shared by different CPUs), `HF_MAXSUP_NUM_THREADS` (kernel threads; default
`torch.get_num_threads()`, one thread below 128k logits), `HF_MAXSUP_STREAM` (0/1: force off/on the non-temporal
stores used for a big resident gradient buffer), `CC` (the compiler).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .job import LOSS_CODES, LossJob

__all__ = ["DISTILLS", "NAME", "build_info", "forward", "scale_", "unavailable"]

NAME = "c"
# Whether `forward` computes the distillation term of a job with teacher logits.
DISTILLS = False
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_ABI_VERSION = 4
_SRC = Path(__file__).resolve().parent / "csrc" / "fused_loss.c"
# Below this many logits the kernel runs on one thread: starting threads costs more than it saves.
_MT_MIN_ELEMS = 1 << 17
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
# Tried in order; the first that compiles is used. No -ffast-math: NaN/inf and the max tie rule must hold.
_FLAG_SETS = [["-march=native"], [], ["-march=native", "-DHFM_NO_F16"], ["-DHFM_NO_F16"]]


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


# ---------------------------------------------------------------------------------------------------
# the private cache


def _cache_dir() -> Path:
    if os.environ.get("HF_MAXSUP_CACHE"):
        return Path(os.environ["HF_MAXSUP_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hf_maxsup"


def _private_problem(path: Path) -> str | None:
    """Why `path` may not hold code this process loads (None when it is ours and writable by us alone)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _usable_cache_dir() -> tuple[Path, str | None]:
    """The cache directory, or a fresh private temporary one and the reason the cache could not be used."""
    cache = _cache_dir()
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = _private_problem(cache)
        if problem is None and not os.access(cache, os.W_OK | os.X_OK):
            problem = f"{cache} is not writable"
    except OSError as err:
        problem = f"cannot create {cache}: {err.strerror or err}"
    if problem is None:
        return cache, None
    # mkdtemp makes a new directory with mode 0700 and an unpredictable name: nobody can have planted a file in it.
    fresh = Path(tempfile.mkdtemp(prefix="hf_maxsup-"))
    return fresh, (
        f"the kernel cache is not usable ({problem}); built into {fresh} for this process only. "
        "Set HF_MAXSUP_CACHE to a directory of your own (mode 0700) to build once and reuse the build."
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(lib_path: Path) -> bool:
    """Whether `lib_path` is a complete build of ours: our file, written by us alone, with the recorded hash."""
    digest_path = lib_path.with_suffix(".sha256")
    try:
        if _private_problem(lib_path) or _private_problem(digest_path):
            return False
        return digest_path.read_text().strip() == _sha256(lib_path)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------
# building and loading


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What `-march=native` depends on: the machine and, on Linux, the CPU flags."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    parts.append(line.strip())
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return "\n".join(parts)


def _build_key(cc: str, flags: list[str]) -> str:
    try:
        st = os.stat(cc)
        cc_id = f"{os.path.realpath(cc)}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        cc_id = cc
    parts = [
        _SRC.read_bytes(),
        " ".join(flags).encode(),
        cc_id.encode(),
        _cpu_signature().encode(),
        str(_ABI_VERSION).encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def _publish(tmp: str, out: Path) -> None:
    """Records the hash, then renames the library into place: a reader sees a complete, verifiable pair or none."""
    digest_tmp = f"{tmp}.sha256"
    Path(digest_tmp).write_text(_sha256(Path(tmp)))
    os.replace(digest_tmp, out.with_suffix(".sha256"))
    os.replace(tmp, out)


def _build(cache: Path, cc: str, extra_flags) -> Path:
    """Compiles the kernel into `cache` unless a verified build with the same key is there; returns its path.

    Raises `RuntimeError` with the compiler's message when it fails.
    """
    flags = _BASE_FLAGS + list(extra_flags)
    out = cache / f"fused_loss-{_build_key(cc, flags)}.so"
    if out.exists() and _verified(out):
        return out
    fd, tmp = tempfile.mkstemp(prefix=".fused_loss-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        try:
            proc = subprocess.run(
                [cc, *flags, str(_SRC), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300, check=False
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise RuntimeError(f"{' '.join(flags)}: {err}") from err
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(flags)}: {proc.stderr.strip()[-2000:]}")
        _publish(tmp, out)
    finally:
        for leftover in (tmp, f"{tmp}.sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return out


def _load(path: Path):
    if not _verified(path):
        raise RuntimeError(f"{path} does not match the hash recorded when it was built; not loaded")
    lib = ctypes.CDLL(str(path))
    lib.hfm_abi_version.restype = ctypes.c_int
    lib.hfm_args_size.restype = ctypes.c_int64
    lib.hfm_supports_dtype.restype = ctypes.c_int
    lib.hfm_supports_dtype.argtypes = [ctypes.c_int]
    lib.hfm_run.restype = ctypes.c_int
    lib.hfm_run.argtypes = [ctypes.POINTER(_Args)]
    if lib.hfm_abi_version() != _ABI_VERSION or lib.hfm_args_size() != ctypes.sizeof(_Args):
        raise RuntimeError("hf_maxsup kernel ABI mismatch")
    return lib


def _build_and_load() -> None:
    cc = _compiler()
    if cc is None:
        _State.error = "no C compiler found: install gcc (or set CC)"
        return
    cache, cache_problem = _usable_cache_dir()
    flag_sets = [shlex.split(os.environ["HF_MAXSUP_CFLAGS"])] if os.environ.get("HF_MAXSUP_CFLAGS") else _FLAG_SETS
    errors = [cache_problem] if cache_problem else []
    for extra in flag_sets:
        try:
            out = _build(cache, cc, extra)
            lib = _load(out)
        except (OSError, RuntimeError) as err:
            errors.append(str(err))
            continue
        _State.lib, _State.path = lib, str(out)
        _State.dtypes = frozenset(dt for dt, code in _DTYPES.items() if lib.hfm_supports_dtype(code))
        _State.error = "; ".join(errors) or None  # e.g. -march=native rejected: visible in kernel_info()
        return
    hint = " (check HF_MAXSUP_CFLAGS)" if os.environ.get("HF_MAXSUP_CFLAGS") else ""
    _State.error = "the C kernel failed to build" + hint + ": " + "; ".join(errors)


def _lib():
    if not _State.tried:
        with _State.lock:
            if not _State.tried:
                try:
                    _build_and_load()
                except Exception as err:  # noqa: BLE001 - a failed build must never stop training: torch serves
                    _State.error = f"{type(err).__name__}: {err}"
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


def _num_threads(n_elems: int) -> int:
    if os.environ.get("HF_MAXSUP_NUM_THREADS"):
        return max(1, int(os.environ["HF_MAXSUP_NUM_THREADS"]))
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
    return torch.tensor([*a.out[:5], 0.0], dtype=torch.float64)  # no distillation term: the dispatcher knows


def scale_(grad: torch.Tensor, factor: torch.Tensor) -> None:
    """`grad *= factor`, skipped when the factor is 1 (the usual case: reading it costs nothing on a CPU)."""
    value = float(factor)
    if value != 1.0:
        grad.mul_(value)
