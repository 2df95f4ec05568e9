"""Where the reports evaluate their models: the device asked for, checked to exist on this machine, or the best one."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device: str | None = None) -> str:
    """The device to evaluate on: `device`, checked to exist here, or `"cuda"` when a GPU is available, else `"cpu"`.

    Raises:
        `ValueError`: an unknown device, or one this machine does not have (before any model is loaded).
    """
    # Imported on call: `hf-maxsup` checks --device before any work, and its --help needs no torch.
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device}: not a device ({err}); use e.g. cpu, cuda or cuda:1.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s); use --device cpu.")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: the report runs on cpu, cuda or mps.")
    return str(parsed)
