"""The engine a run trains with (single process, DDP, FSDP, DeepSpeed): naming it, and what FSDP needs filled in
that one accelerate config cannot say for every model."""

from __future__ import annotations

import logging

import torch
from accelerate.utils import DistributedType

__all__ = ["check_fsdp2_ties", "describe_engine", "fsdp_layers_to_wrap", "prepare_engine", "save_final_model"]

logger = logging.getLogger(__name__)


def describe_engine(state) -> str:
    """The engine an accelerate state really runs and its process count, e.g. `"FSDP2, 2 processes"`,
    `"DeepSpeed ZeRO-3, 2 processes"`, `"DDP, 2 processes"` or `"single process"`.

    Args:
        state (`accelerate.state.AcceleratorState`): the state of the trainer's accelerator.
    """
    count = state.num_processes
    if state.distributed_type == DistributedType.DEEPSPEED:
        engine = f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    elif state.distributed_type == DistributedType.FSDP:
        engine = f"FSDP{state.fsdp_plugin.fsdp_version}"
    elif count > 1:
        engine = "DDP"
    else:
        return "single process"
    return f"{engine}, {count} process{'es' if count > 1 else ''}"


def _input_embeddings(model):
    """The model's input embeddings, or `None` for a model without (vision models do not implement the method)."""
    try:
        return model.get_input_embeddings()
    except NotImplementedError:
        return None


def fsdp_layers_to_wrap(model) -> list[str]:
    """The classes of the layers FSDP should shard one by one: the model's `_no_split_modules` that do not hold its
    input embeddings, or else the classes of the blocks its `ModuleList`s hold (e.g. Marian, which names none).

    accelerate wraps the input embeddings on their own after the layers; a listed class that holds them (BERT's
    `BertEmbeddings`) would shard them a second time, which fails in `fully_shard`.
    """
    embeddings = _input_embeddings(model)
    holders = {
        type(module).__name__
        for module in model.modules()
        if embeddings is not None and any(sub is embeddings for sub in module.modules())
    }
    layers = sorted(set(getattr(model, "_no_split_modules", None) or ()) - holders)
    if not layers:
        layers = sorted(
            {
                type(block).__name__
                for module in model.modules()
                if isinstance(module, torch.nn.ModuleList)
                for block in module
            }
            - holders
        )
    return layers


def check_fsdp2_ties(model) -> None:
    """Refuse a model whose tied weight is held by modules besides its input and output embeddings (Marian: also
    the encoder's and decoder's `embed_tokens`), before the cryptic error accelerate's FSDP2 set-up ends with.

    accelerate groups the input and output embeddings together and leaves any other holder in another FSDP group,
    which `fully_shard` rejects for a shared parameter.

    Raises:
        `RuntimeError`: such a tie; the message names its holders and the engines that shard it.
    """
    embeddings = {id(_input_embeddings(model)), id(getattr(model, "get_output_embeddings", lambda: None)())}
    holders: dict[int, list[tuple[str, int]]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append((name, id(module)))
    for owners in holders.values():
        if len(owners) > 1 and any(module not in embeddings for _, module in owners):
            raise RuntimeError(
                f"FSDP2 cannot shard this model: one weight is tied across "
                f"{', '.join(name for name, _ in owners)}, which accelerate puts in different FSDP "
                "groups. Launch with recipes/configs/deepspeed.yaml and --deepspeed "
                "recipes/configs/ds_zero3.json (ZeRO-3 shards it too), or with ddp.yaml."
            )


def prepare_engine(trainer) -> None:
    """Log the engine that runs (see [`describe_engine`]) and, under FSDP, fill in what the config left to the model.

    An FSDP config without `fsdp_transformer_layer_cls_to_wrap` gets [`fsdp_layers_to_wrap`], so that one config
    serves every model; a model FSDP2 cannot shard stops the run (`RuntimeError`). Call it after the trainer is built
    (it creates the accelerator) and before training.
    """
    state = trainer.accelerator.state
    if state.is_main_process:
        logger.info(f"engine: {describe_engine(state)}")
    if state.distributed_type != DistributedType.FSDP:
        return
    # Imported under FSDP only: torch.distributed's FSDP is not part of every torch build.
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin, model = state.fsdp_plugin, trainer.model
    if plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = fsdp_layers_to_wrap(model)
        logger.info(f"FSDP wraps {', '.join(plugin.transformer_cls_names_to_wrap)}")
    if plugin.fsdp_version == 2:
        check_fsdp2_ties(model)
    if _input_embeddings(model) is None:
        # accelerate's FSDP2 set-up calls get_input_embeddings(), which raises for vision models (ConvNeXt): answer
        # None, as accelerate does for a model without the method.
        model.get_input_embeddings = lambda: None


def save_final_model(trainer) -> None:
    """Save the trained model as one loadable model, whatever state dict type FSDP checkpoints with.

    With `SHARDED_STATE_DICT`, `Trainer.save_model` writes no model at all; the final save gathers the full one.
    """
    plugin = trainer.accelerator.state.fsdp_plugin if trainer.is_fsdp_enabled else None
    if plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(_internal_call=True)  # not the public call, which would push before evaluating
