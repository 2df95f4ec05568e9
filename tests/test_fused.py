"""Tests of hf_maxsup._fused (kernel and PyTorch fallback) against an independent float64 reference.

The reference is written here from the direct formulas with autograd: ``F.cross_entropy``,
``F.cross_entropy(label_smoothing=alpha)`` and ``CE + alpha * (max - mean)``.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hf_maxsup import _fused

IGN = -100
ALPHA = 0.1
TOL = 1e-5


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch):
    if request.param == "kernel":
        monkeypatch.delenv("HF_MAXSUP_DISABLE_KERNEL", raising=False)
        if shutil.which("gcc") is None and shutil.which("cc") is None:
            pytest.skip("no C compiler")
        if not _fused.is_available():
            pytest.skip(f"kernel unavailable: {_fused.kernel_info()['error']}")
    else:
        monkeypatch.setenv("HF_MAXSUP_DISABLE_KERNEL", "1")
        assert not _fused.is_available()
    return request.param


# ---------------------------------------------------------------------------------------------------
# independent reference (float64, direct formulas, autograd)


def reference(
    x, target, kind, alpha=ALPHA, reduction="mean", num_items=None, ignore_index=IGN
):
    """Returns (loss, grad wrt x, components) computed in float64 from the direct formulas."""
    z = x.detach().to(torch.float64).requires_grad_(True)
    K = z.shape[-1]
    z2 = z.reshape(-1, K)
    if not torch.is_floating_point(target):
        y = target.reshape(-1)
        keep = y != ignore_index
        ce = F.cross_entropy(z2, y, ignore_index=ignore_index, reduction="none")
        if kind == "ls":
            total = F.cross_entropy(
                z2,
                y,
                ignore_index=ignore_index,
                reduction="none",
                label_smoothing=alpha,
            )
        elif kind == "maxsup":
            top = z2.gather(-1, z2.argmax(-1, keepdim=True)).squeeze(
                -1
            )  # first index of the max
            total = ce + alpha * (top - z2.mean(-1))
        else:
            total = ce
        total = torch.where(keep, total, torch.zeros_like(total))
    else:
        t = target.reshape(-1, K).to(torch.float64)
        keep = torch.ones(z2.shape[0], dtype=torch.bool)
        ce = F.cross_entropy(z2, t, reduction="none")
        if kind == "ls":
            total = F.cross_entropy(z2, t, reduction="none", label_smoothing=alpha)
        elif kind == "maxsup":
            top = z2.gather(-1, z2.argmax(-1, keepdim=True)).squeeze(-1)
            total = ce + alpha * (top - z2.mean(-1))
        else:
            total = ce
    n = int(keep.sum())
    if num_items is not None:
        loss = total.sum() / float(num_items)
    elif reduction == "sum":
        loss = total.sum()
    elif reduction == "mean":
        loss = total.sum() / n if n else total.sum() * 0.0
    else:
        loss = total.reshape(x.shape[:-1])
    grad = None
    if loss.requires_grad:
        (g,) = torch.autograd.grad(loss.sum() if loss.dim() else loss, z)
        grad = g
    # components: means over kept rows
    with torch.no_grad():
        comps = {}
        kk = keep
        cnt = max(n, 1)
        comps["ce"] = (
            (torch.where(kk, ce, torch.zeros_like(ce)).sum() / cnt)
            if n
            else torch.tensor(0.0)
        )
        if kind != "ce":
            comps["reg"] = (
                (
                    torch.where(kk, (total - ce) / alpha, torch.zeros_like(ce)).sum()
                    / cnt
                )
                if n
                else torch.tensor(0.0)
            )
        if kind == "ls" and not torch.is_floating_point(target):
            y = target.reshape(-1)
            zy = z2.gather(-1, torch.where(kk, y, 0).unsqueeze(-1))
            d = zy - z2
            lsr = d.clamp(min=0).sum(-1) / K
            lsa = d.clamp(max=0).sum(-1) / K
            comps["ls_regularization"] = (
                torch.where(kk, lsr, 0.0).sum() / cnt if n else torch.tensor(0.0)
            )
            comps["ls_error_amplification"] = (
                torch.where(kk, lsa, 0.0).sum() / cnt if n else torch.tensor(0.0)
            )
    return loss.detach(), grad, comps


def relerr(a, b):
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    scale = (
        b.abs().max().clamp_min(1e-30)
        if b.numel()
        else torch.tensor(1.0, dtype=torch.float64)
    )
    return float((a - b).abs().max() / scale) if a.numel() else 0.0


def run_ours(x, target, kind, **kw):
    xx = x.detach().clone().requires_grad_(True)
    out = _fused.fused_cross_entropy(xx, target, kind=kind, alpha=ALPHA, **kw)
    loss = out[0] if isinstance(out, tuple) else out
    if loss.dim():
        loss.sum().backward()
    else:
        loss.backward()
    return out, xx.grad


def labels_for(shape, K, gen, frac_ignored=0.2):
    y = torch.randint(0, K, shape, generator=gen)
    drop = torch.rand(shape, generator=gen) < frac_ignored
    return torch.where(drop, torch.full_like(y, IGN), y)


# ---------------------------------------------------------------------------------------------------
# correctness against the reference


SHAPES = [(37, 11), (64, 1000), (3, 7, 5003), (2, 9, 257)]


@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
@pytest.mark.parametrize("shape", SHAPES)
def test_hard_labels_match_reference(path, kind, shape):
    gen = torch.Generator().manual_seed(hash((kind, shape)) % 2**31)
    x = torch.randn(*shape, generator=gen) * 4
    y = labels_for(shape[:-1], shape[-1], gen)
    (loss, comps), g = run_ours(x, y, kind, return_components=True)
    rl, rg, rc = reference(x, y, kind)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert relerr(loss, rl) < TOL
    assert g.dtype == x.dtype and g.shape == x.shape
    assert relerr(g, rg) < TOL
    assert set(comps) == set(rc)
    for k in rc:
        assert (
            comps[k].dtype == torch.float32
            and comps[k].dim() == 0
            and not comps[k].requires_grad
        )
        assert abs(float(comps[k]) - float(rc[k])) <= TOL * max(
            1.0, abs(float(rc[k]))
        ), k


@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reductions(path, kind, reduction, dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 6, 300, generator=gen) * 3).to(dtype)
    gtol = TOL if dtype == torch.float32 else 2e-3
    y = labels_for((4, 6), 300, gen)
    xx = x.clone().requires_grad_(True)
    loss = _fused.fused_cross_entropy(
        xx, y, kind=kind, alpha=ALPHA, reduction=reduction
    )
    rl, _, _ = reference(x, y, kind, reduction=reduction)
    assert loss.shape == rl.shape
    assert relerr(loss, rl) < TOL
    # a non-trivial grad_output: per-row weights for "none", a scalar for the others
    w = torch.rand(loss.shape, generator=gen, dtype=torch.float32) + 0.5
    (loss * w).sum().backward()
    # reference gradient with autograd through the same weights
    zz = x.to(torch.float64).requires_grad_(True)
    K = 300
    z2 = zz.reshape(-1, K)
    yy = y.reshape(-1)
    keep = yy != IGN
    ce = F.cross_entropy(z2, yy, ignore_index=IGN, reduction="none")
    if kind == "ls":
        tot = F.cross_entropy(
            z2, yy, ignore_index=IGN, reduction="none", label_smoothing=ALPHA
        )
    elif kind == "maxsup":
        tot = ce + ALPHA * (
            z2.gather(-1, z2.argmax(-1, keepdim=True)).squeeze(-1) - z2.mean(-1)
        )
    else:
        tot = ce
    tot = torch.where(keep, tot, 0.0)
    if reduction == "none":
        ref = (tot.reshape(4, 6) * w.double()).sum()
    elif reduction == "sum":
        ref = tot.sum() * float(w)
    else:
        ref = tot.sum() / keep.sum() * float(w)
    ref.backward()
    assert xx.grad.dtype == dtype
    assert relerr(xx.grad, zz.grad) < gtol
    if reduction == "none":
        assert torch.all(loss.detach()[(y == IGN)] == 0)


@pytest.mark.parametrize("kind", ["ls", "maxsup"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_num_items_in_batch(path, kind, as_tensor):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 8, 129, generator=gen) * 2
    y = labels_for((5, 8), 129, gen)
    num = 97  # e.g. tokens over all accumulation steps / processes
    n = torch.tensor(num) if as_tensor else num
    for reduction in ("mean", "sum"):
        (loss, comps), g = run_ours(
            x,
            y,
            kind,
            reduction=reduction,
            num_items_in_batch=n,
            return_components=True,
        )
        rl, rg, rc = reference(x, y, kind, num_items=num)
        assert relerr(loss, rl) < TOL
        assert relerr(g, rg) < TOL
        # components are means over kept rows whatever num_items_in_batch is
        assert abs(float(comps["ce"]) - float(rc["ce"])) < TOL * abs(float(rc["ce"]))
    with pytest.raises(ValueError):
        _fused.fused_cross_entropy(
            x, y, kind=kind, alpha=ALPHA, reduction="none", num_items_in_batch=n
        )


def test_exact_ties_follow_first_index(path):
    """Exact ties in the max, in different SIMD lanes, blocks, and the scalar tail."""
    gen = torch.Generator().manual_seed(3)
    K = 5003  # 3 blocks of 2048, tail of 11 elements after the 16-lane part
    x = torch.randn(8, K, generator=gen)
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
    for r, idx in enumerate(tie_sets):
        x[r, idx] = 9.0
    y = torch.tensor([7, 3, 4096, 5002, IGN, 1, 5001, 0])
    _, g = run_ours(x, y, "maxsup")
    _rl, rg, _ = reference(x, y, "maxsup")
    assert relerr(g, rg) < TOL
    # the +alpha goes to the first tied index only
    for r, idx in enumerate(tie_sets):
        if int(y[r]) == IGN:
            assert torch.all(g[r] == 0)
            continue
        first = min(idx)
        if first == int(y[r]):
            continue
        others = [i for i in idx if i != first and i != int(y[r])]
        for i in others:
            assert (
                float(g[r, first]) - float(g[r, i]) > 0.9 * ALPHA / 8
            )  # mean over 7 kept rows
    # small K, ties across everything (K=1 included separately)
    x2 = torch.zeros(4, 5)
    y2 = torch.tensor([0, 4, 2, IGN])
    for kind in ("ce", "ls", "maxsup"):
        (loss, _comps), g2 = run_ours(x2, y2, kind, return_components=True)
        rl2, rg2, _rc2 = reference(x2, y2, kind)
        assert relerr(loss, rl2) < TOL and relerr(g2, rg2) < TOL


@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
@pytest.mark.parametrize("tdtype", [torch.float32, torch.float64])
def test_soft_targets(path, kind, tdtype):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, 700, generator=gen) * 3
    t = torch.softmax(torch.randn(3, 10, 700, generator=gen) * 2, -1).to(tdtype)
    (loss, comps), g = run_ours(x, t, kind, return_components=True)
    rl, rg, rc = reference(x, t, kind)
    assert relerr(loss, rl) < TOL
    assert relerr(g, rg) < TOL
    assert set(comps) == ({"ce"} if kind == "ce" else {"ce", "reg"})
    for k in comps:
        assert abs(float(comps[k]) - float(rc[k])) <= TOL * max(1.0, abs(float(rc[k])))
    # mixup-like: convex combination of two one-hots
    y1, y2 = (
        torch.randint(0, 700, (30,), generator=gen),
        torch.randint(0, 700, (30,), generator=gen),
    )
    lam = 0.7
    t2 = lam * F.one_hot(y1, 700).float() + (1 - lam) * F.one_hot(y2, 700).float()
    x2 = x.reshape(30, 700)
    (l2, _), g2 = run_ours(x2, t2, kind, return_components=True)
    rl2, rg2, _ = reference(x2, t2, kind)
    assert relerr(l2, rl2) < TOL and relerr(g2, rg2) < TOL


@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_all_rows_ignored(path, kind, reduction):
    x = torch.randn(3, 4, 50)
    y = torch.full((3, 4), IGN)
    xx = x.clone().requires_grad_(True)
    loss, comps = _fused.fused_cross_entropy(
        xx, y, kind=kind, alpha=ALPHA, reduction=reduction, return_components=True
    )
    assert torch.all(loss == 0) and not torch.isnan(loss).any()
    loss.sum().backward()
    assert torch.all(xx.grad == 0)
    for v in comps.values():
        assert float(v) == 0.0
    # with num_items_in_batch too
    xx = x.clone().requires_grad_(True)
    if reduction != "none":
        loss = _fused.fused_cross_entropy(
            xx, y, kind=kind, alpha=ALPHA, reduction=reduction, num_items_in_batch=5
        )
        loss.backward()
        assert float(loss.detach()) == 0.0 and torch.all(xx.grad == 0)


@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
def test_single_class_and_empty(path, kind):
    x = torch.randn(6, 1) * 5
    y = torch.tensor([0, 0, IGN, 0, 0, 0])
    (loss, _comps), g = run_ours(x, y, kind, return_components=True)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.all(g.abs() < 1e-6)
    # zero rows
    x0 = torch.randn(0, 9)
    y0 = torch.zeros(0, dtype=torch.long)
    (l0, _c0), g0 = run_ours(x0, y0, kind, return_components=True)
    assert float(l0.detach()) == 0.0 and g0.shape == x0.shape


def test_minus_inf_logits_ce(path):
    """Masked vocabulary (-inf logits, a whole first block of them in one row) stays finite for CE."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 5000, generator=gen)
    x[0, :2048] = float("-inf")
    x[1, ::3] = float("-inf")
    y = torch.tensor([3000, 1, 4000, 7])
    (loss, _), g = run_ours(x, y, "ce", return_components=True)
    rl, rg, _ = reference(x, y, "ce")
    assert torch.isfinite(loss) and relerr(loss, rl) < TOL
    assert torch.isfinite(g).all() and relerr(g, rg) < TOL


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
def test_half_inputs(path, dtype, tol, kind):
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(3, 20, 3001, generator=gen) * 3).to(dtype)
    y = labels_for((3, 20), 3001, gen)
    (loss, comps), g = run_ours(x, y, kind, return_components=True)
    rl, rg, rc = reference(
        x.float(), y, kind
    )  # fp32 reference of the upcast input (exact)
    assert loss.dtype == torch.float32
    assert relerr(loss, rl) < 1e-5  # loss computed in fp32 from the exact upcast values
    assert g.dtype == dtype
    assert relerr(g, rg) < tol
    for k in rc:
        assert abs(float(comps[k]) - float(rc[k])) <= 1e-5 * max(1.0, abs(float(rc[k])))
    # soft targets in the logits' dtype
    t = torch.softmax(torch.randn(3, 20, 3001, generator=gen), -1).to(dtype)
    (l2, _), g2 = run_ours(x, t, kind, return_components=True)
    rl2, rg2, _ = reference(x.float(), t.float(), kind)
    assert relerr(l2, rl2) < 1e-5 and relerr(g2, rg2) < tol


def test_float64_logits_use_fallback_in_float64(path):
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(6, 7, 101, generator=gen, dtype=torch.float64) * 3
    y = labels_for((6, 7), 101, gen)
    for kind in ("ls", "maxsup"):
        (loss, _), g = run_ours(x, y, kind, return_components=True)
        rl, rg, _ = reference(x, y, kind)
        assert loss.dtype == torch.float64 and g.dtype == torch.float64
        assert relerr(loss, rl) < 1e-12 and relerr(g, rg) < 1e-12


def test_fp16_small_gradients_survive_loss_scaling(path):
    """fp16 gradients of p/n with p tiny must not flush to zero before a large grad_output (AMP scaler)."""
    gen = torch.Generator().manual_seed(7)
    N, K = 2048, 64
    x = (torch.randn(N, K, generator=gen) * 4).half()
    x[:, 0] = (
        12.0  # p of the others ~ e^-12 ~ 6e-6, p/N ~ 3e-9 < fp16 min subnormal (6e-8)
    )
    y = torch.zeros(N, dtype=torch.long)
    xx = x.clone().requires_grad_(True)
    loss = _fused.fused_cross_entropy(xx, y, kind="maxsup", alpha=ALPHA)
    (loss * 65536.0).backward()
    _, rg, _ = reference(x.float(), y, "maxsup")
    rg = rg * 65536.0
    big = rg.abs() > 1e-4  # representable after scaling
    assert big.sum() > N
    rel = ((xx.grad.double() - rg).abs() / rg.abs())[big]
    assert float(rel.max()) < 2e-3


# ---------------------------------------------------------------------------------------------------
# layouts, threading


def test_non_contiguous_and_views(path):
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(3, 9, 333, generator=gen) * 2
    y = labels_for((3, 8), 333, gen)
    for kind in ("ls", "maxsup"):
        # shifted view (rows not uniformly strided): causal-LM style logits[:, :-1]
        b = base.clone().requires_grad_(True)
        loss = _fused.fused_cross_entropy(b[:, :-1, :], y, kind=kind, alpha=ALPHA)
        loss.backward()
        rl, rg, _ = reference(base[:, :-1, :], y, kind)
        assert relerr(loss, rl) < TOL
        assert relerr(b.grad[:, :-1], rg) < TOL and torch.all(b.grad[:, -1] == 0)
        # class dim not contiguous
        xt = torch.randn(333, 24, generator=gen).t()
        yt = y.reshape(-1)
        (lt, _), gt = run_ours(xt, yt, kind, return_components=True)
        rlt, rgt, _ = reference(xt, yt, kind)
        assert relerr(lt, rlt) < TOL and relerr(gt, rgt) < TOL


def test_threads_agree(path, monkeypatch):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(301, 4099, generator=gen)
    y = labels_for((301,), 4099, gen)
    outs = []
    for nt in ("1", "2", "3"):
        monkeypatch.setenv("HF_MAXSUP_NUM_THREADS", nt)
        (loss, _comps), g = run_ours(x, y, "maxsup", return_components=True)
        outs.append((loss, g))
    rl, rg, _ = reference(x, y, "maxsup")
    for loss, g in outs:
        assert relerr(loss, rl) < TOL and relerr(g, rg) < TOL
    # bitwise identical whatever the thread count (fixed chunking, sums added in chunk order)
    assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][1], outs[2][1])
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][0], outs[2][0])


@pytest.mark.parametrize("stream", ["0", "1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_store_path(path, monkeypatch, stream, dtype):
    """The kernel writes big, resident gradient buffers with non-temporal stores: force both ways."""
    monkeypatch.setenv("HF_MAXSUP_STREAM", stream)
    gen = torch.Generator().manual_seed(14)
    x = (torch.randn(40, 4096, generator=gen) * 3).to(dtype)
    y = labels_for((40,), 4096, gen)
    (loss, _), g = run_ours(x, y, "maxsup", return_components=True)
    rl, rg, _ = reference(x.float(), y, "maxsup")
    assert relerr(loss, rl) < 1e-5 and relerr(g, rg) < (
        TOL if dtype == torch.float32 else 1e-2
    )


# ---------------------------------------------------------------------------------------------------
# in-place mode and memory


class _AllocSpy(TorchDispatchMode):
    """Records the size of every new storage an aten op produces (outputs not aliasing an input)."""

    def __init__(self):
        super().__init__()
        self.allocs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if (
                isinstance(t, torch.Tensor)
                and t.untyped_storage().data_ptr() not in ins
            ):
                self.allocs.append((str(func), t.untyped_storage().nbytes()))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["ls", "maxsup"])
def test_inplace_gradient_reuses_logits_storage(path, kind, dtype, monkeypatch):
    # the fallback's temporaries are chunk-sized: make chunks 2 rows so that "small" means small here
    monkeypatch.setattr(_fused, "_CHUNK_ELEMS", 2 * 2500)
    gen = torch.Generator().manual_seed(10)
    x = (torch.randn(4, 16, 2500, generator=gen) * 3).to(dtype)
    y = labels_for((4, 16), 2500, gen)
    rl, rg, _ = reference(x.float(), y, kind)
    logits = x.clone().requires_grad_(True)
    ptr = logits.data_ptr()
    nbytes = logits.untyped_storage().nbytes()
    with _AllocSpy() as spy:
        loss = _fused.fused_cross_entropy(
            logits, y, kind=kind, alpha=ALPHA, inplace_backward=True
        )
        loss.backward()
    assert relerr(loss, rl) < 1e-5
    tol = {torch.float32: TOL, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert relerr(logits.grad, rg) < tol
    # the gradient lives in the logits' own buffer, adopted by autograd as .grad without a copy ...
    assert logits.grad.data_ptr() == ptr
    # ... so the logits now hold the gradient (they are destroyed) ...
    assert torch.equal(logits.detach(), logits.grad)
    # ... and nothing anywhere near logits-sized was allocated during forward + backward
    assert max((b for _, b in spy.allocs), default=0) <= 0.1 * nbytes, spy.allocs

    # normal mode, for contrast: exactly one logits-sized buffer (the gradient), no copy of it
    logits2 = x.clone().requires_grad_(True)
    with _AllocSpy() as spy2:
        loss2 = _fused.fused_cross_entropy(logits2, y, kind=kind, alpha=ALPHA)
        loss2.backward()
    big = [b for _, b in spy2.allocs if b > 0.1 * nbytes]
    assert big == [nbytes], spy2.allocs
    assert torch.equal(logits2.detach(), x)  # untouched
    assert torch.equal(logits2.grad, logits.grad)


def test_inplace_with_overlapping_rows_copies(path):
    """Expanded logits share memory between rows: the in-place mode must not write into them."""
    gen = torch.Generator().manual_seed(12)
    row = torch.randn(1, 1, 300, generator=gen)
    base = row.clone().requires_grad_(True)
    x = base.expand(2, 5, 300)
    y = labels_for((2, 5), 300, gen)
    loss = _fused.fused_cross_entropy(
        x, y, kind="maxsup", alpha=ALPHA, inplace_backward=True
    )
    loss.backward()
    rl, rg, _ = reference(row.expand(2, 5, 300), y, "maxsup")
    assert relerr(loss, rl) < TOL
    assert relerr(base.grad, rg.sum((0, 1), keepdim=True)) < TOL


def test_inplace_non_leaf_through_matmul(path):
    """The realistic use: logits = h @ W, destroyed by the loss; W.grad must still be right."""
    gen = torch.Generator().manual_seed(11)
    h = torch.randn(2, 24, 16, generator=gen)
    W = torch.randn(1000, 16, generator=gen) * 0.5
    y = labels_for((2, 24), 1000, gen)
    Wr = W.double().requires_grad_(True)
    rl_logits = h.double() @ Wr.t()
    ce = F.cross_entropy(
        rl_logits.reshape(-1, 1000), y.reshape(-1), ignore_index=IGN, reduction="none"
    )
    z2 = rl_logits.reshape(-1, 1000)
    keep = y.reshape(-1) != IGN
    tot = torch.where(
        keep,
        ce
        + ALPHA
        * (z2.gather(-1, z2.argmax(-1, keepdim=True)).squeeze(-1) - z2.mean(-1)),
        0.0,
    )
    (tot.sum() / keep.sum()).backward()
    for inplace in (False, True):
        Wo = W.clone().requires_grad_(True)
        logits = h @ Wo.t()
        loss = _fused.fused_cross_entropy(
            logits, y, kind="maxsup", alpha=ALPHA, inplace_backward=inplace
        )
        (loss * 0.25).backward()  # grad_output != 1 (e.g. gradient accumulation)
        assert relerr(Wo.grad, Wr.grad * 0.25) < TOL


def test_inplace_detects_saved_logits(path):
    """If another node saved the logits for its backward, destroying them must raise, not corrupt."""
    x = torch.randn(8, 50, requires_grad=True)
    y = torch.randint(0, 50, (8,))
    logits = torch.tanh(x)  # tanh saves its output for its backward
    loss = _fused.fused_cross_entropy(
        logits, y, kind="maxsup", alpha=ALPHA, inplace_backward=True
    )
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_no_grad_leaves_logits_untouched(path):
    x = torch.randn(8, 50)
    y = torch.randint(0, 50, (8,))
    xx = x.clone().requires_grad_(True)
    with torch.no_grad():
        loss, comps = _fused.fused_cross_entropy(
            xx,
            y,
            kind="maxsup",
            alpha=ALPHA,
            inplace_backward=True,
            return_components=True,
        )
    assert torch.equal(xx.detach(), x)
    rl, _, rc = reference(x, y, "maxsup")
    assert relerr(loss, rl) < TOL and abs(
        float(comps["reg"]) - float(rc["reg"])
    ) < 1e-5 * abs(float(rc["reg"]))


def test_second_backward_and_double_backward_raise(path):
    x = torch.randn(8, 50, requires_grad=True)
    y = torch.randint(0, 50, (8,))
    loss = _fused.fused_cross_entropy(x, y, kind="maxsup", alpha=ALPHA)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already handed"):
        loss.backward()
    x2 = torch.randn(8, 50, requires_grad=True)
    loss2 = _fused.fused_cross_entropy(x2, y, kind="ls", alpha=ALPHA)
    (g,) = torch.autograd.grad(loss2, x2, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_bad_arguments(path):
    x = torch.randn(4, 5)
    y = torch.zeros(4, dtype=torch.long)
    # out-of-range labels raise instead of reading out of bounds
    for bad in (5, -1):
        with pytest.raises((IndexError, RuntimeError)):
            _fused.fused_cross_entropy(
                x.clone().requires_grad_(True),
                torch.tensor([0, bad, IGN, 1]),
                kind="maxsup",
            )
    with pytest.raises(ValueError):
        _fused.fused_cross_entropy(x, torch.zeros(3, dtype=torch.long), kind="ce")
    with pytest.raises(ValueError):
        _fused.fused_cross_entropy(x, y, kind="focal")
    with pytest.raises(ValueError):
        _fused.fused_cross_entropy(x, y, kind="ce", reduction="avg")


def test_kernel_build_is_atomic_and_cached(tmp_path):
    """Two concurrent builders into an empty cache dir (as DDP ranks do): one .so, no temporary leftovers;
    a later build with the same source/flags/CPU reuses it."""
    import threading

    cc = _fused._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    FLAGS = [
        "-O0"
    ]  # overrides -O3: this test is about the cache, not the code (keeps it fast)
    paths, errors = [], []

    def build():
        try:
            paths.append(_fused._build(tmp_path, cc, FLAGS))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        pytest.fail(f"build failed: {errors[0]}")
    assert len(set(paths)) == 1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert (
        files == [paths[0].name]
        and files[0].startswith("fused_loss-")
        and files[0].endswith(".so")
    )
    mtime = paths[0].stat().st_mtime_ns
    assert _fused._build(tmp_path, cc, FLAGS) == paths[0]
    assert paths[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    lib = _fused._load(paths[0])
    assert lib.hfm_abi_version() == _fused._ABI_VERSION
