"""The machinery the loss benchmarks share (`benchmarks/loss.py`, `benchmarks/linear_loss.py`): one fresh process per
(candidate, shape, dtype) job in shuffled rounds, its time and peak-memory probes, the medians over the rounds, and
the command line and JSON report they have in common. Not a benchmark itself: each benchmark script imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 0.1
IGN = -100
NO_GPU = (
    "--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False); run it on a machine with "
    "a GPU, or drop --device for the CPU benchmark."
)


# ---------------------------------------------------------------------------------------------------
# child: the probes of one job's process


def status_kib(field: str) -> int | None:
    """A `kB` field of `/proc/self/status` (e.g. `VmRSS`, `VmHWM`), or None where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_hwm() -> bool:
    """Resets the process's peak-RSS mark (`VmHWM`); False where `/proc/self/clear_refs` cannot be written."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed_cpu(run, faults: list) -> float:
    """Seconds `run()` takes by `time.perf_counter`; the minor page faults it caused are appended to `faults`."""
    import resource

    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    run()
    t = time.perf_counter() - t0
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return t


def first_step_peak(step, *inputs) -> tuple[float, int, bool]:
    """Runs `step(*inputs)` once and measures the memory it touched beyond what the process held before.

    The peak-RSS mark is reset and VmRSS read before, VmHWM read after; without clear_refs, the `ru_maxrss` delta
    (a lower bound).

    Returns:
        `tuple[float, int, bool]`: what `step` returned (its time), the extra bytes, and whether they are exact.
    """
    import resource

    exact = reset_hwm()
    rss0 = status_kib("VmRSS")
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_first = step(*inputs)
    if exact and rss0 is not None:
        return t_first, (status_kib("VmHWM") - rss0) * 1024, True
    return t_first, max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) * 1024, False


def cpu_measurements(step, inputs: tuple, faults: list, args, logits_bytes: int) -> dict:
    """A CPU job's measurements, its inputs resident: the first full-size `step(*inputs)` with the memory it touched
    ([`first_step_peak`]), `args.warmup` untimed steps, then `args.repeats` timed ones with their median page faults.

    Args:
        step (`Callable`): one timed iteration, returning its seconds and appending its page faults to `faults`
            (see [`timed_cpu`]).
        logits_bytes (`int`): the size of one logits tensor of the job, the unit of its memory.
    """
    t_first, extra, exact = first_step_peak(step, *inputs)
    for _ in range(args.warmup):
        step(*inputs)
    faults.clear()
    times = [step(*inputs) for _ in range(args.repeats)]
    return {
        "times": times,
        "first": t_first,
        "extra_bytes": extra,
        "extra_exact": exact,
        "logits_bytes": logits_bytes,
        "faults": statistics.median(faults),
    }


def timed_cuda(run, start, end) -> float:
    """Seconds `run()` takes on the current stream, between the CUDA events `start` and `end`."""
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def cuda_extra_bytes(run) -> int:
    """Peak `torch.cuda.max_memory_allocated` during `run()` beyond what was allocated before it."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    allocated = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - allocated


# ---------------------------------------------------------------------------------------------------
# parent: fresh process per job, shuffled rounds, medians, report


def run_job(script: str, cand: str, shape: str, dtype: str, args, env: dict[str, str]) -> dict | None:
    """Runs one job in a fresh `script --child` process, `env` added to its environment; its measurements, or None
    (with the error on stderr) if it failed."""
    env = {**os.environ, **env}
    # the children import hf_maxsup from this checkout, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, script, "--child", cand, "--device", args.device, "--shape", shape, "--dtype", dtype]
    for flag in ("repeats", "warmup", "seed", "threads"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout, check=False)
    if p.returncode != 0:
        print(f"[{cand} {shape} {dtype}] failed:\n{p.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_rounds(jobs: list[tuple], args, run) -> dict[tuple, list[dict]]:
    """Every job once per round, in a fresh shuffled order each round, by `run(*job, args)`; {job: [child results]}."""
    rng = random.Random(args.seed)
    results = {j: [] for j in jobs}
    t0 = time.time()
    for r in range(args.rounds):
        order = jobs[:]
        rng.shuffle(order)
        for j in order:
            res = run(*j, args)
            if res is not None:
                results[j].append(res)
        print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    return results


def summarise(rs: list[dict]) -> dict:
    """Medians over the rounds of one job's child results."""
    m = {
        "ms": statistics.median(statistics.median(x["times"]) for x in rs) * 1e3,
        "first_ms": statistics.median(x["first"] for x in rs) * 1e3,
        "mem": statistics.median(x["extra_bytes"] / x["logits_bytes"] for x in rs),
        "mem_exact": all(x["extra_exact"] for x in rs),
        "logits_bytes": rs[0]["logits_bytes"],
        "backend": rs[0]["backend"],
        "reasons": rs[0]["reasons"],
        "threads": rs[0]["threads"],
        "n": len(rs),
    }
    if "faults" in rs[0]:
        m["faults"] = statistics.median(x["faults"] for x in rs)
    return m


def parser(doc: str, candidates: dict, *, shapes_help: str, warmup: int, warmup_help: str, timeout: int):
    """The command line the benchmarks share (a benchmark adds its own options), with the hidden child mode."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--shapes", help=shapes_help)
    ap.add_argument("--dtypes", help="float32,bfloat16,float16 (default: per device)")
    ap.add_argument("--candidates", default=",".join(candidates), help=",".join(candidates))
    ap.add_argument("--rounds", type=int, default=3, help="shuffled rounds (one fresh process per job per round)")
    ap.add_argument("--repeats", type=int, default=5, help="timed iterations per process")
    ap.add_argument("--warmup", type=int, default=warmup, help=warmup_help)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each process (0: default)")
    ap.add_argument("--timeout", type=int, default=timeout)
    ap.add_argument("--json", help="also write the raw results here")
    # child mode
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    return ap


def check_gpu() -> None:
    """Stops the benchmark before any job when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(NO_GPU)


def selection(args, candidates: dict, baseline: str, gpu_only: dict, default_shapes: dict, default_dtypes: dict):
    """What to run: shapes, dtypes and candidates from the command line (per-device defaults), the baseline of the
    ratios added when not asked for, the GPU-only candidates set aside on a CPU.

    Returns:
        `tuple[list[str], list[str], list[str], dict[str, str]]`: shapes, dtypes, candidates to run, and the
        skipped ones with the reason.
    """
    shapes = [s for s in (args.shapes or ",".join(default_shapes[args.device])).split(",") if s]
    dtypes = [d for d in (args.dtypes or ",".join(default_dtypes[args.device])).split(",") if d]
    cands = [c for c in args.candidates.split(",") if c]
    for c in cands:
        if c not in candidates:
            raise SystemExit(f"unknown candidate {c}; choose from {', '.join(candidates)}")
    if baseline not in cands:
        cands.insert(0, baseline)  # the reference of every ratio
    skipped = {c: gpu_only[c] for c in cands if c in gpu_only and args.device == "cpu"}
    for c, why in skipped.items():
        print(f"note: {c} skipped: {why}", file=sys.stderr)
    return shapes, dtypes, [c for c in cands if c not in skipped], skipped


def write_json(path: str, args, skipped: dict, results: dict, summary: dict) -> None:
    """The raw results and their summaries, jobs keyed `candidate|shape|dtype`."""
    with open(path, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "skipped": skipped,
                "results": {"|".join(j): v for j, v in results.items()},
                "summary": {"|".join(j): v for j, v in summary.items()},
            },
            f,
            indent=1,
        )


def print_backend_reasons(reasons: dict | None) -> None:
    """Why the automatic choice of hf_maxsup's backend fell where it did."""
    if reasons:
        print(
            "hf_maxsup backends on this device (auto): "
            + "; ".join(f"{b}: {why or 'usable'}" for b, why in reasons.items())
            + "\n"
        )
