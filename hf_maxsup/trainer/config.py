"""The loss settings of a run, with their defaults and their checks, in one place.

[`LossConfig`] is what the training arguments, the trainer and [`~hf_maxsup.trainer.MaxSupLossFunc`] each build from
their own inputs: a setting's default (the schedule of a loss, the weight of the distillation term) is filled in and a
bad combination refused here only, with one message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..loss_names import LS_MASSES, check_loss_name
from ..schedules import SCHEDULES, alpha_at

__all__ = ["DEFAULT_DISTILL_ALPHA", "LossConfig", "check_label_smoothing_factor"]

# The weight of the distillation term when a teacher is given without one.
DEFAULT_DISTILL_ALPHA = 0.5


def check_label_smoothing_factor(label_smoothing_factor: float) -> None:
    """Refuses the Trainer's own label smoothing beside a loss of hf_maxsup.

    Raises:
        `ValueError`: `label_smoothing_factor > 0`: the Trainer would smooth the labels a second time (or, with a
            `compute_loss_func`, silently not at all).
    """
    if label_smoothing_factor > 0:
        raise ValueError(
            f"label_smoothing_factor={label_smoothing_factor} would smooth the labels a second time: "
            f"hf_maxsup computes the loss itself. Use loss='ls', loss_alpha={label_smoothing_factor} "
            "(--loss ls --loss_alpha ...) and leave label_smoothing_factor at 0."
        )


@dataclass(frozen=True)
class LossConfig:
    """The loss settings: which loss, its weight alpha and how alpha moves over training, and distillation. Defaults
    left unset are filled in, and the settings are checked, when the config is created.

    Args:
        loss (`str`, *optional*, defaults to `"maxsup"`): `"ce"`, `"ls"` or `"maxsup"`.
        alpha (`float`, *optional*, defaults to 0.1): alpha at the start of training, in `[0, 1)`.
        alpha_end (`float`, *optional*): alpha at the end (linear schedule); defaults to `alpha + 0.1`.
        schedule (`str`, *optional*): `"constant"` or `"linear"`; defaults to `"linear"` for MaxSup (as in the
            paper) and `"constant"` otherwise.
        ls_mass (`str`, *optional*, defaults to `"all"`): for `"ls"` only, where the smoothing mass goes (see
            [`~hf_maxsup.losses.smoothing_weight`]).
        distill_alpha (`float`, *optional*): the weight beta >= 0 of the distillation term; defaults to
            `DEFAULT_DISTILL_ALPHA` (0.5) when there is a teacher, `None` (no distillation) otherwise.
        distill_temperature (`float`, *optional*, defaults to 2.0): the temperature `T > 0` of the distillation term.
        teacher (`bool`, *optional*): whether the run distils from a teacher; `None` while that is not known yet
            (training arguments without `teacher_model_name_or_path`: the trainer may be given `teacher=`).
        fused_linear_loss (`bool`, *optional*, defaults to `False`): whether the loss is computed from the output
            head's input and weight, without the logits.

    Raises:
        `ValueError`: an unknown loss, schedule or smoothing mass, an alpha outside `[0, 1)`, a distillation weight or
            temperature out of range, `distill_alpha` without a teacher, or distillation with `fused_linear_loss`.
    """

    loss: str = "maxsup"
    alpha: float = 0.1
    alpha_end: float | None = None
    schedule: str | None = None
    ls_mass: str = "all"
    distill_alpha: float | None = None
    distill_temperature: float = 2.0
    teacher: bool | None = None
    fused_linear_loss: bool = False

    def __post_init__(self):
        # Frozen: the defaults that depend on other settings are filled in once, here.
        if self.schedule is None:
            object.__setattr__(self, "schedule", "linear" if self.loss == "maxsup" else "constant")
        if self.teacher and self.distill_alpha is None:
            object.__setattr__(self, "distill_alpha", DEFAULT_DISTILL_ALPHA)
        self._check_loss()
        self._check_distillation()
        if self.fused_linear_loss:
            self.check_fused_linear_loss()

    def check_fused_linear_loss(self) -> None:
        """Refuses the fused linear loss to a run that distils.

        Raises:
            `ValueError`: there is a teacher: distillation needs the student's logits.
        """
        if self.teacher:
            raise ValueError(
                "distillation needs the student's logits, which fused_linear_loss never materialises. Set "
                "fused_linear_loss=False."
            )

    def _check_loss(self) -> None:
        loss, ls_mass, schedule, alpha = self.loss, self.ls_mass, self.schedule, self.alpha
        check_loss_name(loss)
        if ls_mass not in LS_MASSES:
            raise ValueError(f"unknown loss_ls_mass {ls_mass!r}; valid values: {', '.join(LS_MASSES)}.")
        if ls_mass != "all" and loss != "ls":
            # Only label smoothing has a smoothing mass; accepting it elsewhere would silently do nothing.
            raise ValueError(
                f"loss_ls_mass={ls_mass!r} applies to loss='ls' only (this run trains with {loss!r}): "
                "leave it at 'all' or train with --loss ls."
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown loss_alpha_schedule {schedule!r}; valid names: {', '.join(SCHEDULES)}.")
        for name, value in (("loss_alpha", alpha), ("loss_alpha_end", self.alpha_end)):
            if (value is not None or name == "loss_alpha") and not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1); got {value!r}.")
        alpha_at(0.0, schedule, alpha, self.alpha_end)  # rejects a constant schedule given a different alpha_end
        if schedule == "linear" and self.alpha_end is None and not alpha + 0.1 < 1.0:
            raise ValueError(
                f"the linear schedule rises from loss_alpha={alpha} to {alpha + 0.1:.2f} >= 1: "
                "set loss_alpha_end explicitly."
            )

    def _check_distillation(self) -> None:
        distill_alpha, temperature = self.distill_alpha, self.distill_temperature
        # beta is the weight of a term added to the label loss (which keeps weight 1), as in Hinton et al.'s sum
        # form, not the share of a convex combination: any beta >= 0 is meaningful, 0 trains on the labels alone.
        if distill_alpha is not None and not (math.isfinite(distill_alpha) and distill_alpha >= 0):
            raise ValueError(
                f"distill_alpha (the weight of the distillation term) must be a number >= 0; got {distill_alpha}."
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"distill_temperature must be > 0 (1 keeps the teacher's probabilities, larger values "
                f"soften them); got {temperature}."
            )
        if self.teacher is False and distill_alpha is not None:
            raise ValueError(
                f"distill_alpha={distill_alpha} but no teacher: set teacher_model_name_or_path "
                "(--teacher_model_name_or_path) or pass teacher=."
            )
