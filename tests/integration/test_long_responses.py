"""End to end with real processes: dynamic sampling, overlong handling and token-budget micro-batches together.

A learner and one actor on loopback (tiny model, 2-digit addition, responses cut at 6 tokens): the run must finish
its steps with filtering on (constant-reward groups dropped at intake and replaced), and report the filter counts,
the truncation rate and the padding fraction.
"""

from __future__ import annotations

import json
import re

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
    # one record per training step; records written while waiting for data or at the end repeat the last gauges
    rows = [r for r in c.metrics() if "train/padding_frac" in r]
    assert sorted({int(r["step"]) for r in rows}) == [1, 2, 3]
    for r in rows:
        assert 0.0 <= r["response/truncated_frac"] <= 1.0 and 0.0 <= r["train/padding_frac"] < 1.0
        assert r["reward/overlong_penalty"] <= 0.0
    assert "trunc" in c.log("learner")  # the progress line shows the truncation rate


def test_fleet_evaluation_records_each_configured_version_and_never_trains_on_evaluation(cluster_factory):
    """learner.eval_on: fleet: the actors answer the evaluation rounds of versions 0, 2 and 4 (eval_every 2 over 4
    steps) for the task's split and a named set; the learner records them by version and trains only on
    training groups."""
    c = cluster_factory([*SMALL, "learner.total_steps=4", "learner.eval_every=2", "learner.eval_on=fleet",
                         "learner.eval_n=2", "learner.eval_temperature=1.0", "learner.eval_max_new_tokens=6",
                         "task.eval_size=6",
                         "task.eval_sets={three: {options: {digits: 3}, eval_size: 4}}"])
    learner = c.learner()
    c.actor("a0")
    c.actor("a1")
    try:
        assert learner.wait(timeout=300) == 0, c.dump_logs()
    finally:
        c.stop_all()
    summary = json.loads((c.run_dir / "summary.json").read_text())
    assert [v for v, _ in summary["eval_accuracy_by_version"]] == [0, 2, 4], c.dump_logs()
    assert all(0.0 <= a <= 1.0 for _, a in summary["eval_accuracy_by_version"])
    counters = summary["counters"]
    # 4 steps x 4 groups of G = 4; the evaluation groups (6 + 4 prompts x 3 rounds, 2 responses each) are not
    # among them
    assert summary["steps"] == 4 and counters["groups_trained"] == 16 and counters["groups_accepted"] >= 16
    assert summary["accounting"]["balanced"]
    records = c.metrics()
    named = [r for r in records if "eval/three/accuracy" in r]
    assert named and all(0.0 <= r["eval/three/pass_at_k"] <= 1.0 and r["eval/three/mean_length"] >= 1 for r in named)
    assert max(r.get("eval/runs", 0) for r in records) == 3
    assert re.findall(r"evaluation of version (\d+): default accuracy", c.log("learner")) == ["0", "2", "4"]
