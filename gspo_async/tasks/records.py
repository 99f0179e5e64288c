"""Tasks built from a list of records (dicts): the shared core of the JSONL and Hugging Face dataset loaders."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from gspo_async.tasks.base import PromptItem, Task, epoch_stream, split_indices


def record_to_item(
    record: dict[str, Any], index: int, prompt_key: str, answer_key: str, prompt_template: str | None, where: str
) -> PromptItem:
    """One record as a PromptItem. `where` names the record in errors (e.g. 'data.jsonl line 7').

    The prompt is record[prompt_key], or prompt_template.format(**record) when a template is given; the answer is
    str(record[answer_key]); every other field goes to meta.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ((answer_key,) if prompt_template else (prompt_key, answer_key)):
        if key not in record:
            raise ValueError(f"{where}: no field {key!r} (fields: {sorted(record)}); set prompt_key / answer_key")
    if prompt_template is not None:
        try:
            prompt = prompt_template.format(**record)
        except (KeyError, IndexError) as e:
            raise ValueError(f"{where}: prompt_template needs field {e} which the record lacks") from e
    else:
        prompt = record[prompt_key]
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"{where}: the prompt must be a non-empty string, got {prompt!r:.60}")
    answer = record[answer_key]
    if isinstance(answer, (dict, list)) or answer is None:
        raise ValueError(f"{where}: the answer must be a string or a number, got {type(answer).__name__}")
    meta = {k: v for k, v in record.items() if k not in (prompt_key, answer_key)}
    return PromptItem(index=index, prompt=prompt, answer=str(answer), meta=meta)


class RecordTask(Task):
    """Train and eval items from records. Without separate eval records, `eval_size` items are held out of the
    train records by `split_seed` (default: a tenth of them, at most 200)."""

    def __init__(
        self,
        train: Sequence[PromptItem],
        eval_items: Sequence[PromptItem] | None,
        eval_size: int | None,
        split_seed: int,
        reward: str,
        name: str,
    ) -> None:
        self.name = name
        self.reward_fn = reward
        if eval_items is not None:
            self._train, self._eval = list(train), list(eval_items)
        else:
            size = min(200, len(train) // 10) if eval_size is None else eval_size
            train_idx, eval_idx = split_indices(len(train), size, split_seed)
            self._train = [train[i] for i in train_idx]
            self._eval = [train[i] for i in eval_idx]
        if not self._train:
            raise ValueError(f"task {name!r} has no training items left after holding out {len(self._eval)} for eval")

    def train_items(self, seed: int = 0) -> Iterator[PromptItem]:
        return epoch_stream(self._train, seed)

    def eval_items(self) -> list[PromptItem]:
        return list(self._eval)
