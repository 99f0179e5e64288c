"""A partitioned actor: it stops talking for longer than its lease and heartbeat timeouts, then comes back with
groups made by weights that are now too old.

The scripted actor (the real ActorClient with canned groups, in its own process) takes leases at version v and is
frozen with SIGSTOP while a real actor trains on. Once the learner has declared it dead, re-issued its prompts and
moved more than max_staleness versions past v, it is thawed and pushes its groups. Each must be answered (the
client re-registers by itself) and counted as a duplicate, as late for a dropped prompt, or accepted and then
dropped as stale; none may be trained, and every trained group in the run stays within max_staleness. A real
actor frozen the same way rejoins and delivers again.
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
PARTITION = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=8", "learner.eval_every=0",
             "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=3", "learner.lease_timeout_s=4",
             "learner.weight_sync.timeout_s=5", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
             "learner.total_steps=1000000", f"off_policy.max_staleness={MAX_STALENESS}"]


def test_partitioned_actor_returns_with_stale_groups_that_are_counted_and_never_trained(cluster_factory, record):
    c = cluster_factory(PARTITION)
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    c.actor("a0")
    a1 = c.actor("a1")
    part = None
    try:
        wait_for(lambda: (s := status(address)) is not None and s.version >= 1, 180, "the first step", (learner,))
        part = FakeActorProcess(address, "part")
        part_id = part.call("connect")["actor_id"]
        leased: list[int] = []
        while len(leased) < 3:  # admission may be closed for a moment
            leased += part.call("lease", n=3 - len(leased), wait_s=4)["prompt_ids"]
        v0 = part.call("status")["version"]

        part.pause()  # the partition: no heartbeats, no groups
        dead_before = status(address).counters["actors_dead"]
        s = wait_for(lambda: (s := status(address)) is not None and part_id not in {a.actor_id for a in s.actors}
                     and s.version > v0 + MAX_STALENESS + 1 and s.counters["actors_dead"] > dead_before and s,
                     180, "the partitioned actor declared dead and its weights too old", (learner,))
        orphaned = s.counters["leases_orphaned"] + s.counters["leases_expired"]
        part.resume()
        # made by the weights it held when the partition began (the client has heard of newer ones since)
        pushed = part.call("push", prompt_ids=leased, version=v0)["group_ids"]
        wait_for(lambda: part.call("wait_acked")["acked"], 120, "answers to the late groups", (learner,))
        acks = part.call("status")["counters"]
        assert acks["registrations"] >= 2, acks  # it re-registered by itself after the learner forgot it
        assert acks["ack_accepted"] + acks["ack_duplicate"] + acks["ack_dropped"] == len(pushed), acks

        # A real actor frozen past its heartbeat timeout rejoins and delivers again.
        a1.send_signal(signal.SIGSTOP)
        wait_for(lambda: (s := status(address)) is not None and "a1" not in {a.actor_id for a in s.actors}, 60,
                 "a1 declared dead", (learner,))
        a1.send_signal(signal.SIGCONT)
        s = wait_for(lambda: (s := status(address)) is not None and any(
            a.actor_id == "a1" and a.groups_accepted > 0 for a in s.actors) and s, 120,
            "a1 to rejoin and deliver groups", (learner, a1))
        accepted_late = acks["ack_accepted"]
        target = s.version + MAX_STALENESS + 2  # whatever was accepted late is taken (and judged) by then
        wait_for(lambda: (s := status(address)) is not None and s.version >= target, 120, f"version {target}",
                 (learner,))
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(timeout=120) == 0, c.dump_logs()
    finally:
        if part is not None:
            part.close()
        c.stop_all()

    ledger, figures = check_ledger(c.run_dir)
    figures.update(check_against_final_checkpoint(c.run_dir, ledger))
    trained_ids = {r["group_id"] for r in ledger.trained.values()}
    assert not trained_ids & set(pushed), "a group made by too-old weights was trained"
    stale = {r["group_id"] for r in ledger.dropped.values() if r["reason"] == "stale"}
    assert accepted_late == len(set(pushed) & stale), (accepted_late, stale)  # accepted late -> dropped as stale
    assert max(ledger.staleness(), default=0) <= MAX_STALENESS, ledger.staleness()
    n = json.loads((c.run_dir / "summary.json").read_text())["counters"]
    record({"partitions": 2, "late_groups": len(pushed), "late_accepted_then_dropped_stale": accepted_late,
            "late_duplicate": acks["ack_duplicate"], "late_for_dropped_prompt": acks["ack_dropped"],
            "leases_reissued_during_partition": orphaned, "dropped_stale_total": n["dropped_stale"],
            "groups_lost": 0, "max_trained_staleness": max(ledger.staleness(), default=0), **figures})
