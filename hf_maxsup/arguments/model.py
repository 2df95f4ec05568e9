"""Which model a recipe trains: a pretrained one (`--model_name_or_path`, loaded as the transformers examples load
it) or the task's offline default built from a config, its tokenizer, and LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from .source import chain_post_init

__all__ = [
    "HubArguments",
    "ImageModelArguments",
    "ModelArguments",
    "TextModelArguments",
    "TokenizerArguments",
    "TranslationModelArguments",
]


@dataclass
class HubArguments:
    """How the Hub is reached: what the recipes and the reports (`hf-maxsup analyze`) share."""

    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})


@dataclass
class ModelArguments(HubArguments):
    """Which model to fine-tune (or, without `model_name_or_path`, the offline default built from a config)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Local directory or Hub id of a pretrained model. Default: the task's offline model, built "
            "from a config (the examples' default is a Hub model)."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Pretrained config name or path, if not that of --model_name_or_path."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Version of the model on the Hub: a branch, tag or commit id."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the modeling code of a Hub repository (only for repositories you trust)."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "Load a pretrained model whose classification head has another number of labels than the data "
            "(the head is then trained from scratch); without it such a model is refused."
        },
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})

    # The flags that only change how a pretrained model is loaded.
    PRETRAINED_ONLY: ClassVar[tuple[str, ...]] = (
        "config_name",
        "model_revision",
        "trust_remote_code",
        "ignore_mismatched_sizes",
    )

    def pretrained_kwargs(self) -> dict:
        """The keywords of `hf_maxsup.models`' builders that load the pretrained model as the flags say: cache,
        token, revision, remote code, config, head, and the tokenizer or image processor of the task's arguments."""
        own = {name: getattr(self, name) for name in ("tokenizer_name", "image_processor_name") if hasattr(self, name)}
        return {
            "cache_dir": self.cache_dir,
            "token": self.token,
            "revision": self.model_revision,
            "trust_remote_code": self.trust_remote_code,
            "config_name": self.config_name,
            "ignore_mismatched_sizes": self.ignore_mismatched_sizes,
            **own,
        }

    def unused_flags(self) -> dict[str, str]:
        """The flags given that change nothing in this run, each with why: those of a pretrained model without
        `--model_name_or_path`."""
        if self.model_name_or_path is not None:
            return {}
        why = "without --model_name_or_path, the recipe builds its offline default model from a config"
        return {
            f"--{spec.name}": why
            for spec in fields(self)
            if spec.name in self.PRETRAINED_ONLY and getattr(self, spec.name) != spec.default
        }


@dataclass
class TokenizerArguments:
    """The tokenizer of a text or translation model, as the examples name its flags."""

    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained tokenizer name or path, if not that of --model_name_or_path; without a model, the "
            "offline default is built for this tokenizer instead of one trained on the data."
        },
    )
    use_fast_tokenizer: bool = field(
        default=True,
        metadata={"help": "Use a fast (🤗 Tokenizers) tokenizer: transformers 5 has no other, so false is refused."},
    )

    def __post_init__(self):
        if not self.use_fast_tokenizer:
            raise ValueError(
                "--use_fast_tokenizer false: transformers 5 loads every tokenizer as a fast one (the slow ones are "
                "gone), so the run would not do what you asked. Leave the flag out."
            )
        chain_post_init(self, TokenizerArguments)


@dataclass
class ImageModelArguments(ModelArguments):
    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Accepted for run_image_classification.py's command lines, which declare it but never read it: "
            "it has no effect there either. The offline default is chosen with --model_architecture."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Name or path of the image processor, if not that of --model_name_or_path."}
    )
    model_architecture: str = field(
        default="convnext",
        metadata={
            "help": "Default model without --model_name_or_path: convnext, or resnet (about 6x the steps/s), "
            "or resnet-small (half its widths, e.g. a distillation student)."
        },
    )

    PRETRAINED_ONLY: ClassVar[tuple[str, ...]] = (*ModelArguments.PRETRAINED_ONLY, "image_processor_name")

    def unused_flags(self) -> dict[str, str]:
        """As [`ModelArguments.unused_flags`], and `--model_type`, which has no effect."""
        unused = super().unused_flags()
        if self.model_type is not None:
            unused["--model_type"] = "run_image_classification.py declares it but never reads it; neither does this"
        return unused


@dataclass
class TextModelArguments(TokenizerArguments, ModelArguments):
    """The text classifier: a pretrained one, or the offline default, and its tokenizer."""


@dataclass
class TranslationModelArguments(TokenizerArguments, ModelArguments):
    model_d_model: int = field(default=256, metadata={"help": "Width of the from-scratch Marian (no checkpoint)."})
    model_layers: int = field(default=3, metadata={"help": "Encoder and decoder layers of the from-scratch Marian."})
    vocab_size: int = field(default=8000, metadata={"help": "BPE vocabulary of the from-scratch Marian."})
