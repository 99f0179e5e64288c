"""The learner's weight broadcaster over a real WeightPublisher (its store on loopback, in this process).

An actor's receiver announces itself by writing ``present/<id>`` into the store, as WeightSubscriber does; here a
store client writes it and never gets ready, so a round to it waits until the test makes it unreachable (the
endpoint's view of who is alive, injected as `reachable`).
"""

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from gspo_async.learner.broadcast import WeightBroadcaster
from gspo_async.learner.weight_sync import Cohorts, WeightSyncMembership
from gspo_async.telemetry.registry import MetricRegistry
from gspo_async.weights.elastic import KEY_LATEST, WeightPublisher
from tests.support.receivers import Receiver

TIMEOUT_S = 30.0  # far above anything these tests wait for: a round ends when its member becomes unreachable


class Weights:
    """A snapshot source that counts its calls and records the `copy` flag it was asked for."""

    def __init__(self):
        self.calls: list[bool] = []
        self.param = torch.arange(6, dtype=torch.float32)

    def __call__(self, copy: bool) -> list[tuple[str, torch.Tensor]]:
        self.calls.append(copy)
        return [("w", self.param.clone() if copy else self.param)]


@pytest.fixture
def parts(tmp_path):
    publisher = WeightPublisher("127.0.0.1", 0, timeout_s=TIMEOUT_S, bucket_bytes=1 << 20)
    registry = MetricRegistry("learner", tmp_path)
    live: list[str] = []
    client = dist.TCPStore("127.0.0.1", publisher.port, None, False, timedelta(seconds=10))
    made = []

    def make(background: bool = True, cohorts: Cohorts | None = None) -> WeightBroadcaster:
        b = WeightBroadcaster(publisher, WeightSyncMembership(TIMEOUT_S, exclude_s=0), lambda: list(live),
                              registry, background=background, cohorts=cohorts)
        made.append(b)
        return b
    yield make, live, client, registry, publisher
    for b in made:
        b.close()
    publisher.close()
    registry.close()


def wait_round_started(client, after: int) -> int:
    """The store's newest round number once it exceeds `after` (the publisher writes it when a round starts)."""
    client.wait([KEY_LATEST])
    deadline = 200  # x 0.05 s of store waits: a condition re-checked, bounded far above what a round takes
    for _ in range(deadline):
        seq = int(client.get(KEY_LATEST))
        if seq > after:
            return seq
        try:
            client.wait([f"sync/{after + 1}"], timedelta(seconds=0.05))
        except RuntimeError:  # the store's wait timed out: check again
            pass
    raise AssertionError(f"no weight-sync round after {after} started")


def test_an_offer_while_a_round_runs_returns_at_once_takes_no_copy_and_the_newest_version_goes_out_after(parts):
    make, live, client, registry, _ = parts
    weights = Weights()
    live.append("a")
    client.set("present/a", "1")  # a receiver that listens but never gets ready: the round to it waits
    b = make()
    assert b.offer(1, weights) is True
    wait_round_started(client, 0)
    assert b.offer(2, weights) is False  # the round for version 1 still waits for "a": no wait, no second copy
    assert weights.calls == [True]
    live.clear()  # "a" dies: the round fails at once (not after TIMEOUT_S), with no one left to retry for
    assert b.wait_sent(2, weights, timeout_s=TIMEOUT_S) is True
    assert b.sent_version == 2
    assert weights.calls == [True, True]  # one copy per version handed over, none for the offer refused
    values = registry.snapshot()
    assert values["weights/failures"] == 1.0 and values["weights/syncs"] == 1.0
    assert values["weights/group_builds"] == 1.0  # the group for "a" was attempted; a round to no one needs none


def test_the_broadcast_thread_resends_the_held_version_when_an_actor_joins(parts):
    make, live, client, registry, _ = parts
    weights = Weights()
    b = make()
    assert b.wait_sent(3, weights, timeout_s=TIMEOUT_S) is True  # to no one: the version is recorded
    seq = int(client.get(KEY_LATEST))
    live.append("n")
    client.set("present/n", "1")  # a newcomer: the idle thread notices on its own, without an offer
    joined = wait_round_started(client, seq)
    record = client.get(f"sync/{joined}").decode()
    assert '"members": ["n"]' in record and '"version": 3' in record
    assert weights.calls == [True]  # the held copy is re-sent; the training thread was not asked for another
    live.clear()


def test_inline_mode_runs_the_round_in_the_offer_on_the_callers_weights(parts):
    make, live, client, registry, _ = parts
    weights = Weights()
    b = make(background=False)
    assert b.offer(1, weights) is True
    assert b.sent_version == 1  # done on return: the step waited for it
    assert b.offer(1, weights) is False  # same version, same members: nothing to do
    assert weights.calls == [False]  # no copy: nothing runs beside the optimiser
    assert b.last_sync()["weights/bytes"] == 0.0  # no members, no payload


@pytest.mark.slow
def test_a_death_costs_only_its_own_cohort_a_group_and_a_newcomer_gets_weights_at_once(parts):
    """Real receivers, cohorts of two: A and B share a group, C has its own. C dies: A and B get the next version
    over their old group (no build); a newcomer D gets it at once in a guest group of its own."""
    make, live, client, registry, publisher = parts
    weights = Weights()
    receivers = {a: Receiver(publisher.port, a) for a in ("A", "B", "C")}
    try:
        for r in receivers.values():
            assert r.next_event(60) == {"event": "started"}
        live.extend(["A", "B", "C"])
        b = make(background=False, cohorts=Cohorts(2, join_wait_s=3600.0))
        assert b.offer(1, weights) and b.sent_version == 1
        gens = {a: receivers[a].until_received(1)["gen"] for a in "ABC"}
        assert gens["A"] == gens["B"] != gens["C"] and registry.snapshot()["weights/group_builds"] == 2.0
        receivers["C"].kill()
        live.remove("C")
        assert b.offer(2, weights) and b.sent_version == 2
        assert [receivers[a].until_received(2)["gen"] for a in "AB"] == [gens["A"]] * 2  # the same group
        assert registry.snapshot()["weights/group_builds"] == 2.0  # no group built for the death
        receivers["D"] = Receiver(publisher.port, "D")
        assert receivers["D"].next_event(60) == {"event": "started"}
        live.append("D")
        assert b.offer(2, weights)  # same version, a newcomer: a round to D only
        assert receivers["D"].until_received(2)["gen"] not in gens.values()
        assert registry.snapshot()["weights/group_builds"] == 3.0 and list(b.cohorts.guests) == [("D",)]
        assert b.offer(3, weights) and b.sent_version == 3
        assert [receivers[a].until_received(3)["gen"] for a in "AB"] == [gens["A"]] * 2
    finally:
        live.clear()
        for r in receivers.values():
            r.kill()
