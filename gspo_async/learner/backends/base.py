"""The seam between the trainer and whatever holds the weights and the optimiser."""

from __future__ import annotations

import abc
import contextlib
from typing import ContextManager, Iterator, Optional

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

    def autocast(self) -> ContextManager:
        """The context every forward of the policy and the reference model runs in (mixed precision's autocast;
        a no-op by default)."""
        return contextlib.nullcontext()

    def export_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """The full policy weights for the Hugging Face export on rank 0 when ``self.model`` does not hold them
        whole (ZeRO-3), else None (export ``self.model`` itself). Collective where the weights are partitioned."""
        return None

    def evaluation_model(self) -> Optional[torch.nn.Module]:
        """A module rank 0 can run forwards on by itself (held-out evaluation): the policy itself unless its weights
        are partitioned (ZeRO-3: a gathered copy on rank 0, None on the others). Collective where partitioned."""
        return self.model

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of `loss` (already divided by global denominators: no extra scaling)."""

    @abc.abstractmethod
    def step(self) -> float:
        """Clip gradients, take one optimiser + schedule step, zero the gradients; return the pre-clip grad norm."""

    @abc.abstractmethod
    def lr(self) -> float:
        """The learning rate the last optimiser step used (before any step: the one the first will use)."""

    @abc.abstractmethod
    def broadcast_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) pairs of the policy in Hugging Face names, for the weight broadcast."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Optimiser and schedule state for checkpoints (the model is saved in Hugging Face format apart)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
