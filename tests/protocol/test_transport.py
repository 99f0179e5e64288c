"""Actor processes against a live learner endpoint: crashes, learner restarts, and a small asynchronous run."""

import threading

import pytest

from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.messages import Limits
from gspo_async.learner.endpoint import LearnerServer
from tests.support.actor_process import FakeActorProcess, wait_until

LIMITS = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=2)
ITEMS = [(i, [1 + i % 9, 2, 3], str(i), {"i": i}) for i in range(200)]


def coordinator(**kw):
    args = dict(groups_per_step=4, group_size=2, max_staleness=1, lease_timeout_s=60.0, heartbeat_timeout_s=1.0)
    args.update(kw)
    return Coordinator(PromptSource(ITEMS), **args)


def serve(coord, port=0):
    server = LearnerServer(coord, port=port, limits=LIMITS, heartbeat_interval_s=0.2)
    server.start()
    return server


@pytest.fixture
def actors():
    started = []
    yield lambda server, name, *extra: started.append(
        FakeActorProcess(f"127.0.0.1:{server.port}", name, *extra)) or started[-1]
    for a in started:
        a.close()


@pytest.mark.slow
def test_killed_actor_loses_no_prompt(actors):
    server = serve(coordinator())
    try:
        doomed = actors(server, "doomed")
        doomed.call("connect")
        held = doomed.call("lease", n=3)["prompt_ids"]
        assert held == [0, 1, 2]
        doomed.kill()  # SIGKILL while holding 3 leases: no goodbye
        wait_until(lambda: server.counters()["actors_dead"] == 1, timeout=10, what="heartbeat timeout")
        c = server.counters()
        assert c["leases_orphaned"] == 3 and c["pending_reissue"] == 3 and c["leases_expired"] == 0
        heir = actors(server, "heir")
        heir.call("connect")
        assert heir.call("lease", n=3)["prompt_ids"] == held  # re-issued first
        heir.call("push")
        assert heir.call("wait_acked", timeout=10)["acked"]
        groups = server.take_groups(3, timeout_s=10)
        assert sorted(g.prompt_id for g in groups) == held and {g.actor_id for g in groups} == {"heir"}
        server.mark_trained(groups)
        acc = server.accounting()
        assert acc == {"issued": 3, "trained": 3, "dropped": 0, "in_flight": 0, "buffered": 0, "training": 0,
                       "pending_reissue": 0, "balanced": True}
        assert server.counters()["leases_reissued"] == 3
    finally:
        server.close()


@pytest.mark.slow
def test_frozen_actor_is_declared_dead_then_comes_back_and_its_late_groups_count(actors):
    server = serve(coordinator())
    try:
        actor = actors(server, "sleepy")
        actor.call("connect")
        held = actor.call("lease", n=2)["prompt_ids"]
        actor.pause()  # frozen past the heartbeat timeout
        wait_until(lambda: server.counters()["actors_dead"] == 1, timeout=10, what="heartbeat timeout")
        assert server.counters()["leases_orphaned"] == 2 and server.live_actor_ids() == []
        actor.resume()
        actor.call("push")  # it finishes the work it had; the learner says not_registered, it registers again
        assert actor.call("wait_acked", timeout=10)["acked"]
        groups = server.take_groups(2, timeout_s=10)
        assert sorted(g.prompt_id for g in groups) == held  # late groups for queued prompts are accepted
        c = server.counters()
        assert c["actors_registered"] == 2 and c["pending_reissue"] == 0 and c["rejected_by_reason"].get(
            "not_registered", 0) >= 1
        assert server.live_actor_ids() == ["sleepy"] and server.accounting()["balanced"]
    finally:
        server.close()


@pytest.mark.slow
def test_learner_restart_unacked_groups_are_resent_and_consumed_once(actors):
    first = serve(coordinator())
    port = first.port
    actor = actors(first, "a0", "--ack-timeout", "30")
    session1 = actor.call("connect")["session"]
    held = actor.call("lease", n=4)["prompt_ids"]
    trained_before = actor.call("push", prompt_ids=held[:1])["group_ids"]
    assert actor.call("wait_acked", timeout=10)["acked"]
    state = first.state_dict()  # the checkpoint: prompt 0 buffered (not trained), prompts 1-3 leased
    first.close()
    pushed = actor.call("push", prompt_ids=held[1:])["group_ids"]  # the learner is down: nothing is acked
    assert actor.call("status")["unacked"] == 3

    restored = coordinator()
    restored.load_state_dict(state)
    second = serve(restored, port=port)
    try:
        groups = []
        while len(groups) < 3:  # resent groups arrive once the actor noticed the restart and registered again
            groups += second.take_groups(3 - len(groups), timeout_s=10)
            assert groups, "no resent group arrived"
        assert sorted(g.group_id for g in groups) == sorted(pushed)  # resent, not regenerated
        assert actor.call("wait_acked", timeout=10) == {"acked": True, "unacked": 0}
        status = actor.call("status")
        assert status["session"] == second.session != session1 and status["counters"]["learner_restarts"] == 1
        second.mark_trained(groups)
        # the group that was buffered but not trained died with the old learner: its prompt is re-issued first
        again = actor.call("lease", n=4)["prompt_ids"]
        assert again[0] == held[0]
        more = actor.call("push", prompt_ids=[held[0]])["group_ids"]
        actor.call("wait_acked", timeout=10)
        (redo,) = second.take_groups(1, timeout_s=10)
        assert redo.group_id == more[0] != trained_before[0]
        second.mark_trained([redo])
        assert second.take_groups(1, timeout_s=0.3) == []  # nothing was taken twice
        c = second.counters()
        assert c["prompts_trained"] == 4 and c["groups_trained"] == 4
        acc = second.accounting()
        assert acc["balanced"] and acc["trained"] == 4 and acc["issued"] == 4 + len(again) - 1
    finally:
        second.close()


@pytest.mark.slow
def test_two_actors_asynchronous_run_respects_the_staleness_bound(actors):
    server = serve(coordinator(groups_per_step=4, max_staleness=1, heartbeat_timeout_s=5.0))
    steps = 8
    try:
        fleet = [actors(server, f"a{i}") for i in range(2)]
        for a in fleet:
            a.call("connect")
        done = []
        runs = [threading.Thread(target=lambda a=a: done.append(a.call("run", until_version=steps, timeout=60,
                                                                         per_lease=3)), daemon=True)
                for a in fleet]
        for t in runs:
            t.start()
        lags, trained = [], []
        for version in range(steps):
            batch = []
            while len(batch) < 4:
                got = server.take_groups(4 - len(batch), timeout_s=20)
                assert got, f"no group for 20 s at version {version}: {server.counters()}"
                batch += got
            lags += [version - g.min_version for g in batch]
            trained += [g.prompt_id for g in batch]
            server.set_version(version + 1)
            server.mark_trained(batch)
        for t in runs:
            t.join(60)
        assert len(done) == 2
        assert max(lags) <= 1 and len(set(trained)) == len(trained) == 4 * steps
        c = server.counters()
        assert c["actors_alive"] == 2 and c["groups_rejected"] == 0 and c["prompts_trained"] == 4 * steps
        # admission: whatever was leased never exceeded the bound at the last version, drops aside
        assert c["groups_accepted"] - c["groups_dropped"] + c["in_flight"] <= (1 + steps + 1) * 4
        assert server.accounting()["balanced"]
    finally:
        server.close()
