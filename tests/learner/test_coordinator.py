"""The coordinator with a fake clock: admission numbers, stale drops, leases, membership, accounting, restore."""

import json
import random

import numpy as np
import pytest

from gspo_async.learner.coordinator import Coordinator, length_bin
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.messages import PromptLease, ProtocolError, Response, RolloutGroup


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def items(n=1000):
    return [(i, [1 + i % 7, 2, 3], f"a{i}", {"i": i}) for i in range(n)]


def make(n_items=1000, **kw):
    clock = Clock()
    args = dict(groups_per_step=4, group_size=2, max_staleness=1, lease_timeout_s=10.0, heartbeat_timeout_s=3.0,
                clock=clock)
    args.update(kw)
    coord = Coordinator(PromptSource(items(n_items)), **args)
    coord.register("a0", "i0", "fake")
    return coord, clock


def group_for(prompt, version=0, lengths=(3, 5), gid=None, spans=None):
    responses = []
    for n in lengths:
        r = Response.single_version(np.arange(n) % 50, np.full(n, -1.0), 1.0, "stop", version)
        if spans is not None:
            r.version_spans = np.asarray(spans, dtype=np.int32)
        responses.append(r)
    return RolloutGroup(gid or f"g{prompt.prompt_id}-{random.random()}", prompt.prompt_id, "x",
                        np.asarray(prompt.tokens, dtype=np.int32), responses)


def bound_holds(c):
    return c.accepted + c.in_flight <= (c.max_staleness + c.version + 1) * c.groups_per_step


def test_admission_stops_at_bound_and_resumes_after_each_version():
    c, _ = make(groups_per_step=4, max_staleness=1)
    first, reason = c.lease("a0", 100)
    assert len(first) == 8 and reason == ""  # (1 + 0 + 1) * 4
    assert c.lease("a0", 1) == ([], "admission")
    for p in first:  # accepted groups still count: no new leases without a new version
        assert c.offer("a0", group_for(p)) == "accepted"
    assert c.lease("a0", 1) == ([], "admission")
    batch = c.take(4)
    c.mark_trained(batch)
    assert c.lease("a0", 1) == ([], "admission") and bound_holds(c)
    c.set_version(1)
    assert len(c.lease("a0", 100)[0]) == 4  # (1 + 1 + 1) * 4 - 8
    assert c.lease("a0", 1)[1] == "admission"
    c.set_version(2)
    assert len(c.lease("a0", 2)[0]) == 2 and len(c.lease("a0", 100)[0]) == 2
    assert bound_holds(c) and c.accepted + c.in_flight == 16
    assert c.counters()["leases_issued"] == 16


def test_admission_counts_from_the_fleets_version_while_a_broadcast_lags():
    c, _ = make(groups_per_step=4, max_staleness=1)
    c.set_fleet_version(0)
    first, _ = c.lease("a0", 100)
    assert len(first) == 8  # (1 + 0 + 1) * 4
    for p in first:
        c.offer("a0", group_for(p))
    c.mark_trained(c.take(4))
    c.set_version(1)  # the learner stepped; the fleet still has version 0
    assert c.admission_version == 0 and c.lease("a0", 1) == ([], "admission")
    c.set_fleet_version(1)
    assert len(c.lease("a0", 100)[0]) == 4  # (1 + 1 + 1) * 4 - 8
    c.set_fleet_version(0)  # never decreases
    c.set_fleet_version(7)  # and never counts past the learner's own version
    assert c.fleet_version == 7 and c.admission_version == 1


@pytest.mark.parametrize("admission_follows_the_fleet", [True, False])
def test_actors_a_version_behind_make_no_stale_group_when_admission_follows_the_fleet(admission_follows_the_fleet):
    """Actors that generate instantly with the weights of the newest finished broadcast, one version behind the
    learner: counted from the fleet's version, admission hands out nothing that is stale by the time it is taken;
    counted from the learner's (the bound without set_fleet_version), part of every batch is dropped as stale."""
    c, _ = make(groups_per_step=4, max_staleness=1)
    for step in range(30):
        fleet = max(step - 1, 0)  # the broadcast of `step` is still under way
        if admission_follows_the_fleet:
            c.set_fleet_version(fleet)
        while leased := c.lease("a0", 100)[0]:
            for p in leased:
                assert c.offer("a0", group_for(p, version=fleet)) == "accepted"
        c.mark_trained(c.take(4))
        c.set_version(step + 1)
    counts = c.counters()
    assert (counts["dropped_stale"] == 0) == admission_follows_the_fleet, counts["dropped_stale"]
    assert counts["prompts_trained"] >= 4 * 29


def test_max_staleness_zero_is_synchronous():
    c, _ = make(groups_per_step=2, max_staleness=0)
    for version in range(3):
        leased, _ = c.lease("a0", 10)
        assert len(leased) == 2  # exactly one batch per version
        for p in leased:
            c.offer("a0", group_for(p, version=version))
        assert c.lease("a0", 10) == ([], "admission")
        batch = c.take(2)
        assert [version - g.min_version for g in batch] == [0, 0]
        c.mark_trained(batch)
        assert c.lease("a0", 10) == ([], "admission")  # trained, but no new weights yet
        c.set_version(version + 1)
    assert c.counters()["staleness_hist"] == {0: 6} and c.counters()["prompts_trained"] == 6


def test_stale_groups_are_dropped_at_take_with_their_lengths_and_free_admission():
    c, _ = make(groups_per_step=2, max_staleness=1)
    leased, _ = c.lease("a0", 4)
    c.offer("a0", group_for(leased[0], version=0, lengths=(3, 9)))
    c.offer("a0", group_for(leased[1], version=0, lengths=(17, 2)))
    c.set_version(1)
    c.offer("a0", group_for(leased[2], version=1, lengths=(4, 4)))
    # a response spanning versions 0..1 is as old as its oldest token
    c.offer("a0", group_for(leased[3], version=1, lengths=(4, 4), spans=[[0, 0, 2], [1, 2, 4]]))
    c.set_version(2)
    capacity_before = c.capacity()
    kept = c.take(4)
    assert [g.prompt_id for g in kept] == [leased[2].prompt_id]  # lag 1 kept; lag 2 dropped (also the spanning one)
    n = c.counters()
    assert n["dropped_stale"] == 3 and n["groups_dropped_by_reason"] == {"stale": 3}
    assert n["dropped_stale_tokens"] == 3 + 9 + 17 + 2 + 4 + 4
    assert n["length_hist_dropped"] == {2: 2, 3: 2, 4: 1, 5: 1}  # 2,3 -> bins 2; 4,4 -> 3; 9 -> 4; 17 -> 5
    assert n["length_hist_kept"] == {3: 2}
    assert n["prompts_dropped_by_reason"] == {"stale": 3}
    assert c.capacity() == capacity_before + 3  # dropped groups do not count: replacements can be leased
    assert c.accounting()["balanced"]


def test_length_bins():
    assert [length_bin(n) for n in (1, 2, 3, 4, 7, 8, 4096)] == [1, 2, 2, 3, 3, 4, 13]


def test_drop_stale_false_keeps_everything():
    c, _ = make(groups_per_step=2, max_staleness=0, drop_stale=False)
    leased, _ = c.lease("a0", 2)
    for p in leased:
        c.offer("a0", group_for(p))
    c.set_version(5)
    assert len(c.take(2)) == 2 and c.counters()["staleness_hist"] == {5: 2}


def test_expired_leases_return_to_the_front_of_the_queue():
    c, clock = make(groups_per_step=4, max_staleness=1, lease_timeout_s=10.0, heartbeat_timeout_s=100.0)
    first, _ = c.lease("a0", 3)
    clock.t += 9.9
    assert c.tick() == {"dead": [], "expired": []}
    clock.t += 0.2
    assert c.tick()["expired"] == [0, 1, 2]
    again, _ = c.lease("a0", 5)
    assert [p.prompt_id for p in again] == [0, 1, 2, 3, 4]  # re-issued ones first, then new prompts
    n = c.counters()
    assert n["leases_expired"] == 3 and n["leases_reissued"] == 3 and n["prompts_issued"] == 5


def test_dead_actor_leases_are_reissued_to_others():
    c, clock = make(heartbeat_timeout_s=3.0)
    c.register("a1", "i1", "fake")
    mine, _ = c.lease("a0", 3)
    clock.t += 2.0
    c.heartbeat("a1", 0, {"tokens_per_s": 5.0})
    clock.t += 1.5  # a0 silent 3.5 s, a1 1.5 s
    assert c.tick() == {"dead": ["a0"], "expired": []}
    assert c.live_actor_ids() == ["a1"] and not c.is_alive("a0")
    theirs, _ = c.lease("a1", 3)
    assert [p.prompt_id for p in theirs] == [p.prompt_id for p in mine]
    n = c.counters()
    assert n["leases_orphaned"] == 3 and n["actors_dead"] == 1
    assert c.accounting()["balanced"]


def test_live_actors_heard_within_a_window_leave_out_the_silent_ones_without_declaring_them_dead():
    c, clock = make(heartbeat_timeout_s=10.0)  # make() registers a0
    c.register("a1", "i1", "fake")
    clock.t += 2.0
    c.heartbeat("a1", 0, {})
    clock.t += 1.5  # a0 silent 3.5 s, a1 1.5 s
    assert c.live_actor_ids(heard_within_s=3.0) == ["a1"]
    assert c.live_actor_ids(heard_within_s=3.5) == ["a0", "a1"]  # the bound is inclusive
    assert c.live_actor_ids() == ["a0", "a1"] and c.tick()["dead"] == []  # silent, not dead
    c.touch("a0")  # any message brings it back
    assert c.live_actor_ids(heard_within_s=3.0) == ["a0", "a1"]


def test_an_orphaned_actors_leases_go_back_at_once_and_its_late_group_still_counts():
    c, _ = make()
    c.register("a1", "i1", "fake")
    mine, _ = c.lease("a0", 2)
    assert c.orphan("a0") == sorted(p.prompt_id for p in mine)  # no clock advance: before any heartbeat timeout
    assert c.live_actor_ids() == ["a0", "a1"] and c.leases_of("a0") == []
    theirs, _ = c.lease("a1", 2)
    assert [p.prompt_id for p in theirs] == [p.prompt_id for p in mine]  # the front of the queue
    # The first holder was alive after all: its group is accepted (the prompt had none), the re-issue's is not.
    assert c.offer("a0", group_for(mine[0])) == "accepted"
    assert c.offer("a1", group_for(theirs[0])) == "duplicate"
    n = c.counters()
    assert n["leases_orphaned"] == 2 and n["actors_dead"] == 0
    assert c.accounting()["balanced"]


def test_goodbye_and_explicit_returns():
    c, _ = make()
    leased, _ = c.lease("a0", 4)
    assert c.return_leases("a0", [leased[3].prompt_id, 999]) == [leased[3].prompt_id]
    assert c.goodbye("a0") == [p.prompt_id for p in leased[:3]]
    n = c.counters()
    assert n["leases_returned"] == 4 and n["actors_left"] == 1 and n["pending_reissue"] == 4
    c.register("a1", "i1", "fake")
    assert [p.prompt_id for p in c.lease("a1", 4)[0]] == [p.prompt_id for p in leased]


def test_late_group_beats_reissue_and_the_new_holder_gets_duplicate():
    c, clock = make(lease_timeout_s=10.0, heartbeat_timeout_s=100.0)
    c.register("a1", "i1", "fake")
    (p,), _ = c.lease("a0", 1)
    clock.t += 11
    c.tick()
    (p2,), _ = c.lease("a1", 1)
    assert p2.prompt_id == p.prompt_id
    assert c.offer("a0", group_for(p)) == "accepted"  # the late original, although its lease moved
    assert c.offer("a1", group_for(p2)) == "duplicate"
    assert c.counters()["leases_superseded"] == 1 and c.in_flight == 0
    # a group for a queued (expired, not re-leased) prompt is accepted too
    (q,), _ = c.lease("a0", 1)
    clock.t += 11
    c.tick()
    assert c.counters()["pending_reissue"] == 1
    assert c.offer("a0", group_for(q)) == "accepted" and c.counters()["pending_reissue"] == 0
    assert c.accounting()["balanced"]


def test_duplicates_unknown_and_mismatched_prompts():
    c, _ = make()
    (p, q), _ = c.lease("a0", 2)
    g = group_for(p, gid="same")
    assert c.offer("a0", g) == "accepted"
    assert c.offer("a0", g) == "duplicate"  # same group id
    assert c.offer("a0", group_for(p)) == "duplicate"  # same prompt, other group id
    with pytest.raises(ProtocolError) as err:
        c.offer("a0", group_for(PromptLease(10**6, np.array([1], np.int32), "", {})))
    assert err.value.code == "unknown_prompt"
    wrong = group_for(q)
    wrong.prompt_tokens = wrong.prompt_tokens + 1
    with pytest.raises(ProtocolError) as err:
        c.offer("a0", wrong)
    assert err.value.code == "prompt_mismatch"
    assert c.counters()["groups_duplicate"] == 2
    assert c.offer("a0", group_for(q)).startswith("accepted")


def test_group_for_a_dropped_prompt_is_answered_dropped():
    c, _ = make(groups_per_step=1, max_staleness=0)
    (p,), _ = c.lease("a0", 1)
    c.offer("a0", group_for(p))
    c.set_version(3)
    assert c.take(1) == []
    assert c.offer("a0", group_for(p)) == "dropped"


def test_buffer_full_answers_retry_later():
    c, _ = make(groups_per_step=2, max_staleness=3, max_buffered_groups=2)
    leased, _ = c.lease("a0", 3)
    assert [c.offer("a0", group_for(p)) for p in leased] == ["accepted", "accepted", "retry_later"]
    c.take(1)
    assert c.offer("a0", group_for(leased[2])) == "accepted"
    assert c.counters()["groups_retry_later"] == 1


def test_long_prompts_and_poison_prompts_are_dropped_with_reasons():
    src = [(0, [1] * 10, "x"), (1, [1, 2], "y"), (2, [3], "z")]
    clock = Clock()
    c = Coordinator(PromptSource(src), groups_per_step=4, group_size=2, max_staleness=0, lease_timeout_s=1.0,
                    heartbeat_timeout_s=100.0, max_prompt_tokens=4, max_lease_attempts=2, clock=clock)
    c.register("a0", "i", "fake")
    assert [p.prompt_id for p in c.lease("a0", 1)[0]] == [1]  # prompt 0 (10 tokens) dropped when drawn
    for _ in range(2):
        clock.t += 2
        c.tick()
        assert [p.prompt_id for p in c.lease("a0", 1)[0]] in ([1], [2])
    n = c.counters()
    assert n["prompts_dropped_by_reason"]["prompt_too_long"] == 1
    assert n["prompts_dropped_by_reason"].get("lease_attempts", 0) == 1  # prompt 1 leased twice, then dropped
    assert c.accounting()["balanced"]


def test_finite_source_ends():
    c, _ = make(n_items=3, groups_per_step=8)
    leased, _ = c.lease("a0", 8)
    assert len(leased) == 3 and c.lease("a0", 1) == ([], "exhausted")
    for p in leased:
        c.offer("a0", group_for(p))
    c.mark_trained(c.take(3))
    assert c.finished and c.accounting() == {"issued": 3, "trained": 3, "dropped": 0, "in_flight": 0,
                                               "buffered": 0, "training": 0, "pending_reissue": 0, "balanced": True}


def test_mark_dropped_and_misuse_of_mark_trained():
    c, _ = make()
    leased, _ = c.lease("a0", 2)
    for p in leased:
        c.offer("a0", group_for(p))
    a, b = c.take(2)
    c.mark_dropped([a], "zero_advantage")
    with pytest.raises(ValueError, match="not handed out"):
        c.mark_trained([a])
    with pytest.raises(ValueError, match="not handed out"):
        c.mark_trained([group_for(leased[1])])  # a different object than the one taken
    c.mark_trained([b])
    n = c.counters()
    assert n["groups_dropped_by_reason"] == {"zero_advantage": 1} and n["prompts_trained"] == 1
    assert c.offer("a0", b) == "duplicate" and c.offer("a0", a) == "dropped"  # resends after the end
    with pytest.raises(ValueError, match="versions only grow"):
        c.set_version(-1)


def test_put_back_returns_taken_groups_to_the_front_of_the_buffer_and_undoes_their_counts():
    c, _ = make(groups_per_step=4, max_staleness=1)
    leased, _ = c.lease("a0", 4)
    groups = [group_for(p, lengths=(3, 9)) for p in leased]
    for g in groups:
        assert c.offer("a0", g) == "accepted"
    before = c.counters()
    taken = c.take(3)
    assert c.accounting()["training"] == 3 and c.counters()["staleness_hist"] == {0: 3}
    c.put_back(taken)
    acc, after = c.accounting(), c.counters()
    assert acc["balanced"] and acc["training"] == 0 and acc["buffered"] == 4, acc
    for key in ("staleness_hist", "length_hist_kept", "groups_trained", "groups_dropped"):
        assert after[key] == before[key], key
    assert c.take(4) == groups  # the put-back groups first, in their order, then the one never taken
    with pytest.raises(ValueError, match="not handed out"):
        c.put_back([group_for(leased[0])])  # not the object take() handed out


def test_register_gives_a_second_process_a_new_id():
    c, _ = make()
    assert c.register("a0", "i0", "fake") == "a0"  # reconnect of the same process
    assert c.register("a0", "other", "fake") == "a0-2"
    assert c.register("a0", "third", "fake") == "a0-3"
    assert sorted(c.live_actor_ids()) == ["a0", "a0-2", "a0-3"]


def test_actors_report():
    c, clock = make()
    c.lease("a0", 2)
    clock.t += 0.5
    c.set_version(3)
    c.heartbeat("a0", 3, {"tokens_per_s": 42.0}, unacked=1)
    clock.t += 0.25
    (a,) = c.actors()
    assert a["actor_id"] == "a0" and a["version"] == 3 and a["tokens_per_s"] == 42.0 and a["leases"] == 2
    assert a["last_contact_s"] == pytest.approx(0.25) and a["unacked"] == 1


def test_constructor_errors():
    with pytest.raises(ValueError, match="max_buffered_groups"):
        make(groups_per_step=8, max_buffered_groups=4)
    with pytest.raises(ValueError, match="max_staleness"):
        make(max_staleness=-1)
    with pytest.raises(ValueError, match="lease_timeout_s"):
        make(lease_timeout_s=0)


def test_random_operations_keep_the_balance():
    rng = random.Random(7)
    c, clock = make(groups_per_step=3, max_staleness=1, lease_timeout_s=5.0, heartbeat_timeout_s=4.0)
    taken, held = [], {}
    for step in range(3000):
        op = rng.random()
        actor = rng.choice(["a0", "a1", "a2"])
        if op < 0.05:
            c.register(actor, actor, "fake")
        elif op < 0.35:
            if c.is_alive(actor):
                granted = c.lease(actor, rng.randint(1, 4))[0]
                for p in granted:
                    held[p.prompt_id] = (actor, p)
                # the bound is checked when leasing (a late group for an expired lease can still land above it)
                assert not granted or bound_holds(c), step
        elif op < 0.6 and held:
            pid = rng.choice(list(held))
            actor, p = held.pop(pid)
            try:
                c.offer(actor, group_for(p, version=rng.randint(max(0, c.version - 2), c.version)))
            except ProtocolError:
                pass
        elif op < 0.7:
            taken += c.take(rng.randint(1, 3))
        elif op < 0.78 and taken:
            c.mark_trained(taken)
            taken = []
            c.set_version(c.version + 1)
        elif op < 0.79 and taken:
            c.put_back(taken)
            taken = []
        elif op < 0.8:
            c.goodbye(actor)
        elif op < 0.9:
            c.heartbeat(actor, c.version, {})
        else:
            clock.t += rng.random() * 3
            c.tick()
        acc = c.accounting()
        assert acc["balanced"], (step, acc)
    assert c.counters()["prompts_trained"] > 50


def test_state_dict_round_trip_reissues_lost_groups_and_keeps_leases():
    c, clock = make(groups_per_step=2, max_staleness=2, lease_timeout_s=10.0)
    leased, _ = c.lease("a0", 6)
    for p in leased[:4]:
        c.offer("a0", group_for(p))
    taken = c.take(1)  # prompt 0 training, 1-3 buffered, 4-5 leased
    c.set_version(1)
    c.mark_dropped(c.take(1), "filtered")  # prompt 1 dropped
    c.return_leases("a0", [leased[5].prompt_id])  # prompt 5 queued
    state = json.loads(json.dumps(c.state_dict()))  # JSON-able
    assert taken

    clock2 = Clock()
    clock2.t = 5.0
    fresh = Coordinator(PromptSource(items()), groups_per_step=2, group_size=2, max_staleness=2,
                        lease_timeout_s=10.0, heartbeat_timeout_s=3.0, clock=clock2)
    fresh.load_state_dict(state)
    acc = fresh.accounting()
    assert acc == {"issued": 6, "trained": 0, "dropped": 1, "in_flight": 1, "buffered": 0, "training": 0,
                   "pending_reissue": 4, "balanced": True}
    assert fresh.version == 1 and fresh.counters()["groups_dropped_by_reason"] == {"filtered": 1}
    # the actor that held prompt 4 resends its group after the restart: accepted, not regenerated
    fresh.register("a0", "i0", "fake")
    assert fresh.offer("a0", group_for(leased[4])) == "accepted"
    # lost groups (training / buffered) come back first, then the returned one, then new prompts
    again, _ = fresh.lease("a0", 10)
    assert [p.prompt_id for p in again][:4] == [0, 2, 3, 5]
    assert again[4].prompt_id == 6 and np.array_equal(again[0].tokens, leased[0].tokens)
    assert again[0].meta == {"i": 0} and again[0].answer == "a0"
    assert fresh.offer("a0", group_for(leased[1])) == "dropped"
    # the kept lease expires one lease timeout after the restore
    fresh2 = Coordinator(PromptSource(items()), groups_per_step=2, group_size=2, max_staleness=2,
                         lease_timeout_s=10.0, heartbeat_timeout_s=3.0, clock=clock2)
    fresh2.load_state_dict(state)
    clock2.t += 10.5
    assert fresh2.tick()["expired"] == [4]


def test_load_state_dict_needs_a_fresh_coordinator_and_the_same_stream():
    c, _ = make()
    c.lease("a0", 2)
    state = c.state_dict()
    with pytest.raises(ValueError, match="fresh"):
        c.load_state_dict(state)
    other = Coordinator(PromptSource([(i + 100, [1], "x") for i in range(10)]), groups_per_step=4, group_size=2,
                        max_staleness=1, lease_timeout_s=1, heartbeat_timeout_s=1)
    with pytest.raises(ValueError, match="dataset"):
        other.load_state_dict(state)


def test_closed_intake_grants_no_lease_and_accepts_no_group():
    c, _ = make(groups_per_step=4, max_staleness=1)
    leased, _ = c.lease("a0", 2)
    assert c.offer("a0", group_for(leased[0])) == "accepted"
    c.close_intake()
    assert c.lease("a0", 1) == ([], "admission")
    late = group_for(leased[1])
    assert c.offer("a0", late) == "retry_later"  # kept by the actor for the next learner
    state = c.state_dict()
    assert {p["prompt_id"]: p["state"] for p in state["open"]} == {leased[0].prompt_id: "buffered",
                                                                   leased[1].prompt_id: "leased"}
    assert c.counters()["groups_retry_later"] == 1 and c.accounting()["balanced"]


def test_renamed_ids_obey_the_id_rule_and_bad_ids_are_refused():
    from gspo_async.telemetry.names import actor_metric

    c, _ = make()
    base = "x" * 127
    assert c.register(base, "first", "fake") == base
    second = c.register(base, "second", "fake")  # was '<127 x>-2': 129 characters, a telemetry crash
    assert second == "x" * 126 + "-2" and len(second) == 128
    assert actor_metric(second, "tokens_per_s")  # a valid metric name
    for bad in ("a!b", "y" * 129, ""):
        with pytest.raises(ValueError, match="actor id"):
            c.register(bad, "i", "fake")


def test_a_hog_gets_its_fair_share_and_the_other_actor_is_served():
    c, _ = make()  # groups_per_step 4, max_staleness 1: admission allows 8 leases at version 0
    c.register("a1", "i1", "fake")
    hog, reason = c.lease("a0", 2**31 - 1)
    assert len(hog) == 4  # ceil(8 / 2 actors)
    assert c.lease("a0", 1) == ([], "actor_cap") and c.n["leases_capped"] == 1
    got, _ = c.lease("a1", 10)
    assert len(got) == 4  # the other actor's share is still there
    assert c.lease("a1", 1) == ([], "admission")  # now admission itself is closed


def test_a_group_id_reused_for_another_prompt_is_refused_with_its_own_code():
    c, _ = make()
    (p0, p1), _ = c.lease("a0", 2)
    first = group_for(p0, gid="g")
    assert c.offer("a0", first) == "accepted"
    assert c.offer("a0", group_for(p0, gid="g")) == "duplicate"  # a resend
    with pytest.raises(ProtocolError) as err:
        c.offer("a0", group_for(p1, gid="g"))
    assert err.value.code == "group_id_reused"
    (taken,) = c.take(1)
    c.mark_trained([taken])  # still told apart after its prompt ended
    with pytest.raises(ProtocolError, match="group_id_reused"):
        c.offer("a0", group_for(p1, gid="g"))
    assert c.offer("a0", group_for(p1, gid="g2")) == "accepted"


def test_a_heartbeat_from_the_future_is_forged():
    c, _ = make()
    c.allow_version(1)
    c.heartbeat("a0", 1, {})
    with pytest.raises(ProtocolError, match="forged_version"):
        c.heartbeat("a0", 2, {})
