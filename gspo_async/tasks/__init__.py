"""Prompt sources: built-in verifiable tasks and dataset loaders, behind one registry."""

from __future__ import annotations

from typing import Any

from gspo_async.tasks.base import PromptItem, Task

TASK_NAMES = ("arithmetic", "sort", "jsonl", "hf")


def get_task(name: str, **options: Any) -> Task:
    """The task called `name` ('arithmetic', 'sort', 'jsonl', 'hf'), built with `options` (its constructor's
    keyword arguments)."""
    if name == "arithmetic":
        from gspo_async.tasks.arithmetic import ArithmeticTask as cls
    elif name == "sort":
        from gspo_async.tasks.sort import SortTask as cls
    elif name == "jsonl":
        from gspo_async.tasks.jsonl import JsonlTask as cls
    elif name == "hf":
        from gspo_async.tasks.hf import HFDatasetTask as cls
    else:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASK_NAMES)}")
    try:
        return cls(**options)
    except TypeError as e:
        raise TypeError(f"bad options for task {name!r}: {e}") from e


def task_from_config(task_cfg: Any) -> Task:
    """The task a config's ``task`` section describes (the learner and every actor build the same one)."""
    options = dict(task_cfg.options)
    if task_cfg.name in ("jsonl", "hf"):
        options.update(path=task_cfg.path, prompt_key=task_cfg.prompt_key, answer_key=task_cfg.answer_key)
    options.setdefault("eval_size", task_cfg.eval_size)
    return get_task(task_cfg.name, **options)


__all__ = ["PromptItem", "Task", "TASK_NAMES", "get_task", "task_from_config"]
