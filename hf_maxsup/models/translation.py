"""The sequence-to-sequence model of the translation recipe: a pretrained one, or a small Marian with a shared BPE
vocabulary trained on the data."""

import logging
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

from ..arguments import TranslationColumns
from .pretrained import from_pretrained, hub_keywords, load_pretrained

__all__ = ["MAX_POSITIONS", "build_translation_model", "fit_to_model"]

logger = logging.getLogger(__name__)

# The longest sequence, in tokens, of the from-scratch Marian.
MAX_POSITIONS = 256


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
    *,
    tokenizer_name: str | None = None,
    **pretrained,
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
        cache_dir (`str`, *optional*), token (`str` or `bool`, *optional*):
            Cache of Hub downloads, and Hub token.
        tokenizer (`PreTrainedTokenizerFast`, *optional*):
            For the from-scratch default: use this tokenizer (e.g. the one a run saved) instead of training one.
        d_model (`int`, *optional*, defaults to 256):
            Width of the from-scratch Marian (feed-forward 4 times that); smaller trains faster on a CPU.
        num_layers (`int`, *optional*, defaults to 3):
            Encoder and decoder layers of the from-scratch Marian.
        tokenizer_name (`str`, *optional*):
            Local directory or Hub id of the tokenizer, when not the model's; without a model, the from-scratch
            Marian is built for it.
        **pretrained:
            With a pretrained model, how it is loaded: see [`~hf_maxsup.models.pretrained.load_pretrained`].

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`
    """
    hub = {"cache_dir": cache_dir, "token": token, **pretrained}
    if model_name_or_path is not None:
        return _pretrained_seq2seq(model_name_or_path, tokenizer_name, hub)
    if tokenizer is None and tokenizer_name is not None:
        tokenizer = from_pretrained(AutoTokenizer.from_pretrained, tokenizer_name, **hub_keywords(hub))
    tokenizer = tokenizer or _bpe_tokenizer_for(train_pairs, source_lang, target_lang, vocab_size)
    return _scratch_marian(tokenizer, d_model, num_layers), tokenizer


def _pretrained_seq2seq(model_name_or_path: str, tokenizer_name: str | None, hub: dict):
    """The pretrained model and tokenizer of [`build_translation_model`], loaded as run_translation.py loads them."""
    model, tokenizer = load_pretrained(AutoModelForSeq2SeqLM, AutoTokenizer, model_name_or_path, tokenizer_name, **hub)
    # A tokenizer with more tokens than the model's embeddings gets rows for them, as in run_translation.py.
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def _bpe_tokenizer_for(train_pairs, source_lang: str, target_lang: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """The tokenizer of the from-scratch Marian, trained on both sides of `train_pairs`."""
    if train_pairs is None:
        raise ValueError(
            "The from-scratch translation model needs `train_pairs` to train its tokenizer; pass them or set "
            "--model_name_or_path."
        )
    texts = (pair[lang] for pair in train_pairs for lang in (source_lang, target_lang))
    return _train_bpe_tokenizer(texts, vocab_size, model_max_length=MAX_POSITIONS)


def _scratch_marian(tokenizer: PreTrainedTokenizerFast, d_model: int, num_layers: int) -> MarianMTModel:
    """The from-scratch Marian of [`build_translation_model`], sized for `tokenizer` (at most `MAX_POSITIONS` tokens: a
    longer `model_max_length` of the tokenizer is cut to it), generating until its eos."""
    tokenizer.model_max_length = min(tokenizer.model_max_length, MAX_POSITIONS)
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


def fit_to_model(model, tokenizer, columns: TranslationColumns, forced_bos_token: str | None = None) -> None:
    """Set on the model and the tokenizer what run_translation.py sets, and fit the lengths to the model.

    A multilingual tokenizer (mBART, M2M100: one with a `src_lang`) gets the source and target languages;
    `forced_bos_token` (`--forced_bos_token`, e.g. `ro_RO`) becomes the first generated token. The source and target
    lengths of `columns` are cut to the model's positions when it has absolute ones (run_translation.py refuses a
    `--max_source_length` above them; its default 1024 is above most models').

    Raises:
        `ValueError`: `forced_bos_token` is not in the tokenizer's vocabulary.
    """
    config = model.config
    if config.model_type == "t5" and not columns.source_prefix:
        logger.warning(
            "a T5 model without --source_prefix: T5 expects one, e.g. --source_prefix 'translate English to German: '."
        )
    if hasattr(tokenizer, "src_lang"):
        tokenizer.src_lang, tokenizer.tgt_lang = columns.source_lang, columns.target_lang
    if forced_bos_token is not None:
        token_id = tokenizer.convert_tokens_to_ids(forced_bos_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"--forced_bos_token {forced_bos_token} is not in the tokenizer's vocabulary: give a language token "
                "of a multilingual model (e.g. ro_RO for mBART-50), or leave the flag out."
            )
        model.generation_config.forced_bos_token_id = token_id
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None or hasattr(config, "relative_attention_max_distance"):  # T5's positions are relative
        return
    for name in ("max_source_length", "max_target_length", "val_max_target_length"):
        value = getattr(columns, name)
        if value is not None and value > positions:
            logger.info(f"--{name} {value} is more than the model's {positions} positions: cut at {positions}.")
            setattr(columns, name, positions)
