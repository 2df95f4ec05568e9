"""A newcomer's first minutes: `make demo` says how to run things afterwards and runs twice without a traceback, and a
recipe's `--help` answers before torch loads, the loss first."""

import os
import shlex
import subprocess
import sys
import time

import pytest
from _runs import RECIPES, ROOT, TINY, run_recipe


def make_demo_steps() -> list[str]:
    """What `make demo` runs, as `make -n` prints it, outside any virtual environment."""
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    result = subprocess.run(["make", "-n", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.replace("\\\n", " ").splitlines()


@pytest.fixture
def demo_steps():
    if subprocess.run(["which", "make"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")
    return make_demo_steps()


def test_make_demo_says_how_to_run_things_afterwards(demo_steps):
    said = "\n".join(line for line in demo_steps if line.startswith("echo"))
    assert ".venv/bin/hf-maxsup --help" in said and ".venv/bin/python recipes/" in said
    assert ".venv/bin/python -m pytest" in said and "source .venv/bin/activate" in said


def test_make_demo_runs_twice(demo_steps, tmp_path):
    """The demo's recipe command, at tiny sizes, run twice into one output directory: the second run trains again
    (the demo passes --overwrite_output_dir) instead of stopping with a traceback."""
    (command,) = [line for line in demo_steps if "recipes/image_classification.py" in line]
    args = shlex.split(command)[2:]
    out = str(tmp_path / "fmnist-maxsup")
    args[args.index("--output_dir") + 1] = out
    tiny = [*TINY, "--save_strategy", "no"]
    run_recipe("image_classification", *args, *tiny)
    first = os.path.getmtime(os.path.join(out, "model.safetensors"))
    run_recipe("image_classification", *args, *tiny)
    assert os.path.getmtime(os.path.join(out, "model.safetensors")) > first


@pytest.mark.parametrize("name", list(RECIPES))
def test_help_is_quick_and_starts_with_the_loss(name):
    code = (
        "import runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('LOADED', *sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, RECIPES[name]], capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    help_text, loaded = result.stdout.rsplit("LOADED", 1)
    assert loaded.split() == []  # nothing heavy: the help answers in well under a second on an idle machine
    options = [line.split()[0] for line in help_text.splitlines() if line.startswith("  --")]
    assert options[:3] == ["--help_all", "--loss", "--loss_alpha"]
    assert {"--model_name_or_path", "--max_train_samples", "--overwrite_output_dir"} <= set(options)
    assert "--output_dir," in help_text  # transformers' options are named, --help_all lists them
    assert "--help_all lists them all" in help_text.replace("\n", " ")
    assert len(help_text.splitlines()) < 250 and seconds < 60


def test_help_all_lists_transformers_options_after_the_loss():
    result = subprocess.run(
        [sys.executable, RECIPES["image_classification"], "--help_all"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert text.index("--loss {ce,ls,maxsup}") < text.index("--model_name_or_path") < text.index("--learning_rate")
