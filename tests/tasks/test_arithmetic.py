import itertools

import pytest

from gspo_async.tasks.arithmetic import ArithmeticTask


def test_items_are_correct_sums_with_stable_indices():
    task = ArithmeticTask(digits=2, eval_size=50)
    assert task.size == 100 * 100
    it = task.item(37 * 100 + 85)
    assert (it.prompt, it.answer, it.meta) == ("37+85=", "122", {"a": 37, "b": 85})
    for item in itertools.islice(task.train_items(0), 200):
        assert int(item.answer) == item.meta["a"] + item.meta["b"]
        assert item.prompt == f"{item.meta['a']}+{item.meta['b']}="
        assert task.item(item.index) == item


def test_train_and_eval_splits_are_disjoint_and_deterministic():
    task = ArithmeticTask(digits=2, eval_size=200, split_seed=5)
    eval_prompts = {it.prompt for it in task.eval_items()}
    assert len(eval_prompts) == 200
    epoch = list(itertools.islice(task.train_items(seed=0), task.size - 200))
    assert len({it.prompt for it in epoch}) == task.size - 200  # one full epoch, no repeats
    assert eval_prompts.isdisjoint(it.prompt for it in epoch)
    assert [it.prompt for it in ArithmeticTask(digits=2, eval_size=200, split_seed=5).eval_items()] == [
        it.prompt for it in task.eval_items()
    ]
    assert ArithmeticTask(digits=2, eval_size=200, split_seed=6).eval_items() != task.eval_items()


def test_large_spaces_are_sampled_without_eval_items():
    task = ArithmeticTask(digits=6, eval_size=100)
    assert task.size > task._ENUMERATE_LIMIT
    held = {it.index for it in task.eval_items()}
    stream = [it.index for it in itertools.islice(task.train_items(1), 500)]
    assert held.isdisjoint(stream)
    assert stream == [it.index for it in itertools.islice(task.train_items(1), 500)]


def test_min_digits_bounds_the_operands():
    task = ArithmeticTask(digits=3, min_digits=3, eval_size=10)
    for it in itertools.islice(task.train_items(0), 100):
        assert 100 <= it.meta["a"] <= 999 and 100 <= it.meta["b"] <= 999


@pytest.mark.parametrize("kwargs", [{"digits": 0}, {"digits": 2, "min_digits": 3}, {"digits": 1, "eval_size": 60}])
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ArithmeticTask(**kwargs)
