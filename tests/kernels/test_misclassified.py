"""The fraction of misclassified rows (label not the first index of the max, ignored rows out), a component of every
loss from the kernels' own pass, against a direct count: every backend, in place or not, without gradients, with a
teacher, and the fused linear path (the trainer's logs: tests/trainer/test_trainer.py)."""

import pytest
import torch
from _reference import IGN, misclassified

from hf_maxsup.linear import fused_linear_loss
from hf_maxsup.losses import distillation_loss, get_loss_fn

KINDS = ["ce", "ls", "maxsup"]


def direct_fraction(logits, labels):
    """The fraction of kept rows whose label is not the first index of the max, counted directly."""
    keep = labels.reshape(-1) != IGN
    return float((misclassified(logits, labels) & keep).sum() / keep.sum())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_classes", [7, 5003])
def test_every_backend_counts_as_a_direct_count(backend, kind, num_classes):
    """Small integer logits: many ties, some between the label and an earlier class (misclassified by the rule),
    some in a later block of a long row than the max's first occurrence."""
    gen = torch.Generator().manual_seed(num_classes)
    x = torch.randint(-2, 3, (3, 17, num_classes), generator=gen).float()
    y = torch.randint(0, num_classes, (3, 17), generator=gen)
    y[:, ::5] = IGN
    x[0, 1, :] = 0.0  # all tied: misclassified unless the label is class 0
    y[0, 1], y[0, 2], x[0, 2, :] = 0, num_classes - 1, 0.0  # class 0 wins the tie; the last class loses it
    x[1, 3, 3], x[1, 3, -1], y[1, 3] = 9.0, 9.0, num_classes - 1  # a tie across blocks: the first block's wins
    x[1, 4, -1], y[1, 4] = 9.0, num_classes - 1  # the max alone in the last block: correct
    expected = direct_fraction(x, y)
    assert 0.0 < expected < 1.0
    for inplace in (False, True):
        _, comps = get_loss_fn(kind)(
            x.clone().requires_grad_(), y, 0.1, inplace_backward=inplace, return_components=True
        )
        assert float(comps["misclassified"]) == pytest.approx(expected, abs=1e-7)
    with torch.no_grad():
        _, comps = get_loss_fn(kind)(x, y, 0.1, return_components=True)
    assert float(comps["misclassified"]) == pytest.approx(expected, abs=1e-7)
    _, soft_comps = get_loss_fn(kind)(x, torch.softmax(x, -1), 0.1, return_components=True)
    assert "misclassified" not in soft_comps  # defined for class indices only


@pytest.mark.parametrize("backend", ["torch", "triton"], indirect=True)  # the backends with a distillation term
@pytest.mark.parametrize("kind", KINDS)
def test_distillation_counts_the_students_rows(backend, kind):
    """With a teacher the count is the student's: the teacher's logits (here always right) change nothing."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-2, 3, (2, 9, 300), generator=gen).float()
    y = torch.randint(0, 300, (2, 9), generator=gen)
    y[:, ::4] = IGN
    teacher = torch.nn.functional.one_hot(y.clamp_min(0), 300).float() * 20
    expected = direct_fraction(x, y)
    for grad, inplace in ((True, False), (True, True), (False, False)):
        with torch.set_grad_enabled(grad):
            _, comps = distillation_loss(
                x.clone().requires_grad_(grad), teacher, y, 0.1, loss=kind, inplace_backward=inplace,
                return_components=True,
            )  # fmt: skip
        assert float(comps["misclassified"]) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_the_fused_linear_path_counts_as_the_logits(backend, kind):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randint(-1, 2, (4, 9, 8), generator=gen).float()
    weight = torch.randint(-1, 2, (40, 8), generator=gen).float()
    labels = torch.randint(0, 40, (4, 9), generator=gen)
    labels[:, -2:] = IGN
    expected = direct_fraction(hidden @ weight.t(), labels)
    for grad in (False, True):  # the value only, and the chunks' logits overwritten by their gradient
        _, comps = fused_linear_loss(
            hidden.clone().requires_grad_(grad), weight, labels, loss=kind, alpha=0.1, return_components=True,
            chunk_size=5,
        )  # fmt: skip
        assert float(comps["misclassified"]) == pytest.approx(expected, abs=1e-7)
