"""Canned rollout groups: deterministic, valid responses for a leased prompt (no model)."""

from __future__ import annotations

import uuid
from typing import Optional

import numpy as np

from gspo_async.protocol.messages import PromptLease, Response, RolloutGroup


def canned_group(lease: PromptLease, group_size: int, version: int, actor_id: str = "canned",
                 vocab_size: int = 64, length: int = 4, group_id: Optional[str] = None) -> RolloutGroup:
    """G responses to `lease`: response i has `length + i` tokens derived from the prompt, log-probs -0.5,
    reward i % 2, all produced by weights `version`."""
    base = int(np.asarray(lease.tokens, dtype=np.int64).sum())
    responses = []
    for i in range(group_size):
        n = length + i
        tokens = (base + i + np.arange(n)) % vocab_size
        responses.append(Response.single_version(tokens, np.full(n, -0.5), float(i % 2), "stop", version))
    return RolloutGroup(group_id or f"{actor_id}-{lease.prompt_id}-{uuid.uuid4().hex[:8]}", lease.prompt_id,
                        actor_id, np.asarray(lease.tokens, dtype=np.int32), responses, {"gen_s": 0.001})


def random_group(rng: np.random.Generator, group_size: int, response_tokens: int, prompt_tokens: int = 32,
                 vocab_size: int = 32000, prompt_id: int = 0, version: int = 0, group_id: str = "g") -> RolloutGroup:
    """A group of random tokens and log-probs (for benchmarks)."""
    prompt = rng.integers(0, vocab_size, prompt_tokens, dtype=np.int32)
    responses = [Response.single_version(rng.integers(0, vocab_size, response_tokens, dtype=np.int32),
                                         -rng.random(response_tokens, dtype=np.float32), float(rng.random()),
                                         "length", version)
                 for _ in range(group_size)]
    return RolloutGroup(group_id, prompt_id, "bench", prompt, responses, {"gen_s": 1.0})
