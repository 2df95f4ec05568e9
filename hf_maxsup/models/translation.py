"""The sequence-to-sequence model of the translation recipe: a pretrained one, or a small Marian with a shared BPE
vocabulary trained on the data."""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
)

from .pretrained import from_pretrained

__all__ = ["build_translation_model"]


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
        tokenizer = from_pretrained(AutoTokenizer.from_pretrained, model_name_or_path, **hub)
        model = from_pretrained(AutoModelForSeq2SeqLM.from_pretrained, model_name_or_path, **hub)
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
