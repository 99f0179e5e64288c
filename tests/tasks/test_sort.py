import itertools

import pytest

from gspo_async.tasks.sort import SortTask


def test_items_sort_their_digits():
    task = SortTask(length=5, eval_size=20)
    assert task.item(50713).prompt == "sort 50713="
    assert task.item(50713).answer == "01357"
    assert task.item(42).prompt == "sort 00042="
    for it in itertools.islice(task.train_items(3), 100):
        digits = it.prompt[len("sort ") : -1]
        assert it.answer == "".join(sorted(digits)) and len(digits) == 5


def test_splits_disjoint():
    task = SortTask(length=4, eval_size=100)
    held = {it.index for it in task.eval_items()}
    assert len(held) == 100
    assert held.isdisjoint(it.index for it in itertools.islice(task.train_items(0), 9900))


def test_length_is_checked():
    with pytest.raises(ValueError, match="length"):
        SortTask(length=1)
