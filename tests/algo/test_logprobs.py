import math

import pytest
import torch

from gspo_async.algo.logprobs import LogitTransform, naive_token_logprobs, token_logprobs_from_hidden

F64 = torch.float64


def inputs(n=37, h=16, v=101, dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype) / h**0.5 * 3
    b = torch.randn(v, generator=g, dtype=dtype) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, labels


def run(fn, hidden, weight, bias, labels, **kw):
    """Values and gradients of sum(w1 * logprobs) + sum(w2 * entropy) with respect to hidden, weight, bias."""
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    lp, ent = fn(leaves[0], leaves[1], labels, bias=leaves[2] if bias is not None else None, **kw)
    g = torch.Generator().manual_seed(1)
    total = (torch.randn(lp.shape, generator=g, dtype=lp.dtype) * lp).sum()
    if ent is not None:
        total = total + (torch.randn(ent.shape, generator=g, dtype=ent.dtype) * ent).sum()
    total.backward()
    return lp.detach(), None if ent is None else ent.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 8, 1024])
def test_chunked_equals_naive(temperature, entropy, chunk_size):
    args = inputs()
    kw = dict(temperature=temperature, compute_entropy=entropy)
    lp, ent, grads = run(token_logprobs_from_hidden, *args, chunk_size=chunk_size, **kw)
    lp_ref, ent_ref, grads_ref = run(naive_token_logprobs, *args, **kw)
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    if entropy:
        torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)
    else:
        assert ent is None
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_temperature_divides_logits():
    hidden, weight, _, labels = inputs(bias=False)
    lp, _ = token_logprobs_from_hidden(hidden, weight, labels, temperature=0.5)
    lp_ref, _ = token_logprobs_from_hidden(hidden, weight * 2.0, labels)
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    manual = (hidden @ weight.T / 0.5).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(lp, manual, atol=1e-5, rtol=0)


def test_batched_shape_and_frozen_weight():
    hidden, weight, _, labels = inputs(n=24, bias=False)
    hidden3, labels3 = hidden.reshape(4, 6, -1).requires_grad_(), labels.reshape(4, 6)
    lp, ent = token_logprobs_from_hidden(hidden3, weight, labels3, chunk_size=5, compute_entropy=True)
    assert lp.shape == ent.shape == (4, 6)
    lp.sum().backward()  # weight does not require grad: only hidden gets one
    ref, _ = naive_token_logprobs(hidden, weight, labels)
    torch.testing.assert_close(lp.reshape(-1), ref, atol=1e-5, rtol=0)
    assert hidden3.grad is not None and weight.grad is None


def test_low_precision_inputs_give_float32():
    hidden, weight, _, labels = inputs(bias=False)
    lp, _ = token_logprobs_from_hidden(hidden.bfloat16(), weight.bfloat16(), labels, chunk_size=10)
    ref, _ = naive_token_logprobs(hidden.bfloat16(), weight.bfloat16(), labels)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_gradcheck_float64(temperature):
    hidden, weight, bias, labels = inputs(n=7, h=3, v=9, dtype=F64)
    leaves = tuple(t.requires_grad_() for t in (hidden, weight, bias))

    def f(h, w, b):
        return token_logprobs_from_hidden(
            h, w, labels, bias=b, temperature=temperature, chunk_size=3, compute_entropy=True
        )

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


def test_backward_keeps_no_full_vocab_matrix():
    n, v = 64, 500
    hidden, weight, _, labels = inputs(n=n, h=8, v=v, bias=False)
    hidden.requires_grad_()

    def saved_elements(fn, **kw):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(hidden, weight, labels, compute_entropy=True, **kw)
        return sum(sizes)

    assert saved_elements(naive_token_logprobs) >= n * v  # the reference does keep it
    # the chunked path keeps its inputs plus a few numbers per token (log-normaliser, entropy, labels)
    assert saved_elements(token_logprobs_from_hidden, chunk_size=16) <= hidden.numel() + weight.numel() + 4 * n


def test_bad_inputs_are_named():
    hidden, weight, _, labels = inputs(bias=False)
    bad = labels.clone()
    bad[0] = -100
    with pytest.raises(ValueError, match="ignore ids"):
        token_logprobs_from_hidden(hidden, weight, bad)
    with pytest.raises(ValueError, match="labels must be"):
        token_logprobs_from_hidden(hidden, weight, labels[:-1])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_from_hidden(hidden, weight, labels, temperature=0.0)
    with pytest.raises(ValueError, match="lm_head_weight"):
        token_logprobs_from_hidden(hidden, weight.T, labels)
    with pytest.raises(TypeError, match="integer"):
        token_logprobs_from_hidden(hidden, weight, labels.float())
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs_from_hidden(hidden, weight, labels, chunk_size=0)


TRANSFORMS = [LogitTransform(softcap=2.0), LogitTransform(scale=0.25), LogitTransform(scale=3.0, softcap=5.0)]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("entropy", [False, True])
def test_logit_transforms_chunked_equal_naive_values_and_gradients(transform, entropy):
    args = inputs()
    kw = dict(temperature=0.7, compute_entropy=entropy, transform=transform)
    lp, ent, grads = run(token_logprobs_from_hidden, *args, chunk_size=8, **kw)
    lp_ref, ent_ref, grads_ref = run(naive_token_logprobs, *args, **kw)
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    if entropy:
        torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_softcap_by_hand():
    """One row, vocabulary of 2: logits z = (h . w0, h . w1) = (6, 0); cap 2 -> (2 tanh 3, 0); log p0 by hand."""
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[6.0, 0.0], [0.0, 1.0]])
    lp, _ = token_logprobs_from_hidden(hidden, weight, torch.tensor([0]), transform=LogitTransform(softcap=2.0))
    z0 = 2.0 * math.tanh(3.0)
    assert float(lp[0]) == pytest.approx(z0 - math.log(math.exp(z0) + 1.0), abs=1e-6)
    plain, _ = token_logprobs_from_hidden(hidden, weight, torch.tensor([0]))
    assert float(plain[0]) == pytest.approx(6.0 - math.log(math.exp(6.0) + 1.0), abs=1e-6)


def test_transform_rejects_bad_values():
    with pytest.raises(ValueError, match="scale"):
        LogitTransform(scale=0.0)
    with pytest.raises(ValueError, match="softcap"):
        LogitTransform(softcap=-1.0)


def test_unknown_architecture_is_named_in_the_refusal():
    from types import SimpleNamespace

    from gspo_async.models.logits import logit_transform

    with pytest.raises(ValueError, match="model type 'mpt'.*MptForCausalLM") as err:
        logit_transform(SimpleNamespace(model_type="mpt", architectures=["MptForCausalLM"]))
    assert "model.logprob_path: model" in str(err.value)
    gemma = SimpleNamespace(model_type="gemma2", final_logit_softcapping=30.0)
    assert logit_transform(gemma) == LogitTransform(softcap=30.0)
    granite = SimpleNamespace(model_type="granite", logits_scaling=8.0)
    assert logit_transform(granite) == LogitTransform(scale=0.125)
