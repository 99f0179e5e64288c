"""Dynamic sampling's test of a rollout group (DAPO): does it carry a learning signal?

Under group-normalised advantages (``adv_estimator: grpo``) a group whose responses all have the same reward has
A_i = (r_i - mean) / (std + 1e-6) = 0 for every response: it costs a training slot and changes nothing. The
coordinator drops such groups at intake when ``filter_groups.enabled`` (reason 'filtered') and counts them by their
reward value (`Coordinator.filtered`). A dropped group is not accepted, so it does not count in the admission
bound: its slot is leased again at once, batches fill with informative groups, the bound (and so staleness) still
holds for every trained group, and no slot waits on a group that will never be trained.
"""

from __future__ import annotations

from typing import Optional

from gspo_async.protocol.messages import RolloutGroup


def constant_reward(group: RolloutGroup) -> Optional[float]:
    """The reward every response of `group` has, or None when they differ (the group carries signal)."""
    rewards = {float(r.reward) for r in group.responses}
    return rewards.pop() if len(rewards) == 1 else None


def reward_key(reward: float) -> str:
    """A reward value as a metric-name part ([a-z0-9_]): 1.0 -> '1', 0.5 -> '0_5', -1.0 -> 'neg1'."""
    return f"{reward:g}".replace("-", "neg").replace(".", "_").replace("+", "")
