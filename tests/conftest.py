import os

import pytest
import torch

# The Hub is unreachable on CI: fail fast instead of waiting for network time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=["c", "torch", "triton"])
def backend(request, monkeypatch):
    """Forces each backend of the loss engine in turn (triton in its interpreter without a GPU); `auto` when a test
    parametrizes it so (indirectly)."""
    if request.param != "auto":
        from hf_maxsup.kernels import select_backend

        monkeypatch.setenv("HF_MAXSUP_BACKEND", request.param)
        try:
            select_backend(torch.device("cpu"), torch.float32)
        except RuntimeError as err:
            pytest.skip(f"{request.param} backend unavailable: {err}")
    monkeypatch.setenv("HF_MAXSUP_BACKEND", request.param)
    return request.param


@pytest.fixture
def serve(monkeypatch):
    """`serve(hub)` routes huggingface_hub's HTTP client to a FakeHub (tests/_hub.py); nothing leaves the process."""
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http, httpx  # httpx in huggingface_hub 1.x, httpx2 in 2.x

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    previous = _http._GLOBAL_CLIENT_FACTORY  # no public getter; restored so that other tests see the real client

    def serve(hub):
        set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub)))
        return hub

    yield serve
    set_client_factory(previous)
