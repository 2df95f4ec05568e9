"""The Triton backend (`hf_maxsup.kernels._triton`) against an independent float64 reference.

On machines without CUDA this runs the kernels under Triton's interpreter on CPU tensors (`TRITON_INTERPRET=1`, set
before triton is imported); it is slow, so shapes are small. The AOT test compiles every variant for sm_80 / sm_90.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch
from _device import DEVICE  # HF_MAXSUP_TEST_DEVICE=cuda: the GPU
from _reference import misclassified, row_terms

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 to run Triton's interpreter on CPU", allow_module_level=True)

from hf_maxsup.kernels import LossJob, _triton  # noqa: E402

IGNORE = -100
# (relative tolerance of the gradient, of the sums): the sums are float32 from exact inputs whatever the dtype; the
# gradient is rounded to the logits' dtype
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (8e-3, 1e-5), torch.float16: (1e-3, 1e-5)}


# ------------------------------------------------------------------------------------------------- reference
def reference(z, kind, alpha, labels=None, soft=None, ignore_index=IGNORE):
    """Per-row float64 terms of `_reference.row_terms` (`loss`, `ce`, `reg`, `lsr`, `lsa`) and the gradient of the
    summed loss `grad` `(N, K)`, on the CPU."""
    z = z.detach().cpu().to(torch.float64).requires_grad_()
    target = labels.cpu() if labels is not None else soft.cpu()
    terms, keep = row_terms(kind, z, target, alpha, ignore_index)
    terms["loss"].sum().backward()
    out = {name: terms[name].detach() for name in ("loss", "ce", "reg")}
    out["lsr"], out["lsa"] = terms["ls_regularization"].detach(), terms["ls_error_amplification"].detach()
    out["mis"] = (misclassified(z, labels.cpu()) & keep).double() if labels is not None else torch.zeros_like(z[:, 0])
    out["grad"] = z.grad
    return out


def make_job(kind, alpha, logits, labels=None, soft=None, grad="separate", scale=1.0, components=True, layout=None,
             grad_tensor=None, grad_strides=None):  # fmt: skip
    """A `LossJob` over `logits` (2-D contiguous unless `layout` is given), with a fresh gradient buffer."""
    k = logits.shape[-1]
    n = logits.numel() // k if layout is None else layout[0] * layout[1]
    if layout is None:
        layout = (1, n, 0, k)
    if grad == "separate" and grad_tensor is None:
        grad_tensor, grad_strides = torch.full((n, k), float("nan"), dtype=logits.dtype, device=logits.device), (0, k)
    elif grad == "inplace":
        grad_tensor, grad_strides = logits, layout[2:]
    elif grad is None:
        grad_tensor, grad_strides = None, (0, 0)
    return LossJob(
        loss=kind, alpha=alpha, ignore_index=IGNORE, logits=logits, layout=layout, labels=labels, soft=soft,
        grad=grad_tensor, grad_strides=grad_strides, grad_scale=torch.tensor(scale, device=logits.device),
        row_loss=torch.full((n,), float("nan"), device=logits.device), want_components=components,
    )  # fmt: skip


def assert_grad(grad, ref, dtype, scale=1.0):
    """Per entry |g - ref| <= rtol * |ref| + atol, atol a few float32 ulps of the largest entry (~1) times scale."""
    rtol = TOL[dtype][0]
    atol = (2e-7 if dtype == torch.float32 else rtol * 1e-2) * scale
    err = (grad.double().cpu() - ref).abs()
    bad = err > rtol * ref.abs() + atol
    assert not bad.any(), f"{int(bad.sum())} entries off; worst {err.max().item():.3g}"


def assert_sums(sums, ref, dtype, split):
    """The returned sums against the reference's per-row terms."""
    rtol = TOL[dtype][1]
    assert sums.shape == (7,) and sums.dtype == torch.float64
    assert sums[5].item() == 0.0  # no teacher: no distillation term
    assert sums[6].item() == ref["mis"].sum().item()  # rows whose label is not the first index of the max
    names = ("loss", "ce", "reg", "lsr", "lsa")
    for j, name in enumerate(names):
        want = ref[name].sum().item() if (j < 3 or split) else 0.0
        scale = ref[name].abs().sum().item() if (j < 3 or split) else 0.0
        assert abs(sums[j].item() - want) <= rtol * scale + 1e-6, (name, sums[j].item(), want)


def random_logits(n, k, dtype, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=torch.float64) * spread).to(dtype).to(DEVICE)


def random_labels(n, k, seed=0, ignored=(1, 4)):
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 1))
    y[list(ignored)] = IGNORE
    return y.to(DEVICE)


def random_soft(n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + 2)
    return torch.softmax(torch.randn(n, k, generator=g) * 2, -1).to(dtype).to(DEVICE)


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
def test_hard_labels(kind, dtype):
    """Sums, per-row loss, LS split and gradient (times 1/n_kept) for class indices with ignored rows."""
    n, k, alpha = 10, 1000, 0.0 if kind == "ce" else 0.2
    z, y = random_logits(n, k, dtype), random_labels(n, k)
    scale = 1.0 / 8  # 8 kept rows, as for reduction="mean"
    job = make_job(kind, alpha, z, labels=y, scale=scale)
    sums = _triton.forward(job)
    ref = reference(z, kind, alpha, labels=y)
    assert_sums(sums, ref, dtype, split=kind == "ls")
    torch.testing.assert_close(job.row_loss.double().cpu(), ref["loss"], rtol=1e-5, atol=1e-5)
    assert_grad(job.grad, ref["grad"] * scale, dtype, scale)
    assert (job.grad[y == IGNORE] == 0).all()


@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
@pytest.mark.parametrize(("dtype", "soft_dtype"), [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                   (torch.bfloat16, torch.bfloat16)])  # fmt: skip
def test_soft_targets(kind, dtype, soft_dtype):
    """Soft targets in float32 or in the logits' dtype; no LS split (it is defined for class indices only)."""
    n, k, alpha = 6, 1000, 0.0 if kind == "ce" else 0.1
    z, t = random_logits(n, k, dtype, seed=3), random_soft(n, k, soft_dtype, seed=3)
    job = make_job(kind, alpha, z, soft=t)
    sums = _triton.forward(job)
    ref = reference(z, kind, alpha, soft=t)
    assert_sums(sums, ref, dtype, split=False)
    assert_grad(job.grad, ref["grad"], dtype)


@pytest.mark.parametrize("k", [10, 129, 5003])
@pytest.mark.parametrize("kind", ["ls", "maxsup"])
def test_class_counts(kind, k):
    """K far below the block, just above a block size, and over two 4096-blocks with a ragged tail."""
    n = 6
    z, y = random_logits(n, k, torch.float32, seed=k), random_labels(n, k, seed=k, ignored=(2,))
    job = make_job(kind, 0.3, z, labels=y)
    sums = _triton.forward(job)
    ref = reference(z, kind, 0.3, labels=y)
    assert_sums(sums, ref, torch.float32, split=kind == "ls")
    assert_grad(job.grad, ref["grad"], torch.float32)


def test_ties_go_to_the_first_index():
    """Exact ties in the max: across blocks, within a block, and a larger max in a later block."""
    k, block = 5003, _triton._row_config(5003)[0]
    assert block < k, "the test needs two blocks"
    z = random_logits(4, k, torch.float32, seed=7)
    z[0, [10, block + 400]] = 50.0  # tie across blocks: the first block's index
    z[1, [block + 100, block + 200]] = 50.0  # tie within the second block
    z[2, [5, block + 7]] = torch.tensor([40.0, 50.0])  # a strictly larger max later
    z[3, [0, k - 1]] = 50.0  # first and last column
    y = torch.tensor([3, 4, 5, 6], device=DEVICE)
    for soft in (None, random_soft(4, k, torch.float32)):
        job = make_job("maxsup", 0.25, z, labels=None if soft is not None else y, soft=soft)
        _triton.forward(job)
        ref = reference(z, "maxsup", 0.25, labels=None if soft is not None else y, soft=soft)
        assert_grad(job.grad, ref["grad"], torch.float32)
        # tied entries share the softmax mass; +alpha goes to the first one only (soft targets differ by ~1/K)
        for row, col, other in [(0, 10, block + 400), (1, block + 100, block + 200), (3, 0, k - 1)]:
            diff = (job.grad[row, col] - job.grad[row, other]).item()
            want = (ref["grad"][row, col] - ref["grad"][row, other]).item()
            assert abs(want - 0.25) < 1e-3 and abs(diff - want) < 1e-6, (row, diff, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place(dtype):
    """The gradient written over the logits equals the one written to a separate buffer."""
    z, y = random_logits(8, 1000, dtype, seed=11), random_labels(8, 1000, seed=11)
    separate = make_job("maxsup", 0.2, z.clone(), labels=y, scale=0.5)
    in_place = make_job("maxsup", 0.2, z.clone(), labels=y, grad="inplace", scale=0.5)
    assert in_place.in_place
    sums_separate, sums_in_place = _triton.forward(separate), _triton.forward(in_place)
    torch.testing.assert_close(sums_in_place, sums_separate, rtol=0, atol=0)
    torch.testing.assert_close(in_place.logits, separate.grad, rtol=0, atol=0)
    assert_grad(in_place.logits, reference(z, "maxsup", 0.2, labels=y)["grad"] * 0.5, dtype, 0.5)


@pytest.mark.parametrize("grad", ["separate", "inplace"])
def test_two_level_layout(grad):
    """`logits[:, :-1]` of a `(B, T + 1, K)` tensor: rows are not uniformly strided; the last position is kept."""
    b, t, k = 3, 4, 300
    base = random_logits(b * (t + 1), k, torch.float32, seed=5).view(b, t + 1, k)
    view = base[:, :-1]
    last = base[:, -1].clone()
    y = random_labels(b * t, k, seed=5, ignored=(3,))
    layout = (b, t, (t + 1) * k, k)
    if grad == "separate":  # the gradient in a (B, T + 1, K) buffer too, through the same view
        gbase = torch.full_like(base, float("nan"))
        job = make_job("ls", 0.1, view, labels=y, layout=layout, grad_tensor=gbase[:, :-1], grad_strides=layout[2:])
    else:
        job = make_job("ls", 0.1, view, labels=y, layout=layout, grad="inplace")
    ref = reference(view.reshape(b * t, k).clone(), "ls", 0.1, labels=y)
    sums = _triton.forward(job)
    assert_sums(sums, ref, torch.float32, split=True)
    assert_grad(job.grad.reshape(b * t, k), ref["grad"], torch.float32)
    out_base = gbase if grad == "separate" else base
    untouched = out_base[:, -1]
    assert torch.isnan(untouched).all() if grad == "separate" else torch.equal(untouched, last)


def test_value_only_and_no_components():
    """No gradient buffer: the same sums; without components the LS split is 0."""
    z, y = random_logits(8, 700, torch.float32, seed=2), random_labels(8, 700, seed=2)
    with_grad = _triton.forward(make_job("ls", 0.2, z, labels=y))
    value_only = _triton.forward(make_job("ls", 0.2, z, labels=y, grad=None))
    torch.testing.assert_close(value_only, with_grad, rtol=0, atol=0)
    no_split = _triton.forward(make_job("ls", 0.2, z, labels=y, grad=None, components=False))
    torch.testing.assert_close(no_split[:3], with_grad[:3], rtol=0, atol=0)
    assert (no_split[3:6] == 0).all() and (with_grad[3:5] != 0).all() and with_grad[5] == 0
    assert no_split[6] == with_grad[6] > 0  # the misclassified rows are counted whatever is asked


def test_all_ignored():
    """Every label ignored: zero sums, zero gradient, zero row losses."""
    z = random_logits(4, 500, torch.float32)
    job = make_job("maxsup", 0.2, z, labels=torch.full((4,), IGNORE, device=DEVICE))
    assert (_triton.forward(job) == 0).all()
    assert (job.grad == 0).all() and (job.row_loss == 0).all()


def test_minus_inf_first_block():
    """A whole first block of -inf logits (masked vocabulary): CE and its gradient stay finite."""
    k = 5003
    block = _triton._row_config(k)[0]
    z = random_logits(3, k, torch.float32, seed=9)
    z[:, : block + 3] = float("-inf")
    y = torch.tensor([block + 10, k - 1, IGNORE], device=DEVICE)
    job = make_job("ce", 0.0, z, labels=y)
    sums = _triton.forward(job)
    ref = reference(z, "ce", 0.0, labels=y)
    assert torch.isfinite(sums).all() and torch.isfinite(job.grad).all()
    assert_sums(sums, ref, torch.float32, split=False)
    assert_grad(job.grad, ref["grad"], torch.float32)
    assert (job.grad[:, :block] == 0).all()


def test_nan_row():
    """A NaN logit makes its row's terms and gradient NaN, and leaves the other rows alone."""
    z, y = random_logits(3, 600, torch.float32, seed=4), torch.tensor([1, 2, 3], device=DEVICE)
    z[1, 17] = float("nan")
    job = make_job("maxsup", 0.2, z, labels=y)
    sums = _triton.forward(job)
    assert torch.isnan(sums[:3]).all()
    assert torch.isnan(job.row_loss[1]) and torch.isnan(job.grad[1]).all()
    keep = [0, 2]
    ref = reference(z[keep], "maxsup", 0.2, labels=y[keep])
    torch.testing.assert_close(job.row_loss[keep].double().cpu(), ref["loss"], rtol=1e-5, atol=1e-5)
    assert_grad(job.grad[keep], ref["grad"], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scale(dtype):
    """scale_: factor 1 leaves the gradient bit for bit, 0.25 scales it in fp32; non-contiguous falls back to torch."""
    g = random_logits(3, 5000, dtype, seed=1)
    before = g.clone()
    _triton.scale_(g, torch.tensor(1.0, device=DEVICE))
    assert torch.equal(g, before)
    _triton.scale_(g, torch.tensor(0.25, device=DEVICE))
    assert torch.equal(g, (before.float() * 0.25).to(dtype))
    strided = before.clone()[:, ::2]
    _triton.scale_(strided, torch.tensor(0.5, device=DEVICE))
    assert torch.equal(strided, (before[:, ::2].float() * 0.5).to(dtype))


def test_availability():
    """Reasons name the fix; the interpreter serves CPU tensors, float64 goes elsewhere."""
    assert _triton.NAME == "triton"
    assert _triton.unavailable(DEVICE, torch.bfloat16) is None
    assert "torch backend" in _triton.unavailable(DEVICE, torch.float64)
    assert "does not run on mps" in _triton.unavailable(torch.device("mps"), torch.float32)


def test_specialisations_cover_the_launcher():
    """Every block size the launcher can pick is in the AOT list, for every kind and dtype."""
    specs = _triton.specialisations()
    for distill in (False, True):
        blocks = {
            s.constexprs["BLOCK"] for s in specs if s.kernel == "loss_row_kernel" and s.constexprs["DISTILL"] == distill
        }
        picked = {
            _triton._row_config(k, distill)[0] for k in (1, 2, 100, 128, 129, 1000, 1024, 1025, 4096, 5003, 262144)
        }
        assert picked == blocks
    assert len({s.name for s in specs}) == len(specs)
    # with a teacher the launcher gives ptxas a register budget on NVIDIA GPUs, and the AOT check compiles with it
    rows = [s for s in specs if s.kernel == "loss_row_kernel"]
    assert all((s.maxnreg == _triton._DISTILL_MAX_REGISTERS) == s.constexprs["DISTILL"] for s in rows)
    assert {s.kernel for s in specs} == {"loss_row_kernel", "scale_kernel"}


def _run_aot(*args: str) -> tuple[list[str], float]:
    """Runs `python -m hf_maxsup.kernels --aot ...` without the interpreter; its report lines and its run time."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hf_maxsup.kernels", "--aot", *args], env=env, capture_output=True,
                         text=True, timeout=1200)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if " regs " in line]
    for line in lines:
        stores, loads = re.search(r"spill stores\s+(\d+)\s+spill loads\s+(\d+)", line).groups()
        assert stores == loads == "0", line
    return lines, elapsed


def test_aot_heaviest_variants():
    """The variants with the most live values (MaxSup gradient, soft targets, largest block) compile without spills."""
    lines, _ = _run_aot(
        "sm_80,sm_90",
        "--match",
        r"maxsup,(fp32|bf16),soft-\w+,grad,B4096|ce,bf16,labels,teacher-bf16,value,B1024"
        r"|maxsup,bf16,soft-fp32,teacher-fp32,grad,B1024|scale\[bf16",
    )
    assert len(lines) == 2 * 6


@pytest.mark.slow  # 330 compilations: ~20 s on a warm Triton cache, ~2 min on a cold one
def test_aot_compiles_without_spills():
    """`python -m hf_maxsup.kernels --aot sm_80,sm_90`: every variant compiles for both targets, none spills."""
    lines, elapsed = _run_aot("sm_80,sm_90")
    assert len(lines) == 2 * len(_triton.specialisations())
    print(f"AOT check took {elapsed:.0f} s")
