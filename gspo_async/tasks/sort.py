"""Digit sorting: prompt "sort 50713=", answer "01357" (the same digits in ascending order)."""

from __future__ import annotations

from gspo_async.tasks.base import IndexedTask, PromptItem


class SortTask(IndexedTask):
    """Sort a string of `length` decimal digits; item index k is the digit string itself, zero-padded."""

    name = "sort"
    reward_fn = "exact"

    def __init__(self, length: int = 5, eval_size: int = 200, split_seed: int = 1234) -> None:
        if not 2 <= length <= 9:
            raise ValueError(f"length={length} must lie in 2..9")
        self.length = length
        super().__init__(eval_size=eval_size, split_seed=split_seed)

    @property
    def size(self) -> int:
        return 10**self.length

    def item(self, index: int) -> PromptItem:
        if not 0 <= index < self.size:
            raise IndexError(f"item index {index} outside 0..{self.size - 1}")
        digits = str(index).zfill(self.length)
        return PromptItem(index=index, prompt=f"sort {digits}=", answer="".join(sorted(digits)), meta={})
