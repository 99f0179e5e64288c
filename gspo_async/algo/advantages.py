"""Advantages from sequence rewards: group baseline, reward-to-go, whitening and clipping.

`compute_advantages` runs the whole order of the design (ROLL semantics):
  normalise -> reward_clip -> place on last token -> optional token KL penalty -> reward-to-go (gamma = 1)
  -> whiten over valid tokens -> advantage_clip.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gspo_async.algo.rewards import (
    RunningMoments,
    clip_rewards,
    normalize_rewards,
    place_sequence_reward,
    token_level_kl_penalty,
)

from gspo_async.algo.modes import ADV_ESTIMATORS


def group_advantages(
    rewards: Tensor,
    group_size: int,
    adv_estimator: str = "grpo",
    reward_norm: str | None = None,
    reward_shift: bool = False,
    reward_scale: bool = False,
    reward_clip: float | None = None,
    running: RunningMoments | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Sequence advantages [B*G] from group-major rewards [B*G].

    'grpo':      A_i = (r_i - mean_g) / (std_g + eps), group statistics forced (std unbiased); reward_shift
                 gives r_i - mean_g (no std), reward_scale r_i / (std_g + eps). A constant group and a
                 singleton group both give A = 0, never NaN. reward_norm may only be None or 'group'.
    'reinforce': the reward after `normalize_rewards(reward_norm, ...)` as it is, no baseline unless a norm
                 mode supplies one (with reward_norm=None a singleton group keeps its raw reward).
    `reward_clip` then clamps the result to [-c, c].
    """
    if adv_estimator not in ADV_ESTIMATORS:
        raise ValueError(f"adv_estimator={adv_estimator!r} is not one of {ADV_ESTIMATORS}")
    if adv_estimator == "grpo":
        if reward_norm not in (None, "group"):
            raise ValueError(
                f"adv_estimator='grpo' always normalises per group; reward_norm={reward_norm!r} conflicts "
                "with that. Set reward_norm to null or 'group', or use adv_estimator='reinforce'"
            )
        reward_norm = "group"
    normalized = normalize_rewards(rewards, group_size, reward_norm, reward_shift, reward_scale, running, eps)
    return clip_rewards(normalized, reward_clip)


def reward_to_go(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """Undiscounted return R_t = sum_{t' >= t} m_t' r_t'. [B, T] -> [B, T], 0 at masked positions."""
    m = mask.bool()
    r = torch.where(m, token_rewards, 0.0)
    returns = r.flip(-1).cumsum(-1).flip(-1)
    return torch.where(m, returns, 0.0)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(v - mean) / sqrt(var + eps) over the valid tokens of the whole batch, var unbiased.

    values, mask: [B, T]. Each token counts once, so long responses weigh more. With <= 1 valid token the
    values are returned unwhitened. Masked positions come out 0.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape")
    m = mask.bool()
    v = torch.where(m, values, 0.0)
    n = m.sum()
    mean = v.sum() / n.clamp(min=1)
    var = torch.where(m, (v - mean) ** 2, 0.0).sum() / (n - 1).clamp(min=1)
    whitened = (v - mean) * torch.rsqrt(var + eps)
    out = torch.where(n > 1, whitened, v)  # tensor condition: no host sync
    return torch.where(m, out, 0.0)


def clip_advantages(advantages: Tensor, advantage_clip: float | None) -> Tensor:
    """clamp(A, -c, c) with c = `advantage_clip`; None leaves A as it is."""
    if advantage_clip is None:
        return advantages
    if advantage_clip <= 0:
        raise ValueError(f"advantage_clip must be > 0 or null, got {advantage_clip}")
    return advantages.clamp(-advantage_clip, advantage_clip)


def compute_advantages(
    rewards: Tensor,
    mask: Tensor,
    *,
    group_size: int,
    adv_estimator: str = "grpo",
    reward_norm: str | None = None,
    reward_shift: bool = False,
    reward_scale: bool = False,
    reward_clip: float | None = None,
    add_token_level_kl: bool = False,
    token_kl_coef: float = 0.0,
    old_logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    whiten_advantages: bool = False,
    advantage_clip: float | None = None,
    running: RunningMoments | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Token advantages [B, T] from sequence rewards [B] (group-major) and the response mask [B, T].

    Without the token KL penalty every valid token gets its sequence's (post-processed) reward; with it, the
    per-token reward r_T - beta * sum_{t' >= t} kl_t' (reward-to-go, gamma = 1, kl = old - ref).
    Masked positions are 0.
    """
    if mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"need rewards [B] and mask [B, T]; got {tuple(rewards.shape)} and {tuple(mask.shape)}")
    seq_rewards = group_advantages(
        rewards, group_size, adv_estimator, reward_norm, reward_shift, reward_scale, reward_clip, running, eps
    )
    token_rewards = place_sequence_reward(seq_rewards, mask)
    if add_token_level_kl:
        if old_logprobs is None or ref_logprobs is None:
            raise ValueError("add_token_level_kl needs old_logprobs and ref_logprobs [B, T]")
        token_rewards = token_level_kl_penalty(token_rewards, old_logprobs, ref_logprobs, mask, token_kl_coef)
    advantages = reward_to_go(token_rewards, mask)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return clip_advantages(advantages, advantage_clip)
