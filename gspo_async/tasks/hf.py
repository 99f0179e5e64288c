"""Prompts from a Hugging Face `datasets` dataset available locally (a saved dataset, local files or the cache).

The `datasets` package is optional and imported only here. Nothing is downloaded when HF_HUB_OFFLINE /
HF_DATASETS_OFFLINE is set; a dataset that is not available locally gives a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gspo_async.tasks.base import PromptItem
from gspo_async.tasks.records import RecordTask, record_to_item


def _load_split(path: str, name: str | None, split: str, data_files: Any) -> Any:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "the 'hf' task needs the `datasets` package: pip install datasets (or export the data to JSONL and use "
            "the 'jsonl' task)"
        ) from None
    try:
        saved = Path(path)
        if saved.is_dir() and ((saved / "dataset_dict.json").is_file() or (saved / "state.json").is_file()):
            loaded = datasets.load_from_disk(path)  # written by Dataset.save_to_disk
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(path, name, split=split, data_files=data_files)
    except Exception as e:
        raise ValueError(
            f"could not load split {split!r} of dataset {path!r} (config {name!r}) locally: {type(e).__name__}: {e}. "
            "Download it beforehand, or point `path` at a saved dataset directory or local data files."
        ) from e


def _items(
    rows: Any, prompt_key: str, answer_key: str, template: str | None, first: int, label: str,
    messages_key: str = "messages",
) -> list[PromptItem]:
    return [
        record_to_item(dict(row), first + i, prompt_key, answer_key, template, f"{label} row {i}", messages_key)
        for i, row in enumerate(rows)
    ]


class HFDatasetTask(RecordTask):
    """path: dataset name, local dataset directory or loader ('json', 'parquet' with data_files); name: its config.

    split / eval_split: training and held-out splits (without eval_split, `eval_size` rows are split off).
    messages_key: the column of chat-format rows ([{role, content}, ...]), used when a row has no prompt_key.
    Example (GSM8K, once cached): get_task('hf', path='openai/gsm8k', name='main', prompt_key='question',
    answer_key='answer', eval_split='test', reward='math').
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        eval_split: str | None = None,
        eval_size: int | None = None,
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        prompt_template: str | None = None,
        split_seed: int = 1234,
        reward: str = "exact",
        data_files: Any = None,
        messages_key: str = "messages",
    ) -> None:
        rows = _load_split(path, name, split, data_files)
        train = _items(rows, prompt_key, answer_key, prompt_template, 0, f"{path}[{split}]", messages_key)
        evals = None
        if eval_split is not None:
            eval_rows = _load_split(path, name, eval_split, data_files)
            evals = _items(eval_rows, prompt_key, answer_key, prompt_template, len(train), f"{path}[{eval_split}]",
                           messages_key)
        super().__init__(train, evals, eval_size, split_seed, reward, name="hf")
