"""Dynamic sampling: zero-variance groups are dropped at intake, counted by reward, and never hold admission."""

import random

import numpy as np
import pytest

from gspo_async.config import ConfigError, config_from_dict
from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.group_filter import constant_reward, reward_key
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.messages import Response, RolloutGroup


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(**kw):
    args = dict(groups_per_step=4, group_size=4, max_staleness=1, lease_timeout_s=10.0, heartbeat_timeout_s=3.0,
                clock=Clock())
    args.update(kw)
    items = [(i, [1 + i % 7, 2, 3], f"a{i}", {"i": i}) for i in range(10_000)]
    coord = Coordinator(PromptSource(items), **args)
    coord.register("a0", "i0", "fake")
    return coord


def group_with(prompt, rewards, version=0):
    responses = [Response.single_version(np.arange(3), np.full(3, -1.0), r, "stop", version) for r in rewards]
    return RolloutGroup(f"g{prompt.prompt_id}-{random.random()}", prompt.prompt_id, "x",
                        np.asarray(prompt.tokens, dtype=np.int32), responses)


def half_constant_rewards(prompt_id: int) -> list[float]:
    """The task: prompts 0, 4, 8, ... all wrong, 2, 6, 10, ... all right, odd prompts mixed (half the groups
    constant)."""
    if prompt_id % 2:
        return [1.0, 0.0, 1.0, 0.0]
    return [1.0] * 4 if prompt_id % 4 == 2 else [0.0] * 4


def test_constant_reward_and_reward_key_by_hand():
    p = make().lease("a0", 1)[0][0]
    assert constant_reward(group_with(p, [0.5, 0.5, 0.5, 0.5])) == 0.5
    assert constant_reward(group_with(p, [0.5, 0.5, 0.5, 0.25])) is None
    assert [reward_key(x) for x in (1.0, 0.0, 0.5, -1.0, 2.25)] == ["1", "0", "0_5", "neg1", "2_25"]


def run_pipeline(coord, steps, B=4):
    """An actor that asks for leases whenever it may and answers each at once; a learner that trains a batch as
    soon as B groups are buffered. Checks at every point that the batch can always be filled from slots that are
    in flight or leasable (filtered groups hold none). Returns the trained batches."""
    batches = []
    for _ in range(1000):
        if len(batches) == steps:
            break
        leased, reason = coord.lease("a0", 3)
        assert leased or reason == "admission"
        for p in leased:
            coord.offer("a0", group_with(p, half_constant_rewards(p.prompt_id), version=coord.version))
        if coord.buffered < B:
            # no deadlock: what is missing from the batch is in flight or may be leased right now
            assert coord.in_flight + coord.capacity() >= B - coord.buffered
            continue
        batch = coord.take(B)
        assert [coord.version - g.min_version for g in batch] == [0] * B or coord.max_staleness > 0
        assert all(coord.version - g.min_version <= coord.max_staleness for g in batch)
        coord.mark_trained(batch)
        coord.set_version(coord.version + 1)
        batches.append(batch)
    assert len(batches) == steps, "the pipeline stalled"
    return batches


@pytest.mark.parametrize("max_staleness", [0, 1, 3])
def test_filtered_pipeline_trains_only_informative_groups_and_never_stalls(max_staleness):
    coord = make(filter_groups=True, max_staleness=max_staleness)
    batches = run_pipeline(coord, steps=6)
    for batch in batches:
        assert all(constant_reward(g) is None for g in batch)
    # every constant group offered was filtered and counted under its reward; 24 trained (odd prompts) means
    # about as many constant ones were seen: prompts 0..N with N the last prompt issued
    issued = coord.prompts.next_prompt_id
    c = coord.counters()
    offered_constant = [pid for pid in range(issued) if pid % 2 == 0 and pid not in coord._open]
    by_reward = {"0": sum(pid % 4 == 0 for pid in offered_constant), "1": sum(pid % 4 == 2 for pid in offered_constant)}
    assert c["groups_filtered"] == len(offered_constant) >= 24 - 2
    assert c["groups_filtered_by_reward"] == {k: v for k, v in by_reward.items() if v}
    assert c["groups_dropped_by_reason"] == {"filtered": len(offered_constant)}
    assert c["groups_trained"] == 24 and coord.accounting()["balanced"]


def test_without_the_filter_constant_groups_are_trained():
    coord = make(filter_groups=False)
    batches = run_pipeline(coord, steps=3)
    constant = sum(constant_reward(g) is not None for b in batches for g in b)
    assert constant == 6 and coord.counters()["groups_filtered"] == 0  # half of 12 groups


def test_filtered_group_is_answered_dropped_and_a_resend_too():
    coord = make(filter_groups=True)
    p = coord.lease("a0", 1)[0][0]
    g = group_with(p, [1.0] * 4)
    assert coord.offer("a0", g) == "dropped"
    assert coord.offer("a0", g) == "dropped"  # the actor's resend of the same group: its prompt ended dropped
    assert coord.buffered == 0 and coord.in_flight == 0 and coord.counters()["groups_filtered"] == 1


def test_filtered_counts_survive_a_restore():
    coord = make(filter_groups=True)
    for p in coord.lease("a0", 3)[0]:
        coord.offer("a0", group_with(p, [0.0] * 4))
    fresh = make(filter_groups=True)
    fresh._actors.clear()
    fresh.n.clear()
    fresh.load_state_dict(coord.state_dict())
    assert fresh.counters()["groups_filtered_by_reward"] == {"0": 3}
    assert fresh.counters()["groups_filtered"] == 3


def test_filter_needs_two_responses_per_group():
    with pytest.raises(ValueError, match="at least 2 responses"):
        make(filter_groups=True, group_size=1)
    with pytest.raises(ConfigError, match="filter_groups"):
        config_from_dict({"num_return_sequences_in_group": 1, "filter_groups": {"enabled": True}})
    assert config_from_dict({"filter_groups": {"enabled": True}}).filter_groups.metric == "reward"


def test_over_sockets_a_filtered_group_frees_its_slot_for_a_held_lease_request():
    # Real ZeroMQ: a synchronous window (max_staleness 0) of 4 prompts is fully leased and the actor's next lease
    # request is held. A constant group arrives: it is answered 'dropped' and the held request gets a prompt at
    # once, with no new weight version (a filtered group never holds an admission slot).
    from gspo_async.learner.endpoint import LearnerServer
    from gspo_async.protocol.messages import Ack, Lease, LeaseRequest, Limits
    from tests.support.canned import canned_group
    from tests.support.raw_actor import RawActor

    limits = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=2,
                    max_message_bytes=1 << 20)
    items = [(i, [1 + i % 9, 2, 3], str(i), {"i": i}) for i in range(100)]
    coord = Coordinator(PromptSource(items), groups_per_step=4, group_size=2, max_staleness=0, lease_timeout_s=30.0,
                        heartbeat_timeout_s=5.0, filter_groups=True)
    server = LearnerServer(coord, limits=limits, heartbeat_interval_s=0.5)
    server.start()
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        peer.register("raw")
        peer.send(LeaseRequest(100, rid=5))
        prompts = peer.recv().prompts
        assert len(prompts) == 4
        peer.send(LeaseRequest(1, wait_s=30.0, rid=11))
        assert peer.poll(0.2) is None  # held: the window is full
        constant = canned_group(prompts[0], 2, 0, "raw", vocab_size=64)
        for r in constant.responses:
            r.reward = 1.0
        peer.send(constant)
        replies = [peer.recv(timeout=10), peer.recv(timeout=10)]
        ack = next(r for r in replies if isinstance(r, Ack))
        lease = next(r for r in replies if isinstance(r, Lease))
        assert ack.status == "dropped" and lease.rid == 11 and len(lease.prompts) == 1 and lease.version == 0
        informative = canned_group(prompts[1], 2, 0, "raw", vocab_size=64)  # rewards 0, 1
        peer.send(informative)
        assert peer.recv(timeout=10).status == "accepted"
        c = server.counters()
        assert c["groups_filtered_by_reward"] == {"1": 1} and c["buffered"] == 1 and server.accounting()["balanced"]
    finally:
        peer.close()
        server.close()


def test_filter_with_a_non_group_estimator_warns():
    from gspo_async.config import ConfigWarning

    with pytest.warns(ConfigWarning, match="filter_groups"):
        config_from_dict({"adv_estimator": "reinforce", "filter_groups": {"enabled": True}})
