"""Reloading a trained model for analysis, safely: safetensors weights only, no remote code.

```python
from hf_maxsup.hub import load_for_analysis

model = load_for_analysis("runs/digits")  # or a Hub id; a PEFT adapter loads with its base model
```
"""

from __future__ import annotations

import json

from transformers import AutoConfig
from transformers.models import auto as transformers_auto
from transformers.utils import find_adapter_config_file

from ..auto import AUTO_CLASSES, auto_class_of

__all__ = ["load_for_analysis"]


def load_for_analysis(name_or_path: str, *, revision: str | None = None, token: str | bool | None = None):
    """Load a fine-tuned checkpoint (a local directory or a Hub id) for analysis, with the `transformers` Auto class
    of its task.

    Only safetensors weights are read and `trust_remote_code` stays off. A PEFT adapter saved by the Trainer loads
    together with its base model (found from `adapter_config.json`). The processor (tokenizer or image processor) is
    saved next to the weights: load it with `AutoTokenizer` / `AutoImageProcessor` from the same path.

    Args:
        name_or_path (`str`):
            Output directory or checkpoint directory of a run, or a Hub model id.
        revision (`str`, *optional*):
            Branch, tag or commit on the Hub.
        token (`str` or `bool`, *optional*):
            Hub token, for private repositories.

    Returns:
        [`~transformers.PreTrainedModel`]: the model, in evaluation mode.
    """
    adapter_config = find_adapter_config_file(name_or_path, revision=revision, token=token)
    if adapter_config is None:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, token=token, trust_remote_code=False)
    else:
        with open(adapter_config, encoding="utf-8") as f:
            base = json.load(f)["base_model_name_or_path"]
        config = AutoConfig.from_pretrained(base, token=token, trust_remote_code=False)
    architecture = (config.architectures or [""])[0]
    auto_class = auto_class_of(architecture)
    if auto_class is None:
        raise ValueError(
            f"{name_or_path!r} holds a {architecture or 'model without a recorded architecture'}, not a model for one "
            f"of the tasks {', '.join(AUTO_CLASSES)}: load it with its own class."
        )
    model = getattr(transformers_auto, auto_class).from_pretrained(
        name_or_path, revision=revision, token=token, use_safetensors=True, trust_remote_code=False
    )
    return model.eval()
