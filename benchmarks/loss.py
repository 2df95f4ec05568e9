"""Forward + backward time and peak extra memory of CE / LS / MaxSup losses, each candidate in a fresh process.

    python benchmarks/loss.py                       # default shapes, fp32 + bf16, 3 shuffled rounds
    python benchmarks/loss.py --steady              # the page-fault-free regime (see below)
    python benchmarks/loss.py --shapes 4x512x32000 --dtypes float32 --rounds 5 --repeats 7
    python benchmarks/loss.py --candidates ce,ours_maxsup,ours_maxsup_inplace --json out.json

Candidates (``--candidates``, comma separated):
    ce                   F.cross_entropy
    ce_ls                F.cross_entropy(label_smoothing=0.1)
    hf_label_smoother    transformers.trainer_pt_utils.LabelSmoother(epsilon=0.1), fed {"logits": x}
    maxsup_direct        direct MaxSup formula in eager PyTorch: CE + a * mean_kept(max - mean)
    ours_ls              hf_maxsup._fused.fused_cross_entropy(kind="ls")
    ours_ls_inplace      same, inplace_backward=True (gradient written into the logits' buffer)
    ours_maxsup          fused_cross_entropy(kind="maxsup")
    ours_maxsup_inplace  same, in place

Method.
* Every (candidate, shape, dtype) runs in its own fresh Python process (``--child`` mode of this file),
  so that allocator state, page-fault history and thread pools of one candidate never help another.
  The list of jobs is shuffled anew in each of ``--rounds`` rounds; the reported time is the median over
  rounds of each process's median over ``--repeats`` timed iterations (after ``--warmup`` untimed ones
  and a tiny-shape warm-up that builds/loads kernels).  Ratios are to plain ``F.cross_entropy`` measured
  in the same run.
* One timed iteration = ``loss = fn(logits, labels); loss.backward()`` on a leaf ``logits`` tensor that
  requires grad (the gradient lands in ``logits.grad``, exactly what the next layer's backward would
  get).  Between iterations, untimed, the logits are restored from a master copy (the in-place variants
  destroy them) and ``logits.grad`` is dropped, so every iteration allocates its buffers afresh as a
  training step does.  Labels have 10 % ignored (-100) positions; alpha = 0.1.
* Peak extra memory: before the first full-size iteration, the process's peak-RSS mark is reset
  (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and VmRSS is read; after forward + backward, VmHWM
  is read.  extra = VmHWM - VmRSS_before, i.e. everything the loss and its backward touched beyond the
  inputs, INCLUDING the logits' gradient (1.0 x logits for any out-of-place method).  Reported as a
  multiple of one logits tensor (its dtype's bytes).  Without clear_refs the ``ru_maxrss`` delta is used
  (a lower bound, marked with "~").
* Two regimes, as in docs/performance.md: page faults dominate on these machines.
    default:  glibc as it comes; every fresh logits-sized buffer is a new mmap and page-faults
              (writing 250 MiB into a fresh buffer costs ~3x writing into a resident one);
    --steady: THP_MEM_ALLOC_ENABLE=1 (torch's 2 MiB-aligned, MADV_HUGEPAGE allocations) and glibc
              told to keep freed memory (GLIBC_TUNABLES: mmap_max=0, huge trim_threshold), so that
              after the first iteration there are no page faults: it isolates the arithmetic and the
              memory traffic.  The "page faults / iter" column shows whether that held: on a VM whose
              host reclaims guest memory (or with THP compaction) it may not, and then the
              "steady" numbers are not steady.
* The machine is shared (2 cores): run the comparison when nothing else runs, and trust ratios
  measured in the same run more than absolute milliseconds.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
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

CANDIDATES = {
    "ce": "`F.cross_entropy`",
    "ce_ls": "`F.cross_entropy(label_smoothing=0.1)`",
    "hf_label_smoother": "transformers `LabelSmoother(0.1)`",
    "maxsup_direct": "direct MaxSup `CE + α(max − mean)`",
    "ours_ls": "**ours LS**",
    "ours_ls_inplace": "**ours LS, in place**",
    "ours_maxsup": "**ours MaxSup**",
    "ours_maxsup_inplace": "**ours MaxSup, in place**",
}
DEFAULT_SHAPES = ["256x1000", "8x128x32000", "4x512x32000"]
DEFAULT_DTYPES = ["float32", "bfloat16"]
STEADY_ENV = {
    "THP_MEM_ALLOC_ENABLE": "1",
    # no mmap for big blocks (glibc caps mmap_threshold at 32 MiB, so mmap_max=0 is the knob) and no trimming:
    # freed logits-sized buffers stay in the heap and are reused
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736",
}


# ---------------------------------------------------------------------------------------------------
# child: one candidate, one shape, one dtype


def _load_fused():
    """hf_maxsup._fused without importing the whole package (which pulls in transformers)."""
    spec = importlib.util.spec_from_file_location(
        "_hf_maxsup_fused_bench", ROOT / "hf_maxsup" / "_fused.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make_fn(name):
    import torch.nn.functional as F

    if name == "ce":
        return lambda x, y: F.cross_entropy(
            x.view(-1, x.shape[-1]), y.view(-1), ignore_index=IGN
        )
    if name == "ce_ls":
        return lambda x, y: F.cross_entropy(
            x.view(-1, x.shape[-1]), y.view(-1), ignore_index=IGN, label_smoothing=ALPHA
        )
    if name == "hf_label_smoother":
        from transformers.trainer_pt_utils import LabelSmoother

        smoother = LabelSmoother(epsilon=ALPHA, ignore_index=IGN)
        return lambda x, y: smoother({"logits": x}, y)

    if name == "maxsup_direct":

        def direct(x, y):
            z = x.view(-1, x.shape[-1])
            yy = y.view(-1)
            keep = yy != IGN
            ce = F.cross_entropy(z, yy, ignore_index=IGN)
            reg = ((z.max(dim=-1).values - z.mean(dim=-1)) * keep).sum() / keep.sum()
            return ce + ALPHA * reg

        return direct
    if name.startswith("ours_"):
        fused = _load_fused()
        if not fused.is_available():
            print(
                f"warning: hf_maxsup kernel unavailable ({fused.kernel_info()['error']}); using the fallback",
                file=sys.stderr,
            )
        kind = "ls" if name.startswith("ours_ls") else "maxsup"
        inplace = name.endswith("_inplace")
        return lambda x, y: fused.fused_cross_entropy(
            x, y, kind=kind, alpha=ALPHA, inplace_backward=inplace
        )
    raise SystemExit(f"unknown candidate {name}")


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args):
    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split("x"))
    dtype = getattr(torch, args.dtype)
    K = shape[-1]
    fn = _make_fn(args.child)
    gen = torch.Generator().manual_seed(args.seed)

    def inputs(shp):
        x0 = torch.randn(shp, generator=gen, dtype=dtype).mul_(
            2
        )  # no logits-sized temporaries
        y = torch.randint(0, shp[-1], shp[:-1], generator=gen)
        y[torch.rand(shp[:-1], generator=gen) < 0.1] = IGN
        return x0, y

    faults = []

    def step(x, x0, y):
        x.grad = None
        with torch.no_grad():
            x.copy_(x0)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        loss = fn(x, y)
        loss.backward()
        t = time.perf_counter() - t0
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return t

    # tiny warm-up: kernel build/load, thread pools, lazy imports
    sx0, sy = inputs(
        shape[:-1][:1] + (min(K, 64),) if len(shape) == 2 else (1, 4, min(K, 64))
    )
    sx = sx0.clone().requires_grad_(True)
    for _ in range(2):
        step(sx, sx0, sy)
    del sx, sx0, sy

    x0, y = inputs(shape)
    x = torch.empty_like(x0).requires_grad_(True)
    with torch.no_grad():
        x.copy_(x0)  # resident, like logits just produced by the model
    logits_bytes = x0.numel() * x0.element_size()
    gc.collect()

    # peak extra memory of one forward + backward (first full-size iteration)
    exact = _reset_hwm()
    rss0 = _status_kib("VmRSS")
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_first = step(x, x0, y)
    if exact and rss0 is not None:
        extra = (_status_kib("VmHWM") - rss0) * 1024
    else:
        extra = (
            max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) * 1024
        )

    for _ in range(args.warmup):
        step(x, x0, y)
    faults.clear()
    times = [step(x, x0, y) for _ in range(args.repeats)]
    print(
        json.dumps(
            {
                "times": times,
                "first": t_first,
                "extra_bytes": extra,
                "extra_exact": exact,
                "logits_bytes": logits_bytes,
                "threads": torch.get_num_threads(),
                "faults": statistics.median(faults),
            }
        )
    )


# ---------------------------------------------------------------------------------------------------
# parent: fresh process per job, shuffled rounds, medians, Markdown table


def run_job(cand, shape, dtype, args):
    env = dict(os.environ)
    if args.steady:
        env.update(STEADY_ENV)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        cand,
        "--shape",
        shape,
        "--dtype",
        dtype,
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    p = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=args.timeout,
        check=False,
    )
    if p.returncode != 0:
        print(f"[{cand} {shape} {dtype}] failed:\n{p.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt_mem(x, exact=True):
    return ("" if exact else "~") + f"{x:.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--shapes",
        default=",".join(DEFAULT_SHAPES),
        help="comma separated, e.g. 256x1000,4x512x32000",
    )
    ap.add_argument(
        "--dtypes", default=",".join(DEFAULT_DTYPES), help="float32,bfloat16,float16"
    )
    ap.add_argument(
        "--candidates", default=",".join(CANDIDATES), help=",".join(CANDIDATES)
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="shuffled rounds (one fresh process per job per round)",
    )
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed iterations per process"
    )
    ap.add_argument(
        "--warmup", type=int, default=2, help="untimed full-size iterations per process"
    )
    ap.add_argument(
        "--steady",
        action="store_true",
        help="page-fault-free regime: THP_MEM_ALLOC_ENABLE=1 and glibc keeps freed memory",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads in each process (0: default)",
    )
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--json", help="also write the raw results here")
    # child mode
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    shapes = [s for s in args.shapes.split(",") if s]
    dtypes = [d for d in args.dtypes.split(",") if d]
    cands = [c for c in args.candidates.split(",") if c]
    for c in cands:
        if c not in CANDIDATES:
            raise SystemExit(
                f"unknown candidate {c}; choose from {', '.join(CANDIDATES)}"
            )
    if "ce" not in cands:
        cands.insert(0, "ce")  # the reference of every ratio
    jobs = [(c, s, d) for s in shapes for d in dtypes for c in cands]
    rng = random.Random(args.seed)
    results = {j: [] for j in jobs}
    t0 = time.time()
    for r in range(args.rounds):
        order = jobs[:]
        rng.shuffle(order)
        for j in order:
            res = run_job(*j, args)
            if res is not None:
                results[j].append(res)
        print(
            f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)",
            file=sys.stderr,
        )

    summary = {}
    for j, rs in results.items():
        if not rs:
            continue
        summary[j] = {
            "ms": statistics.median(statistics.median(x["times"]) for x in rs) * 1e3,
            "first_ms": statistics.median(x["first"] for x in rs) * 1e3,
            "mem": statistics.median(x["extra_bytes"] / x["logits_bytes"] for x in rs),
            "mem_exact": all(x["extra_exact"] for x in rs),
            "faults": statistics.median(x["faults"] for x in rs),
            "threads": rs[0]["threads"],
            "n": len(rs),
        }

    regime = (
        "steady (THP_MEM_ALLOC_ENABLE=1, freed memory kept)"
        if args.steady
        else "default (glibc, page faults)"
    )
    print(f"\n## Loss forward + backward, {regime}\n")
    print(
        f"alpha = {ALPHA}, 10 % ignored labels, {summary[next(iter(summary))]['threads'] if summary else '?'} "
        f"threads, {args.rounds} rounds x {args.repeats} repeats, fresh process per measurement, medians. "
        "Time: ms and × plain `F.cross_entropy` of the same shape/dtype in this run. "
        "Memory: peak RSS beyond the inputs during forward + backward, × one logits tensor "
        "(includes the logits' gradient). Page faults: minor faults per timed iteration (median); "
        "a logits-sized fp32 buffer of 4·512·32000 is 64k 4-KiB pages.\n"
    )
    for s in shapes:
        for d in dtypes:
            ref = summary.get(("ce", s, d))
            print(f"### logits {s.replace('x', '×')} {d}\n")
            print(
                "| implementation | ms | × CE | extra memory × logits | page faults / iter |"
            )
            print("|---|---:|---:|---:|---:|")
            for c in cands:
                m = summary.get((c, s, d))
                if m is None:
                    print(f"| {CANDIDATES[c]} | failed | | | |")
                    continue
                ratio = f"{m['ms'] / ref['ms']:.2f}" if ref else "?"
                print(
                    f"| {CANDIDATES[c]} | {m['ms']:.2f} | {ratio} | {fmt_mem(m['mem'], m['mem_exact'])} "
                    f"| {m['faults']:.0f} |"
                )
            print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "results": {"|".join(j): v for j, v in results.items()},
                    "summary": {"|".join(j): v for j, v in summary.items()},
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
