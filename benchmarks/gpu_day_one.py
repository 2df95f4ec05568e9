"""GPU day one: everything GPU-related about hf_maxsup measured by one command, in the minutes a lent GPU gives.

    python benchmarks/gpu_day_one.py --output_dir DIR             # one NVIDIA GPU: about 5 minutes, at most --budget_s
    python benchmarks/gpu_day_one.py --dry-run --output_dir DIR   # a CPU: tiny shapes, Triton in its interpreter
    python benchmarks/gpu_day_one.py --steps loss,train --output_dir DIR   # some steps only (after a time-out)

Four steps, in this order, each in a process of its own (a crash or a CUDA error in one leaves the others), each
appended to DIR/day_one.md and written into DIR/day_one.json as soon as it ends, so that a time-out still leaves the
first results (the processes' output goes to DIR/day_one.log):

  a. tests:  the Triton tests (tests/kernels/test_triton_losses.py, test_triton_backend.py) on the GPU
             (HF_MAXSUP_TEST_DEVICE=cuda) against the float64 reference: every loss, reduction and dtype, ignored
             rows, ties (the compiled kernel's first-index rule: the interpreter does not check it), soft targets,
             distillation, K = 32k and 128k, in place; pass/fail counts per file and the failures;
  b. loss:   forward + backward at 8·1024 × 32000 and 4·4096 × 128256, bf16 and fp32 (`benchmarks/loss.py`'s
             measurement): CUDA-event time and `max_memory_allocated` beyond the logits, against `F.cross_entropy`
             (with and without label_smoothing=0.1), transformers' `LabelSmoother`, Liger's CE with label smoothing and
             the bandwidth floor (the logits read once and the gradient written once at the measured copy bandwidth);
  c. linear: the fused linear loss at N × H × V = 8192 × 4096 × 128256 bf16 (`benchmarks/linear_loss.py`'s
             measurement) against `F.linear` + CE and Liger's fused linear CE with label smoothing;
  d. train:  a Llama-body causal LM (V = 128,256, bf16 autocast): `MaxSupTrainer` fused and unfused against the stock
             `Trainer(label_smoothing_factor=0.1)`: steps/s, peak memory and the mean training loss.

Then the issue's targets, checked against the worst case measured. Liger-Kernel is skipped where it is not installed
(`make gpu-wheels` downloads it for the GPU machine: docs/gpu.md). Needs torch, transformers and, on a GPU, triton;
never datasets, evaluate or trl.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _day_one_report as report  # noqa: E402
from _day_one_steps import STEPS  # noqa: E402

# seconds each later step is guaranteed while an earlier one runs (GPU run; the dry run has no such squeeze)
RESERVE_S = {"tests": 0, "loss": 90, "linear": 40, "train": 60}
GRACE_S = 15  # after a step's deadline, before its process group is killed
PACKAGES = ["torch", "triton", "transformers", "accelerate", "huggingface_hub", "peft", "liger-kernel", "numpy"]


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _device_name(dry_run: bool) -> str:
    """The GPU as `nvidia-smi` names it (the parent never initialises CUDA: its children need the memory)."""
    if dry_run:
        return "CPU (dry run: Triton in its interpreter)"
    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown (no git)"


def _header(meta: dict) -> str:
    rows = "".join(f"| {k} | {v} |\n" for k, v in meta.items())
    return f"# GPU day one: {meta['device']}, {meta['date']}\n\n| | |\n|---|---|\n{rows}\n"


def _read(stream, records: list, log) -> None:
    """Collects a step's `@@` records; everything else it prints goes to the log."""
    for line in stream:
        if line.startswith("@@"):
            records.append(json.loads(line[2:]))
        else:
            log.write(line)
    log.flush()


def run_step(name: str, args, deadline: float, log) -> dict:
    """Runs one step in a fresh process (its own process group, killed whole GRACE_S after `deadline`).

    Returns:
        `dict`: `status` (done, failed with its exit code, or timed out), `seconds` and the step's `records`.
    """
    cmd = [sys.executable, __file__, "--step", name, "--deadline", str(deadline), "--output_dir", args.output_dir]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the dry run's Triton kernels run in the interpreter, which must be chosen before triton is imported
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    # the steps import hf_maxsup from this checkout, installed or not (the GPU machine has it on PYTHONPATH only)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    log.write(f"\n===== step {name} =====\n")
    log.flush()
    start, records = time.time(), []
    proc = subprocess.Popen(cmd + (["--dry-run"] if args.dry_run else []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True, start_new_session=True)  # fmt: skip
    reader = threading.Thread(target=_read, args=(proc.stdout, records, log), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.time() + GRACE_S))
        status = "done" if code == 0 else f"failed (exit {code}: the log has the traceback)"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "timed out: the rows below are those measured before"
    reader.join(timeout=10)
    return {"status": status, "seconds": round(time.time() - start, 1), "records": records}


def _write(out: Path, meta: dict, steps: dict, markdown: str) -> None:
    """The JSON (rewritten whole, so that it is valid after every step) and the Markdown as far as it goes."""
    tmp = out / "day_one.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "steps": steps}, indent=1))
    tmp.replace(out / "day_one.json")
    (out / "day_one.md").write_text(markdown)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--output_dir", required=True, help="where day_one.md, day_one.json and day_one.log go")
    ap.add_argument("--dry-run", action="store_true", help="on a CPU: tiny shapes, Triton in its interpreter")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma separated, of {','.join(STEPS)} (default: all)")
    ap.add_argument(
        "--budget_s", type=float, default=420.0, help="seconds for all steps (default 420: two tries fit 15 minutes)"
    )
    ap.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = [s for s in args.steps.split(",") if s not in STEPS]
    if unknown:
        ap.error(f"--steps: unknown {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    return args


def _check_gpu(args) -> None:
    """Stops before any step when a GPU run finds no GPU (the dry run is the CPU's)."""
    if args.dry_run:
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA GPU: run this on the GPU machine (docs/gpu.md), or add --dry-run here.")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.step:
        STEPS[args.step](args)
        return 0
    _check_gpu(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    meta = {"device": _device_name(args.dry_run), "date": datetime.date.today().isoformat(), "commit": _commit(),
            "mode": "dry run" if args.dry_run else "GPU", **_versions()}  # fmt: skip
    markdown, steps = _header(meta), {}
    names = args.steps.split(",")
    with open(out / "day_one.log", "w") as log:
        for i, name in enumerate(names):
            reserve = 0 if args.dry_run else sum(RESERVE_S[later] for later in names[i + 1 :])
            steps[name] = run_step(name, args, start + args.budget_s - reserve, log)
            section = report.render_step(name, steps[name])
            markdown += section
            _write(out, meta, steps, markdown)
            print(section, flush=True)
    targets = report.render_targets(steps, args.dry_run)
    _write(out, meta, steps, markdown + targets)
    print(targets + f"\nAll steps: {time.time() - start:.0f} s; files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
