"""The loss engine through the public losses, for every backend (c, torch, and triton under its interpreter),
against the float64 reference of `_reference.py`: reductions, num_items_in_batch, ties, soft targets, half
precisions, layouts, in-place gradients and memory, dispatch and the backend choice.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _reference import (
    IGN,
    AllocSpy,
    assert_grad_close,
    components,
    grad_terms_magnitude,
    loss_and_grad,
    per_item,
)

from hf_maxsup import kernels
from hf_maxsup.kernels import _c, _torch, _triton, dispatch
from hf_maxsup.losses import get_loss_fn

ALPHA = 0.1
TOL = 1e-5
KINDS = ["ce", "ls", "maxsup"]


def labels_for(shape, num_classes, gen, frac_ignored=0.2):
    y = torch.randint(0, num_classes, shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < frac_ignored, torch.full_like(y, IGN), y)


def run(x, target, kind, weight=None, **kwargs):
    """Our loss (with components) and the gradient of `loss * weight` w.r.t. a copy of `x`."""
    xx = x.detach().clone().requires_grad_(True)
    loss, comps = get_loss_fn(kind)(xx, target, ALPHA, return_components=True, **kwargs)
    (loss * (1.0 if weight is None else weight)).sum().backward()
    return loss.detach(), comps, xx.grad


def check(x, target, kind, gtol=TOL, weight=None, reduction="mean", num_items=None, **kwargs):
    loss, comps, grad = run(x, target, kind, weight=weight, reduction=reduction, num_items_in_batch=num_items, **kwargs)
    ref_loss, ref_grad = loss_and_grad(kind, x.float(), target, ALPHA, reduction, num_items, weight)
    assert loss.dtype == torch.float32 and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    n_kept = (target != IGN).sum() if not target.is_floating_point() else target.numel() // x.shape[-1]
    scale = (
        1.0 / max(float(num_items), 1.0)
        if num_items is not None
        else 1.0
        if reduction in ("sum", "none")
        else 1.0 / max(int(n_kept), 1)
    )
    scale = scale * (weight.double() if isinstance(weight, torch.Tensor) else (weight or 1.0))
    assert_grad_close(grad, ref_grad, grad_terms_magnitude(kind, x.float(), target, ALPHA, scale), gtol, kind)
    expected = components(kind, x.float(), target, ALPHA)
    assert set(comps) == set(expected)
    for name, value in expected.items():
        assert comps[name].dtype == torch.float32 and comps[name].dim() == 0 and not comps[name].requires_grad
        assert abs(float(comps[name]) - value) <= 1e-5 * max(1.0, abs(value)), name
    return loss, grad


# ---------------------------------------------------------------------------------------------------
# correctness


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(37, 11), (64, 1000), (3, 7, 5003), (2, 9, 257)])
def test_hard_labels(backend, kind, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen) * 4
    check(x, labels_for(shape[:-1], shape[-1], gen), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reductions_with_a_weighted_backward(backend, kind, reduction, dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 6, 300, generator=gen) * 3).to(dtype)
    y = labels_for((4, 6), 300, gen)
    weight = torch.rand(4, 6, generator=gen) + 0.5 if reduction == "none" else 0.37
    loss, _ = check(x, y, kind, gtol=TOL if dtype == torch.float32 else 2e-3, weight=weight, reduction=reduction)
    if reduction == "none":
        assert torch.all(loss[y == IGN] == 0)


@pytest.mark.parametrize("kind", ["ls", "maxsup"])
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_num_items_in_batch(backend, kind, as_tensor, reduction):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 8, 129, generator=gen) * 2
    y = labels_for((5, 8), 129, gen)
    check(x, y, kind, reduction=reduction, num_items=torch.tensor(97) if as_tensor else 97)


def test_exact_ties_go_to_the_first_index(backend):
    """Exact ties in the max, in different SIMD lanes, blocks and the scalar tail."""
    gen = torch.Generator().manual_seed(3)
    num_classes = 5003  # blocks of 2048 (C) / powers of two (triton), and a tail
    x = torch.randn(8, num_classes, generator=gen)
    tie_sets = [
        [3, 7],
        [7, 3000],
        [2047, 2048, 4096],
        [17, 4999, 5002],
        [4995, 5002],
        [0, 1, 2, 16],
        [5002, 5001],
        [100],
    ]
    for row, idx in enumerate(tie_sets):
        x[row, idx] = 9.0
    y = torch.tensor([7, 3, 4096, 5002, IGN, 1, 5001, 0])
    _, grad = check(x, y, "maxsup")
    for row, idx in enumerate(tie_sets):
        if int(y[row]) == IGN:
            assert torch.all(grad[row] == 0)
            continue
        first = min(idx)
        if first == int(y[row]):  # the label's -1 would hide the +alpha
            continue
        for other in (i for i in idx if i not in (first, int(y[row]))):
            assert float(grad[row, first] - grad[row, other]) > 0.9 * ALPHA / 7  # mean over 7 kept rows
    for kind in KINDS:  # everything tied
        check(torch.zeros(4, 5), torch.tensor([0, 4, 2, IGN]), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.float64])
def test_soft_targets(backend, kind, target_dtype):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, 700, generator=gen) * 3
    t = torch.softmax(torch.randn(3, 10, 700, generator=gen) * 2, -1).to(target_dtype)
    check(x, t, kind)
    y1, y2 = torch.randint(0, 700, (30,), generator=gen), torch.randint(0, 700, (30,), generator=gen)
    mixup = 0.7 * F.one_hot(y1, 700).float() + 0.3 * F.one_hot(y2, 700).float()
    check(x.reshape(30, 700), mixup, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_all_rows_ignored(backend, kind, reduction):
    x = torch.randn(3, 4, 50)
    y = torch.full((3, 4), IGN)
    for num_items in [None, 5] if reduction != "none" else [None]:
        loss, comps, grad = run(x, y, kind, reduction=reduction, num_items_in_batch=num_items)
        assert torch.all(loss == 0) and not torch.isnan(loss).any()
        assert torch.all(grad == 0)
        assert all(float(v) == 0.0 for v in comps.values())


@pytest.mark.parametrize("kind", KINDS)
def test_single_class_and_empty(backend, kind):
    loss, _, grad = run(torch.randn(6, 1) * 5, torch.tensor([0, 0, IGN, 0, 0, 0]), kind)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and torch.all(grad.abs() < 1e-6)
    loss, _, grad = run(torch.randn(0, 9), torch.zeros(0, dtype=torch.long), kind)
    assert float(loss) == 0.0 and grad.shape == (0, 9)


def test_minus_inf_logits_ce(backend):
    """A masked vocabulary (-inf logits, a whole first block of them in one row) stays finite for CE."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 5000, generator=gen)
    x[0, :4096] = float("-inf")
    x[1, ::3] = float("-inf")
    y = torch.tensor([4500, 1, 4000, 7])
    loss, _, grad = run(x, y, "ce")
    ref_loss, ref_grad = loss_and_grad("ce", x, y, 0.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the Triton interpreter's numpy
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_logits_near_the_float32_limit(backend, kind):
    """Logits of +-2e38 (sums, means and LS gaps beyond the float32 range, the loss itself within it): exact, as the
    float64 reference, wherever a block's float32 sums overflow (rows longer than one vector, a row of one block)."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 40, generator=gen) * 1e37
    x[:, :6] = torch.tensor([2e38, 2.2e38, -2e38, 1.9e38, -2.3e38, 2.1e38])
    x[1, 20:26] = torch.tensor([2e38, 2.2e38, -2e38, 1.9e38, -2.3e38, 2.3e38])
    y = torch.tensor([0, 2, 7, IGN, 21, 39])
    loss, _ = check(x, y, kind)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype,gtol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("kind", KINDS)
def test_half_inputs_are_computed_in_float32(backend, dtype, gtol, kind):
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(3, 20, 3001, generator=gen) * 3).to(dtype)
    check(x, labels_for((3, 20), 3001, gen), kind, gtol=gtol)
    check(x, torch.softmax(torch.randn(3, 20, 3001, generator=gen), -1).to(dtype), kind, gtol=gtol)


@pytest.mark.parametrize("dtype,gtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_classes", [32000, 50257])
def test_large_vocabulary_per_entry(backend, dtype, gtol, kind, num_classes):
    """Per-entry tolerances at a real vocabulary size: each entry against the size of its own terms and each row
    summing to 0, so that a missing small term (such as MaxSup's -alpha/K) cannot hide behind the largest entry."""
    gen = torch.Generator().manual_seed(num_classes)
    x = (torch.randn(6, num_classes, generator=gen) * 2).to(dtype)
    check(x, labels_for((6,), num_classes, gen, 0.2), kind, gtol=gtol)


def test_float64_logits_are_served_in_float64():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(6, 7, 101, generator=gen, dtype=torch.float64) * 3
    y = labels_for((6, 7), 101, gen)
    assert kernels.kernel_info("cpu", torch.float64)["backend"] == "torch"
    for kind in ("ls", "maxsup"):
        xx = x.clone().requires_grad_(True)
        loss = get_loss_fn(kind)(xx, y, ALPHA)
        loss.backward()
        ref_loss, ref_grad = loss_and_grad(kind, x, y, ALPHA)
        assert loss.dtype == torch.float64 and xx.grad.dtype == torch.float64
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(xx.grad, ref_grad, rtol=1e-10, atol=1e-15)


def test_float64_gradient_matches_finite_differences():
    """The engine's hand-derived gradient (computed in the forward, not by autograd) against central differences."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(4, 3, 6, generator=gen, dtype=torch.float64)
    y = labels_for((4, 3), 6, gen)
    soft = torch.softmax(torch.randn(4, 3, 6, generator=gen, dtype=torch.float64), -1)
    for kind in KINDS:
        for target in (y, soft):
            _, _, grad = run(x, target, kind)
            for flat in torch.randperm(x.numel(), generator=gen)[:12].tolist():
                step = torch.zeros_like(x).view(-1)
                step[flat] = 1e-6
                step = step.view_as(x)
                loss = get_loss_fn(kind)
                numeric = (loss(x + step, target, ALPHA) - loss(x - step, target, ALPHA)) / 2e-6
                assert abs(float(numeric) - float(grad.view(-1)[flat])) < 1e-7, (kind, flat)


def test_fp16_small_gradients_survive_loss_scaling(backend):
    """fp16 gradients p/n with p tiny must not flush to zero before a large grad_output (AMP's scaler)."""
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(512, 64, generator=gen) * 4).half()
    x[:, 0] = 12.0  # p of the others ~ e^-12 ~ 6e-6, p/N below fp16's smallest subnormal
    y = torch.zeros(512, dtype=torch.long)
    xx = x.clone().requires_grad_(True)
    (get_loss_fn("maxsup")(xx, y, ALPHA) * 65536.0).backward()
    _, ref = loss_and_grad("maxsup", x.float(), y, ALPHA)
    ref = ref * 65536.0
    big = ref.abs() > 1e-4
    assert big.sum() > 512
    assert float(((xx.grad.double() - ref).abs() / ref.abs())[big].max()) < 2e-3


# ---------------------------------------------------------------------------------------------------
# layouts, in place, memory


def test_views_and_non_contiguous_logits(backend):
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(3, 9, 333, generator=gen) * 2
    y = labels_for((3, 8), 333, gen)
    for kind in ("ls", "maxsup"):
        for inplace in (False, True):
            b = base.clone().requires_grad_(True)  # causal-LM style logits[:, :-1]: rows not uniformly strided
            loss = get_loss_fn(kind)(
                (b * 1.0)[:, :-1, :] if inplace else b[:, :-1, :], y, ALPHA, inplace_backward=inplace
            )
            loss.backward()
            ref_loss, ref_grad = loss_and_grad(kind, base[:, :-1, :], y, ALPHA)
            torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.grad[:, :-1].double(), ref_grad, rtol=1e-5, atol=1e-8)
            assert torch.all(b.grad[:, -1] == 0)
        xt = torch.randn(333, 24, generator=gen).t()  # class dimension not contiguous
        check(xt, y.reshape(-1), kind)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["ls", "maxsup"])
def test_in_place_gradient_reuses_the_logits_storage(backend, kind, dtype, monkeypatch):
    monkeypatch.setattr(_torch, "_CHUNK_ELEMS", {"cpu": 2 * 2500})  # chunks of 2 rows: "small" means small here
    gen = torch.Generator().manual_seed(10)
    x = (torch.randn(4, 16, 2500, generator=gen) * 3).to(dtype)
    y = labels_for((4, 16), 2500, gen)
    _, ref_grad = loss_and_grad(kind, x.float(), y, ALPHA)
    logits = x.clone().requires_grad_(True)
    ptr, nbytes = logits.data_ptr(), logits.untyped_storage().nbytes()
    with AllocSpy() as spy:
        get_loss_fn(kind)(logits, y, ALPHA, inplace_backward=True).backward()
    tol = {torch.float32: TOL, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    size = grad_terms_magnitude(kind, x.float(), y, ALPHA, 1.0 / int((y != IGN).sum()))
    assert_grad_close(logits.grad, ref_grad, size, tol, "in place")
    assert logits.grad.data_ptr() == ptr  # adopted by autograd as .grad without a copy ...
    assert torch.equal(logits.detach(), logits.grad)  # ... so the logits now hold the gradient
    assert max((b for _, b in spy.allocs), default=0) <= 0.1 * nbytes, spy.allocs

    fresh = x.clone().requires_grad_(True)  # for contrast: exactly one logits-sized buffer, the gradient
    with AllocSpy() as spy:
        get_loss_fn(kind)(fresh, y, ALPHA).backward()
    assert [b for _, b in spy.allocs if b > 0.1 * nbytes] == [nbytes], spy.allocs
    assert torch.equal(fresh.detach(), x)
    assert torch.equal(fresh.grad, logits.grad)


def test_in_place_with_overlapping_rows_copies(backend):
    """Expanded logits share memory between rows: the in-place mode must not write into them."""
    gen = torch.Generator().manual_seed(12)
    row = torch.randn(1, 1, 300, generator=gen)
    base = row.clone().requires_grad_(True)
    y = labels_for((2, 5), 300, gen)
    loss = get_loss_fn("maxsup")(base.expand(2, 5, 300), y, ALPHA, inplace_backward=True)
    loss.backward()
    ref_loss, ref_grad = loss_and_grad("maxsup", row.expand(2, 5, 300), y, ALPHA)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(base.grad.double(), ref_grad.sum((0, 1), keepdim=True), rtol=1e-5, atol=1e-8)


def test_in_place_through_a_matmul(backend):
    """The realistic use: logits = h @ W.T, destroyed by the loss; W.grad must still be right."""
    gen = torch.Generator().manual_seed(11)
    h = torch.randn(2, 24, 16, generator=gen)
    weight = torch.randn(1000, 16, generator=gen) * 0.5
    y = labels_for((2, 24), 1000, gen)
    w64 = weight.double().requires_grad_(True)
    items, keep = per_item("maxsup", h.double() @ w64.t(), y, ALPHA)
    (items.sum() / keep.sum()).backward()
    for inplace in (False, True):
        w = weight.clone().requires_grad_(True)
        (get_loss_fn("maxsup")(h @ w.t(), y, ALPHA, inplace_backward=inplace) * 0.25).backward()
        torch.testing.assert_close(w.grad.double(), w64.grad * 0.25, rtol=1e-5, atol=1e-7)


def test_in_place_detects_logits_saved_for_backward(backend):
    x = torch.randn(8, 50, requires_grad=True)
    loss = get_loss_fn("maxsup")(torch.tanh(x), torch.randint(0, 50, (8,)), ALPHA, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_no_grad_leaves_the_logits_untouched(backend):
    x = torch.randn(8, 50)
    y = torch.randint(0, 50, (8,))
    xx = x.clone().requires_grad_(True)
    with torch.no_grad():
        loss, comps = get_loss_fn("maxsup")(xx, y, ALPHA, inplace_backward=True, return_components=True)
    assert torch.equal(xx.detach(), x)
    ref_loss, _ = loss_and_grad("maxsup", x, y, ALPHA)
    assert abs(float(loss) - float(ref_loss)) < 1e-5 * float(ref_loss)
    assert abs(float(comps["reg"]) - components("maxsup", x, y, ALPHA)["reg"]) < 1e-4


def test_second_backward_raises_and_double_backward_after_in_place_is_refused(backend):
    y = torch.randint(0, 50, (8,))
    x = torch.randn(8, 50, requires_grad=True)
    loss = get_loss_fn("maxsup")(x, y, ALPHA)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already handed"):
        loss.backward()
    x2 = torch.randn(8, 50, requires_grad=True)
    logits = x2 * 2.0
    with pytest.raises(RuntimeError, match="inplace_backward=True overwrote"):
        torch.autograd.grad(get_loss_fn("ls")(logits, y, ALPHA, inplace_backward=True), x2, create_graph=True)


def _penalised_weight_grad(loss_of_logits, x, w):
    """The weight's gradient of a gradient penalty `|d loss / d x|^2` with logits `x @ w` (double backward)."""
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = loss_of_logits(x @ w)
    (grad_x,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
    grad_x.pow(2).sum().backward()
    return w.grad, x.grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["labels", "soft", "none"])
def test_double_backward_is_exact(backend, kind, target):
    """A gradient penalty through a linear layer: d/dW |d loss / d x|^2 needs the derivative of the loss's gradient,
    which the stored gradient alone does not give (1.920 instead of 2.076 before)."""
    gen = torch.Generator().manual_seed(21)
    x, w = torch.randn(6, 8, generator=gen), torch.randn(8, 11, generator=gen) * 0.7
    y = torch.tensor([1, 2, IGN, 4, 5, 0])
    t = torch.softmax(torch.randn(6, 11, generator=gen) * 2, -1) if target == "soft" else y
    reduction = "none" if target == "none" else "mean"
    weight = torch.rand(6, generator=gen) + 0.5 if reduction == "none" else 1.0

    def reference(z):
        items, keep = per_item(kind, z, t, ALPHA)
        return items * weight if reduction == "none" else items.sum() / keep.sum()

    ref = _penalised_weight_grad(reference, x.double(), w.double())
    ours = _penalised_weight_grad(lambda z: get_loss_fn(kind)(z, t, ALPHA, reduction=reduction) * weight, x, w)
    for got, want in zip(ours, ref):
        assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_soft_targets_that_require_grad_get_their_gradient(backend, kind):
    """As F.cross_entropy gives one: through targets on the simplex (`softmax(theta)`) the same gradient, and for
    the targets themselves the gradient of this loss (`-(1 - alpha) z` per row for LS, `-z` otherwise, scaled)."""
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(5, 2, 13, generator=gen) * 3
    theta = torch.randn(5, 2, 13, generator=gen)
    ref_x, ref_theta = (v.double().requires_grad_(True) for v in (x, theta))
    ref_items, _ = per_item(kind, ref_x, torch.softmax(ref_theta, -1), ALPHA)
    (ref_items.sum() / 10).backward()
    xx, th = x.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    get_loss_fn(kind)(xx, torch.softmax(th, -1), ALPHA, inplace_backward=True).backward()
    assert float((th.grad.double() - ref_theta.grad).abs().max()) < 1e-6
    assert float((xx.grad.double() - ref_x.grad).abs().max()) < 1e-6
    if kind == "ce":  # the same as torch's, through the simplex
        th2 = theta.clone().requires_grad_(True)
        F.cross_entropy(x.flatten(0, 1), torch.softmax(th2, -1).flatten(0, 1)).backward()
        assert float((th2.grad - th.grad).abs().max()) < 1e-6
    t = torch.softmax(theta, -1).requires_grad_(True)  # a leaf: the gradient of this loss's own formula
    ref_t = t.detach().double().requires_grad_(True)
    ref_items, _ = per_item(kind, x.double(), ref_t, ALPHA)
    ref_items.sum().backward()
    get_loss_fn(kind)(x.clone().requires_grad_(True), t, ALPHA, reduction="sum").backward()
    assert float((t.grad.double() - ref_t.grad).abs().max()) < 1e-5 * float(ref_t.grad.abs().max())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_integer_label_dtypes_reach_the_kernels_as_int64(backend, dtype):
    """uint8 labels are class indices 0-255 (a uint8 comparison with -100 would wrap it to 156): checked and
    computed as int64, on every backend; out of range, refused before any kernel reads them."""
    gen = torch.Generator().manual_seed(23)
    num_classes = 200 if dtype == torch.uint8 else 120
    y = torch.randint(0, min(num_classes, torch.iinfo(dtype).max), (40,), generator=gen)
    y[:3] = torch.tensor([156, 0, 1]) if dtype == torch.uint8 else torch.tensor([IGN, 0, 119])
    x = torch.randn(40, num_classes, generator=gen) * 3
    loss, grad = check(x, y, "maxsup")  # int64 labels, against the reference
    small_loss, _, small_grad = run(x, y.to(dtype), "maxsup")
    assert torch.equal(small_loss, loss) and torch.equal(small_grad, grad)
    if dtype == torch.uint8:
        with pytest.raises(ValueError, match="label value 156 is outside"):
            get_loss_fn("ce")(x[:, :100], y.to(dtype))


# ---------------------------------------------------------------------------------------------------
# the C backend's own machinery


@pytest.fixture
def c_backend(monkeypatch):
    if _c.unavailable(torch.device("cpu"), torch.float32):
        pytest.skip(f"C kernel unavailable: {_c.unavailable(torch.device('cpu'), torch.float32)}")
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "c")


def test_c_threads_agree_bitwise(c_backend, monkeypatch):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(301, 4099, generator=gen)
    y = labels_for((301,), 4099, gen)
    outs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("HF_MAXSUP_NUM_THREADS", threads)
        outs.append(check(x, y, "maxsup"))
    for loss, grad in outs[1:]:  # fixed chunking, sums added in chunk order: identical whatever the thread count
        assert torch.equal(loss, outs[0][0]) and torch.equal(grad, outs[0][1])


@pytest.mark.parametrize("stream", ["0", "1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c_streaming_store_path(c_backend, monkeypatch, stream, dtype):
    """The kernel writes big, resident gradient buffers with non-temporal stores: force both ways."""
    monkeypatch.setenv("HF_MAXSUP_STREAM", stream)
    gen = torch.Generator().manual_seed(14)
    x = (torch.randn(40, 4096, generator=gen) * 3).to(dtype)
    check(x, labels_for((40,), 4096, gen), "maxsup", gtol=TOL if dtype == torch.float32 else 1e-2)


# ---------------------------------------------------------------------------------------------------
# dispatch


def test_a_large_cpu_input_reaches_the_intended_backend(monkeypatch):
    """Auto sends CPU logits to the C kernel (when it builds), a forced backend gets them whatever their size."""
    seen = []
    for module in (_c, _torch):
        forward = module.forward
        monkeypatch.setattr(
            module,
            "forward",
            lambda job, forward=forward, name=module.NAME: (
                seen.append((name, job.num_rows, job.in_place)) or forward(job)
            ),
        )
    x = torch.randn(256, 32000, requires_grad=True)
    y = torch.randint(0, 32000, (256,))
    expected = "c" if _c.unavailable(torch.device("cpu"), torch.float32) is None else "torch"
    get_loss_fn("maxsup")(x, y, ALPHA).backward()
    assert seen == [(expected, 256, False)] and kernels.kernel_info()["backend"] == expected
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "torch")
    get_loss_fn("ls")(x.detach().clone().requires_grad_(), y, ALPHA, inplace_backward=True).backward()
    assert seen[-1] == ("torch", 256, True) and kernels.kernel_info()["backend"] == "torch"


def test_backend_choice_and_its_errors(monkeypatch):
    info = kernels.kernel_info("cpu")
    assert info["forced"] == "auto" and set(info["reasons"]) == {"c", "triton", "torch"}
    assert info["reasons"]["torch"] is None
    assert kernels.kernel_info("cpu", torch.float64)["backend"] == "torch"
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "cuda")
    with pytest.raises(ValueError, match="use one of auto, c, triton, torch"):
        get_loss_fn("maxsup")(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), ALPHA)
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "c")
    with pytest.raises(
        RuntimeError, match="HF_MAXSUP_BACKEND=c cannot serve float64 logits on cpu: the C kernel takes"
    ):
        get_loss_fn("maxsup")(torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long), ALPHA)
    assert kernels.kernel_info("cpu", torch.float64)["error"].startswith("HF_MAXSUP_BACKEND=c cannot")


def test_an_unusable_c_kernel_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(_c, "unavailable", lambda device, dtype: "no C compiler found: install gcc (or set CC)")
    monkeypatch.setattr(dispatch, "_warned", set())
    with caplog.at_level("WARNING", logger="hf_maxsup.kernels"):
        for _ in range(3):
            get_loss_fn("maxsup")(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), ALPHA)
    warnings = [r.getMessage() for r in caplog.records if "not used on cpu" in r.getMessage()]
    assert len(warnings) == 1 and "install gcc" in warnings[0] and "kernel_info()" in warnings[0]
    assert kernels.kernel_info()["backend"] == "torch"


def test_every_backend_module_is_a_backend():
    """`_c`, `_triton` and `_torch` have the members of `kernels.Backend`, each function with its parameters."""
    methods = ("unavailable", "forward", "scale_")
    for module in (_c, _triton, _torch):
        assert isinstance(module, kernels.Backend), module.__name__
        assert isinstance(module.NAME, str) and isinstance(module.DISTILLS, bool)
        for name in methods:
            expected = list(inspect.signature(getattr(kernels.Backend, name)).parameters)[1:]  # without self
            assert list(inspect.signature(getattr(module, name)).parameters) == expected, (module.__name__, name)
    assert sorted(module.NAME for module in (_c, _triton, _torch)) == sorted(kernels.BACKENDS)


def test_the_loss_codes_are_those_of_the_c_kernel():
    """One derivation of the loss codes, read by the C kernel (its enum) and by Triton's `KIND`."""
    source = (Path(kernels.__file__).parent / "csrc" / "fused_loss.c").read_text()
    enum = re.search(r"enum \{ (K_CE = \d+, K_LS = \d+, K_MAXSUP = \d+) \};", source).group(1)
    c_codes = {name.removeprefix("K_").lower(): int(code) for name, code in re.findall(r"(K_\w+) = (\d+)", enum)}
    assert kernels.LOSS_CODES == c_codes == {"ce": 0, "ls": 1, "maxsup": 2}
    assert tuple(kernels.LOSS_CODES) == kernels.LOSS_NAMES


def test_the_ctypes_arguments_mirror_the_c_struct():
    """`_c._Args` and `hfm_args` in csrc/fused_loss.c: the same fields in the same order (no field the kernel never
    reads, such as a scaling mode only one value of which was ever passed)."""
    source = (Path(kernels.__file__).parent / "csrc" / "fused_loss.c").read_text()
    body = re.search(r"typedef struct \{(.*?)\} hfm_args;", source, re.DOTALL).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.DOTALL)
    # the declared names: the words followed by a comma or the end of their declaration (`int64_t n_outer, n_inner`)
    c_fields = [name for decl in body.split(";") for name in re.findall(r"(\w+)\s*(?:\[\d+\])?\s*(?=,|$)", decl)]
    assert c_fields == [name for name, _ in _c._Args._fields_]
    assert "scale_mode" not in source
