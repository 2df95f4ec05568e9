"""The public losses against the float64 reference of `_reference.py`, through every backend of the engine."""

import pytest
import torch
import torch.nn.functional as F
from _reference import fairseq_label_smoothed_nll_loss, loss_and_grad

from hf_maxsup import LOSSES, LabelSmoothingLoss, MaxSupLoss, MaxSupLossFunc, get_loss_fn

KINDS = ["ce", "ls", "maxsup"]
SHAPES = [(7, 5), (2, 3, 11)]
ALPHA = 0.15


def make_inputs(shape, soft=False, ties=False, dtype=torch.float32, ignore_fraction=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_classes = shape[-1]
    if ties:
        # Small integers give many exact ties in the max.
        logits = torch.randint(0, 3, shape, generator=g).to(dtype)
    else:
        logits = (3 * torch.randn(shape, generator=g)).to(dtype)
    if soft:
        target = torch.softmax(torch.randn(shape, generator=g) * 2, -1)
    else:
        target = torch.randint(0, num_classes, shape[:-1], generator=g)
        target[torch.rand(shape[:-1], generator=g) < ignore_fraction] = -100
        target.view(-1)[0] = 1  # at least one kept item
    return logits.requires_grad_(), target


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_and_gradient_match_reference(backend, kind, shape, soft, ties, reduction):
    logits, target = make_inputs(shape, soft=soft, ties=ties)
    loss = get_loss_fn(kind)(logits, target, ALPHA, reduction=reduction)
    loss.backward(torch.ones_like(loss))
    ref_loss, ref_grad = loss_and_grad(kind, logits, target, ALPHA, reduction)
    assert loss.dtype == torch.float32 and loss.shape == ref_loss.shape
    assert_close(loss, ref_loss)
    assert_close(logits.grad, ref_grad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_num_items_in_batch_divides_the_sum(backend, kind, shape):
    logits, target = make_inputs(shape)
    loss = get_loss_fn(kind)(logits, target, ALPHA, num_items_in_batch=torch.tensor(23))
    loss.backward()
    ref_loss, ref_grad = loss_and_grad(kind, logits, target, ALPHA, num_items=23)
    assert_close(loss, ref_loss)
    assert_close(logits.grad, ref_grad)


@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_micro_batches_equal_the_full_batch(backend, kind):
    logits, target = make_inputs((8, 6, 13), seed=3)
    full = get_loss_fn(kind)(logits, target, ALPHA)
    (full_grad,) = torch.autograd.grad(full, logits)
    num_items = (target != -100).sum()
    micro = sum(
        get_loss_fn(kind)(logits[i : i + 2], target[i : i + 2], ALPHA, num_items_in_batch=num_items)
        for i in range(0, 8, 2)
    )
    (micro_grad,) = torch.autograd.grad(micro, logits)
    assert_close(micro, full)
    assert_close(micro_grad, full_grad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(backend, kind, dtype):
    logits, target = make_inputs((2, 3, 11), dtype=dtype)
    loss = get_loss_fn(kind)(logits, target, ALPHA)
    loss.backward()
    # The reference sees exactly the same (rounded) logit values, in float64.
    ref_loss, ref_grad = loss_and_grad(kind, logits.float(), target, ALPHA)
    assert loss.dtype == torch.float32
    assert_close(loss, ref_loss)
    assert logits.grad.dtype == dtype
    assert_close(logits.grad, ref_grad, rtol=1e-2, atol=2e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_gives_zero_loss_and_zero_gradient(backend, kind, reduction):
    logits = torch.randn(3, 4, 9, requires_grad=True)
    target = torch.full((3, 4), -100)
    for num_items in (None, 0):
        loss = get_loss_fn(kind)(logits, target, ALPHA, reduction=reduction, num_items_in_batch=num_items)
        (grad,) = torch.autograd.grad(loss, logits)
        assert loss.item() == 0.0
        assert torch.count_nonzero(grad) == 0 and not grad.isnan().any()


@pytest.mark.parametrize("kind", KINDS)
def test_ignored_positions_do_not_influence_any_term(backend, kind):
    logits, target = make_inputs((5, 7))
    target[2] = -100
    changed = logits.detach().clone()
    changed[2] = 1e4 * torch.arange(7.0)  # would dominate max and mean if it leaked in
    a = get_loss_fn(kind)(logits.detach(), target, ALPHA)
    b = get_loss_fn(kind)(changed, target, ALPHA)
    assert_close(a, b)


@pytest.mark.parametrize("kind", ["ls", "maxsup"])
def test_components(backend, kind):
    logits, target = make_inputs((6, 9), ignore_fraction=0.3, seed=5)
    loss, parts = get_loss_fn(kind)(logits, target, ALPHA, return_components=True)
    x, keep = logits.detach().double()[target != -100], target[target != -100]
    ce = F.cross_entropy(x, keep)
    z_y = x.gather(1, keep[:, None]).squeeze(1)
    top = z_y if kind == "ls" else x.max(-1).values
    reg = (top - x.mean(-1)).mean()
    assert_close(parts["ce"], ce)
    assert_close(parts["reg"], reg)
    assert_close(loss, ce + ALPHA * reg)
    if kind == "ls":
        # The decomposition of Corollary 3.4, summed item by item in Python.
        regularization = error_amplification = 0.0
        for row, y in zip(x.tolist(), keep.tolist()):
            regularization += sum(row[y] - v for v in row if v < row[y]) / len(row)
            error_amplification += sum(row[y] - v for v in row if v > row[y]) / len(row)
        assert parts["ls_error_amplification"] <= 0
        assert_close(parts["ls_regularization"], torch.tensor(regularization / len(keep)))
        assert_close(parts["ls_error_amplification"], torch.tensor(error_amplification / len(keep)))
    else:
        assert "ls_regularization" not in parts


def test_maxsup_ignores_the_target_in_its_regulariser():
    logits, _ = make_inputs((4, 6), seed=1)
    a = torch.tensor([0, 1, 2, 3])
    b = torch.tensor([5, 4, 3, 2])
    reg = [get_loss_fn("maxsup")(logits, t, ALPHA) - F.cross_entropy(logits, t) for t in (a, b)]
    assert_close(reg[0], reg[1])


def test_modules_and_registry():
    logits, target = make_inputs((6, 5))
    assert set(LOSSES) == {"ce", "ls", "maxsup"}
    assert_close(MaxSupLoss(ALPHA)(logits, target), get_loss_fn("maxsup")(logits, target, ALPHA))
    assert_close(
        LabelSmoothingLoss(ALPHA, reduction="sum")(logits, target),
        F.cross_entropy(logits, target, label_smoothing=ALPHA, reduction="sum"),
    )
    assert "alpha=0.15" in repr(MaxSupLoss(ALPHA))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, y: get_loss_fn("maxup"), "unknown loss 'maxup'; valid names: ce, ls, maxsup"),
        (lambda x, y: get_loss_fn("ls")(x, torch.tensor([0, 1, 7, -100]), 0.1), "label value 7 is outside [0, 5)"),
        (lambda x, y: get_loss_fn("ls")(x, torch.tensor([0, -1, 2, 3]), 0.1), "label value -1"),
        (lambda x, y: get_loss_fn("ls")(x, y[:, None], 0.1), "Squeeze the labels' last dimension"),
        (lambda x, y: get_loss_fn("ls")(x, y[:3], 0.1), "do not match logits"),
        (lambda x, y: get_loss_fn("maxsup")(x, torch.full((4, 5), 0.3), 0.1), "summing to 1"),
        (lambda x, y: get_loss_fn("maxsup")(x, torch.full((4, 4), 0.25), 0.1), "soft targets must have"),
        (lambda x, y: get_loss_fn("maxsup")(x, y, 1.5), "alpha must be in [0, 1)"),
        (lambda x, y: get_loss_fn("maxsup")(x, y, 0.1, reduction="avg"), "reduction must be one of"),
        (lambda x, y: get_loss_fn("maxsup")(x, y, 0.1, reduction="none", num_items_in_batch=3), "reduction='none'"),
        (lambda x, y: get_loss_fn("ce")(x.long(), y), "floating-point tensor"),
        (lambda x, y: get_loss_fn("ce")(x, y > 0), "dtype torch.bool"),
        (lambda x, y: get_loss_fn("maxsup")(x, y, None), "alpha must be in [0, 1); got None"),
        (lambda x, y: get_loss_fn("ls")(x, y, "0.1x"), "alpha must be in [0, 1); got '0.1x'"),
        (lambda x, y: get_loss_fn("maxsup")(x, y, torch.tensor(0.1, requires_grad=True)), "alpha.detach()"),
        (lambda x, y: get_loss_fn("ce")(x, y, torch.tensor(0.1, requires_grad=True)), "no gradient"),
        (lambda x, y: get_loss_fn("maxsup")(x, y, 0.1, num_items_in_batch=-3), "must be a number >= 0"),
        (lambda x, y: get_loss_fn("maxsup")(x, y, 0.1, num_items_in_batch=-0.5), "got -0.5"),
        (lambda x, y: get_loss_fn("ls")(x, y, 0.1, num_items_in_batch=float("nan")), "got nan"),
        (lambda x, y: get_loss_fn("ce")(x, y, num_items_in_batch=True), "got True"),
        (lambda x, y: get_loss_fn("ce")(x, y.to(torch.uint8) + 3), "label value 5 is outside [0, 5)"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    """Each mistake refused before any work, with a message naming it (also for MaxSupLossFunc's alpha)."""
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError) as error:
        call(logits, target)
    assert message in str(error.value)


@pytest.mark.parametrize("shape", SHAPES)
def test_ls_mass_others_is_fairseqs_label_smoothing(backend, shape):
    logits, target = make_inputs(shape, seed=7)
    loss = get_loss_fn("ls")(logits, target, ALPHA, reduction="sum", mass="others")
    loss.backward()
    x = logits.detach().double().requires_grad_()
    expected = fairseq_label_smoothed_nll_loss(torch.log_softmax(x, -1), target, ALPHA)
    expected.backward()
    assert_close(loss, expected)
    assert_close(logits.grad, x.grad)
    module = LabelSmoothingLoss(ALPHA, reduction="sum", mass="others")
    assert_close(module(logits.detach(), target), expected)
    assert "mass='others'" in repr(module)
    # the default stays torch's definition, which differs from fairseq's
    default = get_loss_fn("ls")(logits.detach(), target, ALPHA, reduction="sum")
    assert abs(float(default) - float(expected.detach())) > 1e-4
    with pytest.raises(ValueError, match="mass must be one of all, others"):
        get_loss_fn("ls")(logits.detach(), target, ALPHA, mass="target")


@pytest.mark.parametrize("alpha", [None, "0.1", float("nan")])
def test_the_loss_function_refuses_an_alpha_that_is_not_a_number(alpha):
    with pytest.raises(ValueError, match=r"loss_alpha must be in \[0, 1\); got"):
        MaxSupLossFunc("maxsup", alpha=alpha)
