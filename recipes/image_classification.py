#!/usr/bin/env python
"""Fine-tune or train an image classifier with cross-entropy, label smoothing or MaxSup.

    python recipes/image_classification.py --loss maxsup --do_train --do_eval --output_dir runs/fmnist-maxsup

Without a dataset argument it trains on the embedded Fashion-MNIST subset with a small ConvNeXt built from a config,
offline. Your data: `--dataset_name` (Hub), `--train_file/--validation_file` (csv/json/parquet with an image path or
bytes column) or `--train_dir/--validation_dir` (image folders `<dir>/<label>/<image>`). It takes the flags of
transformers' `run_image_classification.py`; as that script, it draws `--max_train_samples` / `--max_eval_samples`
at random with `--seed`.
"""

from hf_maxsup.arguments import ImageDataArguments, ImageModelArguments
from hf_maxsup.cli import run_recipe

# The recipe's model and data flags (with the loss flags, those its short --help lists).
ARGUMENTS = (ImageModelArguments, ImageDataArguments)


def main():
    # Imported here, not at the top: `--help` answers before they load torch and transformers (seconds).
    from transformers import default_data_collator

    from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments, runner
    from hf_maxsup.data import image_transform
    from hf_maxsup.metrics import classification_compute_metrics
    from hf_maxsup.models import build_image_model

    plan = runner.start("image-classification", *ARGUMENTS, MaxSupTrainingArguments)
    model_args, data_args, training_args = plan.model_args, plan.data_args, plan.training_args
    raw, labels = runner.labelled_data(plan)
    model, image_processor = build_image_model(
        labels,
        model_args.model_name_or_path,
        architecture=model_args.model_architecture,
        **model_args.pretrained_kwargs(),
    )
    model = runner.maybe_lora(model, model_args, "image-classification")

    def transform(augment, strong_augment=False):
        columns = (data_args.image_column_name, data_args.label_column_name)
        return image_transform(image_processor, *columns, augment, strong_augment)

    train = raw["train"].with_transform(transform(data_args.augment, data_args.strong_augment))
    evaluation = raw["validation"].with_transform(transform(False))
    test = raw["test"].with_transform(transform(False)) if "test" in raw else None
    training_args.remove_unused_columns = False  # the transforms need the raw image column
    trainer = MaxSupTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=default_data_collator,
        processing_class=image_processor,
        compute_metrics=classification_compute_metrics(),
    )
    runner.run(
        trainer,
        plan,
        eval_dataset=evaluation,
        predict_dataset=test,
        card_kwargs=runner.card_arguments(plan, "fashion_mnist (hf_maxsup embedded subset)"),
        on_eval=runner.reliability_diagram_writer(training_args.output_dir),
    )


if __name__ == "__main__":
    run_recipe(main, __file__, ARGUMENTS)
