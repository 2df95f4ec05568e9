"""Forward + backward time and peak extra memory of the fused linear losses (hidden @ W.T -> loss), each candidate in a
fresh process.

    python benchmarks/linear_loss.py                    # CPU: 1024x512x32000 fp32, 3 shuffled rounds
    python benchmarks/linear_loss.py --device cuda      # GPU: 8192x4096x128256 and 16384x1024x32000, bf16 + fp32
    python benchmarks/linear_loss.py --shapes 256x512x32000 --dtypes float32,bfloat16 --rounds 5 --repeats 7
    python benchmarks/linear_loss.py --candidates linear_ce,ours_linear_maxsup --json out.json

Shapes are ``NxHxV``: N tokens (rows of the hidden states), hidden size H, vocabulary V; the logits would be N×V.

Candidates (``--candidates``, comma separated):
    linear_ce                 F.linear + F.cross_entropy (the reference of every ratio; always run)
    linear_ce_ls              F.linear + F.cross_entropy(label_smoothing=0.1)
    linear_hf_label_smoother  F.linear + transformers.trainer_pt_utils.LabelSmoother(epsilon=0.1)
    torch_linear_ce           torch F.linear_cross_entropy with options=nn.LinearCrossEntropyOptions() (torch's
                              chunked path; options=None, its default, would be F.linear + F.cross_entropy)
    torch_linear_ce_ls        same with label_smoothing=0.1: the chunked path does not take label smoothing and falls
                              back to the full logits with a warning (listed under the tables)
    ours_linear_ce            hf_maxsup.linear.fused_linear_loss(loss="ce"), default chunk size
    ours_linear_ls            same, loss="ls", alpha=0.1
    ours_linear_maxsup        same, loss="maxsup", alpha=0.1
    liger_flce_ls             liger_kernel LigerFusedLinearCrossEntropyLoss(label_smoothing=0.1) (GPU only: skipped
                              on CPU)

The ``ours_*`` candidates run with HF_MAXSUP_BACKEND=auto; the "backend" column is what
``hf_maxsup.kernels.kernel_info`` reports in that process ("—" for the implementations that are not hf_maxsup's),
and the rows per chunk they used (``hf_maxsup.linear.default_chunk_size``) is listed under the tables.

Method, both devices (the machinery of ``benchmarks/loss.py``, shared in ``benchmarks/_harness.py``).
* Every (candidate, shape, dtype) runs in its own fresh Python process (``--child`` mode of this file), the jobs
  shuffled anew in each of ``--rounds`` rounds; the reported time is the median over rounds of each process's
  median over ``--repeats`` timed iterations, after a tiny-shape warm-up (kernel build/load), the memory
  iteration and ``--warmup`` untimed full-size ones.  Ratios are to ``linear_ce`` measured in the same run.
* One timed iteration = ``fn(hidden, weight, labels).backward()`` on leaf ``hidden`` (N, H) and ``weight`` (V, H)
  that require grad, so both gradients are produced, as the model's backward needs them.  Between iterations,
  untimed, ``hidden.grad`` and ``weight.grad`` are dropped, so every iteration allocates its buffers afresh as a
  training step does.  Inputs: ``hidden`` ~ N(0, 1), ``weight`` ~ N(0, 4/H) (logits of standard deviation about
  2, as in the loss benchmark); labels have 10 % ignored (-100) positions; alpha = 0.1; no bias.
* Extra memory = peak memory of one forward + backward beyond the inputs, minus the bytes of ``hidden.grad`` and
  ``weight.grad`` (every candidate must return them), as a multiple of one N×V logits tensor in the input dtype.
  What remains is the logits, their gradient and the temporaries: ~2-3 for the unfused paths, well below 1 for a
  chunked one (plus, for half-precision inputs, whatever float32 accumulators an implementation keeps).

CPU (``--device cpu``, the default).
* Time: ``time.perf_counter``.  Memory: the peak-RSS mark is reset (``/proc/self/clear_refs``) and VmRSS read
  before the first full-size iteration, VmHWM read after it (without clear_refs: the ``ru_maxrss`` delta, a lower
  bound marked "~").  Page faults: minor faults per timed iteration, median (glibc as it comes: a fresh
  logits-sized buffer is a fresh mmap, and page faults are much of the unfused paths' cost).
* The machine is shared: trust ratios measured in the same run more than absolute milliseconds.

GPU (``--device cuda``; exits with an error when torch sees no GPU).
* Time: CUDA events around the iteration on the current stream.  Memory: ``torch.cuda.max_memory_allocated()``
  during one forward + backward after the warm-up (so compilation and autotuning are not counted), minus
  ``memory_allocated()`` just before it, with the peak statistics reset in between.
"""

from __future__ import annotations

import gc
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402  (the machinery shared with loss.py)
from _harness import ALPHA, IGN  # noqa: E402

BASELINE = "linear_ce"
CANDIDATES = {
    "linear_ce": "`F.linear` + `F.cross_entropy`",
    "linear_ce_ls": "`F.linear` + `F.cross_entropy(label_smoothing=0.1)`",
    "linear_hf_label_smoother": "`F.linear` + transformers `LabelSmoother(0.1)`",
    "torch_linear_ce": "torch `F.linear_cross_entropy`, chunked",
    "torch_linear_ce_ls": "torch `F.linear_cross_entropy(label_smoothing=0.1)`, chunked asked",
    "ours_linear_ce": "**ours fused linear CE**",
    "ours_linear_ls": "**ours fused linear LS**",
    "ours_linear_maxsup": "**ours fused linear MaxSup**",
    "liger_flce_ls": "Liger `LigerFusedLinearCrossEntropyLoss(label_smoothing=0.1)`",
}
OURS = {"ours_linear_ce": "ce", "ours_linear_ls": "ls", "ours_linear_maxsup": "maxsup"}
GPU_ONLY = {"liger_flce_ls": "GPU only (Liger's kernels are Triton)"}
DEFAULT_SHAPES = {"cpu": ["1024x512x32000"], "cuda": ["8192x4096x128256", "16384x1024x32000"]}
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16", "float32"]}
COLUMNS = {
    "cpu": ["implementation", "backend", "ms", "× linear CE", "extra memory × logits", "page faults / iter"],
    "cuda": ["implementation", "backend", "ms", "× linear CE", "extra memory × logits"],
}


def parse_shape(text: str) -> tuple[int, int, int]:
    """`"NxHxV"` -> `(N, H, V)`: tokens, hidden size, vocabulary."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"shape {text!r}: expected NxHxV (tokens x hidden size x vocabulary), e.g. 1024x512x32000")
    return tuple(int(p) for p in parts)


# ---------------------------------------------------------------------------------------------------
# child: one candidate, one shape, one dtype


def _make_fn(name):
    """`fn(hidden, weight, labels) -> loss` for candidate `name`."""
    import torch
    import torch.nn.functional as F

    if name in ("linear_ce", "linear_ce_ls"):
        smoothing = ALPHA if name == "linear_ce_ls" else 0.0
        return lambda h, w, y: F.cross_entropy(F.linear(h, w), y, ignore_index=IGN, label_smoothing=smoothing)
    if name == "linear_hf_label_smoother":
        from transformers.trainer_pt_utils import LabelSmoother

        smoother = LabelSmoother(epsilon=ALPHA, ignore_index=IGN)
        return lambda h, w, y: smoother({"logits": F.linear(h, w)}, y)
    if name in ("torch_linear_ce", "torch_linear_ce_ls"):
        # options=None is torch's reference path (the full logits): the chunked path has to be asked for
        options = torch.nn.LinearCrossEntropyOptions()
        smoothing = ALPHA if name == "torch_linear_ce_ls" else 0.0
        return lambda h, w, y: F.linear_cross_entropy(
            h, w, y, ignore_index=IGN, label_smoothing=smoothing, options=options
        )
    if name == "liger_flce_ls":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(label_smoothing=ALPHA, ignore_index=IGN)
        return lambda h, w, y: liger(w, h, y)
    if name in OURS:
        from hf_maxsup.linear import fused_linear_loss

        return lambda h, w, y: fused_linear_loss(h, w, y, loss=OURS[name], alpha=ALPHA)
    raise SystemExit(f"unknown candidate {name}")


def _inputs(shape, dtype, gen, device):
    """Leaf `hidden` (N, H) and `weight` (V, H) that require grad, and labels (N,) with 10 % ignored positions."""
    import torch

    n, h, v = shape
    hidden = torch.randn(n, h, generator=gen, dtype=dtype, device=device).requires_grad_(True)
    weight = torch.randn(v, h, generator=gen, dtype=dtype, device=device).mul_(2 / h**0.5).requires_grad_(True)
    labels = torch.randint(0, v, (n,), generator=gen, device=device)
    labels[torch.rand(n, generator=gen, device=device) < 0.1] = IGN
    return hidden, weight, labels


def _grad_bytes(*leaves):
    return sum(t.grad.numel() * t.grad.element_size() for t in leaves)


def _warm_up(fn, shape, dtype, gen, device):
    """Two tiny-shape iterations: kernel build/load, thread pools, lazy imports."""
    n, h, v = shape
    tiny = _inputs((min(n, 64), min(h, 64), min(v, 64)), dtype, gen, device)
    for _ in range(2):
        tiny[0].grad = tiny[1].grad = None
        fn(*tiny).backward()


def child_cpu(args, fn, shape, dtype):
    """One CPU job: perf_counter times, peak-RSS extra memory beyond inputs and gradients, page faults."""
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    faults = []

    def step(hidden, weight, labels):
        hidden.grad = weight.grad = None
        return harness.timed_cpu(lambda: fn(hidden, weight, labels).backward(), faults)

    _warm_up(fn, shape, dtype, gen, "cpu")
    hidden, weight, labels = _inputs(shape, dtype, gen, "cpu")
    gc.collect()

    logits_bytes = shape[0] * shape[2] * hidden.element_size()
    measured = harness.cpu_measurements(step, (hidden, weight, labels), faults, args, logits_bytes)
    measured["extra_bytes"] -= _grad_bytes(hidden, weight)  # every candidate returns them
    return measured


def child_cuda(args, fn, shape, dtype):
    """One GPU job: CUDA-event times, max_memory_allocated extra memory beyond inputs and gradients."""
    import torch

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step(hidden, weight, labels):
        hidden.grad = weight.grad = None
        return harness.timed_cuda(lambda: fn(hidden, weight, labels).backward(), start, end)

    _warm_up(fn, shape, dtype, gen, device)
    hidden, weight, labels = _inputs(shape, dtype, gen, device)
    t_first = step(hidden, weight, labels)
    for _ in range(args.warmup):
        step(hidden, weight, labels)

    hidden.grad = weight.grad = None
    extra = harness.cuda_extra_bytes(lambda: fn(hidden, weight, labels).backward()) - _grad_bytes(hidden, weight)

    times = [step(hidden, weight, labels) for _ in range(args.repeats)]
    return {
        "times": times,
        "first": t_first,
        "extra_bytes": extra,
        "extra_exact": True,
        "logits_bytes": shape[0] * shape[2] * hidden.element_size(),
        "device_name": torch.cuda.get_device_name(device),
    }


def child(args):
    """Run one job in this process and print its measurements as one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    fn = _make_fn(args.child)
    run = child_cuda if args.device == "cuda" else child_cpu
    # recorded, not shown: the parent lists them under the tables (e.g. a fallback to the full logits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run(args, fn, parse_shape(args.shape), dtype)
    res["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    res["backend"], res["reasons"] = None, None
    if args.child in OURS:
        # asked after the runs, so that a backend chosen lazily at the first call is the one reported
        from hf_maxsup import kernels
        from hf_maxsup.linear import default_chunk_size

        info = kernels.kernel_info(torch.device(args.device), dtype)
        res["backend"], res["reasons"] = info["backend"], info.get("reasons")
        res["chunk_rows"] = default_chunk_size(*parse_shape(args.shape))
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res))


# ---------------------------------------------------------------------------------------------------
# parent: fresh process per job, shuffled rounds, medians, Markdown table


def run_job(cand, shape, dtype, args):
    """Run one job in a fresh child process; its measurements, or None (with the error on stderr) if it failed."""
    env = {"HF_MAXSUP_BACKEND": "auto"} if cand in OURS else {}
    return harness.run_job(__file__, cand, shape, dtype, args, env)


def _preamble(args, summary):
    first = summary[next(iter(summary))] if summary else {}
    where = (
        f"GPU ({first.get('device_name', '?')})"
        if args.device == "cuda"
        else f"CPU, torch threads: {first.get('threads', '?')}"
    )
    print(f"\n## Fused linear loss forward + backward, {where}\n")
    timer = "CUDA events" if args.device == "cuda" else "perf_counter"
    probe = "`torch.cuda.max_memory_allocated`" if args.device == "cuda" else "RSS"
    print(
        f"hidden (N, H) and weight (V, H) both require grad; alpha = {ALPHA}, 10 % ignored labels, {args.rounds} "
        f"rounds x {args.repeats} repeats, fresh process per measurement, medians. Backend: the hf_maxsup backend "
        "that served the row (`kernels.kernel_info` in that process), — for the other implementations. Time: ms "
        f"({timer}) and × `F.linear` + `F.cross_entropy` of the same shape/dtype in this run. Memory: peak {probe} "
        "during forward + backward beyond the inputs and beyond `hidden.grad` + `weight.grad` (which every "
        "candidate returns), × one N×V logits tensor in the input dtype."
        + (" Page faults: minor faults per timed iteration (median)." if args.device == "cpu" else "")
        + "\n"
    )


def _row(device, c, m, ref):
    """One table row: the measured cells, or a note in the ms column."""
    if not isinstance(m, dict):
        cells = [CANDIDATES[c], "", m]
    else:
        ratio = f"{m['ms'] / ref['ms']:.2f}" if ref else "?"
        mem = ("" if m["mem_exact"] else "~") + f"{m['mem']:.2f}"
        cells = [CANDIDATES[c], m["backend"] or "—", f"{m['ms']:.2f}", ratio, mem]
        if device == "cpu":
            cells.append(f"{m['faults']:.0f}")
    cells += [""] * (len(COLUMNS[device]) - len(cells))
    return "| " + " | ".join(cells) + " |"


def print_tables(args, shapes, dtypes, cands, skipped, summary, results):
    """The Markdown report: one table per (shape, dtype), then the warnings the candidates raised."""
    _preamble(args, summary)
    columns = COLUMNS[args.device]
    for s in shapes:
        n, h, v = parse_shape(s)
        for d in dtypes:
            print(f"### N×H×V = {n}×{h}×{v} {d} (logits {n}×{v})\n\n| " + " | ".join(columns) + " |")
            print("|---|---|" + "---:|" * (len(columns) - 2))
            ref = summary.get((BASELINE, s, d))
            for c in cands:
                print(_row(args.device, c, summary.get((c, s, d), "failed"), ref))
            for c, why in skipped.items():
                print(_row(args.device, c, f"skipped: {why}", ref))
            print()
    # e.g. torch's chunked path declining label smoothing: the evidence that a row ran the path it claims
    raised = {}
    for (c, _, _), runs in results.items():
        for w in (w for run in runs for w in run["warnings"]):
            raised.setdefault(w, set()).add(c)
    for w, names in raised.items():
        print(f"warning raised by {', '.join(sorted(names))}: {w}\n")
    # per shape, every value seen: two would mean the code under test changed during the run
    for s in shapes:
        rows = sorted(
            {
                run["chunk_rows"]
                for (c, js, _), runs in results.items()
                if js == s
                for run in runs
                if "chunk_rows" in run
            }
        )
        if rows:
            print(f"ours at {s}: {' and '.join(map(str, rows))} rows per chunk (`default_chunk_size`)\n")
    harness.print_backend_reasons(next((m["reasons"] for m in summary.values() if m["reasons"]), None))


def parse_args(argv):
    return harness.parser(
        __doc__,
        CANDIDATES,
        shapes_help="comma separated NxHxV, e.g. 1024x512x32000 (default: per device, see above)",
        warmup=1,
        warmup_help="untimed full-size iterations per process, after the (untimed) memory iteration",
        timeout=1800,
    ).parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.device == "cuda":
        harness.check_gpu()
    shapes, dtypes, cands, skipped = harness.selection(
        args, CANDIDATES, BASELINE, GPU_ONLY, DEFAULT_SHAPES, DEFAULT_DTYPES
    )
    for s in shapes:
        parse_shape(s)  # a typo stops the run before any job, not in every child
    results = harness.run_rounds([(c, s, d) for s in shapes for d in dtypes for c in cands], args, run_job)
    summary = {j: harness.summarise(rs) for j, rs in results.items() if rs}
    print_tables(args, shapes, dtypes, cands, skipped, summary, results)
    if args.json:
        harness.write_json(args.json, args, skipped, results, summary)


if __name__ == "__main__":
    sys.exit(main())
