"""The loss engine's environment variables are checked before any work: by `kernels.check_environment()`, which the
recipes' `start()` and `MaxSupLossFunc` (hence every trainer of hf_maxsup) call first, and again where they are
read."""

import sys

import pytest
import torch
from _tiny import COMMON, tiny_bert
from transformers import Trainer, TrainingArguments

from hf_maxsup import MaxSupLossFunc, MaxSupTrainer, MaxSupTrainingArguments, apply_maxsup, kernels
from hf_maxsup.arguments import ModelArguments, TextDataArguments
from hf_maxsup.losses import maxsup_cross_entropy
from hf_maxsup.runner import start

BAD = [
    ("HF_MAXSUP_BACKEND", "garbage", "HF_MAXSUP_BACKEND='garbage' is not a backend; use one of auto, c, triton, torch"),
    ("HF_MAXSUP_NUM_THREADS", "abc", "HF_MAXSUP_NUM_THREADS='abc' is not a number of threads: set a positive integer"),
    ("HF_MAXSUP_NUM_THREADS", "0", "HF_MAXSUP_NUM_THREADS='0' is not a number of threads"),
    ("HF_MAXSUP_NUM_THREADS", "-2", "HF_MAXSUP_NUM_THREADS='-2' is not a number of threads"),
    ("HF_MAXSUP_STREAM", "yes", "HF_MAXSUP_STREAM='yes': set 0 or 1"),
    ("HF_MAXSUP_CFLAGS", "-DX='1", "HF_MAXSUP_CFLAGS cannot be split into flags"),
]


@pytest.mark.parametrize("name, value, message", BAD)
def test_bad_settings_are_refused_by_the_check(monkeypatch, name, value, message):
    kernels.check_environment()
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kernels.check_environment()


def test_good_settings_pass(monkeypatch):
    for name, value in (("HF_MAXSUP_BACKEND", " Torch "), ("HF_MAXSUP_NUM_THREADS", "3"), ("HF_MAXSUP_STREAM", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_MAXSUP_CFLAGS", "-march=x86-64-v3 -O2")
    kernels.check_environment()


def test_a_bad_thread_count_is_named_where_it_is_read(monkeypatch):
    if kernels.kernel_info()["backend"] != "c":
        pytest.skip("the C kernel is not built here")
    monkeypatch.setenv("HF_MAXSUP_NUM_THREADS", "abc")
    with pytest.raises(ValueError, match="HF_MAXSUP_NUM_THREADS='abc' is not a number of threads"):
        maxsup_cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), 0.1)


def test_the_trainers_check_before_anything_is_built(monkeypatch, tmp_path):
    """MaxSupTrainer, and every trainer that takes a MaxSupLossFunc (apply_maxsup, MaxSupSFTTrainer, a Trainer given
    it as compute_loss_func), when the loss is built."""
    args = MaxSupTrainingArguments(output_dir=str(tmp_path), **COMMON)
    plain = Trainer(model=tiny_bert(), args=TrainingArguments(output_dir=str(tmp_path / "plain"), **COMMON))
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "garbage")
    with pytest.raises(ValueError, match="HF_MAXSUP_BACKEND='garbage' is not a backend"):
        MaxSupTrainer(model=tiny_bert(), args=args)
    with pytest.raises(ValueError, match="HF_MAXSUP_BACKEND='garbage' is not a backend"):
        MaxSupLossFunc("maxsup")
    with pytest.raises(ValueError, match="HF_MAXSUP_BACKEND='garbage' is not a backend"):
        apply_maxsup(plain)
    assert plain.compute_loss_func is None


def test_the_recipes_check_before_loading_data(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_MAXSUP_NUM_THREADS", "abc")
    monkeypatch.setattr(sys, "argv", ["recipe", "--output_dir", str(tmp_path / "run"), "--do_train"])
    with pytest.raises(ValueError, match="HF_MAXSUP_NUM_THREADS='abc'"):
        start("text-classification", ModelArguments, TextDataArguments, MaxSupTrainingArguments)
    assert not (tmp_path / "run").exists()
