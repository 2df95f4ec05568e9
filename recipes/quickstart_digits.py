"""Quickstart: train a small ViT on scikit-learn's digits with MaxSup, in about a minute on 2 CPU cores.

    python recipes/quickstart_digits.py --loss maxsup --output_dir runs/digits

The digits (1,797 8x8 handwritten digits, bundled with scikit-learn, no download) are split 80/20 with a fixed seed.
This is the smallest end-to-end use of `MaxSupTrainer`; the task recipes (`image_classification.py`, ...) are the full
scripts.
"""

import argparse

import numpy as np
import torch
from datasets import Dataset
from transformers import ViTConfig, ViTForImageClassification

from hf_maxsup import LOSSES, MaxSupTrainer, MaxSupTrainingArguments


def digits_datasets(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images.astype(np.float32) / 16.0 - 0.5) / 0.5  # to [-1, 1]
    data = Dataset.from_dict({"pixel_values": pixels[:, None], "labels": digits.target}).with_format("torch")
    return data.train_test_split(test_size=0.2, seed=seed)


def build_model(seed: int = 0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
    )
    return ViTForImageClassification(config)


def train(output_dir: str, loss: str = "maxsup", epochs: float = 10, seed: int = 0, **overrides):
    """Train and evaluate; returns the trainer and its evaluation metrics."""
    splits = digits_datasets(seed)
    args = MaxSupTrainingArguments(
        output_dir=output_dir,
        loss=loss,
        num_train_epochs=epochs,
        per_device_train_batch_size=64,
        learning_rate=3e-3,
        warmup_steps=10,
        weight_decay=0.05,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=True,
        **overrides,
    )

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    trainer = MaxSupTrainer(
        model=build_model(seed),
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["test"],
        compute_metrics=accuracy,
    )
    trainer.train()
    return trainer, trainer.evaluate()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", choices=list(LOSSES), default="maxsup")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--output_dir", default="runs/digits")
    args = parser.parse_args()
    _, metrics = train(args.output_dir, args.loss, args.epochs)
    print(f"loss={args.loss}  test accuracy={metrics['eval_accuracy']:.4f}  test NLL={metrics['eval_ce']:.4f}")


if __name__ == "__main__":
    main()
