"""Schedules for the regulariser's weight alpha.

A schedule is a pure function of the training progress (a fraction in `[0, 1]`, e.g. `global_step / max_steps`),
so a run resumed from a checkpoint sees exactly the alpha of an uninterrupted run.
"""

from __future__ import annotations

__all__ = ["SCHEDULES", "alpha_at", "constant_schedule", "linear_schedule"]


def constant_schedule(progress: float, alpha: float, alpha_end: float | None = None) -> float:
    """`alpha` throughout training; `alpha_end` must be unset or equal to `alpha`."""
    return alpha


def linear_schedule(progress: float, alpha: float, alpha_end: float | None = None) -> float:
    """Linear from `alpha` at the start to `alpha_end` at the end of training.

    With `alpha_end=None` the end is `alpha + 0.1`: the MaxSup paper's `alpha(t) = 0.1 + 0.1 * t / T` and the
    ablation variants `0 + 0.1 t/T`, `0.2 + 0.1 t/T` all rise by 0.1.
    """
    end = alpha + 0.1 if alpha_end is None else alpha_end
    progress = min(max(progress, 0.0), 1.0)
    return alpha + (end - alpha) * progress


SCHEDULES = {"constant": constant_schedule, "linear": linear_schedule}


def alpha_at(progress: float, schedule: str, alpha: float, alpha_end: float | None = None) -> float:
    """Value of alpha at `progress` (fraction of training done) under the named schedule.

    Args:
        progress (`float`): fraction of training done, clipped to `[0, 1]`.
        schedule (`str`): `"constant"` or `"linear"`.
        alpha (`float`): value at the start.
        alpha_end (`float`, *optional*): value at the end (linear schedule only).

    Returns:
        `float`: alpha at that point of training.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown alpha schedule {schedule!r}; valid names: {', '.join(SCHEDULES)}.")
    if schedule == "constant" and alpha_end is not None and alpha_end != alpha:
        raise ValueError(
            f"the constant schedule keeps alpha={alpha}, but alpha_end={alpha_end} was given: use the linear "
            "schedule or drop alpha_end."
        )
    return SCHEDULES[schedule](progress, alpha, alpha_end)
