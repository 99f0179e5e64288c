"""Weight sync between real processes over real gloo groups on 127.0.0.1."""

import json
import os
import signal
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from gspo_async.weights.buckets import state_checksum
from gspo_async.weights.elastic import WeightPublisher, WeightSubscriber
from tests.support.receivers import TIMEOUT_S, Receiver

# A failed round ends within a few timeouts (2-3 by design); the bound is generous so that a loaded machine does not
# fail it, and still far below a hang.
SLACK = 10


def model_weights(seed: int) -> dict[str, torch.Tensor]:
    """About 3 MB over several dtypes; with 512 KiB buckets that is a few buckets per dtype."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(1000, 256, generator=g),
        "block.ln.weight": torch.randn(256, generator=g).to(torch.bfloat16),
        "block.mlp.weight": torch.randn(1024, 256, generator=g).to(torch.bfloat16),
        "block.attn.weight": torch.randn(256, 256, generator=g),
        "head.bias": torch.randn(1000, generator=g).to(torch.float16),
        "position_ids": torch.arange(512),
    }


@pytest.fixture
def publisher():
    pub = WeightPublisher("127.0.0.1", 0, timeout_s=TIMEOUT_S, bucket_bytes=512 * 1024)
    yield pub
    pub.close()


@pytest.fixture
def start(publisher):
    started: list[Receiver] = []

    def start_receivers(*actor_ids: str) -> list[Receiver]:
        receivers = [Receiver(publisher.port, a) for a in actor_ids]
        for r in receivers:
            assert r.next_event(60) == {"event": "started"}
        started.extend(receivers)
        return receivers

    yield start_receivers
    for r in started:
        r.kill()


@pytest.mark.slow
def test_two_receivers_get_bitwise_equal_weights(publisher, start):
    a, b = start("A", "B")
    for version in (1, 2, 3):
        weights = model_weights(seed=version)
        result = publisher.publish(weights, version, ["A", "B"], checksum=True)
        assert result.ok, result.error
        assert result.checksum == state_checksum(weights)
        assert result.nbytes == sum(t.numel() * t.element_size() for t in weights.values())
        assert result.gen == 1  # same members: the group is reused
        for r in (a, b):
            event = r.until_received(version)
            assert event["checksum"] == result.checksum and event["gen"] == 1


@pytest.mark.slow
def test_member_joining_later_gets_the_full_weights(publisher, start):
    (a,) = start("A")
    assert publisher.publish(model_weights(1), 1, ["A"]).ok
    a.until_received(1)
    (c,) = start("C")
    weights = model_weights(2)
    result = publisher.publish(weights, 2, ["A", "C"], checksum=True)
    assert result.ok, result.error
    assert result.gen == 2 and result.group_seconds > 0
    first = c.next_event()
    assert first["event"] == "received" and first["version"] == 2  # its very first round is a complete version
    assert first["checksum"] == a.until_received(2)["checksum"] == state_checksum(weights)


@pytest.mark.slow
def test_receiver_outside_the_member_list_is_skipped(publisher, start):
    a, b = start("A", "B")
    assert publisher.publish(model_weights(1), 1, ["A"]).ok
    assert a.until_received(1)
    assert publisher.publish({}, 2, []).ok
    weights = model_weights(3)
    assert publisher.publish(weights, 3, ["A", "B"]).ok
    first = b.next_event()
    assert first["event"] == "received" and first["version"] == 3  # rounds 1 and 2 never reached B
    assert first["checksum"] == state_checksum(weights)
    assert a.until_received(3)["checksum"] == first["checksum"]


@pytest.mark.slow
def test_killed_member_fails_the_round_and_survivors_go_on(publisher, start):
    a, b = start("A", "B")
    assert publisher.publish(model_weights(1), 1, ["A", "B"]).ok
    a.until_received(1), b.until_received(1)
    b.kill()
    t0 = time.monotonic()
    failed = publisher.publish(model_weights(2), 2, ["A", "B"])
    assert not failed.ok and failed.error
    assert time.monotonic() - t0 < SLACK * TIMEOUT_S
    weights = model_weights(3)
    result = publisher.publish(weights, 3, ["A"], checksum=True)
    assert result.ok, result.error
    assert result.gen == 2  # a new generation without B
    assert a.until_received(3)["checksum"] == result.checksum


@pytest.mark.slow
def test_each_member_list_keeps_its_own_group_and_a_death_rebuilds_only_its_own(publisher, start):
    a, b, c = start("A", "B", "C")
    first = [publisher.publish(model_weights(1), 1, members) for members in (["A"], ["B", "C"])]
    assert all(r.ok for r in first) and [r.gen for r in first] == [1, 2]
    for r in (a, b, c):
        r.until_received(1)
    c.kill()
    kept = publisher.publish(model_weights(2), 2, ["A"])
    assert kept.ok and kept.gen == 1 and kept.group_seconds == 0  # A's group is untouched by C's death
    assert a.until_received(2)["gen"] == 1
    weights = model_weights(3)
    rebuilt = publisher.publish(weights, 3, ["B"], checksum=True)
    assert rebuilt.ok, rebuilt.error
    assert rebuilt.gen == 3 and b.until_received(3)["checksum"] == rebuilt.checksum
    publisher.retain([("B",)])  # A is no longer sent to: its group goes, and a later round to it forms a new one
    again = publisher.publish(weights, 4, ["A"])
    assert again.ok and again.gen == 4 and a.until_received(4)["gen"] == 4


@pytest.mark.slow
def test_member_killed_while_the_group_forms(publisher, start):
    a, b = start("A", "B")
    assert publisher.publish(model_weights(1), 1, ["A"]).ok
    a.until_received(1)
    watcher_store = dist.TCPStore("127.0.0.1", publisher.port, None, False, timedelta(seconds=30))

    def kill_b_when_ready() -> None:  # round 2 forms a new group; B dies right after saying it is ready
        watcher_store.wait(["sync/2/ready/B"])
        os.kill(b.proc.pid, signal.SIGKILL)

    watcher = threading.Thread(target=kill_b_when_ready)
    watcher.start()
    t0 = time.monotonic()
    failed = publisher.publish(model_weights(2), 2, ["A", "B"])
    elapsed = time.monotonic() - t0
    watcher.join(timeout=10)
    assert not failed.ok and b.proc.wait(timeout=10) == -signal.SIGKILL
    assert elapsed < SLACK * TIMEOUT_S, f"a dead member held the learner for {elapsed:.1f}s"
    weights = model_weights(3)
    result = publisher.publish(weights, 3, ["A"], checksum=True)
    assert result.ok, result.error
    assert a.until_received(3)["checksum"] == result.checksum


@pytest.mark.slow
def test_a_member_gone_inside_the_rendezvous_costs_one_round_not_the_timeout():
    """C says it is ready for a new generation, then dies before joining the process group's rendezvous (the
    learner learns it from `alive`, as from a closed connection). The learner and the survivor A must both give up
    on that generation at once, and the next round, without C, must reach A: well under the 30 s timeout."""
    timeout_s = 30.0
    publisher = WeightPublisher("127.0.0.1", 0, timeout_s=timeout_s, bucket_bytes=512 * 1024)
    a = Receiver(publisher.port, "A", timeout_s)
    living = {"A", "C"}
    try:
        assert a.next_event(60) == {"event": "started"}
        assert publisher.publish(model_weights(1), 1, ["A"]).ok
        a.until_received(1)
        impostor = dist.TCPStore("127.0.0.1", publisher.port, None, False, timedelta(seconds=timeout_s))

        def c_ready_then_gone() -> None:
            impostor.wait(["sync/2"])
            impostor.set("sync/2/ready/C", "1")
            impostor.wait(["sync/2/go"])  # the learner and A now enter the rendezvous; C never will
            living.discard("C")

        watcher = threading.Thread(target=c_ready_then_gone)
        watcher.start()
        t0 = time.monotonic()
        failed = publisher.publish(model_weights(2), 2, ["A", "C"], alive=lambda: set(living))
        failed_s = time.monotonic() - t0
        watcher.join(timeout=10)
        assert not failed.ok and failed.missing == ["C"] and "formed" in failed.error, failed
        weights = model_weights(3)
        result = publisher.publish(weights, 3, ["A"], checksum=True, alive=lambda: set(living))
        total_s = time.monotonic() - t0
        assert result.ok, result.error
        assert a.until_received(3)["checksum"] == result.checksum
        assert failed_s < timeout_s / 3 and total_s < timeout_s / 3, (failed_s, total_s)
    finally:
        publisher.close()  # the abandoned rendezvous ends with the store
        a.kill()


@pytest.mark.slow
def test_hung_member_times_out_instead_of_hanging(publisher, start):
    a, b = start("A", "B")
    assert publisher.publish(model_weights(1), 1, ["A", "B"]).ok
    a.until_received(1), b.until_received(1)
    os.kill(b.proc.pid, signal.SIGSTOP)  # alive and connected, but never reads
    try:
        t0 = time.monotonic()
        failed = publisher.publish(model_weights(2), 2, ["A", "B"])
        elapsed = time.monotonic() - t0
    finally:
        b.kill()
    assert not failed.ok
    assert elapsed >= TIMEOUT_S, "the round failed before the stuck member could time out"
    assert elapsed < SLACK * TIMEOUT_S, f"a stuck member held the learner for {elapsed:.1f}s"
    weights = model_weights(3)
    result = publisher.publish(weights, 3, ["A"], checksum=True)
    assert result.ok, result.error
    assert a.until_received(3)["checksum"] == result.checksum  # A may or may not have completed round 2


@pytest.mark.slow
def test_closing_the_learner_ends_receivers(publisher, start):
    a, b = start("A", "B")
    assert publisher.publish(model_weights(1), 1, ["A"]).ok  # A is told about the close; B finds the store gone
    a.until_received(1)
    publisher.close()
    for r in (a, b):
        assert r.next_event() == {"event": "closed"}
        assert r.proc.wait(timeout=10) == 0


def test_empty_member_list_is_a_cheap_no_op(publisher):
    subscriber = WeightSubscriber("127.0.0.1", publisher.port, "A", timeout_s=TIMEOUT_S)
    try:
        result = publisher.publish(model_weights(0), 7, [])
        # Cheap by construction, not by a stopwatch: no process group is formed and no bucket is planned.
        assert result.ok and result.nbytes == 0 and result.members == [] and result.gen == 0
        assert result.group_seconds == 0.0
        assert subscriber.start_after() == result.seq == 1
        client = dist.TCPStore("127.0.0.1", publisher.port, None, False, timedelta(seconds=5))
        assert json.loads(client.get(f"sync/{result.seq}"))["version"] == 7
    finally:
        assert subscriber.close()


def test_present_lists_only_actors_whose_receiver_listens(publisher):
    assert publisher.present(["A", "B"]) == []  # registered with the learner, receivers not up yet
    subscriber = WeightSubscriber("127.0.0.1", publisher.port, "B", timeout_s=TIMEOUT_S)
    try:
        assert publisher.present(["A", "B"]) == ["B"]
    finally:
        subscriber.close()


def test_bad_arguments_are_named(publisher):
    with pytest.raises(ValueError, match="unique"):
        publisher.publish({}, 1, ["A", "A"])
    with pytest.raises(ValueError, match="version"):
        publisher.publish({}, -1, [])
    with pytest.raises(ValueError, match="actor id"):
        publisher.publish({}, 1, ["a/b"])
    with pytest.raises(ValueError, match="timeout_s"):
        WeightPublisher(timeout_s=0, bucket_bytes=10)
    with pytest.raises(ValueError, match="bucket_bytes"):
        WeightPublisher(timeout_s=1, bucket_bytes=0)
