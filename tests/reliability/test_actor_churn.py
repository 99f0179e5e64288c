"""Actor churn: actors are SIGKILLed (or SIGTERMed) at random moments of a real run and restarted at once.

At the end, the learner's ledger (how every prompt ended) and its final checkpoint (the coordinator's state) must
agree that every issued prompt was trained exactly once, dropped with a reason, or is still open; no group was
trained twice. GSPO_SOAK_S=600 runs the churn for ten minutes.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.integration.conftest import wait_for
from tests.reliability.conftest import (check_against_final_checkpoint, check_ledger, duration, status,
                                        version)

pytestmark = pytest.mark.slow

ACTORS = ("a0", "a1", "a2")
CHURN = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
         "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=3", "learner.lease_timeout_s=10",
         "learner.weight_sync.timeout_s=5", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
         "learner.total_steps=1000000", "off_policy.max_staleness=2"]


def test_random_actor_kills_and_restarts_lose_no_prompt_and_train_none_twice(cluster_factory, rng, record):
    c = cluster_factory(CHURN)
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    actors = {name: c.actor(name) for name in ACTORS}
    faults = {"sigkill": 0, "sigterm": 0}
    starts = dict.fromkeys(ACTORS, 1)
    try:
        wait_for(lambda: version(address) >= 2, 180, "the first training steps", (learner,))
        start_version = version(address)
        deadline = time.monotonic() + duration(12)
        while time.monotonic() < deadline:
            # The next fault comes after a random number of new versions: random moments, tied to progress.
            target = version(address) + rng.randint(1, 3)
            wait_for(lambda: version(address) >= target, 120, f"version {target}", (learner,))
            # Victims are actors whose current process has connected (one "connected to" line per process), so
            # every process started is one registration; a process killed while starting up would not be.
            up = wait_for(lambda: [a for a in ACTORS if c.log(a).count("connected to") == starts[a]], 120,
                          "a connected actor", (learner,))
            name = rng.choice(up)
            kind = "sigkill" if rng.random() < 0.75 else "sigterm"
            proc = actors[name]
            proc.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
            if kind == "sigterm":
                proc.wait(timeout=60)  # a graceful stop pushes its batch and waits for acks first
            faults[kind] += 1
            actors[name] = c.actor(name)  # restarted at once, as a supervisor would
            starts[name] += 1
        # Every restarted actor joins again (a registration per process) before the run ends.
        registered = len(ACTORS) + sum(faults.values())
        wait_for(lambda: (s := status(address)) is not None and s.counters["actors_registered"] >= registered, 120,
                 f"{registered} registrations", (learner,))
        # ... and receives weights under the id the learner gave it (a restart may be renamed "a1-2" while its
        # predecessor is not yet declared dead).
        wait_for(lambda: all("applied version" in c.log(a).rsplit("connected to", 1)[-1] for a in ACTORS), 120,
                 "every current actor process to apply weights", (learner,))
        end_version = version(address)
        assert end_version > start_version, c.dump_logs()
        learner.send_signal(signal.SIGTERM)  # final checkpoint + summary
        assert learner.wait(timeout=120) == 0, c.dump_logs()
    finally:
        c.stop_all()

    summary = json.loads((c.run_dir / "summary.json").read_text())
    acc, n = summary["accounting"], summary["counters"]
    assert acc["balanced"], acc
    ledger, figures = check_ledger(c.run_dir)
    figures.update(check_against_final_checkpoint(c.run_dir, ledger))
    assert figures["prompts_trained"] == n["prompts_trained"] == summary["steps"] * 4
    assert set(figures["drop_reasons"]) <= {"stale", "lease_attempts"}, figures["drop_reasons"]
    assert n["actors_registered"] >= registered
    record({"faults": faults, "steps": summary["steps"], "versions_during_churn": end_version - start_version,
            "groups_lost": figures["accepted_groups_unaccounted"], "prompts_trained_twice": figures["prompts_ended_twice"],
            "leases_orphaned": n["leases_orphaned"], "leases_returned": n["leases_returned"],
            "leases_reissued": n["leases_reissued"], "groups_duplicate": n["groups_duplicate"],
            "actors_dead": n["actors_dead"], "actors_left": n["actors_left"], **figures})
    assert figures["accepted_groups_unaccounted"] == 0, figures  # acknowledged as accepted, then never ended
