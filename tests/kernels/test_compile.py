"""The engine under PyTorch's compilers and transforms: `torch.compile(fullgraph=True)` of tiny BERT, GPT-2 and Marian
models whose loss is ours traces with 0 graph breaks and gives the eager losses and gradients; the operators pass
`torch.library.opcheck`; `torch.func.grad` works, `torch.vmap` is refused, meta tensors give meta results; inside a
compiled graph a label out of range is not checked on the host, and no backend reads out of bounds."""

import pytest
import torch
from _tiny import PAD, VOCAB, tiny_bert, tiny_marian, tiny_model
from transformers import GPT2LMHeadModel

from hf_maxsup.kernels import ops
from hf_maxsup.linear import maxsup_linear_cross_entropy
from hf_maxsup.losses import distillation_loss, label_smoothing_cross_entropy, maxsup_cross_entropy

IGN = -100


def tiny_gpt2():
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return tiny_model(GPT2LMHeadModel, n_embd=32, n_layer=1, n_head=2, n_positions=16, pad_token_id=PAD, **no_dropout)


def batch(seed=0, rows=3, length=7):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (rows, length), generator=gen)
    labels = torch.randint(2, VOCAB, (rows, length), generator=gen)
    labels[0, -2:] = IGN
    return ids, labels


def bert_step(model, ids, labels):
    return maxsup_cross_entropy(model(input_ids=ids).logits, labels[:, 0] % 4, 0.1)


def gpt2_step(model, ids, labels):
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGN)[..., 1:]
    return label_smoothing_cross_entropy(model(input_ids=ids).logits, shifted, 0.1)


def marian_step(model, ids, labels):
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels.clamp_min(PAD))
    return maxsup_cross_entropy(model(input_ids=ids, decoder_input_ids=decoder_ids).logits, labels, 0.1)


def marian_fused_linear_step(model, ids, labels):
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels.clamp_min(PAD))
    hidden = model.model(input_ids=ids, decoder_input_ids=decoder_ids).last_hidden_state
    bias = model.final_logits_bias.reshape(-1)
    return maxsup_linear_cross_entropy(hidden, model.lm_head.weight, labels, 0.1, bias=bias, chunk_size=8)


def loss_and_grads(step, model, ids, labels):
    model.zero_grad()
    loss = step(model, ids, labels)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "make, step, backend",
    [
        (tiny_bert, bert_step, "aot_eager"),
        (tiny_gpt2, gpt2_step, "inductor"),
        (tiny_marian, marian_step, "aot_eager"),
        (tiny_marian, marian_fused_linear_step, "aot_eager"),
    ],
    ids=["bert", "gpt2", "marian", "marian-fused-linear"],
)
def test_fullgraph_compile_has_no_graph_break_and_equals_eager(make, step, backend):
    model, (ids, labels) = make(), batch()
    explained = torch._dynamo.explain(step)(model, ids, labels)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    eager_loss, eager_grads = loss_and_grads(step, model, ids, labels)
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss, grads = loss_and_grads(compiled, model, ids, labels)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-6, atol=1e-6, msg=name)


def test_in_place_inside_a_compiled_graph_is_safe(backend):
    """Inside a traced graph the gradient goes to its own buffer whatever inplace_backward says: the graph may read
    the logits again (here exp saved its output), and the gradients stay those of eager."""

    def step(x, labels, inplace):
        logits = x.exp()
        return maxsup_cross_entropy(logits, labels, 0.1, inplace_backward=inplace) + logits.sum() * 1e-3

    x, labels = torch.randn(6, 9, requires_grad=True), torch.tensor([0, 1, IGN, 3, 4, 8])
    step(x, labels, False).backward()  # in eager, in place would raise: exp saved its output
    expected, x.grad = x.grad, None
    torch.compile(step, fullgraph=True, backend="aot_eager")(x, labels, True).backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-7)


def test_a_label_out_of_range_in_a_compiled_graph(backend):
    """Not checked on the host inside a graph (that would wait for the device): the C kernel raises, the other
    backends give that row a NaN loss and never read out of bounds."""
    step = torch.compile(lambda x, y: maxsup_cross_entropy(x, y, 0.1, reduction="none"), fullgraph=True)
    x, labels = torch.randn(4, 5), torch.tensor([0, 7, IGN, 2])
    if backend == "c":
        with pytest.raises(IndexError, match="outside \\[0, 5\\)"):
            step(x, labels)
        return
    loss = step(x, labels)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2, 3]]).all() and loss[2] == 0


def test_torch_func_grad_works_and_vmap_is_refused(backend):
    x, labels = torch.randn(5, 8), torch.tensor([0, 1, IGN, 3, 7])
    grad = torch.func.grad(lambda z: label_smoothing_cross_entropy(z, labels, 0.1))(x)
    eager = x.clone().requires_grad_(True)
    label_smoothing_cross_entropy(eager, labels, 0.1).backward()
    torch.testing.assert_close(grad, eager.grad, rtol=1e-6, atol=1e-7)
    for transform in (
        torch.vmap(lambda z: maxsup_cross_entropy(z, labels[:2], 0.1)),
        torch.vmap(torch.func.grad(lambda z: maxsup_cross_entropy(z, labels[:2], 0.1))),
    ):
        with pytest.raises(NotImplementedError, match="do not support torch.vmap.*reduction='none'"):
            transform(x[:4].reshape(2, 2, 8))


def test_meta_tensors_give_meta_results():
    x = torch.randn(2, 6, 50, device="meta", requires_grad=True)
    labels = torch.zeros(2, 6, dtype=torch.long, device="meta")
    loss, components = label_smoothing_cross_entropy(x, labels, 0.1, return_components=True)
    assert loss.device.type == "meta" and loss.shape == () and set(components) >= {"ce", "reg"}
    loss.backward()
    assert x.grad.device.type == "meta" and x.grad.shape == x.shape
    rows = distillation_loss(x, torch.randn(2, 6, 50, device="meta"), labels, reduction="none")
    assert rows.device.type == "meta" and rows.shape == (2, 6)
    hidden = torch.randn(2, 6, 16, device="meta", requires_grad=True)
    weight = torch.randn(50, 16, device="meta", requires_grad=True)
    maxsup_linear_cross_entropy(hidden, weight, labels).backward()
    assert hidden.grad.shape == hidden.shape and weight.grad.shape == weight.shape


def test_the_operators_pass_opcheck():
    x, labels = torch.randn(6, 9), torch.tensor([0, 1, IGN, 3, 4, 8])
    soft, teacher = torch.softmax(torch.randn(6, 9), -1), torch.randn(6, 9)
    for args in (
        (x, labels, None, None, None, "maxsup", 0.1, IGN, "mean", 0.0, 1.0, False, True),
        (x, labels, None, torch.tensor(4.0), None, "ls", 0.1, IGN, "sum", 0.0, 1.0, True, False),
        (x, soft, teacher, None, 3.0, "ce", 0.0, IGN, "mean", 0.5, 2.0, False, True),
        (x, labels, None, None, None, "maxsup", 0.1, IGN, "none", 0.0, 1.0, False, True),
    ):
        torch.library.opcheck(ops.fused_loss, args)
    in_place = (x.clone(), labels, None, None, None, "ce", 0.0, IGN, "mean", 0.0, 1.0, False)
    torch.library.opcheck(ops.fused_loss_, in_place)
    torch.library.opcheck(ops.scale_grad_, (x.clone(), torch.tensor(0.5)))
    torch.library.opcheck(ops.scale_grad_, (x.clone(), torch.rand(6)))
    hidden, weight, bias = torch.randn(2, 3, 4), torch.randn(9, 4), torch.randn(9)
    linear_labels = labels.view(2, 3)
    for reduction, with_bias in (("mean", True), ("none", False)):
        args = (hidden, weight, bias if with_bias else None, linear_labels, None, None, "ls", 0.1, IGN, reduction, 2)
        torch.library.opcheck(torch.ops.hf_maxsup.fused_linear_loss, (*args, True, reduction != "none"))
    backward_args = (hidden, weight, bias, linear_labels, torch.rand(2, 3), "maxsup", 0.1, IGN, 2)
    torch.library.opcheck(torch.ops.hf_maxsup.fused_linear_loss_rows_backward, backward_args)
