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
        if getattr(task_cfg, "messages_key", "messages") != "messages":
            options["messages_key"] = task_cfg.messages_key
        if getattr(task_cfg, "prompt_template", None) is not None:
            options["prompt_template"] = task_cfg.prompt_template
    elif getattr(task_cfg, "prompt_template", None) is not None:
        raise ValueError(f"task.prompt_template applies to the jsonl and hf tasks, not {task_cfg.name!r}")
    options.setdefault("eval_size", task_cfg.eval_size)
    return get_task(task_cfg.name, **options)


def reward_specs_from_config(task_cfg: Any, task: Task) -> list[Any]:
    """The reward functions of a run: ``task.rewards`` when given, else ``task.reward`` (its default 'exact'
    stands for the task's own checker, e.g. 'math' for a math dataset)."""
    from gspo_async.tasks.scoring import RewardSpec

    if getattr(task_cfg, "rewards", None):
        return [RewardSpec(r.fn, r.weight, r.name) for r in task_cfg.rewards]
    return [RewardSpec(task_cfg.reward if task_cfg.reward != "exact" else task.reward_fn)]


def reward_runner_from_config(task_cfg: Any, task: Task) -> Any:
    """The RewardRunner a config's ``task`` section describes (the learner, every actor and preflight agree)."""
    from gspo_async.tasks.scoring import RewardRunner

    return RewardRunner(reward_specs_from_config(task_cfg, task), timeout_s=task_cfg.reward_timeout_s,
                        workers=getattr(task_cfg, "reward_workers", 1), answer_key=task_cfg.answer_key,
                        data_source=task.name)


__all__ = ["PromptItem", "Task", "TASK_NAMES", "get_task", "reward_runner_from_config", "reward_specs_from_config",
           "task_from_config"]
