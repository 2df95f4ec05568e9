"""Which backend serves a call: the fastest that can for the logits' device and dtype, or the one that
`HF_MAXSUP_BACKEND=auto|c|triton|torch` forces; [`kernel_info`] says which and why the faster ones do not."""

from __future__ import annotations

import logging
import os

import torch

from . import _c, _torch
from .job import Backend

__all__ = ["BACKENDS", "check_environment", "kernel_info", "select_backend"]

logger = logging.getLogger("hf_maxsup.kernels")

BACKENDS = ("c", "triton", "torch")
# Fastest first, per device type.
_PREFERENCE = {"cpu": ("c", "torch")}
_GPU_PREFERENCE = ("triton", "torch")
# The dtypes every fast backend serves: a backend missing for one of these is worth a warning.
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MODULES: dict[str, Backend] = {"c": _c, "torch": _torch}
_warned: set[str] = set()


def _module(name: str) -> Backend:
    if name not in _MODULES:
        # Lazy: `_triton` imports triton, an optional dependency ("hf_maxsup[gpu]") whose interpreter mode is fixed
        # when it is imported (tests set TRITON_INTERPRET=1 first); a CPU run never needs it.
        from . import _triton

        _MODULES[name] = _triton
    return _MODULES[name]


def _forced() -> str:
    value = os.environ.get("HF_MAXSUP_BACKEND", "").strip().lower() or "auto"
    if value not in ("auto", *BACKENDS):
        raise ValueError(f"HF_MAXSUP_BACKEND={value!r} is not a backend; use one of auto, {', '.join(BACKENDS)}.")
    return value


def check_environment() -> None:
    """Checks the engine's environment variables, so that a typo stops a run before any work instead of at its first
    loss: `HF_MAXSUP_BACKEND` (auto, c, triton or torch) and the C kernel's `HF_MAXSUP_NUM_THREADS`,
    `HF_MAXSUP_STREAM` and `HF_MAXSUP_CFLAGS`. Builds and imports nothing.

    Raises:
        `ValueError`: naming the variable and the values it may take.
    """
    _forced()
    _c.check_environment()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def select_backend(device: torch.device, dtype: torch.dtype, distill: bool = False) -> Backend:
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
    info["c"] = _c.build_info() if device.type == "cpu" else None
    return info
