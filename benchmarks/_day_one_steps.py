"""The four steps of `gpu_day_one.py`, each run in a process of its own (`gpu_day_one.py --step NAME`): the Triton
tests on the device, the loss, the fused linear loss and a training step. A step reports each result as soon as it has
it, as one record (`emit`, a line `@@{json}` on stdout that the parent collects); `_day_one_report.py` renders them.

The loss and linear steps run the children of `benchmarks/loss.py` and `benchmarks/linear_loss.py` in this one process
(their `child(args)`, the same measurement as in those scripts' fresh processes): on a GPU, `max_memory_allocated` and
CUDA events are per call, and the minutes of a lent GPU are too few for a process per job.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import linear_loss as linear_bench  # noqa: E402
import loss as loss_bench  # noqa: E402
import trainer as trainer_bench  # noqa: E402

__all__ = ["LINEAR_CANDIDATES", "LOSS_CANDIDATES", "SIZES", "STEPS", "TEST_FILES", "TRAIN_CANDIDATES", "emit"]

TEST_FILES = ["tests/kernels/test_triton_losses.py", "tests/kernels/test_triton_backend.py"]
LOSS_CANDIDATES = [
    "ce", "ce_ls", "hf_label_smoother", "liger_ls", "ours_ls", "ours_ls_inplace", "ours_maxsup", "ours_maxsup_inplace",
]  # fmt: skip
LINEAR_CANDIDATES = ["linear_ce", "linear_ce_ls", "liger_flce_ls", "ours_linear_ls", "ours_linear_maxsup"]
LIGER = {"liger_ls", "liger_flce_ls"}
# table row -> (loss, fused_linear_loss); "stock" is transformers' Trainer with label_smoothing_factor=0.1
TRAIN_CANDIDATES = {
    "stock Trainer, label_smoothing_factor=0.1": ("stock", False),
    "MaxSupTrainer, loss=ls": ("ls", False),
    "MaxSupTrainer, loss=maxsup": ("maxsup", False),
    "MaxSupTrainer, loss=ls, fused_linear_loss=True": ("ls", True),
    "MaxSupTrainer, loss=maxsup, fused_linear_loss=True": ("maxsup", True),
}
# What each step runs on the GPU and in the dry run (CPU, Triton in its interpreter, tiny shapes).
SIZES = {
    "gpu": {
        # the AOT compile checks are not correctness (and need no GPU): CI runs them
        "tests": {"select": "not aot", "workers": 4},
        "loss": {"shapes": loss_bench.DEFAULT_SHAPES["cuda"], "dtypes": ["bfloat16", "float32"], "rounds": 2,
                 "repeats": 10, "warmup": 3},
        "linear": {"shapes": ["8192x4096x128256"], "dtypes": ["bfloat16"], "rounds": 2, "repeats": 5, "warmup": 2},
        "train": {"vocab": 128256, "d_model": 1024, "layers": 2, "shape": "8x1024", "warmup": 3, "steps": 10},
    },
    "dry": {
        "tests": {"select": "first_index", "workers": 0},
        "loss": {"shapes": ["2x8x500"], "dtypes": ["bfloat16", "float32"], "rounds": 1, "repeats": 1, "warmup": 1},
        "linear": {"shapes": ["32x16x300"], "dtypes": ["bfloat16"], "rounds": 1, "repeats": 1, "warmup": 1},
        "train": {"vocab": 300, "d_model": 32, "layers": 1, "shape": "2x16", "warmup": 1, "steps": 2},
    },
}  # fmt: skip
# seconds a step keeps free before its deadline when it decides whether to start one more job
MARGIN_S = {"gpu": 8.0, "dry": 2.0}


def emit(record: dict) -> None:
    """Hands one record to the parent (the real stdout: the benchmarks' children print to a captured one)."""
    print("@@" + json.dumps(record), file=sys.__stdout__, flush=True)


def _mode(opts) -> str:
    return "dry" if opts.dry_run else "gpu"


def _device(opts) -> str:
    return "cpu" if opts.dry_run else "cuda"


# ---------------------------------------------------------------------------------------------------
# a. the Triton tests on the device


def _junit_counts(path: Path) -> dict:
    """Passed / failed / errors / skipped counts of a pytest JUnit XML report, and the first 20 failures."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        key = {"failure": "failed", "error": "errors", "skipped": "skipped", None: "passed"}[
            getattr(outcome, "tag", None)
        ]
        counts[key] += 1
        if key in ("failed", "errors") and len(counts["failures"]) < 20:
            message = (outcome.get("message") or outcome.text or "").strip().splitlines()
            test = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            counts["failures"].append({"test": test, "message": message[0][:300] if message else ""})
    return counts


def run_tests(opts) -> None:
    """Each Triton test file in a pytest process on the device (`HF_MAXSUP_TEST_DEVICE`), one record per file."""
    sizes = SIZES[_mode(opts)]["tests"]
    env = {**os.environ, "HF_MAXSUP_TEST_DEVICE": _device(opts)}  # TRITON_INTERPRET: set by the parent
    workers = sizes["workers"] if importlib.util.find_spec("xdist") else 0
    for path in TEST_FILES:
        left = opts.deadline - time.time()
        if left < 2 * MARGIN_S[_mode(opts)]:
            emit({"file": path, "status": "not run: out of time"})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "junit.xml"
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path, "-k", sizes["select"],
                   f"--junitxml={report}", *(["-n", str(workers)] if workers else [])]  # fmt: skip
            start = time.time()
            try:
                done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left - 2)
            except subprocess.TimeoutExpired:
                emit({"file": path, "status": f"timed out after {time.time() - start:.0f} s"})
                continue
            print(done.stdout[-20000:], done.stderr[-5000:], sep="\n", file=sys.stderr)
            record = {"file": path, "seconds": round(time.time() - start, 1), "exit": done.returncode}
            if report.exists():
                record.update(_junit_counts(report))
            else:
                record["status"] = f"pytest exit {done.returncode}: {(done.stdout + done.stderr).strip()[-300:]}"
            emit(record)


# ---------------------------------------------------------------------------------------------------
# b. and c. the loss and the fused linear loss: the benchmarks' children, in this process


def copy_bandwidth_gb_s(device: str) -> float:
    """The device's copy bandwidth in GB/s, bytes read plus bytes written: `loss.copy_bandwidth_gb_s` on a GPU; on a
    CPU (the dry run) the median of 5 copies of 64 MiB by `time.perf_counter`."""
    import torch

    if device == "cuda":
        return loss_bench.copy_bandwidth_gb_s(torch.device("cuda"))
    src = torch.ones(1 << 26, dtype=torch.uint8)
    dst = torch.empty_like(src)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        seconds.append(time.perf_counter() - start)
    return 2 * src.numel() / statistics.median(seconds) / 1e9


def _child_result(child, args) -> dict:
    """What a benchmark's `child(args)` prints (one JSON line), run in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        child(args)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _run_jobs(opts, bench, candidates: list[str], sizes: dict) -> None:
    """Every (candidate, shape, dtype) once per round, in a fresh shuffled order each round, one record each; Liger's
    candidates recorded as skipped where liger-kernel is not installed. Stops starting jobs near the deadline."""
    device = _device(opts)
    emit({"plan": {"shapes": sizes["shapes"], "dtypes": sizes["dtypes"]}})
    emit({"bandwidth_gb_s": copy_bandwidth_gb_s(device)})
    runnable = [c for c in candidates if c not in LIGER or importlib.util.find_spec("liger_kernel")]
    for c in sorted(set(candidates) - set(runnable)):
        emit({"candidate": c, "skipped": "liger-kernel is not installed (make gpu-wheels, docs/gpu.md)"})
    jobs = [(c, s, d) for s in sizes["shapes"] for d in sizes["dtypes"] for c in runnable]
    for r in range(sizes["rounds"]):
        order = jobs[:]
        random.Random(r).shuffle(order)
        for c, s, d in order:
            if time.time() > opts.deadline - MARGIN_S[_mode(opts)]:
                emit({"note": f"out of time in round {r + 1}: the later jobs were not run"})
                return
            # the dry run forces Triton (in its interpreter); on the GPU the automatic choice is what users get
            os.environ["HF_MAXSUP_BACKEND"] = "triton" if opts.dry_run and c.startswith("ours") else "auto"
            flags = ["--child", c, "--device", device, "--shape", s, "--dtype", d, "--seed", str(r)]
            flags += ["--repeats", str(sizes["repeats"]), "--warmup", str(sizes["warmup"])]
            try:
                emit(
                    {
                        "candidate": c,
                        "shape": s,
                        "dtype": d,
                        "round": r,
                        **_child_result(bench.child, bench.parse_args(flags)),
                    }
                )
            except Exception as err:  # one failing candidate (or a missing API on this stack) must not end the step
                emit(
                    {"candidate": c, "shape": s, "dtype": d, "round": r, "error": f"{type(err).__name__}: {err}"[:500]}
                )
            _free_memory(device)


def run_loss(opts) -> None:
    """b. the loss forward + backward at the sizes of `SIZES`, against CE, LS, LabelSmoother and Liger."""
    _run_jobs(opts, loss_bench, LOSS_CANDIDATES, SIZES[_mode(opts)]["loss"])


def run_linear(opts) -> None:
    """c. the fused linear loss against `F.linear` + CE (with and without LS) and Liger's fused linear CE."""
    _run_jobs(opts, linear_bench, LINEAR_CANDIDATES, SIZES[_mode(opts)]["linear"])


# ---------------------------------------------------------------------------------------------------
# d. a training step


def _train_once(kind: str, fused: bool, sizes: dict, device: str, output_dir: str) -> dict:
    """Steps/s (after `warmup` untimed steps), peak device memory and mean training loss of one trainer."""
    # here, not at the top: the other steps' processes need neither torch nor transformers
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    batch, length = map(int, sizes["shape"].split("x"))
    build = argparse.Namespace(
        steps=sizes["warmup"] + sizes["steps"], **{k: sizes[k] for k in ("vocab", "d_model", "layers")}
    )
    model, rows, collator = trainer_bench.build("llama", build, batch, length)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == sizes["warmup"]:
                sync()
                self.start = time.perf_counter()

    # bf16 autocast on the CPU too: the dry run takes the GPU run's mixed-precision path
    common = dict(output_dir=output_dir, per_device_train_batch_size=batch, max_steps=build.steps, save_strategy="no",
                  report_to=[], seed=0, disable_tqdm=True, logging_steps=10**6, use_cpu=device == "cpu",
                  bf16=True)  # fmt: skip
    if kind == "stock":
        trainer_cls, args = Trainer, TrainingArguments(label_smoothing_factor=0.1, **common)
    else:
        trainer_cls, args = MaxSupTrainer, MaxSupTrainingArguments(loss=kind, fused_linear_loss=fused, **common)
    _free_memory(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timer = Timer()
    trainer = trainer_cls(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[timer])
    out = trainer.train()
    sync()
    elapsed = time.perf_counter() - timer.start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del trainer, model
    _free_memory(device)
    return {"steps_per_s": sizes["steps"] / elapsed, "peak_bytes": peak, "train_loss": out.training_loss}


def run_train(opts) -> None:
    """d. a Llama-body causal LM: the stock Trainer with label smoothing against MaxSupTrainer, fused and not."""
    sizes = SIZES[_mode(opts)]["train"]
    emit({"sizes": sizes})
    for label, (kind, fused) in TRAIN_CANDIDATES.items():
        if time.time() > opts.deadline - MARGIN_S[_mode(opts)]:
            emit({"trainer": label, "skipped": "out of time"})
            continue
        try:
            with tempfile.TemporaryDirectory() as tmp:
                emit({"trainer": label, **_train_once(kind, fused, sizes, _device(opts), tmp)})
        except Exception as err:  # one failing trainer must not end the step
            emit({"trainer": label, "error": f"{type(err).__name__}: {err}"[:500]})


STEPS = {"tests": run_tests, "loss": run_loss, "linear": run_linear, "train": run_train}
