"""`MaxSupTrainer` and `MaxSupSeq2SeqTrainer`: the Trainer and Seq2SeqTrainer with the loss of their arguments, its
logged components, a teacher to distil from, and the model card on every save.

`MaxSupTrainer` is a drop-in `transformers.Trainer`: the loss is chosen with `MaxSupTrainingArguments(loss=...,
loss_alpha=...)`. Distillation: `MaxSupTrainingArguments(teacher_model_name_or_path=..., distill_alpha=...,
distill_temperature=...)`, or `MaxSupTrainer(..., teacher=model)`, adds the teacher's soft targets to that loss.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from transformers import Seq2SeqTrainer, Trainer

from .. import heads
from ..auto import is_causal_lm
from ..hub import HUB_ERRORS, HubPushError, failure_message, uploads_without_pickles, write_model_card
from .arguments import MaxSupSeq2SeqTrainingArguments, MaxSupTrainingArguments
from .checks import check_fused_linear_loss, check_label_names, check_student
from .loss_func import MaxSupLossFunc
from .teacher import resolve_teacher

__all__ = ["MaxSupSeq2SeqTrainer", "MaxSupTrainer"]

logger = logging.getLogger(__name__)


def _private(private: bool | None) -> dict:
    """`private` as a keyword for the Trainer's Hub methods when it is given: transformers < 5.23 has no such
    parameter (there `args.hub_private_repo` decides)."""
    return {} if private is None else {"private": private}


class _MaxSupMixin:
    """Shared by both trainers: builds the loss from the arguments, overwrites the logits with their gradient when
    nothing reads them afterwards, and logs the loss components.
    """

    def __init__(self, *args, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, (MaxSupTrainingArguments, MaxSupSeq2SeqTrainingArguments)):
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
        check_student(model)
        teacher, teacher_name = kwargs.pop("teacher", None), training_args.teacher_model_name_or_path
        # Here whether there is a teacher is known: the config fills in distill_alpha or refuses it.
        config = training_args.loss_config(teacher=teacher is not None or teacher_name is not None)
        teacher = resolve_teacher(teacher, teacher_name, model)
        self.loss_func = MaxSupLossFunc.from_config(config, shift_labels=model is not None and is_causal_lm(model))
        # Passing the loss as compute_loss_func makes the Trainer count num_items_in_batch over the whole
        # accumulated batch and treat the returned loss as already scaled for gradient accumulation.
        kwargs["compute_loss_func"] = self.loss_func
        kwargs["callbacks"] = [self.loss_func, *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)
        check_label_names(self)
        check_fused_linear_loss(self)  # an unsupported model fails here, not at the first step
        # An attribute of the trainer, not of the model: accelerate never wraps it (DDP, FSDP), the optimizer never
        # sees it, and the student's checkpoints never hold it. Each process keeps its own copy.
        self.teacher = teacher.to(self.args.device).eval() if teacher is not None else None

    # False while prediction_step computes a loss whose outputs it discards (prediction_loss_only). Trainer's
    # prediction_step calls compute_loss(return_outputs=True) whether or not it keeps the outputs, and only it knows
    # prediction_loss_only (evaluate and predict decide it differently); passing it on explicitly would mean copying
    # prediction_step, so prediction_step sets this for the duration of its call.
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
        self.loss_func.inplace_backward = self.args.loss_inplace_backward and not return_outputs
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **kwargs):
        # Seq2SeqTrainer generates (predict_with_generate) without compute_loss: only the loss path is affected.
        self._outputs_needed = not prediction_loss_only
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **kwargs)
        finally:
            self._outputs_needed = True

    # The metrics of the last prediction on a test set, for the model card: {"split", "prefix", "metrics"}.
    test_results: dict | None = None

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test", **kwargs):
        output = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **kwargs)
        if metric_key_prefix != "eval":  # the recipes evaluate through predict() too
            split = getattr(test_dataset, "split", None)
            self.test_results = {"split": split, "prefix": metric_key_prefix, "metrics": output.metrics}
        return output

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Averaged over processes; every process calls log() at the same points of training and evaluation.
        logs.update(self.loss_func.components.pop_logs(logs, reduce=self._mean_over_processes))
        super().log(logs, *args, **kwargs)

    def _mean_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values.to(self.args.device), reduction="mean")

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
            write_model_card(self, **self._model_card_kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        # Every save (checkpoints, save_model, push_to_hub) gets the card of the model it holds.
        if self.args.should_save:
            write_model_card(self, output_dir, **(self._model_card_kwargs or {}))

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        try:
            super().init_hf_repo(token=token, **_private(private))
        except HUB_ERRORS as err:
            # Trainer.__init__ calls this: train and save locally anyway; push_to_hub tries again and raises.
            logger.warning(failure_message(err, self, token, saved=False))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.hub_model_id is None:  # no repository: the Hub was unreachable when the trainer was built
            return
        # The Trainer uploads args.output_dir, whose card is that of the last save_model: bring it up to date.
        if self.is_world_process_zero():
            write_model_card(self, **(self._model_card_kwargs or {}))
        with uploads_without_pickles():
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
                super().init_hf_repo(token=token if token is not None else self.args.hub_token, **_private(private))
            with uploads_without_pickles():
                return super().push_to_hub(commit_message, blocking, token, revision, **_private(private), **kwargs)
        except HUB_ERRORS as err:
            if self.hub_model_id is None:  # failed before Trainer.push_to_hub saved the model
                self.save_model(_internal_call=True)
                self.create_model_card(**kwargs)
            raise HubPushError(failure_message(err, self, token)) from err


class MaxSupTrainer(_MaxSupMixin, Trainer):
    """A `transformers.Trainer` whose loss is cross-entropy, label smoothing or MaxSup, per
    [`MaxSupTrainingArguments`]. It works with classification heads, encoder-decoders, causal LMs (labels shifted)
    and PEFT-wrapped models, honours `num_items_in_batch` (exact gradient accumulation) and
    `average_tokens_across_devices`, and logs `ce`, `reg`, `alpha` (and for LS `ls_regularization`,
    `ls_error_amplification`) and `misclassified` (the fraction of kept rows whose label is not the top-1 logit)
    averaged over each logging window.

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
