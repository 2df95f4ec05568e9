"""Where our `evaluate` modules are, and the `compute_metrics` functions for the Trainer built on them."""

from pathlib import Path

import numpy as np

__all__ = ["classification_compute_metrics", "path", "translation_compute_metrics"]

_MODULES = ("accuracy", "calibration", "translation")


def path(name: str) -> str:
    """Absolute path of one of our `evaluate` modules, to pass to `evaluate.load`.

    Args:
        name (`str`):
            One of `"accuracy"`, `"calibration"`, `"translation"`.

    Returns:
        `str`: the directory holding `<name>/<name>.py`.
    """
    if name not in _MODULES:
        raise ValueError(f"unknown metric module {name!r}; valid names are {', '.join(_MODULES)}.")
    return str(Path(__file__).resolve().parent / name)


def _load(name: str):
    # Imported when a module is loaded: `path()` (all a user of `evaluate.load` needs) stays free of its imports.
    import evaluate

    # In memory: no cache files to lock or clean up when every process of a distributed run evaluates.
    return evaluate.load(path(name), keep_in_memory=True)


def classification_compute_metrics():
    """Builds a `compute_metrics` function for `Trainer` on a classification task.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: takes an `EvalPrediction` whose `predictions`
        are the logits `(N, K)` (the first element is used if the model returns a tuple) and whose
        `label_ids` are the class ids `(N,)`, and returns `accuracy`, `top5_accuracy` (when K > 5),
        `ece`, `adaptive_ece`, `classwise_ece`, `nll`, `brier`, `aurc` and `e_aurc`.

    Example:

    ```python
    trainer = Trainer(model=model, args=args, eval_dataset=eval_dataset,
                      compute_metrics=hf_maxsup.metrics.classification_compute_metrics())
    ```
    """
    accuracy, calibration = _load("accuracy"), _load("calibration")

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        labels = eval_pred.label_ids
        return {
            **accuracy.compute(predictions=logits, references=labels),
            **calibration.compute(predictions=logits, references=labels),
        }

    return compute_metrics


def translation_compute_metrics(tokenizer):
    """Builds a `compute_metrics` function for `Seq2SeqTrainer` with `predict_with_generate=True`.

    Generated ids and labels are decoded (the Trainer's −100 padding replaced by the pad id, special
    tokens skipped, whitespace stripped) and scored with sacreBLEU's default BLEU and chrF.

    The returned dict holds only numbers, so that every logging integration accepts it and
    `metric_for_best_model="bleu"` works. The sacreBLEU signatures, which are strings, are kept on the
    function instead: after an evaluation, `compute_metrics.signatures` is
    `{"bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...", "chrf": "..."}`; print it
    next to the scores or put it in the model card.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer of the model, with a pad token.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: returns `bleu` and `chrf` (in [0, 100]), and has a
        `signatures` attribute (`dict[str, str]`, empty until the first call).
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set `tokenizer.pad_token` before building compute_metrics.")
    translation = _load("translation")

    def decode(ids) -> list[str]:
        ids = np.where(np.asarray(ids) != -100, ids, tokenizer.pad_token_id)
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        results = translation.compute(predictions=decode(predictions), references=decode(eval_pred.label_ids))
        compute_metrics.signatures = {"bleu": results.pop("bleu_signature"), "chrf": results.pop("chrf_signature")}
        return results

    compute_metrics.signatures = {}
    return compute_metrics
