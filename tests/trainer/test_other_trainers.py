"""`MaxSupLossFunc` in Trainers that are not ours: trl's `SFTTrainer` (completion-only loss) and a plain
`transformers.Trainer` with `compute_loss_func`: the loss trains, alpha follows its schedule, and the components are
logged."""

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments

from hf_maxsup import MaxSupLossFunc

WORDS = ["<pad>", "<eos>", "<unk>", *"what is one two three four five plus equals the answer".split()]
COMMON = dict(
    report_to=[],
    use_cpu=True,
    seed=0,
    save_strategy="no",
    disable_tqdm=True,
    max_steps=4,
    logging_steps=1,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
)


def tiny_tokenizer():
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(WORDS),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=1,
        )
    )


def prompt_completion(n=16):
    numbers = "one two three four five".split()
    return Dataset.from_list(
        [
            {
                "prompt": f"what is {numbers[i % 5]} plus {numbers[(i + 1) % 5]}",
                "completion": f" the answer is {numbers[(i + 2) % 5]}",
            }
            for i in range(n)
        ]
    )


def check_alpha_and_components(log_history, alpha_start=0.1, alpha_end=0.2, steps=4):
    train_logs = [entry for entry in log_history if "loss" in entry]
    assert len(train_logs) == steps
    for entry in train_logs:
        assert {"ce", "reg", "alpha"} <= set(entry), entry
        # alpha of the step that ends the window: the linear schedule at (step - 1) / steps
        expected = alpha_start + (alpha_end - alpha_start) * (entry["step"] - 1) / steps
        assert entry["alpha"] == pytest.approx(expected, abs=1e-6)
    return train_logs


class RecordingLoss(MaxSupLossFunc):
    """Keeps the labels the Trainer passes to the loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = []

    def __call__(self, outputs, labels, num_items_in_batch=None):
        self.labels.append(labels.clone())
        return super().__call__(outputs, labels, num_items_in_batch)


def test_sft_trainer_with_completion_only_loss(tmp_path):
    trl = pytest.importorskip("trl")
    loss_fn = RecordingLoss("maxsup", alpha=0.1, alpha_end=0.2, shift_labels=True)
    args = trl.SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=32, **COMMON)
    trainer = trl.SFTTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=prompt_completion(),
        processing_class=tiny_tokenizer(),
        compute_loss_func=loss_fn,
        callbacks=[loss_fn],
    )
    trainer.train()
    train_logs = check_alpha_and_components(trainer.state.log_history)
    # completion only: the prompt's tokens (5 words) are masked in the labels the loss receives
    assert loss_fn.labels and all((labels[:, :5] == -100).all() for labels in loss_fn.labels)
    assert all(
        entry["loss"] == pytest.approx(entry["ce"] + entry["alpha"] * entry["reg"], rel=1e-4) for entry in train_logs
    )


def test_plain_trainer_with_compute_loss_func(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = [tokenizer(f"{row['prompt']}{row['completion']}")["input_ids"] for row in prompt_completion()]
    data = Dataset.from_list([{"input_ids": ids, "labels": ids} for ids in rows])
    loss_fn = MaxSupLossFunc("maxsup", alpha=0.1, alpha_end=0.2, shift_labels=True)
    trainer = Trainer(
        model=tiny_llama(),
        args=TrainingArguments(output_dir=str(tmp_path), **COMMON),
        train_dataset=data,
        compute_loss_func=loss_fn,
        callbacks=[loss_fn],
    )
    trainer.train()
    check_alpha_and_components(trainer.state.log_history)
    metrics = trainer.evaluate(data)
    assert {"eval_ce", "eval_reg", "eval_alpha"} <= set(metrics) & set(trainer.state.log_history[-1])
