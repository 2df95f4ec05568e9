"""The public losses on the Triton backend, on the test device of `_device.py` (the GPU with
`HF_MAXSUP_TEST_DEVICE=cuda`, as `benchmarks/gpu_day_one.py` runs it; else the CPU under Triton's interpreter), against
the float64 reference of `_reference.py`: every loss, reduction and dtype with ignored rows, soft targets, ties,
distillation, a Llama-3 vocabulary (K = 32,000 and 128,256) and the in-place gradient.

Under the interpreter a tie goes to the first index by numpy's argmax whatever `tie_break_left` says: only the run on
a GPU checks the compiled kernel's tie rule. On a GPU the calls have more rows (more programs in flight).
"""

from __future__ import annotations

import os

import pytest
import torch
from _device import DEVICE
from _reference import IGN, assert_grad_close, distill_per_item, grad_terms_magnitude, loss_and_grad, per_item

pytest.importorskip("triton")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 to run Triton's interpreter on CPU", allow_module_level=True)

from hf_maxsup import kernels  # noqa: E402
from hf_maxsup.losses import distillation_loss, get_loss_fn  # noqa: E402

ALPHA, BETA, T = 0.1, 0.7, 2.5
KINDS = ["ce", "ls", "maxsup"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# per-entry gradient tolerance, relative to the size of the entry's own terms (`grad_terms_magnitude`)
GTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
ROWS = 32 if DEVICE.type == "cuda" else 3  # rows per batch entry
LARGE_ROWS = 64 if DEVICE.type == "cuda" else 4


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    """Every loss of this file is served by the Triton backend (a forced backend that cannot serve raises)."""
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "triton")


def make_logits(shape, dtype, seed, spread=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * spread).to(dtype)


def on_device(t):
    """A copy of `t` on the test device (also on the CPU: the CPU-built inputs stay the reference's)."""
    return t.to(DEVICE, copy=True)


def make_labels(shape, num_classes, seed, frac_ignored=0.25):
    gen = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, num_classes, shape, generator=gen)
    y = torch.where(torch.rand(shape, generator=gen) < frac_ignored, torch.full_like(y, IGN), y)
    y.view(-1)[0] = IGN  # at least one ignored row, at least one kept
    y.view(-1)[-1] = 1
    return y


def check(kind, x, target, reduction="mean", inplace=False):
    """Our loss of `x` (built on the CPU) on the test device against the float64 reference: the loss, and every
    gradient entry within its dtype's tolerance of the size of its own terms. Returns the gradient, on the CPU."""
    xx = on_device(x).requires_grad_(True)
    loss = get_loss_fn(kind)(xx, on_device(target), ALPHA, reduction=reduction, inplace_backward=inplace)
    loss.sum().backward()
    ref_loss, ref_grad = loss_and_grad(kind, x.float(), target, ALPHA, reduction)
    assert loss.dtype == torch.float32 and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss.detach().double().cpu(), ref_loss, rtol=1e-5, atol=1e-6)
    grad = xx.grad.cpu()
    assert grad.dtype == x.dtype
    kept = target.numel() // x.shape[-1] if target.is_floating_point() else int((target != IGN).sum())
    scale = 1.0 / max(kept, 1) if reduction == "mean" else 1.0
    assert_grad_close(grad, ref_grad, grad_terms_magnitude(kind, x.float(), target, ALPHA, scale), GTOL[x.dtype], kind)
    if not target.is_floating_point():
        assert torch.all(grad[target == IGN] == 0)
    return grad


def test_the_triton_backend_serves_the_test_device():
    for dtype in DTYPES:
        assert kernels.kernel_info(DEVICE, dtype)["backend"] == "triton"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_loss_reduction_and_dtype(kind, reduction, dtype):
    """Class indices with ignored rows; K over a block boundary with a ragged tail."""
    x = make_logits((2, ROWS, 1000), dtype, seed=len(kind) + len(reduction))
    check(kind, x, make_labels((2, ROWS), 1000, seed=7), reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_soft_targets(kind, dtype):
    """Soft targets in the logits' dtype."""
    x = make_logits((2, ROWS, 1000), dtype, seed=3)
    soft = torch.softmax(make_logits((2, ROWS, 1000), torch.float32, seed=4), -1).to(dtype)
    check(kind, x, soft)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_classes", [5003, 128256])
def test_ties_go_to_the_first_index(num_classes, dtype):
    """Exact ties in the max on both sides of every power-of-two block boundary up to 4096, and at the ends: MaxSup's
    +alpha goes to the first tied index only (torch.max's rule)."""
    k = num_classes
    tie_sets = [[0, k - 1], [1023, 1024], [2047, 2048], [4095, 4096], [5, 3000, k // 2], [k - 2, k - 1]]
    x = make_logits((len(tie_sets), k), dtype, seed=k)
    for row, cols in enumerate(tie_sets):
        x[row, cols] = 20.0  # exact in every dtype, far above the N(0, 4) rest (max ~ 9 in 128k)
    y = torch.tensor([3] * len(tie_sets))
    grad = check("maxsup", x, y).double()
    for row, (first, *others) in enumerate(tie_sets):
        for other in others:
            diff = float(grad[row, first] - grad[row, other])
            tol = GTOL[dtype] * float(grad[row, first].abs() + grad[row, other].abs()) + 1e-7
            assert abs(diff - ALPHA / len(tie_sets)) <= tol, (row, first, other, diff)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_classes", [32000, 128256])
def test_llama_vocabularies(num_classes, kind, dtype):
    """K = 32,000 (Llama 2) and 128,256 (Llama 3): many column blocks per row."""
    x = make_logits((LARGE_ROWS, num_classes), dtype, seed=num_classes + len(kind))
    check(kind, x, make_labels((LARGE_ROWS,), num_classes, seed=num_classes))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["ls", "maxsup"])
def test_in_place(kind, dtype):
    """The gradient written over the logits' storage equals the reference (and the out-of-place gradient)."""
    x = make_logits((2, ROWS, 1000), dtype, seed=11)
    y = make_labels((2, ROWS), 1000, seed=11)
    out_of_place = check(kind, x, y)
    logits = on_device(x).requires_grad_(True)
    ptr = logits.data_ptr()
    get_loss_fn(kind)(logits, on_device(y), ALPHA, inplace_backward=True).backward()
    assert logits.grad.data_ptr() == ptr
    assert torch.equal(logits.grad.cpu(), out_of_place)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", KINDS)
def test_distillation(kind, reduction, dtype):
    """The loss plus `distill_alpha * T^2 * KL(teacher_T || student_T)` per kept row, teacher in the logits' dtype."""
    student = make_logits((2, ROWS, 1000), dtype, seed=21, spread=3.0)
    teacher = make_logits((2, ROWS, 1000), dtype, seed=22, spread=3.0)
    labels = make_labels((2, ROWS), 1000, seed=23)
    x = on_device(student).requires_grad_(True)
    loss = distillation_loss(
        x, on_device(teacher), on_device(labels), ALPHA, loss=kind, distill_alpha=BETA, distill_temperature=T,
        reduction=reduction,
    )  # fmt: skip
    loss.sum().backward()
    ref = student.double().requires_grad_(True)
    items, keep = per_item(kind, ref, labels, ALPHA)
    total = items + BETA * T**2 * distill_per_item(ref, teacher.float(), labels, T)
    ref_loss = {"mean": total.sum() / keep.sum(), "sum": total.sum(), "none": total.view(labels.shape)}[reduction]
    ref_loss.sum().backward()
    torch.testing.assert_close(loss.detach().double().cpu(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    err = (x.grad.double().cpu() - ref.grad).abs().max() / ref.grad.abs().max()
    assert float(err) < {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    assert torch.all(x.grad.cpu()[labels == IGN] == 0)
