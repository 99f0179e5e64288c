"""A partitioned actor: it stops talking for longer than its lease and heartbeat timeouts, then comes back with
groups made by weights that are now too old.

The scripted actor (the real ActorClient with canned groups, in its own process, keeping an ack log) takes leases at
version v and is frozen with SIGSTOP while the real actors train on. Once the learner has moved more than
max_staleness versions past v, the real actors are frozen too, so that nobody can deliver the partitioned prompts
after the learner re-issues them; once the learner has declared the partitioned actor dead, it is thawed and pushes
its groups. They arrive for re-queued prompts, so they are accepted late; the real actors are thawed and the
learner must drop every one of them as stale when it takes them. (Should the machine be so slow that the learner
declares the actor dead before the version has moved far enough, a real actor may deliver a re-issued prompt first
and the late group is a duplicate; the partition is then repeated until a late group was accepted.) Every answer is
checked against the ledger: an acknowledged-accepted group that is neither trained nor dropped there is lost. A
real actor frozen the same way rejoins and delivers again.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.conftest import wait_for
from tests.reliability.conftest import check_against_final_checkpoint, check_ledger, status
from tests.support.actor_process import FakeActorProcess

pytestmark = pytest.mark.slow

MAX_STALENESS = 1
MAX_PARTITIONS = 4
PARTITION = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=8", "learner.eval_every=0",
             "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=6", "learner.lease_timeout_s=8",
             "learner.weight_sync.timeout_s=5", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
             "learner.total_steps=1000000", f"off_policy.max_staleness={MAX_STALENESS}"]


def live_ids(address: str) -> set[str] | None:
    s = status(address)
    return None if s is None else {a.actor_id for a in s.actors}


def test_partitioned_actor_returns_with_stale_groups_that_are_counted_and_never_trained(cluster_factory, record):
    c = cluster_factory(PARTITION)
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    real = {"a0": c.actor("a0"), "a1": c.actor("a1")}
    part = None
    pushed: list[str] = []
    partitions = orphaned = 0
    try:
        wait_for(lambda: (s := status(address)) is not None and s.version >= 1, 180, "the first step", (learner,))
        part = FakeActorProcess(address, "part")
        part.call("connect")
        while partitions < MAX_PARTITIONS:
            partitions += 1
            part_id = part.call("status")["actor_id"]
            leased: list[int] = []
            while len(leased) < 3:  # admission may be closed for a moment
                part.call("lease", n=3 - len(leased), wait_s=4)
                leased = part.call("status")["held"]  # a prompt re-leased to it again is held once
            v0 = part.call("status")["version"]

            part.pause()  # the partition: no heartbeats, no groups
            dead_before = status(address).counters["actors_dead"]
            wait_for(lambda: version_of(address) > v0 + MAX_STALENESS + 1, 180, "the weights to move past v0",
                     (learner,))
            for proc in real.values():  # from here on nobody delivers the prompts the learner will re-issue
                proc.send_signal(signal.SIGSTOP)
            s = wait_for(lambda: (s := status(address)) is not None and part_id not in {a.actor_id for a in s.actors}
                         and s.counters["actors_dead"] > dead_before and s, 180,
                         "the partitioned actor declared dead", (learner,))
            orphaned += s.counters["leases_orphaned"] + s.counters["leases_expired"]
            part.resume()
            # made by the weights it held when the partition began (the client has heard of newer ones since)
            pushed += part.call("push", prompt_ids=leased, version=v0)["group_ids"]
            wait_for(lambda: part.call("wait_acked")["acked"], 120, "answers to the late groups", (learner,))
            for proc in real.values():
                proc.send_signal(signal.SIGCONT)
            if "accepted" in part.call("status")["acks"].values():
                break
        acks = part.call("status")
        assert acks["counters"]["registrations"] >= 2, acks  # it re-registered by itself after the learner forgot it
        ack_log = {g: acks["acks"][g] for g in pushed}  # KeyError: a late group never answered
        accepted_late = sorted(g for g, st in ack_log.items() if st == "accepted")
        assert accepted_late, f"no late group was accepted in {partitions} partitions: {ack_log}"

        # A real actor frozen past its heartbeat timeout rejoins and delivers again.
        a1 = real["a1"]
        a1.send_signal(signal.SIGSTOP)
        wait_for(lambda: "a1" not in (live_ids(address) or {"a1"}), 60, "a1 declared dead", (learner,))
        a1.send_signal(signal.SIGCONT)
        s = wait_for(lambda: (s := status(address)) is not None and any(
            a.actor_id == "a1" and a.groups_accepted > 0 for a in s.actors) and s, 120,
            "a1 to rejoin and deliver groups", (learner, a1))
        # The late groups are judged when the learner takes them: wait for the ledger's verdict on each.
        wait_for(lambda: set(accepted_late) <= ended_groups(c.run_dir), 120, "the late groups to end", (learner,))
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(timeout=120) == 0, c.dump_logs()
    finally:
        if part is not None:
            part.close()
        for proc in real.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        c.stop_all()

    ledger, figures = check_ledger(c.run_dir)
    figures.update(check_against_final_checkpoint(c.run_dir, ledger))
    trained_ids = {r["group_id"] for r in ledger.trained.values()}
    dropped_by_group = {r["group_id"]: r["reason"] for r in ledger.dropped.values() if r.get("group_id")}
    lost = [g for g in accepted_late if g not in trained_ids and g not in dropped_by_group]
    n = json.loads((c.run_dir / "summary.json").read_text())["counters"]
    record({"partitions": partitions, "late_groups": len(pushed), "late_accepted": len(accepted_late),
            "late_accepted_then_dropped_stale": sum(dropped_by_group.get(g) == "stale" for g in accepted_late),
            "late_duplicate": sum(st == "duplicate" for st in ack_log.values()),
            "late_for_dropped_prompt": sum(st == "dropped" for st in ack_log.values()),
            "leases_reissued_during_partition": orphaned, "dropped_stale_total": n["dropped_stale"],
            "groups_lost": len(lost), "max_trained_staleness": max(ledger.staleness(), default=0), **figures})
    assert not lost, f"acknowledged-accepted late groups missing from the ledger: {lost}"
    assert not trained_ids & set(pushed), "a group made by too-old weights was trained"
    assert all(dropped_by_group[g] == "stale" for g in accepted_late), {g: dropped_by_group[g] for g in accepted_late}
    assert max(ledger.staleness(), default=0) <= MAX_STALENESS, ledger.staleness()


def version_of(address: str) -> int:
    s = status(address)
    return s.version if s is not None else -1


def ended_groups(run_dir) -> set[str]:
    """Group ids the ledger shows ended (trained or dropped) so far."""
    from gspo_async.learner.ledger import replay

    ledger = replay(run_dir)
    return {r.get("group_id") for r in [*ledger.trained.values(), *ledger.dropped.values()]} - {None}
