"""A SIGKILLed actor costs the fleet at most one failed weight broadcast, never weight_sync.timeout_s.

Three real actor processes train with a real learner; one actor is SIGKILLed mid-run. Its connection closes with
the process, so it leaves the broadcasts at once: the longest gap between two training steps around the kill stays
under GAP_BOUND_S. The learner's heartbeat timeout (30 s) and weight-sync timeout (60 s) are set far above that
bound, so a learner that waited for either would fail the test by a wide margin; the test prints the gap it saw.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.slow

KILL = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
        "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=30", "learner.lease_timeout_s=90",
        "learner.weight_sync.timeout_s=60", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
        "learner.total_steps=1000000", "off_policy.max_staleness=2", "telemetry.log_every_s=0.5"]
STEPS_AFTER_KILL = 8
# The bound. A step here takes well under a second, broadcasts run beside training, and a death leaves the
# broadcasts at once; waiting for the heartbeat (30 s) or the weight-sync timeout (60 s) would exceed it six-fold.
GAP_BOUND_S = 5.0


def step_times(records: list[dict]) -> dict[int, float]:
    """step -> wall time of the first learner record at that step (the step's end)."""
    times: dict[int, float] = {}
    for r in records:
        if r.get("role") == "learner" and "time" in r:
            times.setdefault(int(r.get("step", 0)), float(r["time"]))
    return times


def test_sigkill_of_an_actor_does_not_stall_training(cluster_factory):
    c = cluster_factory(KILL)
    learner = c.learner()
    actors = {name: c.actor(name) for name in ("a0", "a1", "a2")}
    procs = (learner, *actors.values())
    # every actor holds weights (so it is a broadcast member) and training runs
    wait_for(lambda: all("applied version" in c.log(a) for a in actors), 240, "every actor to apply weights", procs)
    start = c.trained_steps()
    wait_for(lambda: c.trained_steps() >= start + 3, 120, "three steps with the whole fleet", procs)
    killed_at_step = c.trained_steps()
    kill_time = time.time()
    actors["a1"].send_signal(signal.SIGKILL)
    actors["a1"].wait(timeout=30)
    survivors = (learner, actors["a0"], actors["a2"])
    wait_for(lambda: c.trained_steps() >= killed_at_step + STEPS_AFTER_KILL, 120,
             f"{STEPS_AFTER_KILL} steps after the kill", survivors)
    times = step_times(c.metrics())
    window = sorted(s for s in times if s >= killed_at_step)
    gaps = {s: times[s] - times[prev] for prev, s in zip(window, window[1:])}
    first_after = min(s for s in window if times[s] >= kill_time)
    since_kill = times[first_after] - kill_time
    worst = max(max(gaps.values()), since_kill)
    print(f"longest step gap {worst:.2f}s around the kill (first step {since_kill:.2f}s after it)")
    assert worst < GAP_BOUND_S, (f"longest step gap {worst:.1f}s (first step {since_kill:.1f}s after the kill; "
                                 f"gaps {gaps})\n" + c.dump_logs())
    # Its leases went back to the queue with the connection, long before the heartbeat timeout would declare it dead.
    closed = re.search(r"actor a1: connection closed; its (\d+) leases are re-issued", c.log("learner"))
    assert closed and "actor a1 silent" not in c.log("learner"), c.dump_logs()


def test_a_stopped_learner_says_so_and_its_actor_then_stops_within_5s(cluster_factory):
    c = cluster_factory(KILL)
    learner = c.learner()
    actor = c.actor("a0")
    wait_for(lambda: c.trained_steps() >= 2, 240, "two steps", (learner, actor))
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(timeout=120) == 0, c.dump_logs()
    text = c.log("learner")
    assert "stopped at step" in text and "of 1000000 (SIGTERM), state saved" in text, text[-3000:]
    assert "done:" not in text and "None" not in text, text[-3000:]  # not a finished run; no "None -> None"
    # the actor now talks to nobody; told to stop, it must not wait out its ack timeouts
    wait_for(lambda: actor.poll() is None and "stopping" not in c.log("a0"), 10, "the actor still running", (actor,))
    t0 = time.monotonic()
    actor.send_signal(signal.SIGTERM)
    actor.wait(timeout=60)
    took = time.monotonic() - t0
    assert took < 5.0, f"the actor took {took:.1f}s to stop\n" + c.log("a0")[-3000:]
    assert actor.returncode == 0, c.log("a0")[-3000:]
    assert "stopping (SIGTERM)" in c.log("a0"), c.log("a0")[-3000:]
