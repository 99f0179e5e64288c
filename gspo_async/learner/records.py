"""The coordinator's records: one per open prompt (`OpenPrompt`) and one per registered actor (`ActorRecord`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from gspo_async.learner.prompts import Prompt
from gspo_async.protocol.messages import RolloutGroup


@dataclass
class OpenPrompt:
    """An issued prompt that has not ended yet."""

    prompt: Prompt
    state: str
    holder: str = ""  # actor id holding the lease (state leased)
    expires_at: float = 0.0  # clock time the lease expires
    since: float = 0.0  # clock time it entered its current state (lease granted / group buffered)
    attempts: int = 0  # leases granted for this prompt so far
    group: Optional[RolloutGroup] = None  # the accepted group (states buffered, training)
    taken_at: int = -1  # weight version when take() handed the group out for training


@dataclass
class ActorRecord:
    actor_id: str
    instance: str
    engine: str
    info: dict[str, Any]
    registered_at: float
    last_contact: float
    version: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    unacked: int = 0
    groups_accepted: int = 0
    tokens_accepted: int = 0
    registrations: int = 1
    delivered_version: int = -1  # oldest weight version of the newest group accepted from it (-1: none yet)
    delivered_lag: int = 0  # the learner's version minus delivered_version when that group arrived


def finite_number(value: Any) -> float:
    """An actor-reported statistic as a finite float (0 for anything else: stats are the actor's free text)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def group_record(group: RolloutGroup) -> dict[str, Any]:
    return {"group_id": group.group_id, "actor_id": group.actor_id, "min_version": int(group.min_version)}
