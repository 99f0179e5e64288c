import pytest
import torch

from gspo_async.weights.apply import apply_to_module, named_weights


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3, bias=False))
    return m


def test_apply_copies_exact_values():
    src, dst = model(0), model(1)
    n = apply_to_module(dst, dict(named_weights(src)))
    assert n == len(list(src.parameters()))
    for (name, p), (_, q) in zip(src.named_parameters(), dst.named_parameters()):
        assert torch.equal(p, q), name
    assert all(q.requires_grad for q in dst.parameters())  # still trainable parameters


def test_tied_weights_are_sent_once_and_stay_tied():
    src, dst = torch.nn.Module(), torch.nn.Module()
    for m, seed in ((src, 0), (dst, 1)):
        torch.manual_seed(seed)
        m.embed = torch.nn.Embedding(5, 2)
        m.head = torch.nn.Linear(2, 5, bias=False)
        m.head.weight = m.embed.weight
    sent = named_weights(src)
    assert [n for n, _ in sent] == ["embed.weight"]
    apply_to_module(dst, dict(sent))
    assert torch.equal(dst.head.weight, src.embed.weight) and dst.head.weight is dst.embed.weight


def test_buffers_are_loaded_when_sent():
    src, dst = model(0), model(1)
    src[1].running_mean.fill_(3.0)
    apply_to_module(dst, {**dict(named_weights(src)), "1.running_mean": src[1].running_mean})
    assert torch.equal(dst[1].running_mean, torch.full((4,), 3.0))


def test_mismatch_leaves_the_module_untouched():
    src, dst = model(0), model(1)
    before = {n: p.clone() for n, p in dst.named_parameters()}
    bad = dict(named_weights(src))
    bad["2.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError, match=r"2\.weight: received shape \(4, 4\), module has \(3, 4\)"):
        apply_to_module(dst, bad)
    with pytest.raises(ValueError, match="does not have: \\['extra'\\]"):
        apply_to_module(dst, {**dict(named_weights(src)), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="not received.*strict=False"):
        apply_to_module(dst, {"0.weight": src[0].weight})
    with pytest.raises(ValueError, match="cast=True"):
        apply_to_module(dst, dict(named_weights(src, dtype=torch.bfloat16)))
    for n, p in dst.named_parameters():
        assert torch.equal(p, before[n]), n


def test_subset_and_cast_when_asked():
    src, dst = model(0), model(1)
    apply_to_module(dst, {"0.bias": src[0].bias}, strict=False)
    assert torch.equal(dst[0].bias, src[0].bias) and not torch.equal(dst[0].weight, src[0].weight)
    apply_to_module(dst, dict(named_weights(src, dtype=torch.bfloat16)), cast=True)
    assert dst[0].weight.dtype == torch.float32
    assert torch.equal(dst[0].weight, src[0].weight.to(torch.bfloat16).float())
