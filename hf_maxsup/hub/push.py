"""Pushes to the Hub: which errors mean the Hub could not be reached or refused, what to tell the user then, and
uploads that keep pickles off the Hub."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import transformers.trainer
from huggingface_hub import get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import httpx

__all__ = [
    "HUB_ERRORS",
    "PICKLE_PATTERNS",
    "HubPushError",
    "PickleFreeUploads",
    "failure_message",
    "uploads_without_pickles",
]

# What huggingface_hub raises when the Hub cannot be reached or refuses a request (HfHubHTTPError is an httpx error).
HUB_ERRORS = (httpx.HTTPError, OfflineModeIsEnabled, LocalTokenNotFoundError)

# Pickles the Trainer writes beside the model (training_args.bin) or in checkpoints (optimizer.pt, scheduler.pt,
# rng_state.pth, ...): kept off the model upload, since loading a pickle can run code.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle")


class HubPushError(OSError):
    """The Hub could not be reached or refused the push. The model is saved on disk; the message says where and how
    to push it later."""


def failure_message(err: Exception, trainer, token: str | None = None, *, saved: bool = True) -> str:
    """What went wrong when `trainer` talked to the Hub, what to do about it, and where the model is.

    Args:
        err (`Exception`): one of `HUB_ERRORS`.
        trainer (`transformers.Trainer`): the trainer that pushes.
        token (`str`, *optional*): the token passed to `push_to_hub`, if any.
        saved (`bool`, *optional*, defaults to `True`): whether the model is already saved (a failed push) or
            training has not started (the repository could not be created when the trainer was built).
    """
    args = trainer.args
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or Path(args.output_dir).absolute().name
    output_dir = os.path.abspath(args.output_dir)
    todo = []
    if isinstance(err, OfflineModeIsEnabled):
        todo.append("HF_HUB_OFFLINE is set: unset it, on a machine that can reach the Hub")
    elif isinstance(err, httpx.TransportError):
        todo.append(
            "the Hub could not be reached: check the network connection, the proxy (HTTPS_PROXY) or HF_ENDPOINT"
        )
    if not (token or args.hub_token or get_token()):
        todo.append(
            "no Hugging Face token was found: log in with `hf auth login` (formerly `huggingface-cli "
            "login`), or set HF_TOKEN, or pass --hub_token, with a token that has write access"
        )
    elif isinstance(err, HfHubHTTPError) and err.response is not None and err.response.status_code in (401, 403):
        todo.append(f"the token was refused: check that it has write access to {repo_id} (`hf auth whoami`)")
    if not todo:
        todo.append(f"the Hub answered: {err}")
    steps = "".join(f"\n  - {step}" for step in todo)
    if not saved:
        return (
            f"Could not create the Hugging Face Hub repository {repo_id!r}:{steps}\n"
            f"Training goes on and saves to {output_dir}; pushing at the end will fail the same way unless this is "
            "fixed. To train without pushing, pass --push_to_hub False."
        )
    return (
        f"Could not push to the Hugging Face Hub repository {repo_id!r}:{steps}\n"
        f"The trained model is saved in {output_dir} (weights, config, model card, processor if any); nothing was "
        "lost. Once the Hub can be reached, push it with\n"
        f"  hf upload {repo_id} {output_dir} --exclude 'checkpoint-*' --exclude '_*' "
        f"{' '.join(f'--exclude {pattern!r}' for pattern in PICKLE_PATTERNS)}\n"
        "or call trainer.push_to_hub() again. To train without pushing, pass --push_to_hub False."
    )


class PickleFreeUploads:
    """The `HfApi` the Trainer uploads with, except that an upload of the output directory leaves out the pickles
    (`training_args.bin`, ...): loading a pickle from the Hub can run code. A checkpoint folder uploaded for
    `hub_strategy="checkpoint"` (given a `path_in_repo`) keeps them, since resuming from it needs them.

    Args:
        api (`huggingface_hub.HfApi`): the client every other call goes to unchanged.
    """

    def __init__(self, api):
        self._api = api

    def __getattr__(self, name):
        return getattr(self._api, name)

    def upload_folder(self, *, ignore_patterns=None, path_in_repo=None, **kwargs):
        if path_in_repo is None:
            ignore_patterns = [*(ignore_patterns or []), *PICKLE_PATTERNS]
        return self._api.upload_folder(ignore_patterns=ignore_patterns, path_in_repo=path_in_repo, **kwargs)


@contextlib.contextmanager
def uploads_without_pickles():
    """Within this context, `Trainer.push_to_hub` and the Trainer's checkpoint pushes upload through
    [`PickleFreeUploads`]: the output directory goes up without its pickles.
    """
    # Trainer.push_to_hub and _push_from_checkpoint write training_args.bin and upload in one method, with fixed
    # ignore_patterns: the HfApi they get is the only place to leave the pickles out.
    real = transformers.trainer.hf_api
    transformers.trainer.hf_api = lambda: PickleFreeUploads(real())
    try:
        yield
    finally:
        transformers.trainer.hf_api = real
