"""Forward + backward time and peak extra memory of CE / LS / MaxSup losses, each candidate in a fresh process.

    python benchmarks/loss.py                       # CPU: default shapes, fp32 + bf16, 3 shuffled rounds
    python benchmarks/loss.py --steady              # CPU, the page-fault-free regime (see below)
    python benchmarks/loss.py --device cuda         # GPU: 8x1024x32000 and 4x4096x128256, bf16 + fp32
    python benchmarks/loss.py --shapes 4x512x32000 --dtypes float32 --rounds 5 --repeats 7
    python benchmarks/loss.py --candidates ce,ours_maxsup,ours_maxsup_inplace --json out.json

Candidates (``--candidates``, comma separated):
    ce                   F.cross_entropy
    ce_ls                F.cross_entropy(label_smoothing=0.1)
    hf_label_smoother    transformers.trainer_pt_utils.LabelSmoother(epsilon=0.1), fed {"logits": x}
    maxsup_direct        direct MaxSup formula in eager PyTorch: CE + a * mean_kept(max - mean)
    ours_ls              hf_maxsup.losses.label_smoothing_cross_entropy, backend chosen automatically
    ours_ls_inplace      same, inplace_backward=True (gradient written into the logits' buffer)
    ours_ls_torch        same as ours_ls with HF_MAXSUP_BACKEND=torch (what a device without Triton gets)
    ours_maxsup          hf_maxsup.losses.maxsup_cross_entropy, backend chosen automatically
    ours_maxsup_inplace  same, in place
    ours_maxsup_torch    same as ours_maxsup with HF_MAXSUP_BACKEND=torch
    liger_ls             liger_kernel LigerCrossEntropyLoss(label_smoothing=0.1) (GPU only: skipped on CPU)

The ``ours_*`` candidates set HF_MAXSUP_BACKEND in their process (``auto`` unless named ``*_torch``); the
"backend" column is what ``hf_maxsup.kernels.kernel_info`` reports in that process ("—" for the implementations
that are not hf_maxsup's).

Method, both devices.
* Every (candidate, shape, dtype) runs in its own fresh Python process (``--child`` mode of this file),
  so that allocator state, page-fault history, compiled kernels and thread pools of one candidate never help
  another.  The list of jobs is shuffled anew in each of ``--rounds`` rounds; the reported time is the median
  over rounds of each process's median over ``--repeats`` timed iterations (after a tiny-shape warm-up that
  builds/loads kernels and ``--warmup`` untimed full-size ones).  Ratios are to plain ``F.cross_entropy``
  measured in the same run.
* One timed iteration = ``loss = fn(logits, labels); loss.backward()`` on a leaf ``logits`` tensor that
  requires grad (the gradient lands in ``logits.grad``, exactly what the next layer's backward would
  get).  Between iterations, untimed, the logits are restored from a master copy (the in-place variants
  and Liger destroy them) and ``logits.grad`` is dropped, so every iteration allocates its buffers afresh
  as a training step does.  Labels have 10 % ignored (-100) positions; alpha = 0.1.
* Extra memory includes the logits' gradient (1.0 x logits for any out-of-place method) and is reported as
  a multiple of one logits tensor (its dtype's bytes).

CPU (``--device cpu``, the default).
* Time: ``time.perf_counter`` around the iteration.
* Peak extra memory: before the first full-size iteration, the process's peak-RSS mark is reset
  (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and VmRSS is read; after forward + backward, VmHWM
  is read.  extra = VmHWM - VmRSS_before, i.e. everything the loss and its backward touched beyond the
  inputs.  Without clear_refs the ``ru_maxrss`` delta is used (a lower bound, marked with "~").
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

GPU (``--device cuda``; exits with an error when torch sees no GPU).
* Time: CUDA events recorded around the iteration on the current stream (the restore copy is queued
  before the start event, so it is not timed).
* Peak extra memory: ``torch.cuda.max_memory_allocated()`` after one forward + backward (run after the
  warm-up, so that kernel compilation and autotuning are not counted) minus ``memory_allocated()`` just
  before it, with the peak statistics reset in between.  Logits, their master copy and the labels are
  already allocated at that point.
* Memory-bandwidth floor: any loss must read the logits once and write their gradient once, so no
  implementation can beat floor = (logits bytes + gradient bytes) / bandwidth, where bandwidth is the
  device's copy bandwidth measured in the same process (median of 512 MiB ``dst.copy_(src)``, counting read
  + write bytes; the "copy GB/s" column).  The floor is thus the time of one logits-sized device copy;
  "× floor" = 1 would be a loss as cheap as copying the logits.  The labels' bytes (one int64 per row) are
  left out: < 0.1 % of the logits for any vocabulary above 8k classes.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402  (the machinery shared with linear_loss.py)
from _harness import ALPHA, IGN  # noqa: E402

CANDIDATES = {
    "ce": "`F.cross_entropy`",
    "ce_ls": "`F.cross_entropy(label_smoothing=0.1)`",
    "hf_label_smoother": "transformers `LabelSmoother(0.1)`",
    "maxsup_direct": "direct MaxSup `CE + α(max − mean)`",
    "ours_ls": "**ours LS**",
    "ours_ls_inplace": "**ours LS, in place**",
    "ours_ls_torch": "**ours LS, torch backend**",
    "ours_maxsup": "**ours MaxSup**",
    "ours_maxsup_inplace": "**ours MaxSup, in place**",
    "ours_maxsup_torch": "**ours MaxSup, torch backend**",
    "liger_ls": "Liger `LigerCrossEntropyLoss(label_smoothing=0.1)`",
}
# ours_* candidates: (loss kind, inplace_backward, HF_MAXSUP_BACKEND for their process)
OURS = {
    "ours_ls": ("ls", False, "auto"),
    "ours_ls_inplace": ("ls", True, "auto"),
    "ours_ls_torch": ("ls", False, "torch"),
    "ours_maxsup": ("maxsup", False, "auto"),
    "ours_maxsup_inplace": ("maxsup", True, "auto"),
    "ours_maxsup_torch": ("maxsup", False, "torch"),
}
GPU_ONLY = {"liger_ls": "GPU only (Liger's kernels are Triton)"}
DEFAULT_SHAPES = {"cpu": ["256x1000", "8x128x32000", "4x512x32000"], "cuda": ["8x1024x32000", "4x4096x128256"]}
DEFAULT_DTYPES = {"cpu": ["float32", "bfloat16"], "cuda": ["bfloat16", "float32"]}
STEADY_ENV = {
    "THP_MEM_ALLOC_ENABLE": "1",
    # no mmap for big blocks (glibc caps mmap_threshold at 32 MiB, so mmap_max=0 is the knob) and no trimming:
    # freed logits-sized buffers stay in the heap and are reused
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736",
}
# 512 MiB per buffer: far beyond any GPU's L2, so the copy streams through device memory
BANDWIDTH_BYTES = 1 << 29


def floor_ms(read_bytes: int, write_bytes: int, bandwidth_gb_s: float) -> float:
    """Memory-bandwidth floor of a loss: the time to move its unavoidable bytes at the measured bandwidth.

    Args:
        read_bytes (`int`): bytes that must be read (the logits, once).
        write_bytes (`int`): bytes that must be written (the gradient, once).
        bandwidth_gb_s (`float`): device bandwidth in GB/s (1e9 bytes per second), read + write bytes counted.

    Returns:
        `float`: the floor in milliseconds.
    """
    return (read_bytes + write_bytes) / (bandwidth_gb_s * 1e9) * 1e3


# ---------------------------------------------------------------------------------------------------
# child: one candidate, one shape, one dtype


def _make_fn(name):
    import torch.nn.functional as F

    if name == "ce":
        return lambda x, y: F.cross_entropy(x.view(-1, x.shape[-1]), y.view(-1), ignore_index=IGN)
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
    if name == "liger_ls":
        from liger_kernel.transformers import LigerCrossEntropyLoss

        liger = LigerCrossEntropyLoss(label_smoothing=ALPHA, ignore_index=IGN)
        return lambda x, y: liger(x.view(-1, x.shape[-1]), y.view(-1))
    if name in OURS:
        from hf_maxsup import losses

        kind, inplace, _ = OURS[name]
        loss = losses.label_smoothing_cross_entropy if kind == "ls" else losses.maxsup_cross_entropy
        return lambda x, y: loss(x, y, ALPHA, inplace_backward=inplace)
    raise SystemExit(f"unknown candidate {name}")


def _backend(name, device, dtype):
    """(backend name, {backend: why it is not used}) of hf_maxsup for these logits in this process; (None, None)
    for the other implementations."""
    if name not in OURS:
        return None, None
    from hf_maxsup import kernels

    info = kernels.kernel_info(device, dtype)
    return info["backend"], info.get("reasons")


def _inputs(shape, dtype, gen, device):
    """Logits (a master copy) and labels with 10 % ignored positions, built without logits-sized temporaries."""
    import torch

    x0 = torch.randn(shape, generator=gen, dtype=dtype, device=device).mul_(2)
    y = torch.randint(0, shape[-1], shape[:-1], generator=gen, device=device)
    y[torch.rand(shape[:-1], generator=gen, device=device) < 0.1] = IGN
    return x0, y


def _tiny_shape(shape):
    return shape[:1] + (min(shape[-1], 64),) if len(shape) == 2 else (1, 4, min(shape[-1], 64))


def _restore(x, x0):
    import torch

    x.grad = None
    with torch.no_grad():
        x.copy_(x0)


def child_cpu(args, fn, shape, dtype):
    """One CPU job: perf_counter times, peak-RSS extra memory and page faults per iteration."""
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    faults = []

    def step(x, x0, y):
        _restore(x, x0)
        return harness.timed_cpu(lambda: fn(x, y).backward(), faults)

    # tiny warm-up: kernel build/load, thread pools, lazy imports
    sx0, sy = _inputs(_tiny_shape(shape), dtype, gen, "cpu")
    sx = sx0.clone().requires_grad_(True)
    for _ in range(2):
        step(sx, sx0, sy)
    del sx, sx0, sy

    x0, y = _inputs(shape, dtype, gen, "cpu")
    x = torch.empty_like(x0).requires_grad_(True)
    with torch.no_grad():
        x.copy_(x0)  # resident, like logits just produced by the model
    gc.collect()

    # peak extra memory of one forward + backward (first full-size iteration)
    return harness.cpu_measurements(step, (x, x0, y), faults, args, x0.numel() * x0.element_size())


def copy_bandwidth_gb_s(device, nbytes=BANDWIDTH_BYTES, repeats=10):
    """Device copy bandwidth, GB/s counting the bytes read and the bytes written: median of `repeats` copies."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dst.copy_(src)
    seconds = []
    for _ in range(repeats):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(seconds) / 1e9


def child_cuda(args, fn, shape, dtype):
    """One GPU job: CUDA-event times, max_memory_allocated extra memory and the copy bandwidth."""
    import torch

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step(x, x0, y):
        _restore(x, x0)
        return harness.timed_cuda(lambda: fn(x, y).backward(), start, end)

    # before the inputs exist, so that the copy buffers never compete with them for memory
    bandwidth = copy_bandwidth_gb_s(device)

    sx0, sy = _inputs(_tiny_shape(shape), dtype, gen, device)
    sx = sx0.clone().requires_grad_(True)
    for _ in range(2):
        step(sx, sx0, sy)
    del sx, sx0, sy

    x0, y = _inputs(shape, dtype, gen, device)
    x = torch.empty_like(x0).requires_grad_(True)
    t_first = step(x, x0, y)
    for _ in range(args.warmup):
        step(x, x0, y)

    _restore(x, x0)
    extra = harness.cuda_extra_bytes(lambda: fn(x, y).backward())

    times = [step(x, x0, y) for _ in range(args.repeats)]
    return {
        "times": times,
        "first": t_first,
        "extra_bytes": extra,
        "extra_exact": True,
        "logits_bytes": x0.numel() * x0.element_size(),
        "bandwidth_gb_s": bandwidth,
        "device_name": torch.cuda.get_device_name(device),
    }


def child(args):
    """Run one job in this process and print its measurements as one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split("x"))
    dtype = getattr(torch, args.dtype)
    fn = _make_fn(args.child)
    run = child_cuda if args.device == "cuda" else child_cpu
    res = run(args, fn, shape, dtype)
    # asked after the runs, so that a backend chosen lazily at the first call is the one reported
    res["backend"], res["reasons"] = _backend(args.child, torch.device(args.device), dtype)
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res))


# ---------------------------------------------------------------------------------------------------
# parent: fresh process per job, shuffled rounds, medians, Markdown table


def run_job(cand, shape, dtype, args):
    """Run one job in a fresh child process; its measurements, or None (with the error on stderr) if it failed."""
    env = dict(STEADY_ENV) if args.steady else {}
    if cand in OURS:
        env["HF_MAXSUP_BACKEND"] = OURS[cand][2]
    return harness.run_job(__file__, cand, shape, dtype, args, env)


def summarise(rs):
    """Medians over the rounds of one job's child results, with the bandwidth floor of a GPU's."""
    m = harness.summarise(rs)
    if "bandwidth_gb_s" in rs[0]:
        m["bandwidth_gb_s"] = statistics.median(x["bandwidth_gb_s"] for x in rs)
        m["floor_ms"] = floor_ms(m["logits_bytes"], m["logits_bytes"], m["bandwidth_gb_s"])
        m["device_name"] = rs[0]["device_name"]
    return m


def _preamble(args, summary):
    first = summary[next(iter(summary))] if summary else {}
    common = (
        f"alpha = {ALPHA}, 10 % ignored labels, {args.rounds} rounds x {args.repeats} repeats, fresh process "
        "per measurement, medians. Backend: the hf_maxsup backend that served the row "
        "(`kernels.kernel_info` in that process), — for the other implementations. "
    )
    if args.device == "cuda":
        print(f"\n## Loss forward + backward, GPU ({first.get('device_name', '?')})\n")
        print(
            common + "Time: ms (CUDA events), × plain `F.cross_entropy` of the same shape/dtype in this run, and × "
            "the memory-bandwidth floor (read the logits once + write the gradient once at the device copy "
            "bandwidth measured in the same process). Memory: peak `torch.cuda.max_memory_allocated` beyond "
            "the inputs during forward + backward, × one logits tensor (includes the logits' gradient).\n"
        )
        return
    regime = "steady (THP_MEM_ALLOC_ENABLE=1, freed memory kept)" if args.steady else "default (glibc, page faults)"
    print(f"\n## Loss forward + backward, CPU, {regime}\n")
    print(
        common + f"{first.get('threads', '?')} threads. Time: ms and × plain `F.cross_entropy` of the same "
        "shape/dtype in this run. Memory: peak RSS beyond the inputs during forward + backward, × one logits "
        "tensor (includes the logits' gradient). Page faults: minor faults per timed iteration (median); a "
        "logits-sized fp32 buffer of 4·512·32000 is 64k 4-KiB pages.\n"
    )


COLUMNS = {
    "cpu": ["implementation", "backend", "ms", "× CE", "extra memory × logits", "page faults / iter"],
    "cuda": ["implementation", "backend", "ms", "× CE", "× floor", "extra memory × logits", "copy GB/s"],
}


def _row(device, c, m, ref):
    """One table row: the measured cells, or a note in the ms column."""
    if not isinstance(m, dict):
        cells = [CANDIDATES[c], "", m]
    else:
        ratio = f"{m['ms'] / ref['ms']:.2f}" if ref else "?"
        mem = ("" if m["mem_exact"] else "~") + f"{m['mem']:.2f}"
        cells = [CANDIDATES[c], m["backend"] or "—", f"{m['ms']:.2f}", ratio]
        if device == "cuda":
            cells += [f"{m['ms'] / m['floor_ms']:.2f}", mem, f"{m['bandwidth_gb_s']:.0f}"]
        else:
            cells += [mem, f"{m['faults']:.0f}"]
    cells += [""] * (len(COLUMNS[device]) - len(cells))
    return "| " + " | ".join(cells) + " |"


def print_tables(args, shapes, dtypes, cands, skipped, summary):
    """The Markdown report: one table per (shape, dtype)."""
    _preamble(args, summary)
    columns = COLUMNS[args.device]
    for s in shapes:
        for d in dtypes:
            measured = [summary[(c, s, d)] for c in cands if (c, s, d) in summary]
            title = f"### logits {s.replace('x', '×')} {d}"
            if args.device == "cuda" and measured:
                # each row's × floor uses its own process's bandwidth; the title gives the typical floor
                gb_s = statistics.median(m["bandwidth_gb_s"] for m in measured)
                nbytes = measured[0]["logits_bytes"]
                title += (
                    f" (floor {floor_ms(nbytes, nbytes, gb_s):.3f} ms at the median copy bandwidth, {gb_s:.0f} GB/s)"
                )
            print(f"{title}\n\n| " + " | ".join(columns) + " |")
            print("|---|---|" + "---:|" * (len(columns) - 2))
            ref = summary.get(("ce", s, d))
            for c in cands:
                print(_row(args.device, c, summary.get((c, s, d), "failed"), ref))
            for c, why in skipped.items():
                print(_row(args.device, c, f"skipped: {why}", ref))
            print()
    # why the automatic choice fell where it did (a forced backend's reasons would only say it was forced)
    reasons = next((m["reasons"] for (c, _, _), m in summary.items() if c in OURS and OURS[c][2] == "auto"), None)
    harness.print_backend_reasons(reasons)


def parse_args(argv):
    ap = harness.parser(
        __doc__,
        CANDIDATES,
        shapes_help="comma separated, e.g. 256x1000,4x512x32000 (default: per device, see above)",
        warmup=2,
        warmup_help="untimed full-size iterations per process",
        timeout=900,
    )
    ap.add_argument(
        "--steady",
        action="store_true",
        help="CPU only: page-fault-free regime, THP_MEM_ALLOC_ENABLE=1 and glibc keeps freed memory",
    )
    return ap.parse_args(argv)


def _check_device(args):
    if args.device == "cpu":
        return
    if args.steady:
        raise SystemExit("--steady is a CPU regime (glibc and page faults); it does not apply to --device cuda.")
    harness.check_gpu()


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    _check_device(args)
    shapes, dtypes, cands, skipped = harness.selection(args, CANDIDATES, "ce", GPU_ONLY, DEFAULT_SHAPES, DEFAULT_DTYPES)
    results = harness.run_rounds([(c, s, d) for s in shapes for d in dtypes for c in cands], args, run_job)
    summary = {j: summarise(rs) for j, rs in results.items() if rs}
    print_tables(args, shapes, dtypes, cands, skipped, summary)
    if args.json:
        harness.write_json(args.json, args, skipped, results, summary)


if __name__ == "__main__":
    sys.exit(main())
