"""The device the Triton tests run their kernels on (`kernels/test_triton_backend.py`, `kernels/test_triton_losses.py`).

`HF_MAXSUP_TEST_DEVICE=cuda` runs them on the GPU (`benchmarks/gpu_day_one.py` sets it there); unset, they run where
the environment allows: on the CPU under Triton's interpreter when `TRITON_INTERPRET=1` (conftest.py sets it on a
machine without a GPU), else on the GPU.
"""

from __future__ import annotations

import os

import torch

__all__ = ["DEVICE", "ENV", "resolve_device"]

ENV = "HF_MAXSUP_TEST_DEVICE"


def resolve_device(asked: str | None, interpret: bool, cuda_available: bool) -> torch.device:
    """The test device for `HF_MAXSUP_TEST_DEVICE=asked` (None: unset).

    Args:
        asked (`str` or `None`): the variable's value.
        interpret (`bool`): whether `TRITON_INTERPRET=1` is set (the kernels then run on CPU tensors only).
        cuda_available (`bool`): whether torch sees a CUDA GPU.

    Raises:
        `ValueError`: for a device the Triton kernels cannot run on in this environment, saying what to change.
    """
    if not asked:
        return torch.device("cpu" if interpret or not cuda_available else "cuda")
    if asked not in ("cpu", "cuda"):
        raise ValueError(f"{ENV}={asked!r}: use cuda (the GPU) or cpu (Triton's interpreter)")
    if asked == "cuda" and not cuda_available:
        raise ValueError(f"{ENV}=cuda, but torch sees no CUDA GPU: unset {ENV} to run the kernels in the interpreter")
    if asked == "cuda" and interpret:
        raise ValueError(f"{ENV}=cuda, but TRITON_INTERPRET=1 runs the kernels on the CPU: unset TRITON_INTERPRET")
    if asked == "cpu" and not interpret:
        raise ValueError(f"{ENV}=cpu needs Triton's interpreter: set TRITON_INTERPRET=1 (before triton is imported)")
    return torch.device(asked)


DEVICE = resolve_device(os.environ.get(ENV), os.environ.get("TRITON_INTERPRET") == "1", torch.cuda.is_available())
