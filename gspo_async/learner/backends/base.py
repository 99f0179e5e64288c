"""The seam between the trainer and whatever holds the weights and the optimiser."""

from __future__ import annotations

import abc
from typing import Iterator

import torch


class LearnerBackend(abc.ABC):
    """Holds the policy, its optimiser and schedule. The trainer only calls these methods."""

    model: torch.nn.Module
    rank: int = 0  # data-parallel rank; rank 0 owns the coordinator and the weight broadcast
    world_size: int = 1

    @property
    def is_main_rank(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a mini-batch's micro-batches (round-robin). Each rank runs the same number of
        backward passes per step (padding with empty ones is the engine's business), so collectives line up."""
        return items[self.rank::self.world_size]

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of `loss` (already divided by global denominators: no extra scaling)."""

    @abc.abstractmethod
    def step(self) -> float:
        """Clip gradients, take one optimiser + schedule step, zero the gradients; return the pre-clip grad norm."""

    @abc.abstractmethod
    def lr(self) -> float:
        """Current learning rate."""

    @abc.abstractmethod
    def broadcast_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) pairs of the policy in Hugging Face names, for the weight broadcast."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Optimiser and schedule state for checkpoints (the model is saved in Hugging Face format apart)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
