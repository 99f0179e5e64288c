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
"""

from gspo_async.algo.advantages import (
    clip_advantages,
    compute_advantages,
    group_advantages,
    masked_whiten,
    reward_to_go,
)
from gspo_async.algo.logprobs import naive_token_logprobs, token_logprobs_from_hidden
from gspo_async.algo.losses import LOSS_AGG_MODES, aggregate, kl_k3, policy_loss
from gspo_async.algo.off_policy import (
    CORRECTIONS,
    geometric_rejection_mask,
    select_old_logprobs,
    sequence_log_ratio,
    truncated_is_weight,
)
from gspo_async.algo.rewards import (
    RunningMoments,
    clip_rewards,
    normalize_rewards,
    place_sequence_reward,
    token_level_kl_penalty,
)

__all__ = [
    "CORRECTIONS",
    "LOSS_AGG_MODES",
    "RunningMoments",
    "aggregate",
    "clip_advantages",
    "clip_rewards",
    "compute_advantages",
    "geometric_rejection_mask",
    "group_advantages",
    "kl_k3",
    "masked_whiten",
    "naive_token_logprobs",
    "normalize_rewards",
    "place_sequence_reward",
    "policy_loss",
    "reward_to_go",
    "select_old_logprobs",
    "sequence_log_ratio",
    "token_level_kl_penalty",
    "token_logprobs_from_hidden",
    "truncated_is_weight",
]
