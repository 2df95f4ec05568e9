"""The loss settings as the fields of a `TrainingArguments` subclass (hence the recipes' loss flags), without torch or
transformers: a recipe's `--help` lists them before either loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..loss_names import LOSS_NAMES, LS_MASSES
from ..schedules import SCHEDULES
from .config import DEFAULT_DISTILL_ALPHA, LossConfig, check_label_smoothing_factor

__all__ = ["LossArguments"]


@dataclass
class LossArguments:
    """The loss settings as dataclass fields, for a `TrainingArguments` subclass to inherit first (as
    [`~hf_maxsup.trainer.MaxSupTrainingArguments`] and trl's [`~hf_maxsup.trainer.MaxSupSFTConfig`] do): checked,
    and their defaults filled in, by [`~hf_maxsup.trainer.LossConfig`] when the arguments are created."""

    loss: str = field(
        default=LossConfig.loss,
        metadata={"help": f"Training loss: one of {', '.join(LOSS_NAMES)}.", "choices": list(LOSS_NAMES)},
    )
    loss_alpha: float = field(
        default=LossConfig.alpha,
        metadata={"help": "Weight alpha of the regulariser at the start of training (LS: the smoothing factor)."},
    )
    loss_alpha_end: float | None = field(
        default=None,
        metadata={"help": "alpha at the end of training for the linear schedule (default: loss_alpha + 0.1)."},
    )
    loss_alpha_schedule: str | None = field(
        default=None,
        metadata={
            "help": "How alpha moves over training: 'linear' (default for maxsup, as in the paper) or 'constant' "
            "(default for ls and ce).",
            "choices": list(SCHEDULES),
        },
    )
    loss_ls_mass: str = field(
        default=LossConfig.ls_mass,
        metadata={
            "help": "Label smoothing (--loss ls) only: where the smoothing mass alpha goes. 'all' spreads it over "
            "every class, the target included (torch, transformers, timm); 'others' gives the target 1 - alpha and "
            "each other class alpha / (K - 1) (fairseq's label_smoothed_cross_entropy, tensor2tensor).",
            "choices": list(LS_MASSES),
        },
    )
    fused_linear_loss: bool = field(
        default=False,
        metadata={
            "help": "Compute the loss from the last hidden states and the output head's weight, chunk by chunk, "
            "without materialising the (tokens, V) logits or their gradient: sequence-to-sequence and causal LMs "
            "of the families in hf_maxsup.heads.HEADS, not with FSDP or DeepSpeed ZeRO-3. Evaluation that keeps "
            "the logits (prediction_loss_only=False) computes them as usual."
        },
    )
    loss_inplace_backward: bool = field(
        default=True,
        metadata={
            "help": "Write the loss's gradient into the logits' own buffer during the forward pass, saving one "
            "logits-sized buffer, in training steps whose logits nothing else reads: not when the model's last op "
            "saved them for its backward (an exp or log_softmax head, also inside a torch.compile'd graph). Set "
            "False to keep outputs.logits intact (e.g. for code of your own that reads them after the loss)."
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Distil from this teacher (local folder or Hub id, safetensors weights): a model of the "
            "student's kind (e.g. an image classifier for an image classifier) with the same classes. It runs "
            "without gradients, in evaluation mode, beside the student, and is not saved with it."
        },
    )
    distill_alpha: float | None = field(
        default=None,
        metadata={
            "help": f"Weight beta >= 0 of the distillation term beta * T^2 * KL(teacher || student) added to the "
            f"loss on the labels (default {DEFAULT_DISTILL_ALPHA} when there is a teacher)."
        },
    )
    distill_temperature: float = field(
        default=LossConfig.distill_temperature,
        metadata={"help": "Temperature T > 0 of both softmaxes of the distillation term."},
    )

    def loss_config(self, teacher: bool | None = None) -> LossConfig:
        """The loss settings of these arguments, checked, their defaults filled in.

        Args:
            teacher (`bool`, *optional*): whether the run has a teacher, when known (the trainer knows whether it
                was given one); by default, whether `teacher_model_name_or_path` names one, or not known yet.

        Raises:
            `ValueError`: see [`~hf_maxsup.trainer.LossConfig`].
        """
        if teacher is None and self.teacher_model_name_or_path is not None:
            teacher = True
        return LossConfig(
            loss=self.loss,
            alpha=self.loss_alpha,
            alpha_end=self.loss_alpha_end,
            schedule=self.loss_alpha_schedule,
            ls_mass=self.loss_ls_mass,
            distill_alpha=self.distill_alpha,
            distill_temperature=self.distill_temperature,
            teacher=teacher,
            fused_linear_loss=self.fused_linear_loss,
        )

    def __post_init__(self):
        config = self.loss_config()
        # The defaults filled in are recorded, as the recipes and the model card read them from the arguments.
        self.loss_alpha_schedule, self.distill_alpha = config.schedule, config.distill_alpha
        check_label_smoothing_factor(self.label_smoothing_factor)
        super().__post_init__()
