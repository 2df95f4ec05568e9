"""How each supported model family computes its logits: what its output head reads, and what it adds.

The fused linear losses ([`hf_maxsup.linear.fused_linear_loss`]) need, instead of the logits, the tensor the output
head reads (the last hidden states, after whatever the model does to them) and the head's weight and bias.
[`head_inputs`] gets them by running the model's own forward with a forward pre-hook on its output embedding
(`get_output_embeddings()`): the hook keeps the head's input and hands the head an empty slice of it, so the head
computes no logits and everything else runs as usual. Running the whole forward, not a re-implementation of the
body, keeps every wrapper working: a DDP wrapper (its forward arms the gradient all-reduce), a PEFT model (its
adapters), the model's own transformation of the hidden states (T5 multiplies the decoder output by
`d_model ** -0.5` when `config.scale_decoder_outputs`, which `T5Config` derives from `tie_word_embeddings`; a
causal LM slices to `logits_to_keep`). Nothing is patched; the hook lives for one forward.

What the forward does to the head's output is family-specific and listed in [`HEADS`]: Marian, BART, mBART and
Pegasus add the `final_logits_bias` buffer; T5, mT5, GPT-2, Llama, Qwen2, Qwen3 and Mistral add nothing. Logit
soft-capping (Gemma 2's `final_logit_softcapping`) is not a linear head, and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .auto import unwrap_peft

__all__ = ["HEADS", "HeadSpec", "LinearHeadInputs", "head_inputs", "output_head"]


@dataclass(frozen=True)
class HeadSpec:
    """What a model class's forward does with the output of its `get_output_embeddings()` head.

    Args:
        family (`str`): the name users know the family by, for messages.
        logits_bias (`str`, *optional*): attribute of the model (a `(1, V)` buffer) that the forward adds to the
            head's output, e.g. Marian's `final_logits_bias`.
    """

    family: str
    logits_bias: str | None = None


# Model class name -> spec. Each entry was checked against the class's forward in transformers 5.24: the logits are
# `get_output_embeddings()(x)` (+ the bias named), with nothing after, where x is what the head is called with.
HEADS: dict[str, HeadSpec] = {
    "MarianMTModel": HeadSpec("Marian", logits_bias="final_logits_bias"),
    "BartForConditionalGeneration": HeadSpec("BART", logits_bias="final_logits_bias"),
    "MBartForConditionalGeneration": HeadSpec("mBART", logits_bias="final_logits_bias"),
    "PegasusForConditionalGeneration": HeadSpec("Pegasus", logits_bias="final_logits_bias"),
    "T5ForConditionalGeneration": HeadSpec("T5"),
    "MT5ForConditionalGeneration": HeadSpec("mT5"),
    "GPT2LMHeadModel": HeadSpec("GPT-2"),
    "LlamaForCausalLM": HeadSpec("Llama"),
    "Qwen2ForCausalLM": HeadSpec("Qwen2"),
    "Qwen3ForCausalLM": HeadSpec("Qwen3"),
    "MistralForCausalLM": HeadSpec("Mistral"),
}


@dataclass
class LinearHeadInputs:
    """What the output head reads and what it is: the logits are `hidden_states @ weight.T + bias`.

    Args:
        hidden_states (`torch.Tensor` of shape `(B, T, H)`): the head's input, in the autograd graph of the body.
        weight (`torch.Tensor` of shape `(V, H)`): the head's weight (a parameter, possibly tied to the embeddings).
        bias (`torch.Tensor` of shape `(V,)`, *optional*): everything added to the head's output.
    """

    hidden_states: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        """The full logits, as the model computes them (for checks; this is what the fused losses avoid)."""
        return nn.functional.linear(self.hidden_states, self.weight, self.bias)


def _supported() -> str:
    return ", ".join(f"{spec.family} ({name})" for name, spec in HEADS.items())


def output_head(model: nn.Module) -> tuple[nn.Linear, torch.Tensor | None]:
    """The output head of a supported model and the bias its logits get, or a clear error.

    Args:
        model (`nn.Module`): a transformers model, or a PEFT model wrapping one (not a DDP wrapper: unwrap it).

    Returns:
        `tuple`: the head (a plain `nn.Linear`) and the bias of the logits, shape `(V,)` (the head's own bias plus
        the family's `logits_bias`), or `None` when there is none.
    """
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap is not None:
        raise ValueError(
            f"{type(base).__name__} soft-caps its logits (final_logit_softcapping={softcap}): the logits are not a "
            "linear function of the hidden states, which fused_linear_loss needs. Set fused_linear_loss=False."
        )
    spec = HEADS.get(type(base).__name__)
    if spec is None:
        raise ValueError(
            f"fused_linear_loss does not know how {type(base).__name__} computes its logits. Supported: "
            f"{_supported()}. Set fused_linear_loss=False (drop --fused_linear_loss) to train this model."
        )
    head = base.get_output_embeddings()
    if type(head) is not nn.Linear:
        # LoRA on the head, modules_to_save, quantised layers: the logits are not `x @ head.weight.T`.
        raise ValueError(
            f"the output head of this {spec.family} model is a {type(head).__name__}, not a plain nn.Linear (an "
            "adapter or quantisation on the head?): fused_linear_loss reads the head's weight directly. Leave the "
            "head out of the adapter's target_modules / modules_to_save, or set fused_linear_loss=False."
        )
    bias = head.bias
    if spec.logits_bias is not None:
        extra = getattr(base, spec.logits_bias).reshape(-1)
        bias = extra if bias is None else bias + extra
    return head, bias


def head_inputs(model, unwrapped: nn.Module, **inputs) -> LinearHeadInputs:
    """Runs `model(**inputs)` with its output head computing nothing, and returns what the head would have read.

    Args:
        model (`callable`): the model as the training loop calls it (possibly DDP- or otherwise wrapped).
        unwrapped (`nn.Module`): the same model without the distributed wrapper (PEFT wrapper allowed).
        inputs: the model's inputs, without `labels` (a model given labels computes its own loss from the logits).

    Returns:
        [`LinearHeadInputs`], with the head's input cast as autocast casts it for the head's matmul.
    """
    head, bias = output_head(unwrapped)
    captured = []

    def keep_input(module, args):
        captured.append(args[0])
        # A zero-length token dimension: the head computes no logits, and the rest of the forward runs unchanged.
        return (args[0][..., :0, :],)

    handle = head.register_forward_pre_hook(keep_input)
    try:
        model(**inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"the forward of {type(unwrap_peft(unwrapped)).__name__} called its output head {len(captured)} times "
            "instead of once (a patched forward, e.g. Liger-Kernel's?): set fused_linear_loss=False."
        )
    hidden, weight = captured[0], head.weight
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # The head's matmul would run in the autocast dtype; so does the fused one.
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return LinearHeadInputs(hidden, weight, bias)
