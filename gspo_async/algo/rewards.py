"""Reward post-processing: normalisation, clipping, token placement and the token-level KL penalty.

Rewards of a batch are ordered group-major: group g holds rows g*G .. g*G+G-1, G = `group_size`
(`num_return_sequences_in_group`). Every function here is pure: tensors in, tensors out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gspo_async.algo.modes import REWARD_NORMS


class RunningMoments:
    """Running mean and unbiased standard deviation of every reward seen so far.

    Batches are merged with Chan's parallel update, in float64 Python numbers, so the state is a plain dict
    of floats (`state_dict()`) that fits in JSON or a torch checkpoint.
    """

    def __init__(self) -> None:
        self.count = 0.0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    def update(self, x: Tensor) -> None:
        """Merge the values of `x` (any shape) into the running moments."""
        x = x.detach().reshape(-1).to(torch.float64)
        n = float(x.numel())
        if n == 0:
            return
        batch_mean = float(x.mean())
        batch_m2 = float(((x - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def var(self) -> float:
        """Unbiased variance; 0 until two values have been seen."""
        return self.m2 / (self.count - 1.0) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"RunningMoments state lacks {sorted(missing)}; pass a dict from state_dict()")
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])


def _as_float(rewards: Tensor) -> Tensor:
    return rewards if rewards.is_floating_point() else rewards.to(torch.float32)


def _unbiased_std(x: Tensor, dim: int) -> Tensor:
    """Unbiased std along `dim`, 0 (not NaN) when fewer than two values."""
    n = x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.mean(dim=dim, keepdim=True))
    return x.std(dim=dim, unbiased=True, keepdim=True)


def normalize_rewards(
    rewards: Tensor,
    group_size: int,
    reward_norm: str | None,
    reward_shift: bool = False,
    reward_scale: bool = False,
    running: RunningMoments | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Normalise sequence rewards, ROLL's `reward_norm` / `reward_shift` / `reward_scale` semantics.

    rewards: [B*G] group-major. Statistics come from the whole batch ('batch'), each group of `group_size`
    ('group'), or every reward seen so far ('running': `running` is updated with this batch first). Then
      default:        r' = (r - mean) / (std + eps)     (std unbiased)
      reward_shift:   r' = r - mean
      reward_scale:   r' = r / (std + eps)
    Where std == 0 (a constant or single-reward group or batch) the division is skipped: the default and
    shift modes give 0 there (never NaN, whatever eps), scale-only leaves the rewards unscaled rather than
    multiplying them by 1/eps. reward_norm=None returns the rewards
    unchanged and accepts neither shift nor scale (they have no statistics to use).
    Returns [B*G], floating.
    """
    if reward_norm not in REWARD_NORMS:
        raise ValueError(f"reward_norm={reward_norm!r} is not one of {REWARD_NORMS}")
    if reward_shift and reward_scale:
        raise ValueError(
            "reward_shift and reward_scale are both true; set at most one "
            "(both false already means subtract the mean and divide by the std)"
        )
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    rewards = _as_float(rewards)
    if reward_norm is None:
        if reward_shift or reward_scale:
            raise ValueError("reward_shift/reward_scale need reward_norm in ('batch', 'group', 'running')")
        return rewards

    if reward_norm == "group":
        if group_size < 1 or rewards.numel() % group_size != 0:
            raise ValueError(
                f"{rewards.numel()} rewards do not split into groups of group_size={group_size}; "
                "pass whole groups, ordered group-major"
            )
        x = rewards.reshape(-1, group_size)
        mean, std = x.mean(dim=1, keepdim=True), _unbiased_std(x, dim=1)
    elif reward_norm == "batch":
        x = rewards.reshape(1, -1)
        mean, std = x.mean(dim=1, keepdim=True), _unbiased_std(x, dim=1)
    else:
        if running is None:
            raise ValueError("reward_norm='running' needs a RunningMoments instance passed as running=")
        running.update(rewards)
        x = rewards.reshape(1, -1)
        mean = torch.full((1, 1), running.mean, dtype=x.dtype, device=x.device)
        std = torch.full((1, 1), running.std, dtype=x.dtype, device=x.device)

    centred = x if reward_scale else x - mean
    if reward_shift:
        return centred.reshape(-1)
    # std == 0 (constant or single reward): skip the division; centred values are then 0 anyway
    return torch.where(std > 0, centred / (std + eps), centred).reshape(-1)


def clip_rewards(rewards: Tensor, reward_clip: float | None) -> Tensor:
    """clamp(r, -c, c) with c = `reward_clip`; None leaves the rewards as they are."""
    if reward_clip is None:
        return rewards
    if reward_clip <= 0:
        raise ValueError(f"reward_clip must be > 0 or null, got {reward_clip}")
    return rewards.clamp(-reward_clip, reward_clip)


def place_sequence_reward(rewards: Tensor, mask: Tensor) -> Tensor:
    """Put each sequence reward on its last valid token.

    rewards: [B]; mask: [B, T] (bool or 0/1). Returns [B, T] with zeros elsewhere; an empty row stays all zero.
    """
    if rewards.dim() != 1 or mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"need rewards [B] and mask [B, T]; got {tuple(rewards.shape)} and {tuple(mask.shape)}")
    m = mask.bool()
    rewards = _as_float(rewards)
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, positions, -1).max(dim=1).values  # -1 for an empty row
    out = torch.zeros(m.shape, dtype=rewards.dtype, device=rewards.device)
    has_token = last >= 0
    rows = torch.arange(m.shape[0], device=m.device)[has_token]
    out[rows, last[has_token]] = rewards[has_token]
    return out


def token_level_kl_penalty(
    token_rewards: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float
) -> Tensor:
    """Per-token reward minus beta * KL(old || ref), k1 estimator: kl_t = log pi_old_t - log pi_ref_t.

    All inputs [B, T]; logprobs in nats. Masked positions come out 0 whatever they held.
    """
    if not (token_rewards.shape == old_logprobs.shape == ref_logprobs.shape == mask.shape):
        raise ValueError(
            "token_rewards, old_logprobs, ref_logprobs and mask must share one [B, T] shape; got "
            f"{[tuple(t.shape) for t in (token_rewards, old_logprobs, ref_logprobs, mask)]}"
        )
    m = mask.bool()
    penalised = token_rewards - beta * (old_logprobs - ref_logprobs)
    return torch.where(m, penalised, 0.0)
