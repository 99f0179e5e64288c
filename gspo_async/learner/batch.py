"""Turn rollout groups into padded training tensors.

Layout of one training batch of ``B = groups * G`` sequences (group-major: rows g*G .. g*G+G-1 are group g):

- ``input_ids [B, L]``: prompt tokens then response tokens, right-padded with ``pad_id`` (L = longest prompt+response).
- ``attention_mask [B, L]``: 1 on real tokens.
- ``response_start [B]``: index of the first response token in ``input_ids``.
- ``response_ids [B, T]``, ``response_mask [B, T]``: the response tokens alone (T = longest response), mask 1 on real
  tokens. Every per-token tensor the loss sees (log-probs, advantages) has this [B, T] shape.
- ``behaviour_logprobs [B, T]``: the actor's log-probs of the sampled tokens (mu).
- ``rewards [B]``: the raw rewards as scored by the actor.
- ``truncated [B]``: True where the response was cut at the length limit (finish reason ``length``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gspo_async.protocol.messages import RolloutGroup


_FIELDS = ("input_ids", "attention_mask", "response_start", "response_ids", "response_mask", "behaviour_logprobs",
           "rewards", "truncated")


@dataclass
class TrainBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_start: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    rewards: torch.Tensor
    truncated: torch.Tensor
    group_size: int

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "TrainBatch":
        """The same batch on `device` (the learner's model device)."""
        return TrainBatch(*(getattr(self, f).to(device) for f in _FIELDS), group_size=self.group_size)

    def select(self, rows: torch.Tensor) -> "TrainBatch":
        """A sub-batch of the given rows (used for mini- and micro-batches)."""
        return TrainBatch(*(getattr(self, f)[rows] for f in _FIELDS), group_size=self.group_size)

    @property
    def seq_lengths(self) -> torch.Tensor:
        """[B] tokens of each row, prompt + response (its unpadded length in ``input_ids``)."""
        return self.attention_mask.sum(1)

    def trimmed(self) -> "TrainBatch":
        """The same rows with the right padding beyond the longest row cut off: ``input_ids`` to the longest
        prompt + response, the [B, T] response tensors to the longest response (at least 1 column). Used on each
        micro-batch so that its forward pass runs on its own longest row, not on the whole batch's."""
        L = max(int(self.seq_lengths.max()), 1) if self.num_sequences else 1
        T = max(int(self.response_mask.sum(1).max()), 1) if self.num_sequences else 1
        cut = {f: getattr(self, f) for f in _FIELDS}
        for f in ("input_ids", "attention_mask"):
            cut[f] = cut[f][:, :L]
        for f in ("response_ids", "response_mask", "behaviour_logprobs"):
            cut[f] = cut[f][:, :T]
        return TrainBatch(**cut, group_size=self.group_size)


def collate_groups(groups: list[RolloutGroup], pad_id: int) -> TrainBatch:
    """Pad a list of rollout groups into a :class:`TrainBatch` (see the module docstring for shapes)."""
    if not groups:
        raise ValueError("collate_groups needs at least one group")
    group_size = len(groups[0].responses)
    rows = [(g.prompt_tokens, r) for g in groups for r in g.responses]
    if any(len(g.responses) != group_size for g in groups):
        raise ValueError("all groups of a batch must have the same number of responses")
    B = len(rows)
    L = max(len(p) + len(r.tokens) for p, r in rows)
    T = max(max(len(r.tokens) for _, r in rows), 1)
    # Filled as numpy arrays and handed to torch without a copy: one torch indexing assignment per row and field
    # made collation a tenth of a quickstart step (tools/bench/profile_step.py); numpy's cost far less.
    input_ids = np.full((B, L), pad_id, dtype=np.int64)
    attention_mask = np.zeros((B, L), dtype=np.int64)
    response_ids = np.full((B, T), pad_id, dtype=np.int64)
    response_mask = np.zeros((B, T), dtype=bool)
    behaviour = np.zeros((B, T), dtype=np.float32)
    start = np.zeros(B, dtype=np.int64)
    rewards = np.zeros(B, dtype=np.float32)
    truncated = np.zeros(B, dtype=bool)
    for i, (prompt, resp) in enumerate(rows):
        p, n = len(prompt), len(resp.tokens)
        input_ids[i, :p] = prompt
        input_ids[i, p:p + n] = resp.tokens
        attention_mask[i, :p + n] = 1
        start[i] = p
        response_ids[i, :n] = resp.tokens
        response_mask[i, :n] = True
        behaviour[i, :n] = resp.logprobs
        rewards[i] = float(resp.reward)
        truncated[i] = resp.finish_reason == "length"
    return TrainBatch(*(torch.from_numpy(a) for a in (input_ids, attention_mask, start, response_ids, response_mask,
                                                        behaviour, rewards, truncated)), group_size)
