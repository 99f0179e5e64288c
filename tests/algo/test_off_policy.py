import math

import pytest
import torch

from gspo_async.algo.losses import policy_loss
from gspo_async.algo.off_policy import (
    geometric_rejection_mask,
    select_old_logprobs,
    sequence_log_ratio,
    truncated_is_weight,
)

F64 = torch.float64


def test_sequence_log_ratio_is_masked_mean():
    num = torch.tensor([[-1.0, -2.0, float("nan")], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    den = torch.tensor([[-1.5, -1.0, 3.0], [0.0, 0.0, 0.0], [-2.0, -2.0, float("inf")]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 0]])
    out = sequence_log_ratio(num, den, mask)
    torch.testing.assert_close(out, torch.tensor([(0.5 - 1.0) / 2, 0.0, 1.0]))


def test_geometric_weight_on_a_long_response_is_not_the_product():
    # 1000 tokens, each pi_prox / mu = e^0.001: product e = 2.718282, geometric mean e^0.001 = 1.0010005
    mu = torch.full((1, 1000), -2.0, dtype=F64)
    prox = mu + 1e-3
    mask = torch.ones(1, 1000, dtype=torch.bool)
    assert truncated_is_weight(prox, mu, mask, cap=2.0).item() == pytest.approx(math.exp(1e-3), rel=1e-12)
    assert truncated_is_weight(prox, mu, mask, cap=1.0005).item() == pytest.approx(1.0005, rel=1e-12)


def test_weight_is_finite_capped_and_detached():
    mu = torch.zeros(3, 4)
    prox = torch.tensor([[1e4] * 4, [-1e4] * 4, [0.5] * 4], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    w = truncated_is_weight(prox, mu, mask, cap=3.0)
    assert torch.equal(w, torch.tensor([3.0, 0.0, 1.0]))  # empty sequence: ratio 1
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weight(prox, mu, mask, cap=0.0)


def test_rejection_mask_direction_is_prox_over_behaviour():
    mu = torch.zeros(2, 5, dtype=F64)
    prox = torch.stack([torch.full((5,), 0.2), torch.full((5,), -0.2)]).to(F64)  # ratios 1.2214, 0.8187
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert geometric_rejection_mask(prox, mu, mask, 0.5, 2.0).tolist() == [True, True]
    assert geometric_rejection_mask(prox, mu, mask, 0.9, 1.1).tolist() == [False, False]
    assert geometric_rejection_mask(prox, mu, mask, 0.9, 1.25).tolist() == [True, False]
    assert geometric_rejection_mask(prox, mu, mask, 0.8, 1.2).tolist() == [False, True]
    assert geometric_rejection_mask(prox, mu, mask, 0.0, 1.2).tolist() == [False, True]
    with pytest.raises(ValueError, match="low <= high"):
        geometric_rejection_mask(prox, mu, mask, 1.2, 0.8)


def test_select_old_logprobs_per_mode():
    mu = torch.tensor([[-1.0, -2.0]])
    prox = torch.tensor([[-0.9, -1.9]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    old, w = select_old_logprobs("behaviour", mu, None)
    assert torch.equal(old, mu) and w is None
    old, w = select_old_logprobs("recompute", mu, prox)
    assert torch.equal(old, prox) and w is None
    old, w = select_old_logprobs("decoupled", mu, prox, mask, is_weight_cap=5.0)
    assert torch.equal(old, prox)
    torch.testing.assert_close(w, torch.tensor([math.exp(0.1)]))
    with pytest.raises(ValueError, match="prox_logprobs"):
        select_old_logprobs("decoupled", mu, None, mask)
    with pytest.raises(ValueError, match="mask"):
        select_old_logprobs("decoupled", mu, prox)
    with pytest.raises(ValueError, match="correction"):
        select_old_logprobs("areal", mu, prox)


def test_decoupled_loss_is_weighted_prox_loss():
    mu = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.3, 0.2, 0.6]], dtype=F64))
    prox = mu + torch.tensor([[0.1], [-0.3]], dtype=F64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    old, w = select_old_logprobs("decoupled", mu, prox, mask, is_weight_cap=1.05)
    loss, metrics = policy_loss(prox, old, adv, mask, is_weight=w)  # theta = prox: ratio 1
    assert loss.item() == pytest.approx((-1.0 * 1.05 + 1.0 * math.exp(-0.3)) / 2)
    assert metrics["is_weight_max"] == pytest.approx(1.05)
    assert metrics["ratio_mean"] == 1.0
