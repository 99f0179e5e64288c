"""The learner's prompt source: numbered prompts drawn from any iterator of items, with a saveable cursor.

Each item gives (index, prompt, answer, meta): a tuple, a mapping or an object with those attributes. The prompt
is token ids (any int sequence) or text, turned into ids by `encode`. Every prompt drawn gets the next
`prompt_id` (0, 1, 2, ...), unique for the whole run, restarts included.

Cursor: `state_dict()` records how many items were drawn. To restore, build the source again on a fresh iterator
that yields the same items in the same order (e.g. the task's stream with the same seed) and call
`load_state_dict`: it skips the items already drawn and checks the last skipped item's index against the saved one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np


@dataclass
class Prompt:
    """An issued prompt. tokens: int32 [prompt_len]; index: the item's id in its dataset."""

    prompt_id: int
    index: int
    tokens: np.ndarray
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "index": self.index, "tokens": self.tokens.tolist(),
                "answer": self.answer, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Prompt":
        return cls(int(d["prompt_id"]), int(d["index"]), np.asarray(d["tokens"], dtype=np.int32), str(d["answer"]),
                   dict(d["meta"]))


def _fields(item: Any) -> tuple[Any, Any, Any, Any]:
    """(index, prompt, answer, meta) of a tuple, a mapping or an object."""
    if isinstance(item, (tuple, list)):
        if len(item) not in (3, 4):
            raise ValueError(f"a prompt item tuple must be (index, prompt, answer[, meta]), got {len(item)} fields")
        return item[0], item[1], item[2], (item[3] if len(item) == 4 else {})
    get = item.get if isinstance(item, dict) else (lambda k, d=None: getattr(item, k, d))
    prompt = get("tokens", None)
    if prompt is None:
        prompt = get("prompt", None)
    if prompt is None or get("index", None) is None or get("answer", None) is None:
        raise ValueError(f"prompt item {item!r:.80} lacks index, prompt (or tokens) or answer")
    return get("index"), prompt, get("answer"), get("meta", None) or {}


class PromptSource:
    """Numbered prompts from `items`; `encode(text) -> token ids` is needed when items carry text."""

    def __init__(self, items: Iterable[Any], *, encode: Optional[Callable[[str], Sequence[int]]] = None):
        self._items = iter(items)
        self._encode = encode
        self._peeked: list[Any] = []
        self.consumed = 0  # items drawn from the iterator
        self.last_index: Optional[int] = None

    @property
    def next_prompt_id(self) -> int:
        """The id the next prompt will get; also the number of prompts issued so far."""
        return self.consumed

    @property
    def exhausted(self) -> bool:
        if not self._peeked:
            try:
                self._peeked.append(next(self._items))
            except StopIteration:
                return True
        return False

    def _draw(self) -> Optional[Any]:
        if self.exhausted:
            return None
        self.consumed += 1
        return self._peeked.pop()

    def next(self) -> Optional[Prompt]:
        """The next prompt, or None when the items are exhausted."""
        item = self._draw()
        if item is None:
            return None
        index, prompt, answer, meta = _fields(item)
        prompt_id = self.consumed - 1
        self.last_index = int(index)
        if isinstance(prompt, str):
            if self._encode is None:
                raise ValueError("prompt items carry text: pass encode=<text -> token ids> to PromptSource")
            prompt = self._encode(prompt)
        tokens = np.asarray(prompt)
        if tokens.ndim != 1 or len(tokens) == 0 or (tokens.dtype.kind not in "iu"):
            raise ValueError(f"prompt {index}: tokens must be a non-empty 1-D integer sequence, got {tokens!r:.80}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= 2**31:
            raise ValueError(f"prompt {index}: token ids must lie in [0, 2^31)")
        if not isinstance(answer, str):
            raise TypeError(f"prompt {index}: answer must be a str, got {type(answer).__name__}")
        try:
            json.dumps(meta)  # meta travels in leases (msgpack) and in checkpoints (JSON)
        except (TypeError, ValueError) as err:
            raise TypeError(f"prompt {index}: meta must be plain JSON data (str keys, numbers, str, lists, "
                            f"dicts): {err}") from None
        return Prompt(prompt_id, int(index), tokens.astype(np.int32), answer, dict(meta))

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "last_index": self.last_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Skip the items drawn before the checkpoint (this source must be fresh, on the same item stream)."""
        if self.consumed:
            raise ValueError("load_state_dict needs a fresh PromptSource (this one has issued prompts already)")
        target = int(state["consumed"])
        last = None
        while self.consumed < target:
            item = self._draw()
            if item is None:
                raise ValueError(f"the item stream ended after {self.consumed} items but the checkpoint had drawn "
                                 f"{target}: restore with the same dataset and seed")
            last = item
        if last is not None and state.get("last_index") is not None:
            index = int(_fields(last)[0])
            if index != int(state["last_index"]):
                raise ValueError(f"item {target - 1} of the stream has index {index}, the checkpoint saw "
                                 f"{state['last_index']}: the dataset, its order or the seed changed")
            self.last_index = index
