"""The MaxSup / LS / CE loss as a `compute_loss_func` for any `transformers.Trainer`, and the loss components it logs.

Users of other `Trainer` subclasses (trl's, their own) get the loss of [`~hf_maxsup.trainer.MaxSupTrainer`] from
[`MaxSupLossFunc`]:

```python
loss_fn = MaxSupLossFunc("maxsup", alpha=0.1, alpha_end=0.2)
trainer = Trainer(model, args, compute_loss_func=loss_fn, callbacks=[loss_fn], ...)
```
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable

import torch
from transformers import TrainerCallback

from .. import kernels
from ..heads import LinearHeadInputs
from ..linear import fused_linear_loss
from ..losses import distillation_loss, get_loss_fn, smoothing_weight
from ..schedules import alpha_at
from .checks import check_labels_to_shift, missing_logits_message
from .config import LossConfig

__all__ = ["LossComponents", "MaxSupLossFunc"]


class LossComponents:
    """The loss components (`ce`, `reg`, `alpha`, LS's decomposition, `distill`, `misclassified`) of each call, summed
    separately for training (under autograd) and evaluation (under `no_grad`, as the Trainer evaluates) until they
    are logged.
    """

    def __init__(self):
        self._sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts = {"train": 0, "eval": 0}

    def record(self, components: dict[str, torch.Tensor], alpha: float | None) -> None:
        """Adds one call's components, and its `alpha` unless `None` (cross-entropy has none)."""
        # The Trainer evaluates under no_grad; that tells training from evaluation without access to the model.
        mode = "train" if torch.is_grad_enabled() else "eval"
        sums = self._sums[mode]
        for name, value in components.items():
            sums[name] = sums[name] + value
        if alpha is not None:
            sums["alpha"] = sums["alpha"] + alpha
        self._counts[mode] += 1

    def pop(self, mode: str = "train") -> dict[str, torch.Tensor]:
        """Averages of the components accumulated in `mode` since the last call (0-dim tensors), then reset."""
        count, sums = self._counts[mode], self._sums[mode]
        metrics = {
            name: torch.as_tensor(value, dtype=torch.float32, device="cpu") / count for name, value in sums.items()
        }
        self._sums[mode], self._counts[mode] = defaultdict(float), 0
        return metrics

    def pop_logs(self, logs: dict, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The averages to add to `logs`: those of evaluation (named `eval_<name>`) when `logs` are an evaluation's,
        of training otherwise, rounded as the Trainer rounds its own.

        Args:
            logs (`dict`): what the Trainer is about to log.
            reduce (`Callable`, *optional*): applied to the stacked averages (a 1-dim tensor), e.g. to average them
                over processes.
        """
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        metrics = self.pop(mode)
        if not metrics:
            return {}
        names = sorted(metrics)
        values = torch.stack([metrics[name] for name in names])
        values = (reduce(values) if reduce is not None else values).tolist()
        prefix = "eval_" if mode == "eval" else ""
        return {prefix + name: round(value, 6) for name, value in zip(names, values)}


class MaxSupLossFunc(TrainerCallback):
    """The MaxSup / LS / CE loss as a `compute_loss_func` for any `transformers.Trainer`.

    It is also a `TrainerCallback`: registered in `callbacks`, it follows the training progress so that alpha follows
    its schedule (a pure function of `global_step / max_steps`, hence reproduced on resume). It accumulates the loss
    components (`ce`, `reg`, `alpha`, the LS decomposition and `misclassified`, the fraction of kept rows whose label is
    not the top-1 logit) for logging, averaged over each logging window (a mean
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

    The settings are checked, and their defaults filled in, by [`~hf_maxsup.trainer.LossConfig`] (kept as `config`).
    """

    def __init__(
        self,
        loss: str = LossConfig.loss,
        alpha: float = LossConfig.alpha,
        alpha_end: float | None = None,
        schedule: str | None = None,
        shift_labels: bool = False,
        ignore_index: int = -100,
        ls_mass: str = LossConfig.ls_mass,
        distill_alpha: float | None = None,
        distill_temperature: float = LossConfig.distill_temperature,
    ):
        # HF_MAXSUP_BACKEND and the C kernel's settings, before any trainer that takes this loss is built
        kernels.check_environment()
        config = LossConfig(
            loss=loss,
            alpha=alpha,
            alpha_end=alpha_end,
            schedule=schedule,
            ls_mass=ls_mass,
            distill_alpha=distill_alpha,
            distill_temperature=distill_temperature,
            # The teacher is whoever gives the logits of with_teacher_logits: there is one when distill_alpha is set.
            teacher=distill_alpha is not None,
        )
        self.config = config
        # The settings, their defaults filled in, are attributes too: the model card reads them by name.
        self.loss, self.alpha, self.alpha_end = config.loss, config.alpha, config.alpha_end
        self.schedule, self.ls_mass = config.schedule, config.ls_mass
        self.distill_alpha, self.distill_temperature = config.distill_alpha, config.distill_temperature
        self._teacher_logits: torch.Tensor | None = None
        # Only the LS loss takes a mass; CE and MaxSup keep their shared signature.
        self._loss_kwargs = {"mass": config.ls_mass} if config.loss == "ls" else {}
        self.shift_labels, self.ignore_index = shift_labels, ignore_index
        self.loss_fn = get_loss_fn(config.loss)
        self.progress: float | None = None
        # Set by MaxSupTrainer for each call: the logits may be overwritten by their gradient when nobody reads them.
        self.inplace_backward = False
        self.components = LossComponents()

    @classmethod
    def from_config(cls, config: LossConfig, **kwargs) -> MaxSupLossFunc:
        """The loss of `config`'s settings; `kwargs` are the other arguments (`shift_labels`, `ignore_index`)."""
        return cls(
            config.loss,
            config.alpha,
            config.alpha_end,
            config.schedule,
            ls_mass=config.ls_mass,
            distill_alpha=config.distill_alpha,
            distill_temperature=config.distill_temperature,
            **kwargs,
        )

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
        values = self.components.pop_logs(logs)
        logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    def pop_metrics(self, mode: str = "train") -> dict[str, torch.Tensor]:
        """Averages of the components accumulated in `mode` since the last call (0-dim tensors), then reset."""
        return self.components.pop(mode)

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """The loss of the model `outputs` (their `logits`) for `labels`, or of [`~hf_maxsup.heads.LinearHeadInputs`]
        (then [`linear_loss`]), divided by `num_items_in_batch` when given.
        """
        if isinstance(outputs, LinearHeadInputs):
            return self.linear_loss(outputs, labels, num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        if logits is None:
            raise ValueError(missing_logits_message(outputs))
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
        self.config.check_fused_linear_loss()
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
            check_labels_to_shift(labels)
            # Pad-then-slice keeps the logits unsliced (no copy), as transformers' ForCausalLMLoss does.
            labels = torch.nn.functional.pad(labels, (0, 1), value=self.ignore_index)[..., 1:]
        return labels

    def _record(self, components: dict[str, torch.Tensor], alpha: float) -> None:
        self.components.record(components, alpha if self.loss != "ce" else None)


def _saved_for_backward(logits: torch.Tensor) -> bool:
    """Whether the op that produced `logits` may keep them for its own backward (`exp`, `log_softmax`, a compiled
    graph whose last op saves its output), in which case overwriting them with their gradient would break that
    backward. A built-in node lists what it saved as `_saved_*` attributes, a Python one (a `torch.compile`d
    graph's `CompiledFunctionBackward`, an `autograd.Function`) as `saved_tensors`; a node that cannot be read
    counts as saving them.
    """
    fn = logits.grad_fn
    if fn is None:
        return False
    storage = logits.untyped_storage().data_ptr()
    try:
        saved = [getattr(fn, name) for name in dir(fn) if name.startswith("_saved_")]
        if hasattr(fn, "saved_tensors"):
            saved += list(fn.saved_tensors)
    except RuntimeError:  # freed already, or not readable: assume the worst
        return True
    return any(isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == storage for value in saved)
