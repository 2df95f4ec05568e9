"""The distillation loss against the float64 reference (`_reference.py`: the labels' term, plus `F.kl_div` of the
tempered distributions), for every backend that has the term."""

from __future__ import annotations

import pytest
import torch
from _reference import IGN, distill_per_item, per_item

from hf_maxsup import kernels
from hf_maxsup.losses import distillation_loss

ALPHA, BETA, T = 0.1, 0.7, 2.5
# the backends with a distillation term, and the automatic choice (which sends CPU jobs to torch)
DISTILL_BACKENDS = pytest.mark.parametrize("backend", ["torch", "triton", "auto"], indirect=True)


def make(shape=(3, 7, 301), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(shape, generator=gen) * 3).to(dtype)
    teacher = (torch.randn(shape, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    labels[torch.rand(shape[:-1], generator=gen) < 0.25] = IGN
    return student, teacher, labels


def reference(kind, student, teacher, labels, reduction="mean", num_items=None):
    x = student.detach().double().requires_grad_(True)
    items, keep = per_item(kind, x, labels, ALPHA)
    kl = distill_per_item(x, teacher, labels, T)
    total = items + BETA * T**2 * kl
    loss = (
        total.sum() / (num_items or keep.sum().clamp_min(1))
        if reduction == "mean" or num_items
        else total.sum()
        if reduction == "sum"
        else total.view(labels.shape)
    )
    loss.sum().backward()
    return loss.detach(), x.grad, float(kl.detach()[keep].mean())


@DISTILL_BACKENDS
@pytest.mark.parametrize("kind", ["ce", "ls", "maxsup"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_and_gradient_match_the_reference(backend, kind, reduction):
    student, teacher, labels = make(seed=len(kind))
    x = student.clone().requires_grad_(True)
    loss, comps = distillation_loss(
        x,
        teacher,
        labels,
        ALPHA,
        loss=kind,
        distill_alpha=BETA,
        distill_temperature=T,
        reduction=reduction,
        return_components=True,
    )
    loss.sum().backward()
    ref_loss, ref_grad, ref_kl = reference(kind, student, teacher, labels, reduction)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-5, atol=1e-8)
    assert abs(float(comps["distill"]) - ref_kl) < 1e-5 * max(1.0, ref_kl)
    assert {"ce", "distill"} <= set(comps)
    assert torch.all(x.grad[labels == IGN] == 0)


@DISTILL_BACKENDS
@pytest.mark.parametrize("inplace", [False, True])
def test_num_items_in_batch_half_precision_and_in_place(backend, inplace):
    student, teacher, labels = make(shape=(2, 9, 2500), dtype=torch.bfloat16, seed=4)  # several column blocks
    x = student.clone().requires_grad_(True)
    loss = distillation_loss(
        x * 1.0,
        teacher,
        labels,
        ALPHA,
        loss="maxsup",
        distill_alpha=BETA,
        distill_temperature=T,
        num_items_in_batch=torch.tensor(40),
        inplace_backward=inplace,
    )
    loss.backward()
    ref_loss, ref_grad, _ = reference("maxsup", student.float(), teacher.float(), labels, num_items=40)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    assert float((x.grad.double() - ref_grad).abs().max() / ref_grad.abs().max()) < 1e-2


@DISTILL_BACKENDS
def test_a_teacher_equal_to_the_student_adds_nothing(backend):
    student, _, labels = make(seed=5)
    with torch.no_grad():
        loss, comps = distillation_loss(
            student,
            student.clone(),
            labels,
            ALPHA,
            loss="ls",
            distill_alpha=BETA,
            distill_temperature=T,
            return_components=True,
        )
        alone = kernels.fused_loss(student, labels, loss="ls", alpha=ALPHA)
    assert abs(float(comps["distill"])) < 1e-6
    torch.testing.assert_close(loss, alone, rtol=1e-6, atol=1e-6)


def test_the_c_kernel_hands_distillation_to_torch(monkeypatch):
    student, teacher, labels = make(seed=6)
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "c")
    with pytest.raises(RuntimeError, match="HF_MAXSUP_BACKEND=c cannot serve .*no distillation term"):
        distillation_loss(student, teacher, labels)
    monkeypatch.setenv("HF_MAXSUP_BACKEND", "auto")
    assert kernels.select_backend(torch.device("cpu"), torch.float32, distill=True).NAME == "torch"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss="focal"), "unknown loss 'focal'"),
        (dict(distill_alpha=-1.0), "distill_alpha must be >= 0"),
        (dict(distill_temperature=0.0), "distill_temperature must be > 0"),
    ],
)
def test_bad_settings_get_clear_errors(kwargs, message):
    student, teacher, labels = make(seed=7)
    with pytest.raises(ValueError, match=message):
        distillation_loss(student, teacher, labels, **kwargs)
    with pytest.raises(ValueError, match="teacher_logits must be a floating-point tensor of the student's"):
        distillation_loss(student, teacher[..., :-1], labels)
