import json
import math

import pytest
import torch

from gspo_async.algo.rewards import (
    RunningMoments,
    clip_rewards,
    normalize_rewards,
    place_sequence_reward,
    token_level_kl_penalty,
)

ONE_SUCCESS = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])


def test_group_norm_one_success_in_eight():
    # mean 0.125, unbiased std 0.353553 (research notes, case 13)
    out = normalize_rewards(ONE_SUCCESS, 8, "group")
    expected = torch.tensor([2.474867] + [-0.353552] * 7)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def test_group_norm_uses_each_group_separately():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 4.0])
    out = normalize_rewards(rewards, 2, "group", eps=0.0)
    s = math.sqrt(2.0)  # unbiased std of a pair differing by 2
    torch.testing.assert_close(out, torch.tensor([-1 / s, 1 / s, 0.0, 0.0, -2 / (2 * s), 2 / (2 * s)]))


def test_constant_and_singleton_groups_give_zero_not_nan():
    const = normalize_rewards(torch.full((8,), 0.7), 4, "group")
    single = normalize_rewards(torch.tensor([1.0, -2.0, 5.0]), 1, "group")
    assert torch.equal(const, torch.zeros(8))
    assert torch.equal(single, torch.zeros(3))


def test_batch_norm_shift_and_scale():
    r = torch.tensor([0.0, 0.0, 0.0, 10.0])  # mean 2.5, unbiased std 5
    torch.testing.assert_close(normalize_rewards(r, 2, "batch", eps=0.0), torch.tensor([-0.5, -0.5, -0.5, 1.5]))
    torch.testing.assert_close(normalize_rewards(r, 2, "batch", reward_shift=True), r - 2.5)
    torch.testing.assert_close(normalize_rewards(r, 2, "batch", reward_scale=True, eps=0.0), r / 5.0)


def test_scale_only_leaves_a_constant_group_unscaled():
    r = torch.tensor([2.0, 2.0, 0.0, 4.0])
    out = normalize_rewards(r, 2, "group", reward_scale=True, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0, 0.0, 4.0 / math.sqrt(8.0)]))


def test_running_norm_matches_statistics_of_everything_seen():
    running = RunningMoments()
    a, b = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0.0, 3.0, 3.0, 10.0])
    normalize_rewards(a, 1, "running", running=running)
    out = normalize_rewards(b, 1, "running", running=running, eps=0.0)
    seen = torch.cat([a, b]).double()
    assert running.count == 7
    assert running.mean == pytest.approx(float(seen.mean()))
    assert running.std == pytest.approx(float(seen.std()))
    torch.testing.assert_close(out, ((b.double() - seen.mean()) / seen.std()).float())


def test_running_moments_state_round_trips_through_json():
    running = RunningMoments()
    running.update(torch.tensor([1.0, 4.0, 9.0]))
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(running.state_dict())))
    assert (restored.count, restored.mean, restored.std) == (running.count, running.mean, running.std)
    with pytest.raises(ValueError, match="lacks"):
        restored.load_state_dict({"count": 1.0})


def test_none_passes_rewards_through():
    r = torch.tensor([3.0, -1.0])
    assert torch.equal(normalize_rewards(r, 2, None), r)
    assert normalize_rewards(torch.tensor([1, 0]), 2, None).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reward_norm=None, reward_shift=True), "need reward_norm"),
        (dict(reward_norm="group", reward_shift=True, reward_scale=True), "at most one"),
        (dict(reward_norm="grop"), "not one of"),
        (dict(reward_norm="running"), "RunningMoments"),
        (dict(reward_norm="group", group_size=3), "group_size=3"),
    ],
)
def test_bad_normalisation_settings_are_named(kwargs, message):
    kwargs = {"group_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        normalize_rewards(torch.ones(4), **kwargs)


def test_clip_rewards():
    r = torch.tensor([-12.0, 3.0, 11.0])
    assert torch.equal(clip_rewards(r, 10.0), torch.tensor([-10.0, 3.0, 10.0]))
    assert clip_rewards(r, None) is r
    with pytest.raises(ValueError, match="reward_clip"):
        clip_rewards(r, 0.0)


def test_place_sequence_reward_on_last_valid_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    out = place_sequence_reward(torch.tensor([2.0, -1.0, 7.0, 0.5]), mask)
    expected = torch.tensor([[0, 0, 2.0, 0], [0, 0, 0, -1.0], [0, 0, 0, 0], [0.5, 0, 0, 0]])
    assert torch.equal(out, expected)


def test_token_level_kl_penalty_is_k1_and_masked():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    old = torch.tensor([[-1.0, -2.0, float("nan")]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = token_level_kl_penalty(rewards, old, ref, mask, beta=0.1)
    torch.testing.assert_close(out, torch.tensor([[-0.05, 0.1, 0.0]]))
