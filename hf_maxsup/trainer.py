"""Trainer subclasses that train with MaxSup or label smoothing, and the loss callable they share.

`MaxSupTrainer` is a drop-in `transformers.Trainer`: the loss is chosen with `MaxSupTrainingArguments(loss=...,
loss_alpha=...)`. Users of other `Trainer` subclasses (trl's, their own) get the same loss from [`MaxSupLossFunc`]:

```python
loss_fn = MaxSupLossFunc("maxsup", alpha=0.1, alpha_end=0.2)
trainer = Trainer(model, args, compute_loss_func=loss_fn, callbacks=[loss_fn], ...)
```

Distillation: `MaxSupTrainingArguments(teacher_model_name_or_path=..., distill_alpha=..., distill_temperature=...)`,
or `MaxSupTrainer(..., teacher=model)`, adds the teacher's soft targets to that loss (see [`MaxSupTrainer`]).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import transformers.trainer
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.models import auto as transformers_auto

from . import heads, hub
from .auto import auto_class_of, is_causal_lm, unwrap_peft
from .heads import LinearHeadInputs
from .linear import fused_linear_loss
from .losses import LOSSES, LS_MASSES, distillation_loss, get_loss_fn, smoothing_weight
from .schedules import SCHEDULES, alpha_at

__all__ = [
    "MaxSupLossFunc",
    "MaxSupSeq2SeqTrainer",
    "MaxSupSeq2SeqTrainingArguments",
    "MaxSupTrainer",
    "MaxSupTrainingArguments",
]


def _check_loss_config(loss: str, alpha: float, alpha_end: float | None, schedule: str, ls_mass: str = "all") -> None:
    get_loss_fn(loss)
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
    for name, value in (("loss_alpha", alpha), ("loss_alpha_end", alpha_end)):
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {value}.")
    alpha_at(0.0, schedule, alpha, alpha_end)  # rejects a constant schedule given a different alpha_end
    if schedule == "linear" and alpha_end is None and not alpha + 0.1 < 1.0:
        raise ValueError(
            f"the linear schedule rises from loss_alpha={alpha} to {alpha + 0.1:.2f} >= 1: "
            "set loss_alpha_end explicitly."
        )


# The weight of the distillation term when a teacher is given without one.
DEFAULT_DISTILL_ALPHA = 0.5


def _check_distill_config(distill_alpha: float | None, temperature: float) -> None:
    # beta is the weight of a term added to the label loss (which keeps weight 1), as in Hinton et al.'s sum form,
    # not the share of a convex combination: any beta >= 0 is meaningful, 0 trains on the labels alone.
    if distill_alpha is not None and not (math.isfinite(distill_alpha) and distill_alpha >= 0):
        raise ValueError(
            f"distill_alpha (the weight of the distillation term) must be a number >= 0; got {distill_alpha}."
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"distill_temperature must be > 0 (1 keeps the teacher's probabilities, larger values "
            f"soften them); got {temperature}."
        )


class MaxSupLossFunc(TrainerCallback):
    """The MaxSup / LS / CE loss as a `compute_loss_func` for any `transformers.Trainer`.

    It is also a `TrainerCallback`: registered in `callbacks`, it follows the training progress so that alpha follows
    its schedule (a pure function of `global_step / max_steps`, hence reproduced on resume). It accumulates the loss
    components (`ce`, `reg`, `alpha` and the LS decomposition) for logging, averaged over each logging window (a mean
    of per-micro-batch means: a diagnostic, not re-weighted by item counts). [`MaxSupTrainer`] logs them averaged
    over processes, everywhere the Trainer logs; under another Trainer this callback adds the main process's to the
    log history and to what the callbacks registered after it see (the Trainer's own printer and `report_to`
    integrations come before it).

    Args:
        loss (`str`, *optional*, defaults to `"maxsup"`): `"ce"`, `"ls"` or `"maxsup"`.
        alpha (`float`, *optional*, defaults to 0.1): alpha at the start of training.
        alpha_end (`float`, *optional*): alpha at the end (linear schedule); defaults to `alpha + 0.1`.
        schedule (`str`, *optional*): `"constant"` or `"linear"`; defaults to `"linear"` for MaxSup (as in the
            paper) and `"constant"` otherwise.
        shift_labels (`bool`, *optional*, defaults to `False`): predict token `t + 1` from position `t`, for causal
            language models whose labels are their inputs.
        ignore_index (`int`, *optional*, defaults to -100): label value excluded from every term.
        ls_mass (`str`, *optional*, defaults to `"all"`): for `"ls"`, where the smoothing mass `alpha` goes: `"all"`
            spreads it over every class, the target included (torch, transformers, timm); `"others"` gives the target
            `1 - alpha` and each other class `alpha / (K - 1)` (fairseq, tensor2tensor). See
            [`~hf_maxsup.losses.smoothing_weight`].
        distill_alpha (`float`, *optional*): distil from a teacher: the loss becomes that loss plus
            `distill_alpha * T**2 * KL(softmax(teacher / T) || softmax(logits / T))` (see
            [`~hf_maxsup.losses.distillation_loss`]), the teacher's logits given by [`with_teacher_logits`], and
            the KL is logged as `distill`. `None` (the default) trains on the labels alone.
        distill_temperature (`float`, *optional*, defaults to 2.0): the temperature `T` of the distillation term.
    """

    def __init__(
        self,
        loss: str = "maxsup",
        alpha: float = 0.1,
        alpha_end: float | None = None,
        schedule: str | None = None,
        shift_labels: bool = False,
        ignore_index: int = -100,
        ls_mass: str = "all",
        distill_alpha: float | None = None,
        distill_temperature: float = 2.0,
    ):
        schedule = schedule or ("linear" if loss == "maxsup" else "constant")
        _check_loss_config(loss, alpha, alpha_end, schedule, ls_mass)
        _check_distill_config(distill_alpha, distill_temperature)
        self.distill_alpha, self.distill_temperature = distill_alpha, distill_temperature
        self._teacher_logits: torch.Tensor | None = None
        self.loss, self.alpha, self.alpha_end, self.schedule = loss, alpha, alpha_end, schedule
        self.ls_mass = ls_mass
        # Only the LS loss takes a mass; CE and MaxSup keep their shared signature.
        self._loss_kwargs = {"mass": ls_mass} if loss == "ls" else {}
        self.shift_labels, self.ignore_index = shift_labels, ignore_index
        self.loss_fn = get_loss_fn(loss)
        self.progress: float | None = None
        # Set by MaxSupTrainer for each call: the logits may be overwritten by their gradient when nobody reads them.
        self.inplace_backward = False
        self._sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts = {"train": 0, "eval": 0}

    def current_alpha(self) -> float:
        """Alpha at the current training progress."""
        if self.progress is None:
            if self.schedule == "constant" or self.loss == "ce":
                return self.alpha
            raise ValueError(
                f"the {self.schedule} alpha schedule needs the training progress: register the loss as a callback "
                "too, `Trainer(compute_loss_func=loss_fn, callbacks=[loss_fn])`, or use MaxSupTrainer."
            )
        return alpha_at(self.progress, self.schedule, self.alpha, self.alpha_end)

    def on_init_end(self, args, state, control, **kwargs):
        self.progress = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        # Called once per optimizer step, so alpha is the same for every micro-batch of an accumulated batch.
        self.progress = state.global_step / max(state.max_steps, 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # MaxSupTrainer adds the components to its logs itself, averaged over processes, and leaves nothing to pop
        # here. Under any other Trainer (trl's, a plain one) they join the logs here: the log history (hence
        # trainer_state.json and the model card), the metrics `evaluate` returns and the callbacks after this one.
        if logs is None:
            return
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        values = {prefix + name: round(value.item(), 6) for name, value in self.pop_metrics(mode).items()}
        logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """The loss of the model `outputs` (their `logits`) for `labels`, or of [`~hf_maxsup.heads.LinearHeadInputs`]
        (then [`linear_loss`]), divided by `num_items_in_batch` when given.
        """
        if isinstance(outputs, LinearHeadInputs):
            return self.linear_loss(outputs, labels, num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        if logits is None:
            keys = ", ".join(outputs.keys()) if isinstance(outputs, dict) else type(outputs).__name__
            raise ValueError(
                f"the model output has no `logits` (it has: {keys}). MaxSup and LS regularise the classifier's "
                "logits: use a model with a task head (AutoModelForSequenceClassification, "
                "AutoModelForImageClassification, AutoModelForSeq2SeqLM, ...)."
            )
        labels = self._target(labels)
        alpha = self.current_alpha()
        kwargs = dict(
            ignore_index=self.ignore_index,
            num_items_in_batch=num_items_in_batch,
            inplace_backward=self.inplace_backward and torch.is_grad_enabled() and not _saved_for_backward(logits),
            return_components=True,
        )
        if self.distill_alpha is None:
            loss, components = self.loss_fn(logits, labels.to(logits.device), alpha, **kwargs, **self._loss_kwargs)
        else:
            # distillation_loss takes no smoothing mass: LS with mass 'others' is LS 'all' at this weight.
            weight = smoothing_weight(alpha, logits.shape[-1], self.ls_mass) if self.loss == "ls" else alpha
            loss, components = distillation_loss(
                logits,
                self._teacher_logits_for(logits),
                labels.to(logits.device),
                weight,
                loss=self.loss,
                distill_alpha=self.distill_alpha,
                distill_temperature=self.distill_temperature,
                **kwargs,
            )
        self._record(components, alpha)
        return loss

    @contextlib.contextmanager
    def with_teacher_logits(self, teacher_logits: torch.Tensor | None):
        """Within this context, the loss distils towards `teacher_logits` (the teacher's logits for the batch the
        next calls see, of the same shape as the student's); `None` leaves the loss unchanged. [`MaxSupTrainer`]
        wraps each `compute_loss` in it; a custom `Trainer` does the same with its own teacher's logits.
        """
        self._teacher_logits = teacher_logits
        try:
            yield self
        finally:
            self._teacher_logits = None

    def _teacher_logits_for(self, logits: torch.Tensor) -> torch.Tensor:
        if self._teacher_logits is None:
            raise ValueError(
                f"distill_alpha={self.distill_alpha}: distillation needs the teacher's logits of the batch. Use "
                "MaxSupTrainer(..., teacher=model) or teacher_model_name_or_path, or call the loss within "
                "`with loss_fn.with_teacher_logits(teacher_logits):`."
            )
        return self._teacher_logits.to(logits.device)

    def linear_loss(self, head_inputs: LinearHeadInputs, labels: torch.Tensor, num_items_in_batch=None):
        """The same loss (same labels shift, alpha and logged components) from what the output head reads and its
        weight and bias, by [`~hf_maxsup.linear.fused_linear_loss`]: the logits are never materialised.

        Args:
            head_inputs ([`~hf_maxsup.heads.LinearHeadInputs`]): the head's input `(B, T, H)`, weight and bias, e.g.
                from [`hf_maxsup.heads.head_inputs`].
            labels (`torch.Tensor` of shape `(B, T)`): class indices, `ignore_index` where there is nothing to learn.
            num_items_in_batch (`int` or `torch.Tensor`, *optional*): divides the summed loss, as in `__call__`.
        """
        if self.distill_alpha is not None:
            raise ValueError(
                "distillation needs the student's logits: it cannot be combined with the fused linear "
                "loss, which never materialises them. Set fused_linear_loss=False."
            )
        hidden = head_inputs.hidden_states
        labels = self._target(labels)
        alpha = self.current_alpha()
        loss, components = fused_linear_loss(
            hidden,
            head_inputs.weight,
            labels.to(hidden.device),
            loss=self.loss,
            alpha=alpha,
            bias=head_inputs.bias,
            ignore_index=self.ignore_index,
            num_items_in_batch=num_items_in_batch,
            return_components=True,
            mass=self.ls_mass,
        )
        self._record(components, alpha)
        return loss

    def _target(self, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the batch has no `labels`: the data collator must return them for training.")
        if self.shift_labels:
            # Pad-then-slice keeps the logits unsliced (no copy), as transformers' ForCausalLMLoss does.
            labels = torch.nn.functional.pad(labels, (0, 1), value=self.ignore_index)[..., 1:]
        return labels

    def _record(self, components: dict[str, torch.Tensor], alpha: float) -> None:
        # The Trainer evaluates under no_grad; that tells the two apart without access to the model.
        mode = "train" if torch.is_grad_enabled() else "eval"
        sums = self._sums[mode]
        for name, value in components.items():
            sums[name] = sums[name] + value
        if self.loss != "ce":
            sums["alpha"] = sums["alpha"] + alpha
        self._counts[mode] += 1

    def pop_metrics(self, mode: str = "train") -> dict[str, torch.Tensor]:
        """Averages of the components accumulated in `mode` since the last call (0-dim tensors), then reset."""
        count, sums = self._counts[mode], self._sums[mode]
        metrics = {
            name: torch.as_tensor(value, dtype=torch.float32, device="cpu") / count for name, value in sums.items()
        }
        self._sums[mode], self._counts[mode] = defaultdict(float), 0
        return metrics


@dataclass
class _LossArguments:
    loss: str = field(
        default="maxsup",
        metadata={"help": f"Training loss: one of {', '.join(LOSSES)}.", "choices": list(LOSSES)},
    )
    loss_alpha: float = field(
        default=0.1,
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
        default="all",
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
        default=2.0,
        metadata={"help": "Temperature T > 0 of both softmaxes of the distillation term."},
    )

    def __post_init__(self):
        if self.loss_alpha_schedule is None:
            self.loss_alpha_schedule = "linear" if self.loss == "maxsup" else "constant"
        _check_loss_config(self.loss, self.loss_alpha, self.loss_alpha_end, self.loss_alpha_schedule, self.loss_ls_mass)
        _check_distill_config(self.distill_alpha, self.distill_temperature)
        if self.teacher_model_name_or_path is not None:
            if self.distill_alpha is None:
                self.distill_alpha = DEFAULT_DISTILL_ALPHA
            if self.fused_linear_loss:
                raise ValueError(
                    "teacher_model_name_or_path: distillation needs the student's logits, which "
                    "fused_linear_loss never materialises. Set fused_linear_loss=False."
                )
        if self.label_smoothing_factor > 0:
            raise ValueError(
                f"label_smoothing_factor={self.label_smoothing_factor} would smooth the labels a second time: "
                f"hf_maxsup computes the loss itself. Use loss='ls', loss_alpha={self.label_smoothing_factor} "
                "(--loss ls --loss_alpha ...) and leave label_smoothing_factor at 0."
            )
        super().__post_init__()


@dataclass
class MaxSupTrainingArguments(_LossArguments, TrainingArguments):
    """`TrainingArguments` plus the loss: `loss` (`"ce"`, `"ls"`, `"maxsup"`), `loss_alpha`, `loss_alpha_end`,
    `loss_alpha_schedule` (`"linear"` or `"constant"`) and `loss_ls_mass` (`"all"` or `"others"`, label smoothing
    only), checked when the arguments are created,
    `fused_linear_loss` (compute the loss of a language model's head without its logits, see [`hf_maxsup.heads`]),
    and distillation: `teacher_model_name_or_path`, `distill_alpha` (the weight beta >= 0 of the distillation term,
    0.5 by default with a teacher) and `distill_temperature` (T > 0, default 2.0).
    """


@dataclass
class MaxSupSeq2SeqTrainingArguments(_LossArguments, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the loss fields of [`MaxSupTrainingArguments`]."""


def _saved_for_backward(logits: torch.Tensor) -> bool:
    """Whether the op that produced `logits` keeps them for its own backward (e.g. `exp`, `sigmoid`), in which case
    overwriting them with their gradient would break that backward.
    """
    fn = logits.grad_fn
    return fn is not None and any(
        isinstance(value, torch.Tensor) and value.data_ptr() == logits.data_ptr()
        for value in (getattr(fn, name) for name in dir(fn) if name.startswith("_saved_"))
    )


class _PickleFreeUploads:
    """The `HfApi` the Trainer uploads with, except that an upload of the output directory leaves out the pickles
    (`training_args.bin`, ...): loading a pickle from the Hub can run code. A checkpoint folder uploaded for
    `hub_strategy="checkpoint"` (given a `path_in_repo`) keeps them, since resuming from it needs them."""

    def __init__(self, api):
        self._api = api

    def __getattr__(self, name):
        return getattr(self._api, name)

    def upload_folder(self, *, ignore_patterns=None, path_in_repo=None, **kwargs):
        if path_in_repo is None:
            ignore_patterns = [*(ignore_patterns or []), *hub.PICKLE_PATTERNS]
        return self._api.upload_folder(ignore_patterns=ignore_patterns, path_in_repo=path_in_repo, **kwargs)


@contextlib.contextmanager
def _uploads_without_pickles():
    # Trainer.push_to_hub and _push_from_checkpoint write training_args.bin and upload in one method, with fixed
    # ignore_patterns: the HfApi they get is the only place to leave the pickles out.
    real = transformers.trainer.hf_api
    transformers.trainer.hf_api = lambda: _PickleFreeUploads(real())
    try:
        yield
    finally:
        transformers.trainer.hf_api = real


def _check_classifier_config(model) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "problem_type", None) in ("regression", "multi_label_classification"):
        raise ValueError(
            f"problem_type={config.problem_type!r}: MaxSup and label smoothing apply to single-label "
            "classification; train this model with transformers.Trainer."
        )
    generative = getattr(config, "is_encoder_decoder", False) or is_causal_lm(model)
    if config is not None and not generative and getattr(config, "num_labels", 2) < 2:
        raise ValueError(
            f"the model has num_labels={config.num_labels}: with fewer than 2 classes the softmax is 1 for every "
            "input, so ce, ls and maxsup are 0 and nothing is learnt. Give the model one output per class "
            "(num_labels=K >= 2, e.g. from_pretrained(..., num_labels=K)) and data with at least two classes; for "
            "regression set problem_type='regression' and use transformers.Trainer."
        )


def _load_teacher(name_or_path: str, student):
    """The teacher at `name_or_path`, loaded with the Auto class of the student's kind (safetensors only, no remote
    code)."""
    student_class = type(unwrap_peft(student)).__name__
    auto_class = auto_class_of(student_class)
    if auto_class is None:
        raise ValueError(
            f"teacher_model_name_or_path: no Auto class loads a teacher for a {student_class} student; "
            "load the teacher yourself and pass it as MaxSupTrainer(..., teacher=model)."
        )
    try:
        return getattr(transformers_auto, auto_class).from_pretrained(
            name_or_path, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError) as err:  # no such folder or id, no safetensors weights, another kind of model
        raise ValueError(
            f"teacher_model_name_or_path {name_or_path!r}: could not load it with {auto_class} (the "
            f"student is a {student_class}): {err}"
        ) from err


def _num_classes(model) -> int:
    """The size of the model's logits' last dimension: its labels, or its vocabulary for a generative model."""
    base = unwrap_peft(model)
    if getattr(base.config, "is_encoder_decoder", False) or is_causal_lm(base):
        return base.get_output_embeddings().weight.shape[0]
    return base.config.num_labels


def _check_teacher(teacher, student) -> None:
    teacher_classes, student_classes = _num_classes(teacher), _num_classes(student)
    if teacher_classes != student_classes:
        raise ValueError(
            f"the teacher has {teacher_classes} classes (logits per item) and the student "
            f"{student_classes}: distillation compares their distributions class by class, so both "
            "must predict the same classes."
        )
    names = [getattr(unwrap_peft(model).config, "id2label", None) or {} for model in (teacher, student)]
    # Default names (LABEL_i) say nothing; named classes in another order would be distilled into the wrong ones.
    named = all(not all(str(name).startswith("LABEL_") for name in labels.values()) for labels in names)
    if named and {int(k): v for k, v in names[0].items()} != {int(k): v for k, v in names[1].items()}:
        raise ValueError(
            f"the teacher's classes {names[0]} are not the student's {names[1]} (same ids, same "
            "names): train the student on the teacher's label set."
        )


def _resolve_teacher(teacher, training_args, student):
    """The teacher given (`teacher=`) or named (`teacher_model_name_or_path`), checked against the student; `None`
    without one."""
    name = training_args.teacher_model_name_or_path
    if teacher is not None and name is not None:
        raise ValueError(f"both teacher= and teacher_model_name_or_path={name!r} were given: pass one of them.")
    if teacher is None and name is None:
        if training_args.distill_alpha is not None:
            raise ValueError(
                f"distill_alpha={training_args.distill_alpha} but no teacher: set "
                "teacher_model_name_or_path (--teacher_model_name_or_path) or pass teacher=."
            )
        return None
    if student is None:
        raise ValueError(
            "distillation needs the student model (model=...) to check the teacher against; "
            "model_init is not supported with a teacher."
        )
    if is_deepspeed_zero3_enabled():
        # from_pretrained would partition the teacher's weights for an engine that never gathers them.
        raise ValueError(
            "distillation under DeepSpeed ZeRO-3 is not supported: the teacher runs outside the "
            "DeepSpeed engine. Train with ZeRO-1/2, DDP or FSDP."
        )
    teacher = _load_teacher(name, student) if teacher is None else teacher
    _check_teacher(teacher, student)
    return teacher


class _MaxSupMixin:
    """Shared by both trainers: builds the loss from the arguments, overwrites the logits with their gradient when
    nothing reads them afterwards, and logs the loss components.
    """

    def __init__(self, *args, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, _LossArguments):
            raise TypeError(
                f"{type(self).__name__} needs MaxSupTrainingArguments (or MaxSupSeq2SeqTrainingArguments), got "
                f"{type(training_args).__name__}: they carry the loss settings (loss, loss_alpha, ...)."
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                f"{type(self).__name__} computes the loss from args.loss; use transformers.Trainer to pass your own "
                "compute_loss_func."
            )
        model = kwargs.get("model", args[0] if args else None)
        _check_classifier_config(model)
        if training_args.fused_linear_loss and model is not None:
            heads.output_head(model)  # an unsupported model fails here, not at the first step
        teacher = _resolve_teacher(kwargs.pop("teacher", None), training_args, model)
        if teacher is not None and training_args.fused_linear_loss:
            raise ValueError(
                "teacher=: distillation needs the student's logits, which fused_linear_loss never "
                "materialises. Set fused_linear_loss=False."
            )
        distill_alpha = (
            training_args.distill_alpha
            if training_args.distill_alpha is not None
            else (DEFAULT_DISTILL_ALPHA if teacher is not None else None)
        )
        self.loss_func = MaxSupLossFunc(
            training_args.loss,
            training_args.loss_alpha,
            training_args.loss_alpha_end,
            training_args.loss_alpha_schedule,
            shift_labels=model is not None and is_causal_lm(model),
            ls_mass=training_args.loss_ls_mass,
            distill_alpha=distill_alpha,
            distill_temperature=training_args.distill_temperature,
        )
        # Passing the loss as compute_loss_func makes the Trainer count num_items_in_batch over the whole
        # accumulated batch and treat the returned loss as already scaled for gradient accumulation.
        kwargs["compute_loss_func"] = self.loss_func
        kwargs["callbacks"] = [self.loss_func, *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)
        # An attribute of the trainer, not of the model: accelerate never wraps it (DDP, FSDP), the optimizer never
        # sees it, and the student's checkpoints never hold it. Each process keeps its own copy.
        self.teacher = teacher.to(self.args.device).eval() if teacher is not None else None
        if training_args.fused_linear_loss and (self.is_fsdp_enabled or is_deepspeed_zero3_enabled()):
            raise ValueError(
                "fused_linear_loss reads the output head's weight after the head's forward, when FSDP and DeepSpeed "
                "ZeRO-3 have sharded it again. Train with DDP or ZeRO-1/2, or set fused_linear_loss=False."
            )

    # False while prediction_step computes a loss whose outputs it discards (prediction_loss_only).
    _outputs_needed = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (
            "labels" in inputs
            and "decoder_input_ids" not in inputs
            and hasattr(self.accelerator.unwrap_model(model), "prepare_decoder_input_ids_from_labels")
        ):
            # The labels are popped before the forward pass, so an encoder-decoder cannot derive its decoder inputs
            # from them; DataCollatorForSeq2Seq(model=...) provides them, other collators may not.
            unwrapped = self.accelerator.unwrap_model(model)
            inputs = {
                **inputs,
                "decoder_input_ids": unwrapped.prepare_decoder_input_ids_from_labels(labels=inputs["labels"]),
            }
        with self.loss_func.with_teacher_logits(self.teacher_logits(inputs)):
            return self._student_loss(model, inputs, return_outputs, num_items_in_batch)

    def teacher_logits(self, inputs: dict) -> torch.Tensor | None:
        """The teacher's logits for a batch (the student's inputs, labels removed), without gradients; `None`
        without a teacher or without labels (nothing to distil)."""
        if self.teacher is None or "labels" not in inputs:
            return None
        with torch.no_grad():
            return self.teacher(**{key: value for key, value in inputs.items() if key != "labels"}).logits

    def _student_loss(self, model, inputs, return_outputs, num_items_in_batch):
        if self.args.fused_linear_loss and not (return_outputs and self._outputs_needed):
            # Trainer.compute_loss pops the labels, calls this forward, passes what it returns (the head's inputs,
            # no logits) to self.loss_func with num_items_in_batch, and scales for average_tokens_across_devices.
            forward = functools.partial(heads.head_inputs, model, self.accelerator.unwrap_model(model))
            loss = super().compute_loss(forward, inputs, num_items_in_batch=num_items_in_batch)
            # prediction_step asks for outputs even when it keeps only the loss; there are no logits to give.
            return (loss, {}) if return_outputs else loss
        # Evaluation that keeps the logits (prediction_loss_only=False) takes the usual path, logits included.
        self.loss_func.inplace_backward = not return_outputs
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **kwargs):
        # Seq2SeqTrainer generates (predict_with_generate) without compute_loss: only the loss path is affected.
        self._outputs_needed = not prediction_loss_only
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **kwargs)
        finally:
            self._outputs_needed = True

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        metrics = self.loss_func.pop_metrics(mode)
        if metrics:
            names = sorted(metrics)
            values = torch.stack([metrics[name] for name in names]).to(self.args.device)
            # Average over processes; every process calls log() at the same points of training and evaluation.
            values = self.accelerator.reduce(values, reduction="mean").tolist()
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + name: round(value, 6) for name, value in zip(names, values)})
        super().log(logs, *args, **kwargs)

    @property
    def distillation(self) -> dict | None:
        """The teacher (its Hub id, or the folder name of a local one) and the distillation settings (`alpha`,
        `temperature`), as the model card records them; `None` without a teacher."""
        if self.teacher is None:
            return None
        name = (
            self.args.teacher_model_name_or_path
            or getattr(self.teacher.config, "_name_or_path", "")
            or type(self.teacher).__name__
        )
        # A local path means nothing to a reader of the card, and may say more than intended.
        name = os.path.basename(os.path.normpath(name)) if os.path.isdir(name) else name
        return {
            "teacher": name,
            "alpha": self.loss_func.distill_alpha,
            "temperature": self.loss_func.distill_temperature,
        }

    # The arguments given to create_model_card so far, reused for the card written on every later save.
    _model_card_kwargs: dict | None = None

    def create_model_card(self, **kwargs) -> None:
        """Writes the hf_maxsup model card to `args.output_dir/README.md`: loss and alpha schedule, metrics (also as
        `model-index`), hyper-parameters, citation. The arguments are those of `Trainer.create_model_card` (see
        [`hf_maxsup.hub.write_model_card`]); they add to those of earlier calls and are used for the cards written on
        later saves.
        """
        self._model_card_kwargs = {**(self._model_card_kwargs or {}), **kwargs}
        if self.is_world_process_zero():
            hub.write_model_card(self, **self._model_card_kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        # Every save (checkpoints, save_model, push_to_hub) gets the card of the model it holds.
        if self.args.should_save:
            hub.write_model_card(self, output_dir, **(self._model_card_kwargs or {}))

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        try:
            super().init_hf_repo(token=token, private=private)
        except hub.HUB_ERRORS as err:
            # Trainer.__init__ calls this: train and save locally anyway; push_to_hub tries again and raises.
            hub.logger.warning(hub.failure_message(err, self, token, saved=False))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.hub_model_id is None:  # no repository: the Hub was unreachable when the trainer was built
            return
        # The Trainer uploads args.output_dir, whose card is that of the last save_model: bring it up to date.
        if self.is_world_process_zero():
            hub.write_model_card(self, **(self._model_card_kwargs or {}))
        with _uploads_without_pickles():
            super()._push_from_checkpoint(checkpoint_folder)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """`Trainer.push_to_hub` (model, processor, model card, metric files of `args.output_dir`) that leaves the
        model saved on disk and raises [`~hf_maxsup.hub.HubPushError`], saying what to do, when the Hub cannot be
        reached or refuses the push. Pickles (`training_args.bin`) are not uploaded. The arguments are those of
        `Trainer.push_to_hub`.
        """
        try:
            if self.hub_model_id is None:
                # Trainer.push_to_hub would create the repository before saving: do it first, so that a failure
                # can be caught below and the model saved all the same.
                super().init_hf_repo(token=token if token is not None else self.args.hub_token, private=private)
            with _uploads_without_pickles():
                return super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)
        except hub.HUB_ERRORS as err:
            if self.hub_model_id is None:  # failed before Trainer.push_to_hub saved the model
                self.save_model(_internal_call=True)
                self.create_model_card(**kwargs)
            raise hub.HubPushError(hub.failure_message(err, self, token)) from err


class MaxSupTrainer(_MaxSupMixin, Trainer):
    """A `transformers.Trainer` whose loss is cross-entropy, label smoothing or MaxSup, per
    [`MaxSupTrainingArguments`]. It works with classification heads, encoder-decoders, causal LMs (labels shifted)
    and PEFT-wrapped models, honours `num_items_in_batch` (exact gradient accumulation) and
    `average_tokens_across_devices`, and logs `ce`, `reg`, `alpha` (and for LS `ls_regularization`,
    `ls_error_amplification`) averaged over each logging window.

    With `fused_linear_loss=True` (the model families of [`hf_maxsup.heads.HEADS`]) the training and evaluation loss
    come from the output head's input and weight by [`~hf_maxsup.linear.fused_linear_loss`]: the `(tokens, V)`
    logits and their gradient never exist. The loss, gradients and logged components are those of the logits path.

    Distillation: given `teacher=` (a model) or `args.teacher_model_name_or_path` (loaded with the Auto class of the
    student's kind), the teacher runs on each batch's inputs under `no_grad`, in evaluation mode, on the student's
    device, and the loss adds `distill_alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))` over the
    kept items (see [`~hf_maxsup.losses.distillation_loss`]), logged as `distill` (the KL before its weight). The
    teacher is an attribute of the trainer, not of the model: it is never saved with the student nor wrapped for
    DDP; gradient accumulation and data parallelism stay exact. The model card records it.
    """


class MaxSupSeq2SeqTrainer(_MaxSupMixin, Seq2SeqTrainer):
    """[`MaxSupTrainer`] for `Seq2SeqTrainer` (translation, summarisation), with [`MaxSupSeq2SeqTrainingArguments`].

    With `predict_with_generate=True`, the Seq2SeqTrainer evaluates the model's own cross-entropy (`eval_loss` is
    then the token-level NLL of the references) and generates for the metrics.
    """
