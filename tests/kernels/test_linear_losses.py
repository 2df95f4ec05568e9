"""The fused linear losses against the float64 reference of the materialised logits (`_reference.py`), for every
backend: loss and the gradients of hidden, weight and bias; ignored rows, ties, reductions, num_items_in_batch,
bfloat16, chunking, components, memory, bad input."""

from __future__ import annotations

import pytest
import torch
from _reference import IGN, AllocSpy, components, fairseq_label_smoothed_nll_loss, per_item

from hf_maxsup import kernels
from hf_maxsup.linear import (
    default_chunk_size,
    fused_linear_loss,
    label_smoothing_linear_cross_entropy,
    linear_cross_entropy,
    maxsup_linear_cross_entropy,
)

ALPHA = 0.1
KINDS = ["ce", "ls", "maxsup"]


def make(shape=(2, 25), hidden_size=16, vocab=300, dtype=torch.float32, ties=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if ties:  # small integers: many exact ties among the logits
        hidden = torch.randint(-1, 2, (*shape, hidden_size), generator=gen).to(dtype)
        weight = torch.randint(-1, 2, (vocab, hidden_size), generator=gen).to(dtype)
    else:
        hidden = torch.randn(*shape, hidden_size, generator=gen).to(dtype)
        weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.5).to(dtype)
    bias = (torch.randn(vocab, generator=gen) * 0.1).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=gen)
    labels[torch.rand(shape, generator=gen) < 0.25] = IGN
    return hidden, weight, bias, labels


def reference(kind, hidden, weight, bias, labels, reduction="mean", num_items=None, weight_out=None):
    h, w, b = (t.detach().double().requires_grad_(True) for t in (hidden, weight, bias))
    items, keep = per_item(kind, h @ w.t() + b, labels, ALPHA)
    if num_items is not None:
        loss = items.sum() / num_items
    elif reduction == "mean":
        loss = items.sum() / keep.sum().clamp_min(1)
    elif reduction == "sum":
        loss = items.sum()
    else:
        loss = items.view(labels.shape)
    (loss * (1.0 if weight_out is None else weight_out.double())).sum().backward()
    return loss.detach(), (h.grad, w.grad, b.grad)


def ours(kind, hidden, weight, bias, labels, weight_out=None, **kwargs):
    h, w, b = (t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias))
    loss, comps = fused_linear_loss(h, w, labels, loss=kind, alpha=ALPHA, bias=b, return_components=True, **kwargs)
    (loss * (1.0 if weight_out is None else weight_out)).sum().backward()
    return loss.detach(), comps, (h.grad, w.grad, b.grad)


def assert_rel(actual, expected, tol, what):
    err = float((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
    assert err < tol, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ties", [False, True])
def test_loss_and_gradients_match_the_materialised_reference(backend, kind, reduction, ties):
    hidden, weight, bias, labels = make(ties=ties)
    weight_out = torch.rand(labels.shape) + 0.5 if reduction == "none" else None
    loss, comps, grads = ours(
        kind, hidden, weight, bias, labels, weight_out=weight_out, reduction=reduction, chunk_size=7
    )
    ref_loss, ref_grads = reference(kind, hidden, weight, bias, labels, reduction, weight_out=weight_out)
    assert loss.dtype == torch.float32 and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    for name, grad, ref in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert grad.dtype == torch.float32
        assert_rel(grad, ref, 1e-5, name)
    if reduction == "none":
        assert torch.all(loss[labels == IGN] == 0)
    expected = components(kind, hidden.double() @ weight.double().t() + bias.double(), labels, ALPHA)
    assert set(comps) == set(expected)
    for name, value in expected.items():
        assert abs(float(comps[name]) - value) <= 1e-5 * max(1.0, abs(value)), name


@pytest.mark.parametrize("kind", ["ls", "maxsup"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_num_items_in_batch_and_accumulation(backend, kind, as_tensor):
    hidden, weight, bias, labels = make(shape=(4, 9), seed=1)
    n = int((labels != IGN).sum())
    full, _, full_grads = ours(kind, hidden, weight, bias, labels)
    parts = [
        ours(kind, hidden[part], weight, bias, labels[part], num_items_in_batch=torch.tensor(n) if as_tensor else n)
        for part in (slice(0, 2), slice(2, 4))
    ]  # two micro-batches of an accumulated batch
    micro_loss = parts[0][0] + parts[1][0]
    micro_grads = [
        torch.cat([parts[0][2][0], parts[1][2][0]]),
        parts[0][2][1] + parts[1][2][1],
        parts[0][2][2] + parts[1][2][2],
    ]
    torch.testing.assert_close(micro_loss, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(micro_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_inputs_accumulate_in_float32(backend, kind):
    """The reference sees the same bf16 logits as the loss (a rounding can move MaxSup's argmax), then chains the
    float64 gradient of those logits through the float64 matmuls: what is left is our accumulation error. 128 chunks
    of 8 rows: the weight's and the bias's gradients summed over them in bfloat16 instead of float32 are off by 2e-2
    to 4e-2 of their largest entry, against 2e-3 to 8e-3 here (the results themselves are bf16, and the Triton
    interpreter rounds its bf16 stores towards zero)."""
    hidden, weight, bias, labels = make(shape=(8, 128), hidden_size=32, vocab=1000, dtype=torch.bfloat16, seed=2)
    loss, _, grads = ours(kind, hidden, weight, bias, labels, chunk_size=8)
    z = torch.addmm(bias, hidden.reshape(-1, 32), weight.t()).double().requires_grad_(True)
    items, keep = per_item(kind, z, labels, ALPHA)
    ref_loss = items.sum() / keep.sum()
    ref_loss.backward()
    h, w = hidden.reshape(-1, 32).double(), weight.double()
    ref_grads = ((z.grad @ w).view(hidden.shape), z.grad.t() @ h, z.grad.sum(0))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    for name, grad, ref in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert grad.dtype == torch.bfloat16
        assert_rel(grad, ref, 1.2e-2, name)


def test_chunk_sizes_agree_and_all_ignored_gives_zero(backend):
    hidden, weight, bias, labels = make(shape=(5, 7), seed=3)
    results = [ours("maxsup", hidden, weight, bias, labels, chunk_size=c) for c in (1, 8, 1000)]
    for loss, _, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=1e-7)
        for a, b in zip(grads, results[0][2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    loss, comps, grads = ours("maxsup", hidden, weight, bias, torch.full_like(labels, IGN))
    assert float(loss) == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads)
    assert all(float(v) == 0.0 for v in comps.values())


def test_named_functions_and_no_bias():
    hidden, weight, _, labels = make(seed=4)
    for fn, kind in (
        (linear_cross_entropy, "ce"),
        (label_smoothing_linear_cross_entropy, "ls"),
        (maxsup_linear_cross_entropy, "maxsup"),
    ):
        loss = fn(hidden, weight, labels) if kind == "ce" else fn(hidden, weight, labels, ALPHA)
        items, keep = per_item(kind, hidden.double() @ weight.double().t(), labels, ALPHA)
        torch.testing.assert_close(loss.double(), items.sum() / keep.sum(), rtol=1e-5, atol=1e-6)
    assert default_chunk_size(1024, 512, 32000) == 64 and default_chunk_size(4096, 512, 32000) == 256
    assert default_chunk_size(16384, 4096, 128256) == 1024 and default_chunk_size(3, 64, 100) == 4


def test_never_materialises_the_logits(backend, monkeypatch):
    """No buffer anywhere near the size of the full logits during forward and backward."""
    monkeypatch.setattr(kernels._torch, "_CHUNK_ELEMS", {"cpu": 16 * 2000})
    hidden, weight, bias, labels = make(shape=(8, 128), hidden_size=32, vocab=2000, seed=5)
    h, w, b = (t.clone().requires_grad_(True) for t in (hidden, weight, bias))
    with AllocSpy() as spy:
        fused_linear_loss(h, w, labels, loss="maxsup", alpha=ALPHA, bias=b, chunk_size=16).backward()
    logits_bytes = labels.numel() * 2000 * 4
    # the gradients of the inputs (weight: 2000x32) are allowed; nothing logits-sized
    assert max(n for _, n in spy.allocs) <= 0.1 * logits_bytes, sorted(spy.allocs, key=lambda a: -a[1])[:3]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h, w, y: fused_linear_loss(h, w[:, :3], y), "weight must have shape (V, H) = (V, 16)"),
        (lambda h, w, y: fused_linear_loss(h, w.double(), y), "must share dtype and device"),
        (lambda h, w, y: fused_linear_loss(h, w, y, bias=torch.zeros(3)), "bias must have shape (V,) = (300,)"),
        (lambda h, w, y: fused_linear_loss(h, w, torch.rand(2, 25, 300)), "not soft targets"),
        (lambda h, w, y: fused_linear_loss(h, w, y[:, :3]), "do not match hidden states"),
        (lambda h, w, y: fused_linear_loss(h, w, torch.full_like(y, 300)), "label value 300 is outside [0, 300)"),
        (lambda h, w, y: fused_linear_loss(h, w, y, loss="focal"), "unknown loss 'focal'"),
        (lambda h, w, y: fused_linear_loss(h, w, y, alpha=1.0), "alpha must be in [0, 1)"),
        (lambda h, w, y: fused_linear_loss(h, w, y, reduction="none", num_items_in_batch=3), "reduction='none'"),
        (lambda h, w, y: fused_linear_loss(h.long(), w, y), "floating-point tensor"),
        (lambda h, w, y: fused_linear_loss(h, w, y, alpha=None), "alpha must be in [0, 1); got None"),
        (lambda h, w, y: fused_linear_loss(h, w, y, alpha=torch.tensor(0.1, requires_grad=True)), "alpha.detach()"),
        (lambda h, w, y: fused_linear_loss(h, w, y, num_items_in_batch=-3), "must be a number >= 0 (the count"),
        (lambda h, w, y: fused_linear_loss(h, w, y, num_items_in_batch=float("nan")), "got nan"),
        (lambda h, w, y: fused_linear_loss(h, w[:200], torch.full(y.shape, 250, dtype=torch.uint8)), "value 250"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    hidden, weight, _, labels = make()
    with pytest.raises(ValueError) as error:
        call(hidden, weight, labels)
    assert message in str(error.value)


def test_double_backward_is_refused(backend):
    hidden, weight, bias, labels = make()
    h = hidden.clone().requires_grad_(True)
    loss = fused_linear_loss(h, weight, labels, bias=bias)
    with pytest.raises(RuntimeError, match="double backward .* is not supported.*hf_maxsup.losses"):
        torch.autograd.grad(loss, h, create_graph=True)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_integer_label_dtypes_are_class_indices(backend, dtype):
    hidden, weight, bias, labels = make(vocab=200, seed=8)
    if dtype == torch.uint8:
        labels = labels.clamp_min(0)  # uint8 has no -100; and 156 stays class 156
        labels[0] = 156
    expected = ours("maxsup", hidden, weight, bias, labels, chunk_size=7)
    got = ours("maxsup", hidden, weight, bias, labels.to(dtype), chunk_size=7)
    assert torch.equal(got[0], expected[0]) and all(torch.equal(a, b) for a, b in zip(got[2], expected[2]))


def test_ls_mass_others_matches_fairseq(backend):
    hidden, weight, bias, labels = make(seed=6)
    loss = label_smoothing_linear_cross_entropy(
        hidden, weight, labels, ALPHA, bias=bias, reduction="sum", mass="others"
    )
    logits = hidden.double() @ weight.double().t() + bias.double()
    expected = fairseq_label_smoothed_nll_loss(torch.log_softmax(logits, -1), labels, ALPHA)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
