"""What kind of model a run trains: the model under a PEFT wrapper, its task, and the Auto class that loads it.

One table, [`AUTO_CLASSES`], serves everything that loads or describes a model: the safe loader for analysis, the
teacher of a distillation, the model card's `pipeline_tag` and "how to load" snippet.
"""

from __future__ import annotations

from transformers.modelcard import TASK_MAPPING

__all__ = ["AUTO_CLASSES", "auto_class_of", "is_causal_lm", "task_of", "unwrap_peft"]

# The tasks whose models hf_maxsup trains, with the transformers Auto class that loads each.
AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
    "audio-classification": "AutoModelForAudioClassification",
    "token-classification": "AutoModelForTokenClassification",
    "text2text-generation": "AutoModelForSeq2SeqLM",
    "text-generation": "AutoModelForCausalLM",
}


def unwrap_peft(model):
    """The transformers model under a PEFT wrapper (its modules carry the adapters); any other model as it is."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def task_of(model_class_name: str) -> str | None:
    """The task (`"text-classification"`, `"text-generation"`, ...) of a transformers model class, by its name; `None`
    for a class no task of transformers' model cards lists."""
    for task, mapping in TASK_MAPPING.items():
        for names in mapping.values():
            if model_class_name in ((names,) if isinstance(names, str) else names):
                return task
    return None


def auto_class_of(model_class_name: str) -> str | None:
    """The name of the Auto class that loads models of this class (e.g. `"AutoModelForCausalLM"`), `None` when the
    class belongs to none of the tasks of [`AUTO_CLASSES`]."""
    return AUTO_CLASSES.get(task_of(model_class_name))


def is_causal_lm(model) -> bool:
    """Whether `model` (PEFT-wrapped or not) is a decoder-only language model, whose labels are its inputs and whose
    logits at position `t` predict token `t + 1`."""
    base = unwrap_peft(model)
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    return task_of(type(base).__name__) == "text-generation"
