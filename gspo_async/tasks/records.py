"""Tasks built from a list of records (dicts): the shared core of the JSONL and Hugging Face dataset loaders."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from gspo_async.tasks.base import PromptItem, Task, epoch_stream, split_indices
from gspo_async.tasks.prompting import check_chat


def record_to_item(
    record: dict[str, Any], index: int, prompt_key: str, answer_key: str, prompt_template: str | None, where: str,
    messages_key: str = "messages",
) -> PromptItem:
    """One record as a PromptItem. `where` names the record in errors (e.g. 'data.jsonl line 7').

    The prompt is prompt_template.format(**record) when a template is given, else record[prompt_key], else the
    chat record[messages_key] ([{role, content}, ...]; a final assistant message is the answer when the record
    has no answer field). The answer is str(record[answer_key]); every other field goes to meta.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    chat = prompt_template is None and prompt_key not in record and messages_key in record
    answer = record.get(answer_key)
    if chat:
        messages = check_chat(record[messages_key], f"{where} field {messages_key!r}")
        if answer_key not in record and messages[-1]["role"] == "assistant" and len(messages) > 1:
            messages, answer = messages[:-1], messages[-1]["content"]
        prompt: Any = messages
    else:
        for key in ((answer_key,) if prompt_template else (prompt_key, answer_key)):
            if key not in record:
                raise ValueError(f"{where}: no field {key!r} (fields: {sorted(record)}); set prompt_key / "
                                 f"answer_key, or give chat records a {messages_key!r} field")
        if prompt_template is not None:
            try:
                prompt = prompt_template.format(**record)
            except (KeyError, IndexError) as e:
                raise ValueError(f"{where}: prompt_template needs field {e} which the record lacks") from e
        else:
            prompt = record[prompt_key]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{where}: the prompt must be a non-empty string, got {prompt!r:.60}")
    if isinstance(answer, (dict, list)) or answer is None:
        got = "nothing" if answer is None else type(answer).__name__
        raise ValueError(f"{where}: the answer ({answer_key!r}) must be a string or a number, got {got}")
    meta = {k: v for k, v in record.items() if k not in (prompt_key, answer_key, messages_key)}
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
