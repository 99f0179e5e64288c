"""The shape every prompt source shares: a `PromptItem` stream for training and a fixed held-out list for eval.

A task knows its prompts, their reference answers and which reward checks a response (`reward_fn`, a name that
`gspo_async.tasks.scoring.RewardRunner` understands). It knows nothing about tokenizers: the actor turns a prompt
string into token ids (see `gspo_async.tasks.prompting`).
"""

from __future__ import annotations

import abc
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptItem:
    """One prompt with its reference answer.

    index: stable id of the item inside its task (the same prompt always has the same index), used for leases.
    prompt: the text shown to the model (before any chat template), or a chat: [{"role", "content"}, ...].
    answer: the reference answer the reward function compares against.
    meta: free-form extras handed to the reward function (e.g. the operands).
    """

    index: int
    prompt: str | list[dict[str, str]]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    """A source of training prompts (infinite, reshuffled each epoch) and a fixed, disjoint eval split."""

    name: str = "task"
    reward_fn: str = "exact"

    @abc.abstractmethod
    def train_items(self, seed: int = 0) -> Iterator[PromptItem]:
        """Endless stream of training items; one pass over the train split per epoch, order set by (seed, epoch)."""

    @abc.abstractmethod
    def eval_items(self) -> list[PromptItem]:
        """The held-out items, in a fixed order. Never overlaps the training split."""


def epoch_stream(items: Sequence[PromptItem], seed: int) -> Iterator[PromptItem]:
    """Yield `items` forever, in a fresh permutation per epoch drawn from (seed, epoch)."""
    if not items:
        raise ValueError("the training split is empty: give the task more data or a smaller eval split")
    epoch = 0
    while True:
        order = list(range(len(items)))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        for i in order:
            yield items[i]
        epoch += 1


class IndexedTask(Task):
    """A task whose items are a finite, enumerable space 0..size-1 (generated puzzles).

    The eval split is `eval_size` indices drawn with `split_seed`; training draws from the rest. Small spaces are
    walked epoch by epoch in a fresh permutation; spaces above `_ENUMERATE_LIMIT` are sampled uniformly with
    rejection of eval indices (an epoch over 10^8 items would never end anyway).
    """

    _ENUMERATE_LIMIT = 2_000_000

    def __init__(self, eval_size: int, split_seed: int) -> None:
        if eval_size < 1:
            raise ValueError(f"eval_size={eval_size} must be at least 1")
        if eval_size > self.size // 2:
            raise ValueError(
                f"eval_size={eval_size} would hold out more than half of the {self.size} items: lower eval_size "
                "or make the task larger (more digits)"
            )
        self.eval_size = eval_size
        self.split_seed = split_seed
        self._eval_idx = random.Random(split_seed).sample(range(self.size), eval_size)
        self._held_out = set(self._eval_idx)

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Number of distinct items."""

    @abc.abstractmethod
    def item(self, index: int) -> PromptItem:
        """The item with this index (0 <= index < size)."""

    def eval_items(self) -> list[PromptItem]:
        return [self.item(i) for i in self._eval_idx]

    def is_held_out(self, index: int) -> bool:
        return index in self._held_out

    def train_items(self, seed: int = 0) -> Iterator[PromptItem]:
        if self.size <= self._ENUMERATE_LIMIT:
            train_idx = [i for i in range(self.size) if i not in self._held_out]
            epoch = 0
            while True:
                random.Random(f"{seed}:{epoch}").shuffle(train_idx)
                for i in train_idx:
                    yield self.item(i)
                epoch += 1
        rng = random.Random(f"{seed}:sampled")
        while True:
            i = rng.randrange(self.size)
            if i not in self._held_out:
                yield self.item(i)


def split_indices(n: int, eval_size: int, split_seed: int) -> tuple[list[int], list[int]]:
    """Split range(n) into (train, eval) index lists, disjoint, deterministic in `split_seed`.

    The eval list keeps the order in which it was drawn; the train list is sorted (callers shuffle per epoch).
    """
    if not 0 <= eval_size < n:
        raise ValueError(f"eval_size={eval_size} must be >= 0 and smaller than the {n} items available")
    eval_idx = random.Random(split_seed).sample(range(n), eval_size)
    held_out = set(eval_idx)
    return [i for i in range(n) if i not in held_out], eval_idx
