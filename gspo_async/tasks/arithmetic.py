"""Multi-digit addition, the built-in task of the quickstart: prompt "37+485=", answer "522".

Small enough for a CPU-sized model to learn, hard enough that a briefly warmed-up model is often wrong, and the
answer is checked exactly, so the reward is verifiable and noise-free.
"""

from __future__ import annotations

from gspo_async.tasks.base import IndexedTask, PromptItem


class ArithmeticTask(IndexedTask):
    """a + b with both operands drawn from [lo, 10**digits), lo = 10**(min_digits-1) (0 when min_digits is 1).

    Item index k encodes the pair as k = (a - lo) * span + (b - lo), so every (a, b) pair has one stable index.
    """

    name = "arithmetic"
    reward_fn = "exact"

    def __init__(self, digits: int = 2, min_digits: int = 1, eval_size: int = 200, split_seed: int = 1234) -> None:
        if not 1 <= min_digits <= digits <= 9:
            raise ValueError(f"need 1 <= min_digits ({min_digits}) <= digits ({digits}) <= 9")
        self.digits = digits
        self.min_digits = min_digits
        self._lo = 0 if min_digits == 1 else 10 ** (min_digits - 1)
        self._span = 10**digits - self._lo
        super().__init__(eval_size=eval_size, split_seed=split_seed)

    @property
    def size(self) -> int:
        return self._span * self._span

    def item(self, index: int) -> PromptItem:
        if not 0 <= index < self.size:
            raise IndexError(f"item index {index} outside 0..{self.size - 1}")
        a, b = self._lo + index // self._span, self._lo + index % self._span
        return PromptItem(index=index, prompt=f"{a}+{b}=", answer=str(a + b), meta={"a": a, "b": b})
