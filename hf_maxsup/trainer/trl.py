"""trl's `SFTTrainer` with the MaxSup / LS / CE loss: [`MaxSupSFTConfig`] and [`MaxSupSFTTrainer`].

```python
from hf_maxsup import MaxSupSFTConfig, MaxSupSFTTrainer

args = MaxSupSFTConfig(output_dir="out", loss="maxsup", loss_alpha=0.1, completion_only_loss=True)
trainer = MaxSupSFTTrainer(model, args=args, train_dataset=data)
```

One forward pass per step (trl's `compute_loss_func` path runs two), trl's metrics kept (`mean_token_accuracy`,
`entropy`, `num_tokens`), alpha driven by its schedule and the components (`ce`, `reg`, `alpha`, ...) logged beside
them, and `fused_linear_loss=True` for the causal LMs of [`hf_maxsup.heads.HEADS`]. This module imports trl, an
optional dependency (`pip install trl`); `hf_maxsup` imports it only when one of these names is used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from .. import heads
from .checks import check_fused_linear_loss, check_label_names, check_student
from .loss_arguments import LossArguments
from .loss_func import MaxSupLossFunc

__all__ = ["MaxSupSFTConfig", "MaxSupSFTTrainer", "token_statistics"]

# Logit entries of one chunk of trl's metrics (entropy, top-1): bounds their float32 temporaries (64 MiB each).
_METRIC_CHUNK_ELEMENTS = 2**24


@dataclass
class MaxSupSFTConfig(LossArguments, SFTConfig):
    """trl's `SFTConfig` plus the loss settings of [`~hf_maxsup.MaxSupTrainingArguments`]: `loss` (`"ce"`, `"ls"`,
    `"maxsup"`), `loss_alpha`, `loss_alpha_end`, `loss_alpha_schedule`, `loss_ls_mass` and `fused_linear_loss`, with
    their defaults and checks (see [`~hf_maxsup.trainer.LossConfig`]). The loss replaces trl's `loss_type="nll"`;
    distillation is not offered here, and `loss_inplace_backward` changes nothing (trl's metrics read the logits after
    the loss, so they are never overwritten).

    Raises:
        `ValueError`: `loss_type` other than `"nll"`, a teacher or `distill_alpha`, `label_smoothing_factor > 0`, and
            the refusals of `LossConfig`.
    """

    def __post_init__(self):
        if self.loss_type != "nll":
            raise ValueError(
                f"loss_type={self.loss_type!r} is trl's own loss; MaxSupSFTTrainer computes loss={self.loss!r} in its "
                "place. Leave loss_type at 'nll'."
            )
        if self.teacher_model_name_or_path is not None or self.distill_alpha is not None:
            raise ValueError(
                "MaxSupSFTTrainer does not distil: leave teacher_model_name_or_path and distill_alpha unset, and "
                "distil with MaxSupTrainer (teacher_model_name_or_path=...) or trl's DistillationTrainer."
            )
        super().__post_init__()


class MaxSupSFTTrainer(SFTTrainer):
    """trl's `SFTTrainer` whose loss is cross-entropy, label smoothing or MaxSup, per [`MaxSupSFTConfig`], computed
    from one forward pass per step: the model's logits (or, with `fused_linear_loss`, the output head's input and
    weight, never the logits) give the loss and trl's token metrics (`entropy`, `mean_token_accuracy`, from the kept
    tokens, under `no_grad`; with `fused_linear_loss` they cost one more matmul of the head over those tokens, in
    chunks). Labels are shifted as trl shifts them, prompt and padding tokens masked as its collator masks them
    (`completion_only_loss`). The components `ce`, `reg`, `alpha` (and LS's) are logged averaged over processes.

    Args:
        model (`str` or `PreTrainedModel`): as for `SFTTrainer`.
        args ([`MaxSupSFTConfig`]): trl's settings and the loss settings.
        kwargs: the other arguments of `SFTTrainer` (`train_dataset`, `processing_class`, `peft_config`, ...),
            except `compute_loss_func`.

    Raises:
        `TypeError`: `args` is not a [`MaxSupSFTConfig`].
        `ValueError`: a `compute_loss_func`, and the refusals of [`~hf_maxsup.MaxSupTrainer`] (labels not under
            `labels`, a model returning tuples, `fused_linear_loss` on a model or engine it cannot serve).
    """

    def __init__(self, model, args: MaxSupSFTConfig | None = None, callbacks=None, **kwargs):
        if not isinstance(args, MaxSupSFTConfig):
            raise TypeError(
                f"MaxSupSFTTrainer needs MaxSupSFTConfig (trl's SFTConfig plus the loss settings: loss, loss_alpha, "
                f"...), got {type(args).__name__}."
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "MaxSupSFTTrainer computes the loss from args.loss; use trl's SFTTrainer to pass your own "
                "compute_loss_func."
            )
        # Shifted as trl shifts: the logits at position t predict token t + 1.
        self.loss_func = MaxSupLossFunc.from_config(args.loss_config(teacher=False), shift_labels=True)
        super().__init__(model, args=args, callbacks=[self.loss_func, *(callbacks or [])], **kwargs)
        check_student(self.model)  # here, as SFTTrainer loads a model given by name
        check_label_names(self)
        check_fused_linear_loss(self)
        # As for MaxSupTrainer: the Trainer counts num_items_in_batch over the accumulated batch and takes the loss as
        # scaled for it. Set after SFTTrainer.__init__, which warns that its compute_loss_func path costs a second
        # forward pass; compute_loss below runs one.
        self.compute_loss_func = self.loss_func

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of `args.loss` on one forward pass, recording trl's token metrics on the way; the arguments are
        those of `Trainer.compute_loss`."""
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        inputs = {**inputs, "use_cache": False}  # as SFTTrainer: no key-value cache while training
        fused = self.args.fused_linear_loss and not return_outputs
        unwrapped = self.accelerator.unwrap_model(model)
        forward = functools.partial(heads.head_inputs, model, unwrapped) if fused else model

        def forward_and_measure(**model_inputs):
            # Measured before the loss reads them: nothing may have overwritten the logits yet.
            outputs = forward(**model_inputs)
            if fused:
                self._record_token_metrics(mode, outputs.hidden_states, labels, head=outputs)
            else:
                self._record_token_metrics(mode, outputs.logits, labels)
            return outputs

        # Trainer's compute_loss, not SFTTrainer's (which computes trl's own loss): it takes out the labels, calls
        # the forward, hands the outputs to self.loss_func and scales for average_tokens_across_devices.
        result = Trainer.compute_loss(
            self, forward_and_measure, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        self._count_tokens(mode, inputs)
        return result

    def _record_token_metrics(self, mode: str, states, labels, head=None) -> None:
        """trl's `entropy` and `mean_token_accuracy` of a batch, over every process's kept tokens."""
        count, entropy, correct = token_statistics(states, labels, head)
        count, entropy, correct = (self.accelerator.gather_for_metrics(x).sum() for x in (count, entropy, correct))
        self._metrics[mode]["entropy"].append((entropy / count).item() if count > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)

    def _count_tokens(self, mode: str, inputs: dict) -> None:
        """trl's `num_tokens`: the tokens trained on so far, padding excluded, as `SFTTrainer.compute_loss` counts."""
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:  # padding-free batches: one row of packed sequences
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The components averaged over processes, as MaxSupTrainer logs them; every process calls log().
        reduce = functools.partial(self.accelerator.reduce, reduction="mean")
        logs.update(self.loss_func.components.pop_logs(logs, reduce=lambda v: reduce(v.to(self.args.device))))
        super().log(logs, start_time)


@torch.no_grad()
def token_statistics(states, labels, head=None):
    """The next-token statistics trl logs, over the tokens whose label is kept: how many, the sum of the entropies
    of their predicted distributions, and how many have the label as their top-1 token. Computed in chunks of rows,
    so that only chunk-sized float32 logits exist at once.

    Args:
        states (`torch.Tensor` of shape `(B, T, V)`, or `(B, T, H)` with `head`): the logits, or what the head reads.
        labels (`torch.Tensor` of shape `(B, T)`): unshifted, -100 where ignored; position `t` predicts `t + 1`.
        head ([`~hf_maxsup.heads.LinearHeadInputs`], *optional*): the head's weight and bias, when `states` are its
            input.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: the count, the entropy sum (float32) and the top-1 count.
    """
    batch, position = (labels[..., 1:] != -100).nonzero(as_tuple=True)
    targets = labels[batch, position + 1]
    vocab_size = head.weight.shape[0] if head is not None else states.shape[-1]
    rows = max(1, _METRIC_CHUNK_ELEMENTS // vocab_size)
    entropy = torch.zeros((), dtype=torch.float32, device=states.device)
    correct = torch.zeros((), dtype=torch.int64, device=states.device)
    for start in range(0, len(batch), rows):
        chunk = states[batch[start : start + rows], position[start : start + rows]]
        logits = (torch.nn.functional.linear(chunk, head.weight, head.bias) if head is not None else chunk).float()
        entropy += torch.special.entr(logits.softmax(-1)).sum()
        correct += (logits.argmax(-1) == targets[start : start + rows]).sum()
    return torch.tensor(len(batch), device=states.device), entropy, correct
