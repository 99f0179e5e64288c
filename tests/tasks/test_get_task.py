import pytest

from gspo_async.tasks import TASK_NAMES, get_task
from gspo_async.tasks.arithmetic import ArithmeticTask
from gspo_async.tasks.sort import SortTask


def test_registry_builds_tasks_with_options():
    task = get_task("arithmetic", digits=3, eval_size=10)
    assert isinstance(task, ArithmeticTask) and task.digits == 3 and len(task.eval_items()) == 10
    assert isinstance(get_task("sort", length=4), SortTask)
    assert set(TASK_NAMES) == {"arithmetic", "sort", "jsonl", "hf"}


def test_unknown_name_and_bad_option_give_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'adition'.*arithmetic"):
        get_task("adition")
    with pytest.raises(TypeError, match="bad options for task 'sort'"):
        get_task("sort", digits=3)
