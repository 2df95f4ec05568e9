"""The engines of `recipes/configs/` on 2 CPU processes (gloo), each through `accelerate launch` with our config.

Each engine trains `tests/distributed/tiny_run.py` (tiny BERT, maxsup, SGD) on 2 processes x 4 examples and must give
the losses and final parameters of 1 process x 8 examples, and save a loadable model with our card. DeepSpeed needs
the `deepspeed` extra (`.ci/run` installs it and builds its op up front); FSDP runs through
`tests/distributed/fsdp_on_cpu.py`, as accelerate runs FSDP only on GPUs.
"""

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from _env import FSDP_ON_CPU, ROOT, TINY_RUN, subprocess_env
from _tiny import tiny_bert, tiny_marian
from accelerate.utils import DistributedType
from huggingface_hub import ModelCard
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
)

from hf_maxsup.runner.engines import check_fsdp2_ties, describe_engine, fsdp_layers_to_wrap

CONFIGS = os.path.join(ROOT, "recipes", "configs")
# On CI a missing deepspeed is a failed set-up, not a reason to skip.
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None and not os.environ.get("CI"),
    reason="needs the deepspeed extra: DS_BUILD_OPS=0 pip install -e '.[deepspeed]'",
)

# engine: (accelerate config, what goes before the script, what goes after it, the engine line the run must log)
ENGINES = {
    "DDP": ("ddp.yaml", [], [], "DDP, 2 processes"),
    "ZeRO-2": (
        "deepspeed.yaml",
        [],
        ["--deepspeed", os.path.join(CONFIGS, "ds_zero2.json")],
        "DeepSpeed ZeRO-2, 2 processes",
    ),
    "ZeRO-3": (
        "deepspeed.yaml",
        [],
        ["--deepspeed", os.path.join(CONFIGS, "ds_zero3.json")],
        "DeepSpeed ZeRO-3, 2 processes",
    ),
    "FSDP2": ("fsdp.yaml", [FSDP_ON_CPU], [], "FSDP2, 2 processes"),
}


def launch(config, script, *args, timeout=600):
    """`accelerate launch` with one of our configs on 2 CPU processes, in full precision (the configs' bf16 is for
    GPUs, and the comparison is with a float32 run)."""
    env = subprocess_env(DS_ACCELERATOR="cpu")
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(CONFIGS, config),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        *script,
        *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def check_saved(output_dir, auto_class):
    """The run left a safetensors model that reloads, and our card; returns the reloaded model."""
    assert (output_dir / "model.safetensors").exists()
    assert "hf_maxsup" in ModelCard.load(output_dir / "README.md").data.to_dict()
    return auto_class.from_pretrained(output_dir)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: 1 process, batch 8."""
    output_dir = tmp_path_factory.mktemp("one")
    result = subprocess.run(
        [sys.executable, TINY_RUN, "--output_dir", str(output_dir), "--save", "--per_device_train_batch_size", "8"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.mark.parametrize(
    "engine", [pytest.param(name, marks=[needs_deepspeed] if "ZeRO" in name else []) for name in ENGINES]
)
def test_two_processes_match_one(engine, one_process, tmp_path):
    config, before, after, engine_line = ENGINES[engine]
    output = launch(
        config,
        [*before, TINY_RUN],
        "--output_dir",
        str(tmp_path),
        "--save",
        "--per_device_train_batch_size",
        "4",
        *after,
    )
    assert f"engine: {engine_line}" in output  # the engine really ran, not a fallback to DDP or to 2 single runs
    logs = {name: json.load(open(path / "logs.json")) for name, path in (("one", one_process), ("two", tmp_path))}
    assert [entry["step"] for entry in logs["two"]] == [entry["step"] for entry in logs["one"]] == [1, 2, 3]
    # ce and reg are logged as averages of per-process means, which differ from the global mean: only diagnostics.
    for key in ("loss", "alpha"):
        torch.testing.assert_close(
            torch.tensor([e[key] for e in logs["two"]]),
            torch.tensor([e[key] for e in logs["one"]]),
            rtol=1e-5,
            atol=1e-6,
        )
    one, two = (check_saved(path, AutoModelForTokenClassification).state_dict() for path in (one_process, tmp_path))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


RECIPE_ARGS = [
    "--do_train",
    "--loss",
    "maxsup",
    "--max_train_samples",
    "16",
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
]


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("ZeRO-3", marks=needs_deepspeed),
        "FSDP2",
        pytest.param("ZeRO-2", marks=[needs_deepspeed, pytest.mark.slow]),
    ],
)
def test_text_recipe_end_to_end(engine, tmp_path):
    """The text recipe as a user launches it (no --use_cpu: the recipe sets it on a machine without GPUs)."""
    config, before, after, engine_line = ENGINES[engine]
    recipe = os.path.join(ROOT, "recipes", "text_classification.py")
    output = launch(config, [*before, recipe], "--output_dir", str(tmp_path), *RECIPE_ARGS, *after)
    assert f"engine: {engine_line}" in output
    assert json.load(open(tmp_path / "trainer_state.json"))["global_step"] == 2
    check_saved(tmp_path, AutoModelForSequenceClassification)


def test_fsdp_on_a_machine_without_gpus_stops_with_a_message(tmp_path):
    """Without the test-only relabelling, accelerate would run the FSDP config as plain DDP: the recipe refuses."""
    recipe = os.path.join(ROOT, "recipes", "image_classification.py")
    env = subprocess_env()
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(CONFIGS, "fsdp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        recipe,
        "--output_dir",
        str(tmp_path),
        *RECIPE_ARGS,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "this machine has no GPUs and accelerate runs FSDP only on GPUs" in result.stderr
    assert not (tmp_path / "model.safetensors").exists()


def test_fsdp_layers_and_ties_of_the_recipe_models():
    """What `prepare_engine` fills in for FSDP, on the model families the recipes build (no launch needed)."""
    convnext = ConvNextForImageClassification(
        ConvNextConfig(num_channels=1, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    )
    # BertEmbeddings is in BERT's _no_split_modules, but accelerate shards the word embeddings on their own.
    assert fsdp_layers_to_wrap(tiny_bert()) == ["BertLayer"]
    assert fsdp_layers_to_wrap(tiny_marian()) == ["MarianDecoderLayer", "MarianEncoderLayer"]  # it names none
    assert fsdp_layers_to_wrap(convnext) == ["ConvNextLayer", "ConvNextStage"]
    for model in (tiny_bert(), convnext):
        check_fsdp2_ties(model)
    with pytest.raises(RuntimeError, match=r"tied across model.shared, model.encoder.embed_tokens.*ds_zero3.json"):
        check_fsdp2_ties(tiny_marian())


def test_describe_engine():
    def state(kind, count, **plugins):
        return SimpleNamespace(distributed_type=kind, num_processes=count, **plugins)

    assert describe_engine(state(DistributedType.NO, 1)) == "single process"
    assert describe_engine(state(DistributedType.MULTI_CPU, 2)) == "DDP, 2 processes"
    assert (
        describe_engine(state(DistributedType.FSDP, 16, fsdp_plugin=SimpleNamespace(fsdp_version=2)))
        == "FSDP2, 16 processes"
    )
    assert (
        describe_engine(state(DistributedType.DEEPSPEED, 1, deepspeed_plugin=SimpleNamespace(zero_stage=3)))
        == "DeepSpeed ZeRO-3, 1 process"
    )
