"""The background receiving thread, with the learner side in the same process (two gloo ranks, one process)."""

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from gspo_async.weights.apply import apply_to_module, named_weights
from gspo_async.weights.elastic import WeightPublisher, WeightSubscriber
from gspo_async.weights.receiver import WeightReceiverThread


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                               torch.nn.Linear(32, 50))


@pytest.fixture
def publisher():
    pub = WeightPublisher("127.0.0.1", 0, timeout_s=3.0, bucket_bytes=2048)
    yield pub
    pub.close()


def test_thread_receives_newest_version_and_applies_it(publisher):
    learner, actor = tiny_model(0), tiny_model(1)
    # A subscriber timeout far above the bound below: a stop that waited for the next round would take 30 s.
    receiver = WeightReceiverThread(WeightSubscriber("127.0.0.1", publisher.port, "A", timeout_s=30.0)).start()
    try:
        for version in (1, 2):
            with torch.no_grad():
                learner[1].weight.add_(1.0)
            result = publisher.publish(named_weights(learner), version, ["A"], checksum=True)
            assert result.ok, result.error
        got = receiver.wait(timeout_s=10)
        if got.version == 1:  # version 2 may not have been taken yet
            got = receiver.wait(timeout_s=10)
        assert got.version == 2 and got.checksum == result.checksum and receiver.received == 2
        assert receiver.take() is None  # taken versions are gone
        apply_to_module(actor, got)
        for (name, p), (_, q) in zip(learner.named_parameters(), actor.named_parameters()):
            assert torch.equal(p, q), name
    finally:
        t0 = time.monotonic()
        receiver.stop()
        assert time.monotonic() - t0 < 15.0  # stop does not wait for a round that never comes (30 s)
    assert not receiver.is_alive() and receiver.error is None


@pytest.mark.parametrize("record", ["", "{}"], ids=["record-gone-mid-read", "record-without-members"])
def test_an_unreadable_round_is_skipped_and_the_next_version_arrives(publisher, record):
    """A record read after the learner deleted it (the store answers empty) or one that lacks a field must cost that
    round only: the thread once died of it, and its actor generated with old weights for the rest of the run."""
    receiver = WeightReceiverThread(WeightSubscriber("127.0.0.1", publisher.port, "A", timeout_s=30.0)).start()
    client = dist.TCPStore("127.0.0.1", publisher.port, None, False, timedelta(seconds=10))
    try:
        client.set("sync/1000", record)
        client.queue_push("notify/A", "1000")
        deadline = time.monotonic() + 30  # a condition re-checked: the thread has taken the notification
        while client.queue_len("notify/A") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.queue_len("notify/A") == 0
        result = publisher.publish(named_weights(tiny_model(0)), 7, ["A"], checksum=True)
        assert result.ok, result.error
        got = receiver.wait(timeout_s=30)
        assert got is not None and got.version == 7 and got.checksum == result.checksum
        assert receiver.is_alive() and receiver.error is None
    finally:
        receiver.stop()


def test_thread_reports_a_vanished_learner(publisher):
    receiver = WeightReceiverThread(WeightSubscriber("127.0.0.1", publisher.port, "A", timeout_s=3.0)).start()
    publisher.close()
    assert receiver.wait(timeout_s=10) is None
    assert isinstance(receiver.error, ConnectionError)
    receiver.stop()
    assert not receiver.is_alive()


def test_receive_refuses_a_second_thread_and_use_after_close(publisher):
    subscriber = WeightSubscriber("127.0.0.1", publisher.port, "A", timeout_s=3.0)
    assert subscriber.close()
    with pytest.raises(RuntimeError, match="after close"):
        subscriber.receive()
