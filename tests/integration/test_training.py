"""End to end with real processes: training advances, weights reach actors intact, resume and elastic membership.

Each test starts `gspo-async learner` and `gspo-async actor` processes on loopback with a tiny model and small
batches, and reads what they write (metrics.jsonl, summary.json, checkpoints, logs).
"""

from __future__ import annotations

import json
import re
import signal

import pytest
import torch

from gspo_async.learner.checkpoint import list_checkpoints
from gspo_async.models.loading import load_model_and_tokenizer
from gspo_async.weights import named_weights, state_checksum
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.slow

SMALL = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
         "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=3", "learner.lease_timeout_s=20",
         "learner.weight_sync.timeout_s=10", "telemetry.dashboard_port=null", "optim.lr=0.01"]


def checksum_of(model_dir) -> str:
    model, _ = load_model_and_tokenizer(model_dir)
    return state_checksum(named_weights(model))


def applied(log: str) -> dict[int, str]:
    """version -> checksum of the weights the actor holds after applying it (from its log)."""
    return {int(v): c for v, c in re.findall(r"applied version (\d+) checksum ([0-9a-f]+)", log)}


def test_end_to_end_training_advances_and_actors_hold_learner_weights(cluster_factory, tiny_model_dir):
    c = cluster_factory([*SMALL, "learner.total_steps=4", "off_policy.max_staleness=1",
                         "learner.checkpoint.every=0"])
    learner = c.learner()
    actors = [c.actor("a0"), c.actor("a1")]
    try:
        assert learner.wait(timeout=240) == 0, c.dump_logs()
        # The final version is broadcast as the learner ends; an actor applies it on its next turn of the loop, which
        # may come after the learner exited: wait for that instead of stopping the actors at once.
        # (An actor may also stop by itself once the learner is gone; its log stays, so no process is watched.)
        wait_for(lambda: any(4 in applied(c.log(a)) for a in ("a0", "a1")), 120, "an actor to apply version 4")
    finally:
        c.stop_all()
    summary = json.loads((c.run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["version"] == 4

    # Versions advanced one per step; staleness stayed within max_staleness.
    rows = [r for r in c.metrics() if "train/version" in r and r.get("step", 0) >= 1]
    assert [int(r["train/version"]) for r in rows][-1] == 4
    assert max(r["staleness/max"] for r in rows if r.get("staleness/max") is not None) <= 1

    # The weights changed, and every actor that applied the final version holds exactly the learner's weights.
    final = list_checkpoints(c.run_dir / "checkpoints")[-1] / "model"
    final_sum = checksum_of(final)
    assert final_sum != checksum_of(tiny_model_dir)
    holders = [a for a in ("a0", "a1") if 4 in applied(c.log(a))]
    assert holders, c.dump_logs()
    for a in holders:
        assert applied(c.log(a))[4] == final_sum
        assert "MISMATCH" not in c.log(a)

    # Every leased prompt is accounted for.
    acc = summary["accounting"]
    assert acc["balanced"], acc
    assert acc["trained"] == 4 * 4


AFTER_RESUME = 3


def test_resume_after_sigkill_continues_from_the_saved_step(cluster_factory):
    # The first learner cannot reach its total before it is killed; the resumed one trains AFTER_RESUME more steps.
    c = cluster_factory([*SMALL, "learner.checkpoint.every=2"])
    learner = c.learner("learner.total_steps=1000000")
    c.actor("a0")
    c.actor("a1")
    ckpts = c.run_dir / "checkpoints"
    wait_for(lambda: any(p.name >= "step-00000002" for p in list_checkpoints(ckpts)), 180, "a checkpoint at step 2",
             (learner,))
    learner.send_signal(signal.SIGKILL)
    learner.wait()
    saved = list_checkpoints(ckpts)[-1]
    saved_step = int(saved.name.split("-")[1])
    resumed = c.learner(f"learner.total_steps={saved_step + AFTER_RESUME}", "--resume")
    assert resumed.wait(timeout=240) == 0, c.dump_logs()
    log = c.log("learner")
    assert f"resumed from {saved}" in log and f"at step {saved_step}" in log
    summary = json.loads((c.run_dir / "summary.json").read_text())
    assert summary["steps"] == saved_step + AFTER_RESUME
    # The actors were never restarted: they reconnected to the new learner by themselves and kept generating.
    assert all(p.poll() is None for p in c.procs[1:3]), c.dump_logs()
    assert "learner restarted" in c.log("a0") + c.log("a1")
    assert summary["accounting"]["balanced"], summary["accounting"]


def test_elastic_join_gets_current_weights_and_training_survives_a_killed_actor(cluster_factory):
    # No step budget to guess: the run goes on until the test has seen what it waits for, then stops on SIGTERM.
    c = cluster_factory([*SMALL, "learner.total_steps=1000000", "off_policy.max_staleness=1",
                         "learner.checkpoint.every=0"])
    learner = c.learner()
    first = c.actor("a0")
    wait_for(lambda: c.trained_steps() >= 2, 180, "two steps with one actor", (learner,))
    joiner = c.actor("late")
    # The late actor's first weights are a version the learner had already published (>= 2): the current ones.
    first_applied = wait_for(lambda: min(applied(c.log("late")) or [None]) if applied(c.log("late")) else None,
                             120, "the late actor to receive weights", (learner, joiner))
    assert first_applied >= 2
    wait_for(lambda: "late" in json.dumps([r for r in c.metrics()[-3:]]), 60, "the late actor in the metrics")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # Training survives the killed actor: the late one alone carries it two more versions.
    after_kill = c.trained_steps()
    wait_for(lambda: max(applied(c.log("late")), default=0) >= after_kill + 2, 180,
             f"the late actor alone to carry training to version {after_kill + 2}", (learner, joiner))
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(timeout=120) == 0, c.dump_logs()
    summary = json.loads((c.run_dir / "summary.json").read_text())
    final = summary["version"]
    assert summary["steps"] == final >= after_kill + 2
    assert summary["accounting"]["balanced"], summary["accounting"]
    final_sum = checksum_of(list_checkpoints(c.run_dir / "checkpoints")[-1] / "model")
    # The last version arrives at the end of the run; the actor applies it at its next safe point.
    wait_for(lambda: final in applied(c.log("late")), 60, "the late actor to apply the final version", (joiner,))
    assert applied(c.log("late"))[final] == final_sum, c.dump_logs()
