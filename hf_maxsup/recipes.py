"""What the three recipe scripts share: their arguments, parsing and the train / evaluate / predict / push flow.

The scripts in `recipes/` only load their task's data and model and call [`run`].
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import AutoTokenizer, HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

from .data import check_columns, load_task_dataset
from .models import apply_lora

__all__ = [
    "DataArguments", "ModelArguments", "build_with_shared_tokenizer", "load_data", "parse_args",
    "reliability_diagram_writer", "run",
]

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to fine-tune (or, without `model_name_or_path`, the offline default built from a config)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local directory or Hub id of a pretrained model. Default: the task's offline model."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})


@dataclass
class DataArguments:
    """Where the data comes from: a Hub dataset, local files, or (nothing given) the embedded real data."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the Hub (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of that dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (csv, json, jsonl, parquet)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (for --do_predict)."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Share of train held out for validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})


def parse_args(*dataclass_types):
    """Parse the command line into the given dataclasses, or a single `.json` / `.yaml` config file holding them all.

    Also sets up logging as the transformers examples do.
    """
    parser = HfArgumentParser(dataclass_types)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    elif len(sys.argv) == 2 and sys.argv[1].endswith((".yaml", ".yml")):
        parsed = parser.parse_yaml_file(os.path.abspath(sys.argv[1]))
    else:
        parsed = parser.parse_args_into_dataclasses()
    training_args = parsed[-1]
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    return parsed


def load_data(task: str, data_args: DataArguments, model_args: ModelArguments, columns: dict, seed: int = 42,
              **source):
    """Load the task's data (see [`hf_maxsup.data.load_task_dataset`]), check the named columns and truncate splits.

    Args:
        task (`str`): `"image-classification"`, `"text-classification"` or `"translation"`.
        data_args ([`DataArguments`]), model_args ([`ModelArguments`]): the parsed arguments.
        columns (`dict[str, str]`): column name -> the flag that named it, for errors that list the columns.
        **source: extra sources of the task (`train_dir`, `validation_dir` for image folders).

    Returns:
        `datasets.DatasetDict` with `train`, `validation` and possibly `test`.
    """
    raw = load_task_dataset(
        task, dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file, validation_file=data_args.validation_file, test_file=data_args.test_file,
        cache_dir=model_args.cache_dir, token=model_args.token,
        validation_split_percentage=data_args.validation_split_percentage, seed=seed, **source,
    )
    check_columns(raw, columns)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    for split, limit in limits.items():
        if split in raw and limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


def maybe_lora(model, model_args: ModelArguments, task_type: str):
    """Wrap the model with LoRA adapters when `--use_peft` is set."""
    if not model_args.use_peft:
        return model
    return apply_lora(model, task_type, r=model_args.lora_r, alpha=model_args.lora_alpha,
                      dropout=model_args.lora_dropout)


def reliability_diagram_writer(output_dir: str):
    """An `on_eval` callback for [`run`] that saves the evaluation set's reliability diagram to
    `output_dir/reliability_diagram.png` (shown in the model card).
    """

    def write(output) -> None:
        from .analysis import reliability_diagram

        figure = reliability_diagram(output.predictions, output.label_ids, title="Evaluation set")
        figure.savefig(os.path.join(output_dir, "reliability_diagram.png"), dpi=100, bbox_inches="tight")

    return write


def _resume_checkpoint(training_args) -> str | None:
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "True", "true"):
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no checkpoint-* "
                             f"folder in {training_args.output_dir}.")
    elif resume is not None and not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume}: no such directory. Give a checkpoint-* folder of an "
                         "earlier run, or 'last' for the newest one in --output_dir.")
    elif resume is None and training_args.do_train and os.path.isdir(training_args.output_dir):
        last = get_last_checkpoint(training_args.output_dir)
        if last is not None:
            logger.warning(f"{training_args.output_dir} holds {last}, which this run will not overwrite but may "
                           "mix with: pass --resume_from_checkpoint last to continue it, or another --output_dir.")
    return resume


def build_with_shared_tokenizer(builder, training_args, **kwargs):
    """Call a text or translation builder of `hf_maxsup.models` so that all processes, and a resumed run, share one
    tokenizer.

    The offline defaults train their tokenizer on the data, and the trainers of 🤗 Tokenizers can give another
    vocabulary in another process. So a resumed run takes the tokenizer saved in its checkpoint; otherwise the main
    process builds first and saves its tokenizer to `output_dir` (a file system the processes share, as for
    checkpoints), and the other processes use that one.

    Args:
        builder (`Callable`): [`~hf_maxsup.models.build_text_model`] or [`~hf_maxsup.models.build_translation_model`].
        training_args: the run's arguments (`resume_from_checkpoint`, `output_dir`, process index and count).
        kwargs: the builder's arguments; `tokenizer` is set here.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: what the builder returns.
    """
    checkpoint = training_args.resume_from_checkpoint and _resume_checkpoint(training_args)
    with training_args.main_process_first(local=False, desc="building the tokenizer"):
        saved = checkpoint or (training_args.output_dir if training_args.process_index > 0 else None)
        if saved is not None and os.path.isfile(os.path.join(saved, "tokenizer.json")):
            kwargs["tokenizer"] = AutoTokenizer.from_pretrained(saved)
        model, tokenizer = builder(**kwargs)
        if training_args.world_size > 1 and training_args.process_index == 0:
            tokenizer.save_pretrained(training_args.output_dir)
    return model, tokenizer


def run(trainer, training_args, eval_dataset=None, predict_dataset=None, card_kwargs=None, on_eval=None) -> dict:
    """Train, evaluate, predict, write the metrics and the model card, and push, as the flags ask.

    Args:
        trainer ([`MaxSupTrainer`] or [`MaxSupSeq2SeqTrainer`]): the configured trainer.
        training_args: its arguments (`do_train`, `do_eval`, `do_predict`, `push_to_hub`, ...).
        eval_dataset, predict_dataset (`datasets.Dataset`, *optional*): the sets for `--do_eval` / `--do_predict`.
        card_kwargs (`dict`, *optional*): `create_model_card` arguments (dataset name, tags, finetuned_from, ...).
        on_eval (`Callable`, *optional*): called with the `PredictionOutput` of the evaluation set, e.g. to draw a
            reliability diagram into `output_dir` before the card is written.

    Returns:
        `dict`: all metrics (train, eval, predict).
    """
    results = {}
    trainer.create_model_card(**(card_kwargs or {}))
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=_resume_checkpoint(training_args))
        trainer.save_model()
        metrics = {**train_result.metrics, "train_samples": len(trainer.train_dataset)}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    if training_args.do_eval and eval_dataset is not None:
        # predict() rather than evaluate(): the same pass also gives the logits for on_eval.
        output = trainer.predict(eval_dataset, metric_key_prefix="eval")
        metrics = {**output.metrics, "eval_samples": len(eval_dataset)}
        trainer.log(metrics)  # into log_history, where the model card reads it; adds the eval loss components
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if on_eval is not None and trainer.is_world_process_zero():
            on_eval(output)
        results.update(metrics)
    if training_args.do_predict and predict_dataset is not None:
        output = trainer.predict(predict_dataset, metric_key_prefix="predict")
        metrics = {**output.metrics, "predict_samples": len(predict_dataset)}
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        results.update(metrics)
    trainer.create_model_card(**(card_kwargs or {}))
    if training_args.push_to_hub:
        trainer.push_to_hub(**(card_kwargs or {}))
    return results
