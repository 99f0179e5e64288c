"""Prompts from JSON Lines files: one JSON object per line, with configurable prompt and answer fields."""

from __future__ import annotations

import json
from pathlib import Path

from gspo_async.tasks.base import PromptItem
from gspo_async.tasks.records import RecordTask, record_to_item


def read_jsonl(
    path: str | Path, prompt_key: str, answer_key: str, prompt_template: str | None = None, first_index: int = 0,
    messages_key: str = "messages",
) -> list[PromptItem]:
    """Items of a JSONL file, in file order; blank lines are skipped. Index = first_index + record number.

    A malformed line raises ValueError naming the file and line number.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"JSONL file {p} does not exist")
    items: list[PromptItem] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p} line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            index = first_index + len(items)
            items.append(record_to_item(record, index, prompt_key, answer_key, prompt_template, where, messages_key))
    if not items:
        raise ValueError(f"JSONL file {p} holds no records")
    return items


class JsonlTask(RecordTask):
    """path: training records; eval_path: optional held-out records (else `eval_size` are split off `path`).

    reward: the reward name for RewardRunner ('exact', 'math' or 'module:function').
    prompt_template: optional str.format template over the record's fields, e.g. "{question}\\nAnswer:".
    messages_key: the field of chat-format records ([{role, content}, ...]), used when a record has no prompt_key.
    """

    def __init__(
        self,
        path: str | Path,
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        eval_path: str | Path | None = None,
        eval_size: int | None = None,
        split_seed: int = 1234,
        reward: str = "exact",
        prompt_template: str | None = None,
        messages_key: str = "messages",
    ) -> None:
        train = read_jsonl(path, prompt_key, answer_key, prompt_template, messages_key=messages_key)
        evals = None
        if eval_path is not None:
            evals = read_jsonl(eval_path, prompt_key, answer_key, prompt_template, first_index=len(train),
                               messages_key=messages_key)
        super().__init__(train, evals, eval_size, split_seed, reward, name="jsonl")
