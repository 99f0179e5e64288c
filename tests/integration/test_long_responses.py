"""End to end with real processes: dynamic sampling, overlong handling and token-budget micro-batches together.

A learner and one actor on loopback (tiny model, 2-digit addition, responses cut at 6 tokens): the run must finish
its steps with filtering on (constant-reward groups dropped at intake and replaced), and report the filter counts,
the truncation rate and the padding fraction.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

SMALL = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
         "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=3", "learner.lease_timeout_s=20",
         "learner.weight_sync.timeout_s=10", "telemetry.dashboard_port=null", "learner.checkpoint.every=0"]


def test_filtered_run_with_overlong_handling_and_token_budget_completes(cluster_factory):
    c = cluster_factory([*SMALL, "learner.total_steps=3", "off_policy.max_staleness=1", "filter_groups.enabled=true",
                         "mask_truncated_responses=true", "overlong_penalty.enabled=true",
                         "overlong_penalty.buffer_length=2", "optim.max_tokens_per_micro_batch=64"])
    learner = c.learner()
    c.actor("a0")
    try:
        assert learner.wait(timeout=300) == 0, c.dump_logs()
    finally:
        c.stop_all()
    summary = json.loads((c.run_dir / "summary.json").read_text())
    counters = summary["counters"]
    assert summary["steps"] == 3 and counters["groups_trained"] == 12
    assert summary["accounting"]["balanced"]
    # every filtered group is counted once, under its reward, and as a drop with reason 'filtered'
    by_reward = counters["groups_filtered_by_reward"]
    assert counters["groups_filtered"] == sum(by_reward.values()) == counters["groups_dropped_by_reason"].get(
        "filtered", 0)
    assert set(by_reward) <= {"0", "1"}  # the addition task's rewards
    rows = [r for r in c.metrics() if "train/padding_frac" in r]
    assert len(rows) == 3
    for r in rows:
        assert 0.0 <= r["response/truncated_frac"] <= 1.0 and 0.0 <= r["train/padding_frac"] < 1.0
        assert r["reward/overlong_penalty"] <= 0.0
    assert "trunc" in c.log("learner")  # the progress line shows the truncation rate
