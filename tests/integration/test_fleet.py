"""An elastic fleet with real processes: actors join mid-run, one is killed, one is stopped; training reaches its
total steps and every prompt is accounted for. `gspo-async status` watches the fleet throughout.

The run has no step budget to guess: total_steps is out of reach, each membership change is awaited as a condition
on the learner's status, and once the last change is seen and a0 alone has carried a few more steps, the learner is
stopped with SIGTERM (a clean stop: final checkpoint and summary). The accounting is then checked against the
steps the run actually took.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from gspo_async.protocol.status import query_status
from gspo_async.protocol.client import LearnerUnavailable
from gspo_async.protocol.messages import StatusReply
from tests.integration.conftest import ROOT, wait_for

pytestmark = pytest.mark.slow

AFTER_LAST_CHANGE = 3  # steps a0 must train alone before the learner is stopped
FLEET = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
         "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=3", "learner.lease_timeout_s=10",
         "learner.weight_sync.timeout_s=5", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
         "learner.total_steps=1000000"]
DROP_REASONS = {"stale", "prompt_too_long", "lease_attempts"}


def status(address: str) -> StatusReply | None:
    try:
        return query_status(address, timeout_s=2)
    except LearnerUnavailable:
        return None


def cli_status(address: str) -> tuple[str, set[str]]:
    """`gspo-async status` as a user runs it: its output and the actor ids in its table."""
    proc = subprocess.run([sys.executable, "-m", "gspo_async", "status", address, "--timeout", "5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["actor", "engine"]) if any(
        line.split()[:2] == ["actor", "engine"] for line in lines) else len(lines)
    return proc.stdout, {line.split()[0] for line in lines[header + 1:]}


def fleet_is(address: str, ids: set[str], also=lambda s: True):
    """A predicate: the learner's live actors are exactly `ids` (and `also(status)` holds)."""
    def check():
        s = status(address)
        return s if s is not None and {a.actor_id for a in s.actors} == ids and also(s) else None
    return check


def test_elastic_fleet_trains_to_the_end_and_accounts_for_every_prompt(cluster_factory):
    c = cluster_factory(FLEET)
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    a0 = c.actor("a0")
    watched = (learner,)
    try:
        # One actor trains.
        s = wait_for(fleet_is(address, {"a0"}, lambda s: s.version >= 2), 120, "two steps with a0", watched)
        out, ids = cli_status(address)
        assert ids == {"a0"} and "actors: 1 live" in out, out

        # Two more join mid-run and both deliver groups.
        a1, a2 = c.actor("a1"), c.actor("a2")
        s = wait_for(fleet_is(address, {"a0", "a1", "a2"},
                              lambda s: all(a.groups_accepted > 0 for a in s.actors)),
                     120, "a1 and a2 to join and deliver groups", (learner, a1, a2))
        assert s.counters["actors_registered"] == 3
        out, ids = cli_status(address)
        assert ids == {"a0", "a1", "a2"}, out
        # live actors were heard from recently (a field that never updated would read since-the-epoch)
        assert all(a.engine and a.version >= 0 and 0 <= a.last_contact_s < 60 for a in s.actors)

        # a1 dies without a word: declared dead after the heartbeat timeout, its leases go back.
        a1.send_signal(signal.SIGKILL)
        s = wait_for(fleet_is(address, {"a0", "a2"}, lambda s: s.counters["actors_dead"] == 1), 60,
                     "a1 to be declared dead", (learner,))

        # a2 is stopped: it finishes its batch, waits for its acks and says goodbye. (A goodbye is not answered,
        # so the learner may miss it; then the heartbeat timeout retires a2 instead. Either way it leaves the fleet.)
        a2.send_signal(signal.SIGTERM)
        assert a2.wait(timeout=60) == 0, c.dump_logs()
        assert "stopping (SIGTERM)" in c.log("a2")
        s = wait_for(fleet_is(address, {"a0"}), 30, "a2 to leave", (learner,))
        assert s.counters["actors_left"] + s.counters["actors_dead"] == 2
        out, ids = cli_status(address)
        assert ids == {"a0"} and "actors: 1 live (3 registered" in out, out

        # a0 carries the run on alone, then the learner is stopped cleanly.
        target = s.version + AFTER_LAST_CHANGE
        wait_for(fleet_is(address, {"a0"}, lambda s: s.version >= target), 120, f"a0 alone to reach version {target}",
                 (learner, a0))
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(timeout=120) == 0, c.dump_logs()
        a0.send_signal(signal.SIGKILL)  # its part is over; a graceful stop would wait for acks nobody sends
    finally:
        c.stop_all()

    summary = json.loads((c.run_dir / "summary.json").read_text())
    steps = summary["steps"]
    assert steps >= target and summary["version"] == steps
    acc, n = summary["accounting"], summary["counters"]

    # Prompts: every issued prompt is trained, dropped with a reason, or still open (in flight, buffered or queued
    # for re-issue) when the learner stopped, by independent tallies.
    assert acc["balanced"], acc
    assert acc["issued"] == (acc["trained"] + acc["dropped"] + acc["in_flight"] + acc["buffered"] + acc["training"]
                             + acc["pending_reissue"])
    assert acc["trained"] == n["groups_trained"] == steps * 4 and acc["training"] == 0
    assert set(n["prompts_dropped_by_reason"]) <= DROP_REASONS, n["prompts_dropped_by_reason"]

    # Groups: each one received was accepted, a duplicate, refused for a full buffer or a dropped prompt, or
    # rejected; each one accepted was trained, dropped with a reason, or is still buffered.
    rejected_in_offer = sum(v for k, v in n["groups_rejected_by_reason"].items()
                            if k in ("unknown_prompt", "prompt_mismatch"))
    assert n["groups_received"] == (n["groups_accepted"] + n["groups_duplicate"] + n["groups_retry_later"]
                                    + n["groups_late_for_dropped"] + rejected_in_offer), n
    # (counters are one snapshot; accounting another, taken a moment earlier while a0 was still pushing)
    assert n["groups_accepted"] == n["groups_trained"] + n["groups_dropped"] + n["buffered"] + n["training"], n
    assert n["groups_rejected"] == 0, n["groups_rejected_by_reason"]

    # Per prompt, from the final checkpoint's coordinator state (saved just before the summary, while a0 still
    # leased): trained ones are exactly those neither open nor dropped, so none was trained twice; each dropped
    # one has a reason.
    final = sorted((c.run_dir / "checkpoints").glob("step-*"))[-1]
    state = json.loads((final / "state.json").read_text())["coordinator"]
    open_ids = {p["prompt_id"] for p in state["open"]}
    dropped = {int(k): v for k, v in state["dropped"].items()}
    assert all(reason in DROP_REASONS for reason in dropped.values()), dropped
    assert not open_ids & set(dropped)
    trained = set(range(state["n"]["prompts_issued"])) - open_ids - set(dropped)
    assert len(trained) == state["n"]["prompts_trained"] == steps * 4
    assert len(dropped) == sum(state["dropped_prompts"].values())

    # The membership changes are on record.
    assert n["actors_registered"] == 3 and n["actors_dead"] + n["actors_left"] == 2 and n["actors_dead"] >= 1
