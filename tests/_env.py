"""The environment of the tests' subprocesses: this checkout's package and test helpers first on the path, so that a
launched process tests the code beside these tests, not whatever hf_maxsup is installed."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# The scripts the tests launch (also under `accelerate launch`): a tiny training run, and FSDP relabelled for the CPU.
TINY_RUN = str(TESTS / "distributed" / "tiny_run.py")
FSDP_ON_CPU = str(TESTS / "distributed" / "fsdp_on_cpu.py")


def subprocess_env(**extra: str) -> dict[str, str]:
    """`os.environ` with `PYTHONPATH` = tests, repository root, then the inherited path; plus `extra`."""
    path = [str(TESTS), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}


def run_one_and_two_processes(
    script: str, output_root, *args: str, batch_size: int = 8, env: dict[str, str] | None = None
) -> dict[str, Path]:
    """Runs `script` once in one process with `--per_device_train_batch_size batch_size` and once in two DDP processes
    (gloo on CPU) with half of it, the same global batch; returns their output folders, `one` and `two`. `env` adds
    to the environment of [`subprocess_env`].

    `accelerate launch --cpu` picks the MPI launcher; `--multi_gpu` is the torchrun launcher, which runs on CPU too.
    """
    commands = {
        "one": [sys.executable, script, "--per_device_train_batch_size", str(batch_size)],
        "two": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            script,
            "--per_device_train_batch_size",
            str(batch_size // 2),
        ],
    }
    outputs = {}
    for name, command in commands.items():
        outputs[name] = Path(output_root) / name
        result = subprocess.run(
            [*command, *args, "--output_dir", str(outputs[name])],
            env=subprocess_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return outputs
