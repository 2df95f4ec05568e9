"""The teacher of a distillation: given (`teacher=`) or named (`teacher_model_name_or_path`), loaded with the Auto
class of the student's kind (safetensors only, no remote code), and checked to predict the student's classes."""

from __future__ import annotations

from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.models import auto as transformers_auto

from ..auto import auto_class_of, is_causal_lm, unwrap_peft

__all__ = ["check_teacher", "load_teacher", "resolve_teacher"]


def resolve_teacher(teacher, name_or_path: str | None, student):
    """The teacher given (`teacher`) or named (`name_or_path`), checked against the student; `None` without one.

    Args:
        teacher (`torch.nn.Module`, *optional*): a teacher model (`MaxSupTrainer(..., teacher=model)`).
        name_or_path (`str`, *optional*): a teacher to load (`teacher_model_name_or_path`).
        student (`torch.nn.Module`): the model trained, PEFT-wrapped or not.

    Raises:
        `ValueError`: both a teacher and a name, no student, DeepSpeed ZeRO-3, or a teacher that cannot be loaded
            or does not predict the student's classes.
    """
    if teacher is not None and name_or_path is not None:
        raise ValueError(f"both teacher= and teacher_model_name_or_path={name_or_path!r} were given: pass one of them.")
    if teacher is None and name_or_path is None:
        return None
    if student is None:
        raise ValueError(
            "distillation needs the student model (model=...) to check the teacher against; "
            "model_init is not supported with a teacher."
        )
    if is_deepspeed_zero3_enabled():
        # from_pretrained would partition the teacher's weights for an engine that never gathers them.
        raise ValueError(
            "distillation under DeepSpeed ZeRO-3 is not supported: the teacher runs outside the "
            "DeepSpeed engine. Train with ZeRO-1/2, DDP or FSDP."
        )
    teacher = load_teacher(name_or_path, student) if teacher is None else teacher
    check_teacher(teacher, student)
    return teacher


def load_teacher(name_or_path: str, student):
    """The teacher at `name_or_path` (a local folder or a Hub id), loaded with the Auto class of the student's kind
    (safetensors only, no remote code).

    Raises:
        `ValueError`: no Auto class loads the student's kind, or the teacher cannot be loaded with it.
    """
    student_class = type(unwrap_peft(student)).__name__
    auto_class = auto_class_of(student_class)
    if auto_class is None:
        raise ValueError(
            f"teacher_model_name_or_path: no Auto class loads a teacher for a {student_class} student; "
            "load the teacher yourself and pass it as MaxSupTrainer(..., teacher=model)."
        )
    try:
        return getattr(transformers_auto, auto_class).from_pretrained(
            name_or_path, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError) as err:  # no such folder or id, no safetensors weights, another kind of model
        raise ValueError(
            f"teacher_model_name_or_path {name_or_path!r}: could not load it with {auto_class} (the "
            f"student is a {student_class}): {err}"
        ) from err


def check_teacher(teacher, student) -> None:
    """Checks that the teacher predicts the student's classes: as many, and, when both name them, the same names
    under the same ids.

    Raises:
        `ValueError`: the classes differ.
    """
    teacher_classes, student_classes = _num_classes(teacher), _num_classes(student)
    if teacher_classes != student_classes:
        raise ValueError(
            f"the teacher has {teacher_classes} classes (logits per item) and the student "
            f"{student_classes}: distillation compares their distributions class by class, so both "
            "must predict the same classes."
        )
    names = [getattr(unwrap_peft(model).config, "id2label", None) or {} for model in (teacher, student)]
    # Default names (LABEL_i) say nothing; named classes in another order would be distilled into the wrong ones.
    named = all(not all(str(name).startswith("LABEL_") for name in labels.values()) for labels in names)
    if named and {int(k): v for k, v in names[0].items()} != {int(k): v for k, v in names[1].items()}:
        raise ValueError(
            f"the teacher's classes {names[0]} are not the student's {names[1]} (same ids, same "
            "names): train the student on the teacher's label set."
        )


def _num_classes(model) -> int:
    """The size of the model's logits' last dimension: its labels, or its vocabulary for a generative model."""
    base = unwrap_peft(model)
    if getattr(base.config, "is_encoder_decoder", False) or is_causal_lm(base):
        return base.get_output_embeddings().weight.shape[0]
    return base.config.num_labels
