"""The algorithm core: pure tensor functions, no I/O.

Notation: prompt x, group of G responses y_i sampled from the behaviour policy mu; m_it the response mask,
n_i = sum_t m_it; sg = stop-gradient; logprobs in nats at the sampling temperature.

rewards.py     r' = (r - mean) / (std + 1e-6), std unbiased, over the group / batch / running history
               (`reward_shift`: r - mean; `reward_scale`: r / (std + 1e-6)); then clamp(r', -c, c).
advantages.py  grpo: A_i = (r_i - mean_group) / (std_group + 1e-6); reinforce: A_i = r'_i. Reward on the last
               token, reward-to-go with gamma = 1 (so every token gets A_i), optional token KL penalty
               -beta (log pi_old - log pi_ref), whitening (A - mean) / sqrt(var + 1e-8) over valid tokens,
               clamp(A, -c, c).
losses.py      GSPO (arXiv 2507.18071, Eq. 5 and GSPO-token):
                 s_i = exp( sum_t m_it log(pi_theta / pi_old)_it / n_i )       (geometric mean, per sequence)
                 s_it = sg(s_i) * pi_theta_it / sg(pi_theta_it)                  (value s_i, per-token advantages)
                 L_it = -min(s_it A_it, clip(s_it, 1 - eps_low, 1 + eps_high) A_it),  eps = 3e-4 / 4e-4
               token mode (PPO/GRPO): r_it = pi_theta_it / pi_old_it in place of s_it. Dual clip for A < 0:
               min(L, c |A|). KL loss k3 = exp(ref - lp) - (ref - lp) - 1. Aggregation
               token-mean | seq-mean-token-sum | seq-mean-token-mean (GSPO) | seq-mean-token-sum-norm,
               with mini-batch-global denominators.
off_policy.py  pi_old = mu (behaviour) or pi_prox (decoupled, recompute); decoupled weight
               w_i = min(C, exp(mean_t log(pi_prox / mu))) and a geometric-mean rejection mask.
logprobs.py    log softmax(h W^T / temperature)[y] in chunks of tokens, never the whole [tokens x vocab].
modes.py       the mode lists the config schema checks against (no torch).
overlong.py    DAPO soft overlong penalty: r += f * R_len(|y|), R_len = 0 up to L_max - L_buf, then
               ((L_max - L_buf) - |y|) / L_buf down to -1 at L_max; mask of truncated responses.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it; loaded on first use so that importing
# gspo_async.algo.modes (the config schema does) never imports torch.
_EXPORTS = {
    "ADV_ESTIMATORS": "modes",
    "CORRECTIONS": "modes",
    "IMPORTANCE_SAMPLING": "modes",
    "LOSS_AGG_MODES": "modes",
    "REWARD_NORMS": "modes",
    "RunningMoments": "rewards",
    "aggregate": "losses",
    "clip_advantages": "advantages",
    "clip_rewards": "rewards",
    "compute_advantages": "advantages",
    "geometric_rejection_mask": "off_policy",
    "group_advantages": "advantages",
    "kl_k3": "losses",
    "mask_truncated": "overlong",
    "masked_whiten": "advantages",
    "naive_token_logprobs": "logprobs",
    "normalize_rewards": "rewards",
    "place_sequence_reward": "rewards",
    "policy_loss": "losses",
    "reward_to_go": "advantages",
    "select_old_logprobs": "off_policy",
    "sequence_log_ratio": "off_policy",
    "soft_overlong_penalty": "overlong",
    "token_level_kl_penalty": "rewards",
    "token_logprobs_from_hidden": "logprobs",
    "truncated_is_weight": "off_policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
