import pytest
import torch

from gspo_async.algo.advantages import (
    clip_advantages,
    compute_advantages,
    group_advantages,
    masked_whiten,
    reward_to_go,
)

ONE_SUCCESS = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])


def test_grpo_one_success_in_eight_and_advantage_clip():
    # research notes case 13: eps 1e-6 -> 2.474867, eps 1e-4 -> 2.474174, advantage_clip 2 -> 2.0
    a = group_advantages(ONE_SUCCESS, 8, "grpo")
    torch.testing.assert_close(a, torch.tensor([2.474867] + [-0.353552] * 7), atol=2e-6, rtol=0)
    a4 = group_advantages(ONE_SUCCESS, 8, "grpo", eps=1e-4)
    torch.testing.assert_close(a4, torch.tensor([2.474174] + [-0.353453] * 7), atol=2e-6, rtol=0)
    mask = torch.ones(8, 3, dtype=torch.bool)
    tok = compute_advantages(ONE_SUCCESS, mask, group_size=8, adv_estimator="grpo", advantage_clip=2.0)
    assert torch.allclose(tok[0], torch.full((3,), 2.0))
    torch.testing.assert_close(tok[1:], torch.full((7, 3), -0.353552), atol=2e-6, rtol=0)


def test_grpo_forces_group_norm_and_rejects_conflicting_norm():
    r = torch.tensor([1.0, 0.0, 5.0, 5.0])
    assert torch.equal(group_advantages(r, 2, "grpo"), group_advantages(r, 2, "grpo", reward_norm="group"))
    assert torch.equal(group_advantages(r, 2, "grpo")[2:], torch.zeros(2))  # constant group
    assert torch.equal(group_advantages(r, 1, "grpo"), torch.zeros(4))  # singleton groups
    with pytest.raises(ValueError, match="reinforce"):
        group_advantages(r, 2, "grpo", reward_norm="batch")
    with pytest.raises(ValueError, match="adv_estimator"):
        group_advantages(r, 2, "gae")


def test_grpo_with_shift_is_mean_only():
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, "grpo", reward_shift=True)
    torch.testing.assert_close(a, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_reinforce_without_norm_uses_raw_rewards():
    r = torch.tensor([1.0, 0.0, 3.0])
    assert torch.equal(group_advantages(r, 1, "reinforce"), r)


def test_reward_to_go_undiscounted_and_masked():
    rewards = torch.tensor([[0.1, -0.2, 1.0, float("inf")], [0.5, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = reward_to_go(rewards, mask)
    torch.testing.assert_close(out, torch.tensor([[0.9, 0.8, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0]]))


def test_masked_whiten_length_weighted():
    # research notes case 14: token mean 0.2, unbiased var 1.2
    values = torch.tensor([[1.0, 1, 1, 99], [-1, -1, float("nan"), 5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = masked_whiten(values, mask)
    expected = torch.tensor([[0.730297] * 3 + [0.0], [-1.095445] * 2 + [0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_masked_whiten_skipped_with_one_valid_token():
    values = torch.tensor([[3.0, 7.0]])
    out = masked_whiten(values, torch.tensor([[0, 1]]))
    assert torch.equal(out, torch.tensor([[0.0, 7.0]]))
    assert torch.equal(masked_whiten(values, torch.zeros(1, 2)), torch.zeros(1, 2))


def test_clip_advantages():
    a = torch.tensor([-3.0, 0.5, 2.5])
    assert torch.equal(clip_advantages(a, 2.0), torch.tensor([-2.0, 0.5, 2.0]))
    assert clip_advantages(a, None) is a


def test_order_normalise_then_reward_clip_then_broadcast_then_advantage_clip():
    # research notes case 15. batch stats of [0, 0, 0, 10]: mean 2.5, std 5 -> [-0.5, -0.5, -0.5, 1.5];
    # reward_clip 1 -> 1.0; every valid token gets it; advantage_clip 0.75 -> 0.75.
    r = torch.tensor([0.0, 0.0, 0.0, 10.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    kw = dict(group_size=2, adv_estimator="reinforce", reward_norm="batch", eps=0.0)
    clipped = compute_advantages(r, mask, reward_clip=1.0, **kw)
    m = mask.bool()
    torch.testing.assert_close(clipped[3], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(clipped[:3][m[:3]], torch.full((6,), -0.5))
    both = compute_advantages(r, mask, reward_clip=1.0, advantage_clip=0.75, **kw)
    torch.testing.assert_close(both[3], torch.tensor([0.75, 0.75, 0.0]))
    assert torch.equal(both[~m], torch.zeros(int((~m).sum())))


def test_compute_advantages_with_token_kl_penalty():
    # one sequence, reward 1 on the last of 3 tokens; kl = old - ref = [0.1, 0.2, 0.3], beta 0.5
    # token rewards [-0.05, -0.1, 1 - 0.15] -> reward-to-go [0.7, 0.75, 0.85]
    mask = torch.tensor([[1, 1, 1, 0]])
    old = torch.tensor([[-1.0, -1.0, -1.0, 0.0]])
    ref = old - torch.tensor([[0.1, 0.2, 0.3, 0.0]])
    out = compute_advantages(
        torch.tensor([1.0]), mask, group_size=1, adv_estimator="reinforce",
        add_token_level_kl=True, token_kl_coef=0.5, old_logprobs=old, ref_logprobs=ref,
    )
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.75, 0.85, 0.0]]))
    with pytest.raises(ValueError, match="ref_logprobs"):
        compute_advantages(torch.tensor([1.0]), mask, group_size=1, add_token_level_kl=True)


def test_compute_advantages_whitens_over_valid_tokens():
    r = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = compute_advantages(r, mask, group_size=2, adv_estimator="reinforce", whiten_advantages=True)
    expected = torch.tensor([[0.730297] * 3 + [0.0], [-1.095445] * 2 + [0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
