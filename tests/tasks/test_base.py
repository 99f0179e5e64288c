import itertools

import pytest

from gspo_async.tasks.base import PromptItem, epoch_stream, split_indices


def test_split_indices_disjoint_complete_and_deterministic():
    train, held = split_indices(100, 10, split_seed=3)
    assert len(held) == 10 and len(train) == 90
    assert set(train).isdisjoint(held)
    assert set(train) | set(held) == set(range(100))
    assert split_indices(100, 10, split_seed=3) == (train, held)
    assert split_indices(100, 10, split_seed=4)[1] != held


def test_split_indices_rejects_eval_larger_than_data():
    with pytest.raises(ValueError, match="eval_size"):
        split_indices(5, 5, split_seed=0)


def test_epoch_stream_visits_each_item_once_per_epoch_in_new_orders():
    items = [PromptItem(i, f"p{i}", str(i)) for i in range(7)]
    got = [it.index for it in itertools.islice(epoch_stream(items, seed=1), 21)]
    epochs = [got[0:7], got[7:14], got[14:21]]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled
    assert got == [it.index for it in itertools.islice(epoch_stream(items, seed=1), 21)]
    assert got != [it.index for it in itertools.islice(epoch_stream(items, seed=2), 21)]


def test_epoch_stream_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        next(epoch_stream([], seed=0))
