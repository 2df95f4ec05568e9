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
`translation` column of `{"en": ..., "fr": ...}` dicts), and `--source_lang/--target_lang`. It takes the flags of
transformers' `run_translation.py`; `--val_max_target_length` cuts the evaluation and test references.
Metrics: sacreBLEU BLEU and chrF of the generations (with --predict_with_generate), and `eval_loss`, the token-level
NLL of the references.

`--compare` trains ce, ls and maxsup side by side (`hf-maxsup compare`) and reports BLEU, chrF, the references' NLL
and the token-level ECE on the test split, with the claims of Müller et al. 2019.
"""

import json
import os

from hf_maxsup.arguments import TranslationDataArguments, TranslationModelArguments
from hf_maxsup.cli import run_recipe

# The recipe's model and data flags (with the loss flags, those its short --help lists).
ARGUMENTS = (TranslationModelArguments, TranslationDataArguments)


def check_languages(pairs, data_args) -> None:
    """Stop before any work when a language of `--source_lang` / `--target_lang` is not in the translation column."""
    missing = set(data_args.language_keys()) - set(pairs[0])
    if missing:
        raise ValueError(
            f"language(s) {sorted(missing)} (--source_lang/--target_lang) not in the translation column; "
            f"it has: {', '.join(sorted(pairs[0]))}."
        )


def set_generation(training_args, data_args) -> None:
    """run_translation.py's generation settings: `--generation_max_length`, else `--val_max_target_length` (itself
    `--max_target_length` by default); `--num_beams` when given, else `--generation_num_beams`."""
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.eval_target_length()
    if data_args.num_beams is not None:
        training_args.generation_num_beams = data_args.num_beams


def signature_writer(compute_metrics, output_dir: str):
    """An `on_eval` callback that prints the sacreBLEU signatures and saves them to `sacrebleu_signatures.json`."""

    def write(_):
        if compute_metrics is not None and compute_metrics.signatures:
            print(f"sacreBLEU signatures: {compute_metrics.signatures}")
            with open(os.path.join(output_dir, "sacrebleu_signatures.json"), "w") as f:
                json.dump(compute_metrics.signatures, f, indent=2)

    return write


def main():
    # Imported here, not at the top: `--help` answers before they load torch and transformers (seconds).
    from transformers import DataCollatorForSeq2Seq

    from hf_maxsup import MaxSupSeq2SeqTrainer, MaxSupSeq2SeqTrainingArguments
    from hf_maxsup.data import translation_preprocess_function
    from hf_maxsup.metrics import translation_compute_metrics
    from hf_maxsup.models import build_translation_model, fit_to_model
    from hf_maxsup.runner import build_with_shared_tokenizer, card_arguments, maybe_lora, run, start, tokenize

    plan = start("translation", *ARGUMENTS, MaxSupSeq2SeqTrainingArguments)
    model_args, data_args, training_args = plan.model_args, plan.data_args, plan.training_args
    pairs = plan.raw["train"][data_args.translation_column_name]
    check_languages(pairs, data_args)
    source_key, target_key = data_args.language_keys()
    model, tokenizer = build_with_shared_tokenizer(
        build_translation_model,
        training_args,
        plan.checkpoint,
        model_name_or_path=model_args.model_name_or_path,
        train_pairs=pairs,
        source_lang=source_key,
        target_lang=target_key,
        vocab_size=model_args.vocab_size,
        d_model=model_args.model_d_model,
        num_layers=model_args.model_layers,
        **model_args.pretrained_kwargs(),
    )
    model = maybe_lora(model, model_args, "translation")
    fit_to_model(model, tokenizer, data_args, data_args.forced_bos_token)
    set_generation(training_args, data_args)
    ignore_pad = data_args.ignore_pad_token_for_loss
    train_preprocess, eval_preprocess = (
        translation_preprocess_function(
            tokenizer,
            data_args,
            data_args.pad_to_max_length,
            evaluation=evaluation,
            ignore_pad_token_for_loss=ignore_pad,
        )
        for evaluation in (False, True)  # the evaluation and test references are cut at --val_max_target_length
    )
    tokenized = tokenize(plan.raw, train_preprocess, data_args, training_args, eval_preprocess=eval_preprocess)
    compute_metrics = translation_compute_metrics(tokenizer) if training_args.predict_with_generate else None
    trainer = MaxSupSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, model=model, label_pad_token_id=-100 if ignore_pad else tokenizer.pad_token_id
        ),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    pair = f"{data_args.source_lang}-{data_args.target_lang}"
    run(
        trainer,
        plan,
        eval_dataset=tokenized["validation"],
        predict_dataset=tokenized.get("test"),
        card_kwargs={
            **card_arguments(plan, f"bible {pair} (hf_maxsup embedded subset)"),
            "language": [data_args.source_lang, data_args.target_lang],
        },
        on_eval=signature_writer(compute_metrics, training_args.output_dir),
    )


if __name__ == "__main__":
    run_recipe(main, __file__, ARGUMENTS)
