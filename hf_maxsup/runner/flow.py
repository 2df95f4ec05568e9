"""A recipe's run from flags to outputs: [`start`] settles everything that can be settled before any work into a
[`RunPlan`], the script builds its model and data on it (with the helpers here), and [`run`] trains, saves, evaluates,
predicts, writes the card and pushes last."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import datasets
from datasets import DatasetDict
from transformers import AutoTokenizer, TrainingArguments, set_seed

from ..analysis import reliability_diagram
from ..arguments import DataArguments, ImageColumns, ModelArguments, RunArguments
from ..auto import unwrap_peft
from ..data import check_columns, limit_samples, load_task_dataset
from ..hub import RELIABILITY_DIAGRAM, HubPushError
from ..kernels import check_environment
from ..models import apply_lora, check_model_name_or_path
from .engines import prepare_engine, save_final_model
from .output_dir import (
    WEIGHTS,
    claim_output_dir,
    drop_incomplete_checkpoints,
    last_complete_checkpoint,
    model_to_evaluate,
    refuse_to_overwrite,
    release_output_dir,
    saved_model,
)
from .parse import parse_args
from .resume import ScheduleLengthCheck, check_checkpoint_fits, loss_history
from .storage import check_writable_folder, full_disk_error

__all__ = [
    "RunPlan",
    "build_with_shared_tokenizer",
    "card_arguments",
    "data_source",
    "describe_model",
    "load_data",
    "maybe_lora",
    "preflight",
    "reliability_diagram_writer",
    "run",
    "start",
    "tokenize",
]

logger = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """What [`start`] settled before any work: the parsed arguments, the loaded data, and the checkpoint a resumed
    run continues, with its loss history. The script builds on it; [`run`] carries it out.

    Attributes:
        task (`str`): the recipe's task, e.g. `"text-classification"`.
        model_args, data_args, training_args, run_args: the parsed flags.
        raw (`datasets.DatasetDict`): the loaded data, `train`, `validation` and possibly `test`.
        checkpoint (`str`, *optional*): the checkpoint `--resume_from_checkpoint` resolved to (`last`: the newest
            complete one); `None` for a new run.
        loss_history (`list[dict]`): the loss settings of a resumed run, segment by segment, for its model card; empty
            when they never changed.
    """

    task: str
    model_args: ModelArguments
    data_args: DataArguments
    training_args: TrainingArguments
    run_args: RunArguments
    raw: DatasetDict
    checkpoint: str | None = None
    loss_history: list[dict] = field(default_factory=list)


def start(task: str, model_type: type, data_type: type, training_type: type) -> RunPlan:
    """The first steps of every recipe: parse the flags, check the run before any work is done ([`preflight`]), seed,
    and load the data ([`load_data`]).

    Args:
        task (`str`): `"image-classification"`, `"text-classification"` or `"translation"`.
        model_type, data_type (`type`): the task's [`ModelArguments`] and [`DataArguments`] (sub)classes.
        training_type (`type`): [`MaxSupTrainingArguments`] or its Seq2Seq variant.

    Returns:
        [`RunPlan`]
    """
    model_args, data_args, training_args, run_args = parse_args(model_type, data_type, training_type, RunArguments)
    check_environment()  # the loss engine's HF_MAXSUP_* variables, before any work
    for flag, why in model_args.unused_flags().items():
        logger.warning(f"{flag} has no effect: {why}.")
    checkpoint, history = preflight(model_args, training_args, run_args)
    set_seed(training_args.seed)
    raw = load_data(task, data_args, model_args, seed=training_args.seed)
    return RunPlan(task, model_args, data_args, training_args, run_args, raw, checkpoint, history)


def preflight(model_args: ModelArguments, training_args, run_args: RunArguments) -> tuple[str | None, list[dict]]:
    """Check what a recipe was given that can be checked before any work, and take the output directory.

    Checks `--model_name_or_path` (a local-looking path must exist), `--resume_from_checkpoint` (`last` becomes the
    newest complete checkpoint, a folder must be complete; `training_args.resume_from_checkpoint` is set to the
    folder, as the Trainer's loggers and saved arguments record it), the loss settings of a resumed checkpoint, and
    whether training would overwrite an earlier run; the main process checks that it can write in `output_dir` and
    locks it for the rest of its life (released at the end of [`run`]). A run that does not train evaluates the model
    `output_dir` holds, if any (`model_args.model_name_or_path` is set to it; see
    [`~hf_maxsup.runner.output_dir.model_to_evaluate`]).

    Returns:
        `tuple[str | None, list[dict]]`: the checkpoint to resume from, and its loss history (see
        [`~hf_maxsup.runner.resume.loss_history`]).

    Raises:
        `ValueError`: a mistake in the arguments; the message names the fix.
        `RuntimeError`: another run holds `output_dir`.
    """
    check_model_name_or_path(model_args.model_name_or_path)
    output_dir, is_main = training_args.output_dir, training_args.process_index == 0
    checkpoint = claim_output_dir(output_dir, training_args.resume_from_checkpoint, is_main=is_main)
    training_args.resume_from_checkpoint = checkpoint
    if checkpoint is None:
        if training_args.do_train:
            refuse_to_overwrite(output_dir, run_args.overwrite_output_dir, is_main=is_main)
        elif training_args.do_eval or training_args.do_predict:
            splits = [
                split
                for split, asked in (("eval", training_args.do_eval), ("predict", training_args.do_predict))
                if asked
            ]
            given = model_args.model_name_or_path
            model_args.model_name_or_path = model_to_evaluate(output_dir, given, splits, run_args.overwrite_output_dir)
            if model_args.model_name_or_path != given:
                logger.warning(f"no --do_train: evaluating the model saved in {output_dir}.")
        return None, []
    history = loss_history(checkpoint, training_args, run_args.allow_loss_change)
    if is_main:
        drop_incomplete_checkpoints(output_dir, after=checkpoint)
    return checkpoint, history


def load_data(task: str, data_args: DataArguments, model_args: ModelArguments, seed: int = 42):
    """Load the task's data (see [`hf_maxsup.data.load_task_dataset`]), check the named columns and keep the
    examples the run uses ([`hf_maxsup.data.limit_samples`]).

    Args:
        task (`str`): `"image-classification"`, `"text-classification"` or `"translation"`.
        data_args ([`DataArguments`]), model_args ([`ModelArguments`]): the parsed arguments; the task's subclass of
            `DataArguments` names the columns it reads (`columns()`), the image task's its image folders too.
        seed (`int`): the run's seed: that of the held-out validation split and of the examples drawn at random.

    Returns:
        `datasets.DatasetDict` with `train`, `validation` and possibly `test`.
    """
    check_writable_folder(
        model_args.cache_dir or str(datasets.config.HF_DATASETS_CACHE),
        "the datasets cache",
        "set HF_DATASETS_CACHE (or HF_HOME) to a folder you can write to, or pass --cache_dir",
    )
    raw = load_task_dataset(
        task,
        data_args,
        image_folders=data_args.image_folders() if isinstance(data_args, ImageColumns) else None,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
        seed=seed,
        non_empty_columns=[column for column in data_args.columns() if column is not None],
    )
    check_columns(raw, data_args.columns())  # the text columns found in the data too
    for split, fix in (
        ("train", "--train_file (or --train_dir, --dataset_name)"),
        ("validation", "--validation_file, or --train_val_split above 0"),
    ):
        if split not in raw:
            raise ValueError(f"the data has no {split} split (it has: {', '.join(raw) or 'none'}); pass {fix}.")
    return limit_samples(raw, data_args, seed)


def data_source(data_args: DataArguments, embedded: str) -> dict:
    """The model-card arguments (`dataset`, `dataset_tags`, `dataset_args`) that name the data a run trained on.

    Args:
        data_args ([`DataArguments`]): the parsed arguments (with the image folders for the image recipe).
        embedded (`str`): the name of the embedded data, used when no source was given.
    """
    if data_args.dataset_name is not None:
        return {
            "dataset": data_args.dataset_name,
            "dataset_tags": data_args.dataset_name,
            "dataset_args": data_args.dataset_config_name,
        }
    folders = data_args.image_folders() if isinstance(data_args, ImageColumns) else {}
    # File names only: a local path means nothing to a reader of the card, and may say more than intended.
    given = [
        f"{split}: {os.path.basename(os.path.normpath(path))}"
        for sources in (data_args.data_files(), folders)
        for split, path in sources.items()
    ]
    return {"dataset": f"local data ({', '.join(given)})" if given else embedded}


def card_arguments(plan: RunPlan, embedded: str) -> dict:
    """The model-card arguments every recipe gives [`run`]: the data the run trained on ([`data_source`]), the model
    it was fine-tuned from and its task.

    Args:
        plan ([`RunPlan`]): what [`start`] settled.
        embedded (`str`): the name of the embedded data, used when no source was given.
    """
    return {
        **data_source(plan.data_args, embedded),
        "finetuned_from": plan.model_args.model_name_or_path,
        "tasks": plan.task,
    }


def tokenize(raw, preprocess, data_args: DataArguments, training_args, eval_preprocess=None):
    """Every split of `raw` through the batched `preprocess` (one of `hf_maxsup.data`'s preprocess functions), or
    the evaluation and test splits through `eval_preprocess` when given, the raw columns dropped; the main process
    first, so that the other processes read its cache (which `--overwrite_cache` recomputes).

    Returns:
        `datasets.DatasetDict`: the tokenized splits.
    """
    with training_args.main_process_first(desc="tokenization"):
        # Split by split: a test split without labels has fewer columns to remove.
        return DatasetDict(
            {
                split: data.map(
                    preprocess if split == "train" or eval_preprocess is None else eval_preprocess,
                    batched=True,
                    num_proc=data_args.preprocessing_num_workers,
                    remove_columns=data.column_names,
                    load_from_cache_file=not data_args.overwrite_cache,
                )
                for split, data in raw.items()
            }
        )


def maybe_lora(model, model_args: ModelArguments, task_type: str):
    """Wrap the model with LoRA adapters when `--use_peft` is set."""
    if not model_args.use_peft:
        return model
    return apply_lora(
        model, task_type, r=model_args.lora_r, alpha=model_args.lora_alpha, dropout=model_args.lora_dropout
    )


def reliability_diagram_writer(output_dir: str) -> Callable:
    """An `on_eval` callback for [`run`] that saves the evaluation set's reliability diagram to
    `output_dir/reliability_diagram.png` (shown in the model card).
    """

    def write(output) -> None:
        figure = reliability_diagram(output.predictions, output.label_ids, title="Evaluation set")
        figure.savefig(os.path.join(output_dir, RELIABILITY_DIAGRAM), dpi=100, bbox_inches="tight")

    return write


def build_with_shared_tokenizer(builder, training_args, checkpoint: str | None, **kwargs):
    """Call a text or translation builder of `hf_maxsup.models` so that all processes, and a resumed run, share one
    tokenizer.

    The offline defaults train their tokenizer on the data, and the trainers of 🤗 Tokenizers can give another
    vocabulary in another process. So a resumed run takes the tokenizer saved in its checkpoint; otherwise the main
    process builds first and saves its tokenizer to `output_dir` (a file system the processes share, as for
    checkpoints), and the other processes use that one.

    Args:
        builder (`Callable`): [`~hf_maxsup.models.build_text_model`] or [`~hf_maxsup.models.build_translation_model`].
        training_args: the run's arguments (`output_dir`, process index and count).
        checkpoint (`str`, *optional*): the checkpoint the run resumes ([`RunPlan.checkpoint`]).
        kwargs: the builder's arguments; `tokenizer` is set here.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: what the builder returns.
    """
    with training_args.main_process_first(local=False, desc="building the tokenizer"):
        saved = checkpoint or (training_args.output_dir if training_args.process_index > 0 else None)
        if saved is not None and os.path.isfile(os.path.join(saved, "tokenizer.json")):
            kwargs["tokenizer"] = AutoTokenizer.from_pretrained(saved)
        model, tokenizer = builder(**kwargs)
        if training_args.world_size > 1 and training_args.process_index == 0:
            tokenizer.save_pretrained(training_args.output_dir)
    return model, tokenizer


def describe_model(model) -> str:
    """The model a run trains, in words: its class, size and where its weights come from, e.g.
    `"BertForSequenceClassification (0.4M parameters), built from a config: random weights"`."""
    base = unwrap_peft(model)
    count = sum(param.numel() for param in base.parameters())
    source = getattr(base.config, "_name_or_path", "") or None
    origin = f"weights from {source}" if source else "built from a config: random weights"
    adapter = ", LoRA adapters" if base is not model else ""
    return f"{type(base).__name__} ({count / 1e6:.1f}M parameters{adapter}), {origin}"


def _log_start(trainer, card_kwargs: dict) -> None:
    """Say which model and data the run uses, before any work."""
    sizes = ", ".join(
        f"{name} {len(data)}"
        for name, data in (("train", trainer.train_dataset), ("validation", trainer.eval_dataset))
        if data
    )
    logger.info(f"model: {describe_model(trainer.accelerator.unwrap_model(trainer.model))}")
    logger.info(f"data: {card_kwargs.get('dataset')} ({sizes} examples)")


def _log_outputs(output_dir: str) -> None:
    """Say where the run left what a user looks for: the model, the metrics, the card and the figures."""
    found = {
        what: [name for name in names if os.path.isfile(os.path.join(output_dir, name))]
        for what, names in (
            ("model", WEIGHTS),
            ("metrics", ("all_results.json",)),
            ("model card", ("README.md",)),
            ("figures", (RELIABILITY_DIAGRAM,)),
            ("sacreBLEU signatures", ("sacrebleu_signatures.json",)),
        )
    }
    listed = "; ".join(f"{what}: {', '.join(names)}" for what, names in found.items() if names)
    logger.info(f"outputs in {os.path.abspath(output_dir)}: {listed or 'none'}")


def _push_last(trainer, output_dir: str, card_kwargs: dict) -> None:
    """Push once everything is on disk; a failure says that and how to push later."""
    try:
        trainer.push_to_hub(**card_kwargs)
    except HubPushError as err:
        raise HubPushError(
            f"{err}\nTraining, evaluation and prediction finished: their metrics "
            f"(all_results.json, ...) are in {output_dir}."
        ) from err.__cause__


def _train(trainer, plan: RunPlan) -> dict:
    """Train (from the plan's checkpoint when resuming), save the final model, the metrics and the state."""
    checkpoint = plan.checkpoint
    if checkpoint is not None:
        check_checkpoint_fits(trainer.model, checkpoint)
        trainer.add_callback(ScheduleLengthCheck(plan, trainer))
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    save_final_model(trainer)
    metrics = {**train_result.metrics, "train_samples": len(trainer.train_dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def _evaluate(trainer, eval_dataset, on_eval: Callable | None) -> dict:
    """Evaluate, log and save the metrics, and hand the predictions to `on_eval` on the main process."""
    # predict() rather than evaluate(): the same pass also gives the logits for on_eval.
    output = trainer.predict(eval_dataset, metric_key_prefix="eval")
    metrics = {**output.metrics, "eval_samples": len(eval_dataset)}
    trainer.log(metrics)  # into log_history, where the model card reads it; adds the eval loss components
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if on_eval is not None and trainer.is_world_process_zero():
        on_eval(output)
    return metrics


def _predict(trainer, predict_dataset) -> dict:
    output = trainer.predict(predict_dataset, metric_key_prefix="predict")
    if output.label_ids is None:
        logger.warning(f"predicted {len(predict_dataset)} examples without labels: no metrics but the run time.")
    metrics = {**output.metrics, "predict_samples": len(predict_dataset)}
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)
    return metrics


def run(trainer, plan: RunPlan, eval_dataset=None, predict_dataset=None, card_kwargs=None, on_eval=None) -> dict:
    """Train, save, evaluate, predict, write the metrics and the model card, and push last, as the flags ask.

    Logs the engine first (see [`prepare_engine`]). A failed push (`HubPushError`) comes after everything is saved
    locally.

    Args:
        trainer ([`MaxSupTrainer`] or [`MaxSupSeq2SeqTrainer`]): the configured trainer.
        plan ([`RunPlan`]): what [`start`] settled (`training_args.do_train`, `do_eval`, `do_predict`,
            `push_to_hub`, ..., the checkpoint to resume and its loss history).
        eval_dataset, predict_dataset (`datasets.Dataset`, *optional*): the sets for `--do_eval` / `--do_predict`.
        card_kwargs (`dict`, *optional*): `create_model_card` arguments (dataset name, tags, finetuned_from, ...).
        on_eval (`Callable`, *optional*): called with the `PredictionOutput` of the evaluation set, e.g. to draw a
            reliability diagram into `output_dir` before the card is written.

    Returns:
        `dict`: all metrics (train, eval, predict).
    """
    training_args, output_dir = plan.training_args, plan.training_args.output_dir
    card_kwargs = card_kwargs or {}
    # A run that only evaluates the model a finished run saved keeps that run's card: its own state knows no training.
    write_card = training_args.do_train or not saved_model(output_dir)
    prepare_engine(trainer)
    if trainer.is_world_process_zero():
        _log_start(trainer, card_kwargs)
    try:
        results = _carry_out(trainer, plan, eval_dataset, predict_dataset, card_kwargs if write_card else None, on_eval)
    except (OSError, RuntimeError) as err:
        if (full := full_disk_error(err, output_dir, _going_on(output_dir, training_args.do_train))) is None:
            raise
        raise full from err
    if training_args.push_to_hub:
        _push_last(trainer, output_dir, _card(card_kwargs, plan))
    if trainer.is_world_process_zero():
        _log_outputs(output_dir)
    release_output_dir(output_dir)
    return results


def _going_on(output_dir: str, trains: bool) -> str:
    """How a run that stopped on a full disk goes on once there is room."""
    checkpoint = last_complete_checkpoint(output_dir, log=lambda _: None) if trains else None
    if checkpoint is not None:
        return f"run again with --resume_from_checkpoint last: it continues from {checkpoint}"
    return "run again" + (" with --overwrite_output_dir (no checkpoint was saved in full)" if trains else "")


def _carry_out(trainer, plan: RunPlan, eval_dataset, predict_dataset, card_kwargs: dict | None, on_eval) -> dict:
    """The work of [`run`]: the card (unless `card_kwargs` is `None`), train, evaluate, predict, the card again."""
    training_args, results = plan.training_args, {}
    if card_kwargs is not None:
        trainer.create_model_card(**_card(card_kwargs, plan))
    if training_args.do_train:
        results.update(_train(trainer, plan))
    if training_args.do_eval and eval_dataset is not None:
        results.update(_evaluate(trainer, eval_dataset, on_eval))
    if training_args.do_predict and predict_dataset is not None:
        results.update(_predict(trainer, predict_dataset))
    if card_kwargs is not None:
        trainer.create_model_card(**_card(card_kwargs, plan))
    return results


def _card(card_kwargs: dict, plan: RunPlan) -> dict:
    """The model card's arguments, with the loss history as it stands (a resumed run may add to it as it starts)."""
    return {**card_kwargs, "loss_history": plan.loss_history or None}
