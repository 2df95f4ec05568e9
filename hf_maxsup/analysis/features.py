"""Collecting penultimate features, logits and labels from a classification model, batch by batch."""

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["collect_features", "find_feature_layer"]

_HEAD_NAMES = ("classifier", "score")


def _maps_to_labels(module: nn.Module, num_labels: int) -> bool:
    # Duck-typed: besides nn.Linear, PEFT's LoRA layers and ModulesToSaveWrapper expose in/out_features.
    return getattr(module, "out_features", None) == num_labels and hasattr(module, "in_features")


def _final_linear(root: nn.Module, num_labels: int) -> nn.Module | None:
    """The last module under `root` with `num_labels` outputs, not looking inside such a module (LoRA internals)."""
    if _maps_to_labels(root, num_labels):
        return root
    found, found_prefix = None, None
    for name, module in root.named_modules():
        if found_prefix is not None and name.startswith(found_prefix):
            continue
        if _maps_to_labels(module, num_labels):
            found, found_prefix = module, name + "."
    return found


def find_feature_layer(model: nn.Module, feature_layer=None) -> nn.Module:
    """The classifier's final linear layer, whose input is the penultimate feature (and whose weight rows are the
    class templates of the projection plots).

    Args:
        model (`nn.Module`): an HF classifier (PEFT-wrapped too).
        feature_layer (`nn.Module` or `str`, *optional*): the layer itself, or its name in `model.named_modules()`;
            by default the linear layer with `config.num_labels` outputs in the shallowest `classifier` / `score`.

    Returns:
        `nn.Module`: the layer.
    """
    if isinstance(feature_layer, nn.Module):
        return feature_layer
    if isinstance(feature_layer, str):
        return model.get_submodule(feature_layer)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels is None:
        raise ValueError("model has no `config.num_labels` to find its classifier; pass `feature_layer=` explicitly.")
    # The shallowest `classifier` / `score` module is the head: wrappers such as PEFT only prefix its name.
    heads = [
        (name.count("."), module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in _HEAD_NAMES
    ]
    root = min(heads, key=lambda head: head[0])[1] if heads else model
    layer = _final_linear(root, num_labels)
    if layer is None:
        raise ValueError(
            f"found no linear layer with {num_labels} outputs in the model's head; pass `feature_layer=` (the module "
            "whose input is the penultimate feature, or its name as in `model.named_modules()`)."
        )
    return layer


def _pool(layer_input: torch.Tensor, layer_output: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Returns the (B, D) features that produced the (B, K) logits."""
    if layer_input.dim() == 2:
        return layer_input
    # Decoder-style heads (`score` of GPT-2, Llama, ...) run on every position and the model then returns
    # the logits of one position per sequence (the last non-padding token). That position is the one
    # whose head output equals the returned logits bit for bit, whatever rule the model used.
    if layer_input.dim() == 3 and logits.dim() == 2 and layer_output.shape[:2] == layer_input.shape[:2]:
        hits = (layer_output.to(logits.dtype) == logits[:, None, :]).all(dim=-1)
        if hits.any(dim=-1).all():
            last_hit = hits.shape[1] - 1 - hits.flip(-1).int().argmax(dim=-1)
            return layer_input[torch.arange(len(layer_input), device=layer_input.device), last_hit]
    raise ValueError(
        f"cannot match the feature layer input of shape {tuple(layer_input.shape)} to the logits of shape "
        f"{tuple(logits.shape)}; pass `feature_layer=` a module whose input has shape (batch, hidden)."
    )


@torch.no_grad()
def collect_features(model: nn.Module, dataloader, device=None, feature_layer=None) -> dict[str, np.ndarray]:
    """Runs a classification model over a dataloader and gathers penultimate features, logits and labels.

    The penultimate feature is the input of the final linear layer of the head, captured with a forward
    hook: `model.classifier` or `model.score` if it is linear, else the last linear layer with
    `config.num_labels` outputs inside it (`out_proj` of RoBERTa-style heads, the `nn.Linear` of a
    `Sequential` head). PEFT-wrapped models are handled (the hook sits on the LoRA layer or the
    `modules_to_save` wrapper, whose input is the same feature). For heads applied to every position
    (`score` of decoder models), the feature of the position whose logits the model returns is kept.
    The model runs in eval mode without gradients; its training mode is restored afterwards. Only the
    per-example outputs are accumulated, never the inputs.

    Args:
        model (`torch.nn.Module`):
            A classification model returning `logits` of shape `(batch, num_labels)`, e.g. any
            `*ForSequenceClassification` or `*ForImageClassification` model, possibly PEFT-wrapped.
        dataloader (iterable of `dict`):
            Batches as produced by a Hugging Face data collator: model inputs plus `labels` of shape `(batch,)`.
        device (`str` or `torch.device`, *optional*):
            Where to move the batch tensors; defaults to the device of the model's first parameter.
        feature_layer (`torch.nn.Module` or `str`, *optional*):
            Module whose input is the feature (or its name in `model.named_modules()`), overriding the search.

    Returns:
        `dict[str, np.ndarray]` with keys `"features"` (`(N, D)`, float32), `"logits"` (`(N, K)`, float32) and
        `"labels"` (`(N,)`, int64).
    """
    layer = find_feature_layer(model, feature_layer)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    captured = {}

    def hook(module, args, output):
        captured["input"], captured["output"] = args[0], output

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        outputs = [_batch_outputs(model, layer, captured, batch, device) for batch in dataloader]
    finally:
        handle.remove()
        model.train(was_training)
    if not outputs:
        raise ValueError("dataloader yielded no batches.")
    features, logits, labels = zip(*outputs)
    if sum(map(len, labels)) != sum(map(len, logits)):
        raise ValueError("`labels` must hold one class id per example; token-level labels are not supported.")
    return {
        "features": np.concatenate(features),
        "logits": np.concatenate(logits),
        "labels": np.concatenate(labels).astype(np.int64),
    }


def _batch_outputs(model: nn.Module, layer: nn.Module, captured: dict, batch, device) -> tuple[np.ndarray, ...]:
    """(features, logits, labels) of one batch, its features the input of `layer` that the hook put in `captured`."""
    if not isinstance(batch, Mapping) or "labels" not in batch:
        raise ValueError("each batch must be a dict with a `labels` entry, as built by a Hugging Face data collator.")
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}
    captured.clear()
    # Labels are left out of the call so that the model does not compute a loss.
    outputs = model(**inputs)
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
    if "input" not in captured:
        raise RuntimeError(f"the feature layer ({type(layer).__name__}) was not called; pass `feature_layer=`.")
    labels = batch["labels"]
    return (
        _pool(captured["input"], captured["output"], logits).float().cpu().numpy(),
        logits.float().cpu().numpy(),
        np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels),
    )
