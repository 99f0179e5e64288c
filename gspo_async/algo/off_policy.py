"""Off-policy correction for stale rollouts: which pi_old the clipped ratio uses, and the staleness weight.

mu is the behaviour policy (the actor's weights when it sampled; its token logprobs travel with the rollout),
pi_prox the learner's weights right before the update (recomputed, no gradient), pi_theta the weights being
trained. Three modes (`off_policy.correction`):

  behaviour   pi_old = mu. s_i = (pi_theta / mu)^(1/n_i) is the staleness ratio itself and GSPO's clip
              bounds the update. No extra weight.
  decoupled   pi_old = pi_prox, and the loss is multiplied by the detached, truncated sequence weight
              w_i = min(C, exp(mean_t log(pi_prox / mu))) (AReaL's decoupled objective, geometric form).
              Optionally sequences whose geometric-mean ratio pi_prox / mu lies outside [low, high] are
              dropped (`geometric_rejection_mask`, applied to the loss mask).
  recompute   pi_old = pi_prox, no weight: the staleness between mu and pi_prox goes uncorrected.

All weights use the geometric mean over tokens, never the product: prod_t pi_prox / mu explodes or vanishes
on long responses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gspo_async.algo.modes import CORRECTIONS


def sequence_log_ratio(num_logprobs: Tensor, den_logprobs: Tensor, mask: Tensor) -> Tensor:
    """mean_t m (log num - log den) per sequence: [B, T] x 2, mask [B, T] -> [B]; 0 for an empty sequence."""
    if not (num_logprobs.shape == den_logprobs.shape == mask.shape) or mask.dim() != 2:
        raise ValueError(
            "num_logprobs, den_logprobs and mask must share one [B, T] shape; got "
            f"{tuple(num_logprobs.shape)}, {tuple(den_logprobs.shape)}, {tuple(mask.shape)}"
        )
    m = mask.bool()
    delta = torch.where(m, num_logprobs - den_logprobs, 0.0)
    return delta.sum(dim=-1) / m.sum(dim=-1).clamp(min=1).to(delta.dtype)


def truncated_is_weight(prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """w_i = min(cap, exp(mean_t log(pi_prox / mu))), detached, [B]. Finite whatever the ratio: the log is
    clamped at log(cap) before exp. An empty sequence gets weight min(cap, 1)."""
    if not cap > 0:
        raise ValueError(f"the importance-weight cap must be > 0, got {cap}")
    log_w = sequence_log_ratio(prox_logprobs.detach(), behaviour_logprobs.detach(), mask)
    return torch.exp(log_w.clamp(max=math.log(cap)))


def geometric_rejection_mask(
    prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, low: float, high: float
) -> Tensor:
    """Keep sequence i iff low <= exp(mean_t log(pi_prox / mu)) <= high. Returns bool [B].

    Apply it as `mask & keep[:, None]`; a dropped sequence then counts in no denominator.
    """
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high for the rejection bounds, got low={low}, high={high}")
    log_ratio = sequence_log_ratio(prox_logprobs.detach(), behaviour_logprobs.detach(), mask)
    log_low, log_high = (math.log(b) if b > 0 else -math.inf for b in (low, high))
    return (log_ratio >= log_low) & (log_ratio <= log_high)


def select_old_logprobs(
    correction: str,
    behaviour_logprobs: Tensor,
    prox_logprobs: Tensor | None,
    mask: Tensor | None = None,
    *,
    is_weight_cap: float = 2.0,
) -> tuple[Tensor, Tensor | None]:
    """(log pi_old [B, T], per-sequence weight [B] or None) for `policy_loss(old_logprobs=, is_weight=)`.

    behaviour -> (mu, None); decoupled -> (pi_prox, min(is_weight_cap, exp(mean log(pi_prox / mu))));
    recompute -> (pi_prox, None). `prox_logprobs` is needed by decoupled and recompute, `mask` by decoupled.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"off_policy.correction={correction!r} is not one of {CORRECTIONS}")
    if correction == "behaviour":
        return behaviour_logprobs.detach(), None
    if prox_logprobs is None:
        raise ValueError(f"correction={correction!r} needs prox_logprobs recomputed by the learner before the update")
    if correction == "recompute":
        return prox_logprobs.detach(), None
    if mask is None:
        raise ValueError("correction='decoupled' needs the response mask to average the log ratio over tokens")
    return prox_logprobs.detach(), truncated_is_weight(prox_logprobs, behaviour_logprobs, mask, is_weight_cap)
