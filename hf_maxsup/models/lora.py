"""LoRA adapters (`--use_peft`) on any model the recipes build."""

import torch
from peft import LoraConfig, TaskType, get_peft_model

__all__ = ["apply_lora"]


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
