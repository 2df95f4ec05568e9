"""A tiny training run, launched as a script (also under `accelerate launch`): it trains a tiny token classifier and
writes the final parameters and the logged losses to `--output_dir`, so that runs with different process counts can
be compared. With `--save` it saves the model and its card as the recipes do instead of the parameters: under ZeRO-3
and FSDP no process holds them all, and the saved model is what a user gets. `tests/` must be on `PYTHONPATH`
(`_env.subprocess_env` puts it there) for `_tiny`.
"""

import argparse
import json
import logging
import os

import torch
from _tiny import collate, tiny_bert, tiny_dataset

from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments
from hf_maxsup.cli import end_process_group
from hf_maxsup.runner import prepare_engine


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--loss", default="maxsup")
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--max_steps", type=int, default=3)
    parser.add_argument("--deepspeed", help="DeepSpeed JSON config, as the recipes take it.")
    parser.add_argument(
        "--accelerator_config", help="JSON file of accelerate settings (see tests/distributed/fsdp_on_cpu.py)."
    )
    parser.add_argument("--save", action="store_true", help="Save the model and its card, not params.pt.")
    parser.add_argument("--teacher", help="Distil from the token classifier saved in this folder.")
    # SGD: Adam would amplify rounding noise in parameters whose true gradient is 0 (e.g. attention key biases).
    args = parser.parse_args()
    # The engine line is logged at INFO, shown by the recipes' logging set-up: the same here.
    logging.basicConfig()
    logging.getLogger("hf_maxsup").setLevel(logging.INFO)
    training_args = MaxSupTrainingArguments(
        output_dir=args.output_dir,
        loss=args.loss,
        per_device_train_batch_size=args.per_device_train_batch_size,
        max_steps=args.max_steps,
        learning_rate=0.5,
        optim="sgd",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        max_grad_norm=0.0,
        dataloader_drop_last=True,
        deepspeed=args.deepspeed,
        accelerator_config=args.accelerator_config,
        teacher_model_name_or_path=args.teacher,
    )
    trainer = MaxSupTrainer(
        model=tiny_bert(token_level=True),
        args=training_args,
        train_dataset=tiny_dataset(64, task="token"),
        data_collator=collate,
    )
    prepare_engine(trainer)
    trainer.train()
    if args.save:
        trainer.save_model()
    elif trainer.is_world_process_zero():
        torch.save(
            {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            os.path.join(args.output_dir, "params.pt"),
        )
    if trainer.is_world_process_zero():
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        with open(os.path.join(args.output_dir, "logs.json"), "w") as f:
            json.dump(logs, f)
    end_process_group()  # as the recipes end (cli.run_recipe)


if __name__ == "__main__":
    main()
