"""Learner crash and resume while actors hold unacknowledged groups and unstarted leases.

One real actor trains throughout; a scripted actor (the real ActorClient with canned groups) makes the moment of
the crash exact: it holds leases that the newest checkpoint records, the learner is frozen (SIGSTOP) so the groups
it then pushes stay unacknowledged, and the learner is SIGKILLed. After `--resume`, the scripted actor must resend
those groups by itself and have them accepted exactly once, its remaining lease must still be valid, and the
ledger must show each of its acknowledged groups trained or dropped with a reason. The real actor reconnects by
itself. GSPO_SOAK_S runs crash cycles for that long.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from gspo_async.learner.checkpoint import load_latest
from gspo_async.learner.ledger import replay
from tests.integration.conftest import all_threads_stopped, wait_for
from tests.reliability.conftest import check_against_final_checkpoint, check_ledger, duration, version
from tests.support.actor_process import FakeActorProcess

pytestmark = pytest.mark.slow

# response_length 8: the scripted actor's canned responses have 4..7 tokens
CRASH = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=8", "learner.eval_every=0",
         "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=10", "learner.lease_timeout_s=60",
         "learner.weight_sync.timeout_s=5", "telemetry.dashboard_port=null", "learner.checkpoint.every=1",
         "learner.total_steps=1000000", "off_policy.max_staleness=4"]


def covered_by_checkpoint(run_dir, prompt_ids: list[int], holder: str, version: int) -> bool:
    """The newest complete checkpoint records `prompt_ids` as leased to `holder`, at weight version >= `version`."""
    ckpt = load_latest(run_dir / "checkpoints")
    if ckpt is None or ckpt.version < version:
        return False
    held = {p["prompt_id"] for p in ckpt.state["coordinator"]["open"]
            if p["state"] == "leased" and p["holder"] == holder}
    return set(prompt_ids) <= held


def ended_in_ledger(run_dir, group_ids: set[str]) -> bool:
    ledger = replay(run_dir)
    done = {r.get("group_id") for r in [*ledger.trained.values(), *ledger.dropped.values()]}
    return group_ids <= done


def test_learner_killed_with_unacked_groups_and_leases_resumes_and_loses_none(cluster_factory, rng, record):
    c = cluster_factory(CRASH)
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    a0 = c.actor("a0")
    held = FakeActorProcess(address, "held", "--ack-timeout", "2")
    cycles, resent_accepted, acked_groups = 0, 0, set()
    try:
        wait_for(lambda: version(address) >= 1, 180, "the first step", (learner,))
        held_id = held.call("connect")["actor_id"]
        deadline = time.monotonic() + duration(1)  # by default: one cycle, then one more after the resume
        while cycles < 2 or time.monotonic() < deadline:
            target = version(address) + rng.randint(1, 3)
            wait_for(lambda: version(address) >= target, 120, f"version {target}", (learner,))
            leased: list[int] = []
            while len(leased) < 3:  # admission may be closed for a moment: the request waits for the next version
                leased += held.call("lease", n=3 - len(leased), wait_s=4)["prompt_ids"]
            # Freeze the learner (what is pushed now is not acknowledged) at a moment when its newest checkpoint
            # records the leases and the version the scripted actor's groups will name. (Groups of newer weights
            # would be lost with the crash: the client drops those itself, tests/protocol/test_client.py.)
            while True:
                learner.send_signal(signal.SIGSTOP)
                wait_for(lambda: all_threads_stopped(learner.pid), 60, "every thread of the learner to stop")
                if covered_by_checkpoint(c.run_dir, leased, held_id, held.call("status")["version"]):
                    break
                learner.send_signal(signal.SIGCONT)
                now = version(address)
                wait_for(lambda: version(address) > now, 120, "another step and checkpoint", (learner,))
            pushed = held.call("push", prompt_ids=leased[:2])["group_ids"]
            before = held.call("status")
            assert before["unacked"] == 2 and before["held"] == [leased[2]], before
            learner.send_signal(signal.SIGKILL)
            learner.wait()
            cycles += 1

            learner = c.learner("--resume")
            # (each call waits up to 5 s for the acks; the resumed learner needs longer to come up)
            wait_for(lambda: held.call("wait_acked")["acked"], 180, "the resent groups' acks", (learner,))
            status = held.call("status")
            # resent by the client after it re-registered with the new learner session, accepted exactly once
            assert status["counters"]["ack_accepted"] - before["counters"]["ack_accepted"] == 2, status
            assert status["counters"]["learner_restarts"] >= cycles, status
            resent_accepted += 2
            pushed += held.call("push", prompt_ids=[leased[2]])["group_ids"]  # the lease survived the crash
            wait_for(lambda: held.call("wait_acked")["acked"], 60, "the third group's ack", (learner,))
            assert held.call("status")["counters"]["ack_accepted"] - before["counters"]["ack_accepted"] == 3
            acked_groups |= set(pushed)
            # No acknowledged group is lost: each ends trained or dropped with a reason before the next crash.
            wait_for(lambda: ended_in_ledger(c.run_dir, set(pushed)), 120, f"groups {pushed} in the ledger",
                     (learner, a0))
        assert a0.poll() is None, "the real actor must ride out the learner's crashes"
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(timeout=120) == 0, c.dump_logs()
    finally:
        held.close()
        c.stop_all()

    assert c.log("a0").count("learner restarted; re-configuring") >= cycles, c.log("a0")[-3000:]
    assert c.log("learner").count("resumed from") == cycles
    ledger, figures = check_ledger(c.run_dir)
    figures.update(check_against_final_checkpoint(c.run_dir, ledger))
    assert figures["learner_starts"] == cycles + 1
    recorded = {r.get("group_id") for r in [*ledger.trained.values(), *ledger.dropped.values()]}
    lost = acked_groups - recorded
    assert not lost, f"acknowledged groups missing from the ledger: {sorted(lost)}"
    summary = json.loads((c.run_dir / "summary.json").read_text())
    assert summary["accounting"]["balanced"], summary["accounting"]
    record({"learner_crashes": cycles, "unacked_groups_at_crash": 2 * cycles, "leases_held_at_crash": 3 * cycles,
            "resent_and_accepted": resent_accepted, "acked_groups_checked": len(acked_groups), "groups_lost": len(lost),
            "steps": summary["steps"], **figures})
