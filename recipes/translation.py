#!/usr/bin/env python
"""Train or fine-tune a translation model with cross-entropy, label smoothing or MaxSup.

    python recipes/translation.py --loss maxsup --do_train --do_eval --do_predict --predict_with_generate \
        --generation_num_beams 4 --num_train_epochs 8 --learning_rate 3e-4 --adam_beta2 0.98 --warmup_steps 300 \
        --lr_scheduler_type cosine --per_device_train_batch_size 32 --train_sampling_strategy group_by_length \
        --output_dir runs/bible-maxsup

Without a dataset argument it trains on the embedded English-French Bible verses (KJV / Louis Segond 1910, public
domain) with a small Marian built from a config and a BPE tokenizer trained on the data, offline. From scratch, this
post-LayerNorm Marian wants the usual Transformer optimiser settings (Adam beta2 0.98, a learning rate near 3e-4):
with 7e-4 and beta2 0.999 its decoder learns a French language model and ignores the source (BLEU 0.3 after 5
epochs). Your data:
`--dataset_name` (e.g. wmt16 with --dataset_config_name ro-en) or `--train_file/--validation_file` (json lines with a
`translation` column of `{"en": ..., "fr": ...}` dicts), and `--source_lang/--target_lang`.
Metrics: sacreBLEU BLEU and chrF of the generations (with --predict_with_generate), and `eval_loss`, the token-level
NLL of the references.

`--compare` trains ce, ls and maxsup side by side (`hf-maxsup compare`) and reports BLEU, chrF, the references' NLL
and the token-level ECE on the test split, with the claims of Müller et al. 2019.
"""

import json
import os
import sys
from dataclasses import dataclass, field

from transformers import DataCollatorForSeq2Seq, set_seed

from hf_maxsup import MaxSupSeq2SeqTrainer, MaxSupSeq2SeqTrainingArguments
from hf_maxsup.cli import compare_from_recipe
from hf_maxsup.data import translation_preprocess_function
from hf_maxsup.metrics import translation_compute_metrics
from hf_maxsup.models import build_translation_model
from hf_maxsup.recipes import (
    DataArguments,
    ModelArguments,
    RunArguments,
    build_with_shared_tokenizer,
    data_source,
    load_data,
    maybe_lora,
    parse_args,
    preflight,
    run,
)


@dataclass
class TranslationModelArguments(ModelArguments):
    model_d_model: int = field(default=256, metadata={"help": "Width of the from-scratch Marian (no checkpoint)."})
    model_layers: int = field(default=3, metadata={"help": "Encoder and decoder layers of the from-scratch Marian."})
    vocab_size: int = field(default=8000, metadata={"help": "BPE vocabulary of the from-scratch Marian."})


@dataclass
class TranslationDataArguments(DataArguments):
    source_lang: str = field(default="en", metadata={"help": "Source language key in the translation column."})
    target_lang: str = field(default="fr", metadata={"help": "Target language key in the translation column."})
    translation_column_name: str = field(default="translation", metadata={"help": "Column of {lang: text} dicts."})
    source_prefix: str = field(default="", metadata={"help": "Prefix of every source, e.g. for T5."})
    max_source_length: int = field(default=128, metadata={"help": "Longer sources are truncated."})
    max_target_length: int = field(default=128, metadata={"help": "Longer targets are truncated."})
    val_max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest generation in evaluation and prediction (run_translation.py's name); sets "
            "--generation_max_length, which defaults to --max_target_length."
        },
    )
    num_beams: int | None = field(
        default=None,
        metadata={
            "help": "Beams of the generation in evaluation and prediction (run_translation.py's name); sets "
            "--generation_num_beams."
        },
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad sources and targets to --max_source_length / --max_target_length; otherwise each batch "
            "is padded to its longest sequence."
        },
    )


def main():
    model_args, data_args, training_args, run_args = parse_args(
        TranslationModelArguments, TranslationDataArguments, MaxSupSeq2SeqTrainingArguments, RunArguments
    )
    preflight(model_args, training_args, run_args)
    set_seed(training_args.seed)
    raw = load_data(
        "translation",
        data_args,
        model_args,
        seed=training_args.seed,
        columns={data_args.translation_column_name: "--translation_column_name"},
    )
    pairs = raw["train"][data_args.translation_column_name]
    missing = {data_args.source_lang, data_args.target_lang} - set(pairs[0])
    if missing:
        raise ValueError(
            f"language(s) {sorted(missing)} (--source_lang/--target_lang) not in the translation column; "
            f"it has: {', '.join(sorted(pairs[0]))}."
        )
    model, tokenizer = build_with_shared_tokenizer(
        build_translation_model,
        training_args,
        model_name_or_path=model_args.model_name_or_path,
        train_pairs=pairs,
        source_lang=data_args.source_lang,
        target_lang=data_args.target_lang,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
        vocab_size=model_args.vocab_size,
        d_model=model_args.model_d_model,
        num_layers=model_args.model_layers,
    )
    model = maybe_lora(model, model_args, "translation")
    if data_args.val_max_target_length is not None:
        training_args.generation_max_length = data_args.val_max_target_length
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    if data_args.num_beams is not None:
        training_args.generation_num_beams = data_args.num_beams
    with training_args.main_process_first(desc="tokenization"):
        tokenized = raw.map(
            translation_preprocess_function(
                tokenizer,
                data_args.source_lang,
                data_args.target_lang,
                data_args.source_prefix,
                data_args.max_source_length,
                data_args.max_target_length,
                data_args.translation_column_name,
                data_args.pad_to_max_length,
            ),
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=raw["train"].column_names,
        )
    compute_metrics = translation_compute_metrics(tokenizer) if training_args.predict_with_generate else None
    trainer = MaxSupSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )

    def save_signatures(_):
        if compute_metrics is not None and compute_metrics.signatures:
            print(f"sacreBLEU signatures: {compute_metrics.signatures}")
            with open(os.path.join(training_args.output_dir, "sacrebleu_signatures.json"), "w") as f:
                json.dump(compute_metrics.signatures, f, indent=2)

    pair = f"{data_args.source_lang}-{data_args.target_lang}"
    run(
        trainer,
        training_args,
        eval_dataset=tokenized["validation"],
        predict_dataset=tokenized.get("test"),
        card_kwargs={
            **data_source(data_args, f"bible {pair} (hf_maxsup embedded subset)"),
            "finetuned_from": model_args.model_name_or_path,
            "tasks": "translation",
            "language": [data_args.source_lang, data_args.target_lang],
        },
        on_eval=save_signatures,
    )


if __name__ == "__main__":
    if "--compare" in sys.argv:  # train ce, ls and maxsup side by side and write a report: hf-maxsup compare
        sys.exit(compare_from_recipe(__file__))
    main()
