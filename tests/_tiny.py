"""Tiny models and data shared by the trainer tests, with their arguments (`COMMON`), a gradient capture
(`GradCapture`) and the gradient comparison (`max_relative_error`). `distributed/tiny_run.py` trains with them in
launched processes."""

import torch
from datasets import Dataset
from transformers import (
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2LMHeadModel,
    MarianMTModel,
    TrainerCallback,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB, PAD, EOS = 50, 0, 1
# Marian's special tokens, which every tiny seq2seq model shares: decoding starts from PAD.
SEQ2SEQ_TOKENS = {"pad_token_id": PAD, "eos_token_id": EOS, "decoder_start_token_id": PAD}
# Encoder sizes in the BERT naming (BERT, and ViT, which follows it); the number of layers is each model's.
ENCODER_SIZES = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37}
# Encoder-decoder sizes in the BART naming (Marian, and the other encoder-decoders of hf_maxsup.heads).
ENCODER_DECODER_SIZES = {
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "max_position_embeddings": 64,
}

# The trainer tests' arguments: no clipping, no saving, no reporting, so that only the loss sets the gradients.
COMMON = dict(report_to=[], use_cpu=True, seed=0, max_grad_norm=0.0, save_strategy="no", disable_tqdm=True)


class GradCapture(TrainerCallback):
    """Keeps the accumulated gradients seen just before the optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def tiny_model(model_class, seed=0, **config):
    """A `model_class` of vocabulary `VOCAB` with these config values, its weights drawn after seeding with `seed`."""
    torch.manual_seed(seed)
    return model_class(model_class.config_class(vocab_size=VOCAB, **config))


def tiny_bert(num_labels=4, token_level=False, seed=0):
    return tiny_model(
        BertForTokenClassification if token_level else BertForSequenceClassification,
        seed,
        **ENCODER_SIZES,
        num_hidden_layers=2,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
    )


def tiny_vit(seed=0, **config):
    """A one-layer ViT classifier with these config values (`image_size`, `patch_size`, `num_channels`,
    `num_labels`), its weights drawn after seeding with `seed`."""
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**ENCODER_SIZES, num_hidden_layers=1, **config))


def tiny_gpt2(seed=0):
    """A one-layer GPT-2 language model without dropout."""
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return tiny_model(GPT2LMHeadModel, seed, n_embd=32, n_layer=1, n_head=2, n_positions=32, **no_dropout)


def tiny_marian(seed=0):
    no_dropout = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
    return tiny_model(MarianMTModel, seed, **ENCODER_DECODER_SIZES, **no_dropout, **SEQ2SEQ_TOKENS)


def tiny_dataset(n=32, num_labels=4, task="sequence", seed=0):
    """Random token sequences of varying length; labels per sequence, per token, or as target sequences."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 10, (1,), generator=g))
        ids = torch.randint(2, VOCAB, (length,), generator=g).tolist()
        if task == "sequence":
            labels = int(torch.randint(0, num_labels, (1,), generator=g))
        elif task == "token":
            labels = torch.randint(0, num_labels, (length,), generator=g).tolist()
        else:  # seq2seq: a target sequence of its own length, ending with eos
            labels = torch.randint(2, VOCAB, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g).tolist()
            labels.append(1)
        rows.append({"input_ids": ids, "labels": labels})
    return Dataset.from_list(rows)


def collate(batch):
    """Pads inputs with PAD and list-valued labels with -100; no decoder inputs (the trainer derives them)."""
    width = max(len(row["input_ids"]) for row in batch)
    ids = torch.tensor([row["input_ids"] + [PAD] * (width - len(row["input_ids"])) for row in batch])
    out = {"input_ids": ids, "attention_mask": (ids != PAD).long()}
    if isinstance(batch[0]["labels"], list):
        width = max(len(row["labels"]) for row in batch)
        out["labels"] = torch.tensor([row["labels"] + [-100] * (width - len(row["labels"])) for row in batch])
    else:
        out["labels"] = torch.tensor([row["labels"] for row in batch])
    return out


def max_relative_error(a, b):
    """The largest relative difference (by norm) of the gradients `a` and `b`, over the names of `b` not near 0."""
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-12)).item() for n in b if b[n].norm() > 1e-8)
