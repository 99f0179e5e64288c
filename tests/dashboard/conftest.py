"""A run directory written by a synthetic learner that records metrics exactly as the real learner does.

`write_synthetic_run` drives `MetricRegistry` through the calls the learner makes: per-step training statistics,
staleness observations per trained group, drops, weight syncs, and actor heartbeats fed in as `actor/<id>/...`.
The `run_dir` fixture can later be replaced by a short real training run.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from gspo_async.telemetry import MetricRegistry, length_bin

STEPS = 60
GROUPS_PER_STEP = 8


def write_synthetic_run(run_dir: Path, steps: int = STEPS, seed: int = 0, end_time: float | None = None) -> Path:
    """Write `<run_dir>/metrics.jsonl` for a run of `steps` optimiser steps with three actors (one joins late,
    one leaves early); records are 1.5 s apart and the last one is stamped `end_time` (default: now)."""
    rng = random.Random(seed)
    end_time = time.time() if end_time is None else end_time
    t0 = end_time - 1.5 * steps
    reg = MetricRegistry("learner", run_dir)
    actors = {"a0": 0, "a1": 0, "gpu-2": 0}  # id -> version the actor generates with
    groups_sent = dict.fromkeys(actors, 0)
    tokens_sent = dict.fromkeys(actors, 0.0)
    for step in range(1, steps + 1):
        version = step  # one optimiser update published per step
        progress = step / steps
        # --- trained groups: staleness per group, token-weighted too; kept-length histogram ---
        lags = []
        for _ in range(GROUPS_PER_STEP):
            lag = min(3, int(rng.expovariate(1.3)))
            length = rng.lognormvariate(4.0 - 0.3 * lag, 0.5)
            n_tokens = 4 * length  # G = 4 responses per group
            reg.observe("staleness/hist", lag)
            reg.observe("staleness/hist_tokens", lag, n_tokens)
            for _ in range(4):  # G = 4 responses, each counted in the trained-response length histogram
                reg.observe("drops/length_hist_kept", length_bin(length * rng.uniform(0.5, 1.5)))
            lags.append(lag)
        # A returning actor's long rollouts are too stale now and then: drop them, counting reason and length.
        if step % 7 == 0:
            length = rng.lognormvariate(5.0, 0.4)
            reg.inc("staleness/dropped")
            reg.inc("staleness/dropped_tokens", 4 * length)
            for _ in range(4):
                reg.observe("drops/length_hist_dropped", length_bin(length * rng.uniform(0.5, 1.5)))
        if step % 11 == 0:
            reg.inc("drops/duplicate")
        if step % 17 == 0:
            reg.inc("drops/invalid")
        reward = 0.15 + 0.65 * progress + rng.gauss(0, 0.04)
        ratio_spread = 2e-4 * (1 + sum(lags) / len(lags))
        reg.update({
            "train/step": step, "train/version": version,
            "train/loss": 0.4 * (1 - progress) + rng.gauss(0, 0.02), "train/pg_loss": 0.38 * (1 - progress),
            "train/kl_loss": 0.002 * progress, "train/entropy": 1.8 - 0.9 * progress,
            "train/grad_norm": 1.2 + rng.random(),
            "train/clipfrac": 0.02 + 0.05 * rng.random(), "train/clipfrac_seq": 0.08 + 0.1 * rng.random(),
            "train/ratio_mean": 1.0 + rng.gauss(0, 3e-5), "train/ratio_max": 1.0 + ratio_spread,
            "train/is_weight_mean": 0.98 + 0.01 * rng.random(),
            "train/is_weight_max": 1.6 + 0.3 * rng.random(), "train/rejected_frac": 0.01 * rng.random(),
            "train/approx_kl": 1e-3 * (1 + rng.random()), "train/dual_clipfrac": 0.0,
            "train/step_s": 1.0 + 0.1 * rng.random(),
            "reward/mean": reward, "reward/std": 0.3 - 0.1 * progress,
            "response/length_mean": 60 - 15 * progress, "response/length_max": 128,
            "staleness/mean": sum(lags) / len(lags), "staleness/max": max(lags),
            "throughput/gen_tokens_per_s": 1500 + 200 * rng.random(),
            "throughput/train_tokens_per_s": 1300 + 150 * rng.random(),
            "throughput/samples_per_s": 20 + 3 * rng.random(),
            "learner/busy_frac": min(1.0, 0.55 + 0.4 * progress + 0.03 * rng.random()),
            "learner/busy_frac_since_start": 0.55 + 0.2 * progress, "learner/started_at": t0,
            "leases/capacity": rng.randint(0, 4),
            "learner/wait_s": 0.6 * (1 - progress) * rng.random(),
            "buffer/groups": rng.randint(2, 12), "buffer/age_mean_s": 1 + rng.random(),
            "buffer/age_max_s": 3 + rng.random(), "leases/in_flight": rng.randint(10, 20),
            "leases/age_mean_s": 2 + rng.random(), "leases/age_max_s": 6 + 2 * rng.random(),
            "weights/sync_s": 0.15 + 0.05 * rng.random(), "weights/transfer_s": 0.1 + 0.02 * rng.random(),
            "weights/bytes": 12_582_912,
        })
        reg.inc("train/tokens", 1300 * 1.5)
        reg.inc("train/groups", GROUPS_PER_STEP)
        reg.inc("throughput/gen_tokens", 1500 * 1.5)
        reg.inc("train/samples", 4 * GROUPS_PER_STEP)
        reg.inc("leases/granted", GROUPS_PER_STEP + 1)
        if step % 9 == 0:
            reg.inc("leases/expired")
        reg.inc("learner/wait_total_s", 0.1)
        reg.inc("weights/syncs")
        reg.inc("weights/bytes_sent", 12_582_912)
        if step % 10 == 0:
            reg.set("eval/accuracy", min(1.0, 0.1 + 0.7 * progress + rng.gauss(0, 0.02)))
            reg.inc("eval/runs")
        if step % 25 == 0:
            reg.inc("checkpoint/saves")
        if step == 33:
            reg.inc("weights/failures")
        # --- actor heartbeats: the learner feeds each actor's statistics into its own registry ---
        if step == 1:
            reg.inc("actors/joined", 3)
        if step == 20:
            actors["late-3"] = version - 1
            groups_sent["late-3"], tokens_sent["late-3"] = 0, 0.0
            reg.inc("actors/joined")
        if step == 40:
            reg.set_actor("a1", {"alive": 0})
            reg.forget_actor("a1")
            del actors["a1"]
            reg.inc("actors/left")
        for i, actor_id in enumerate(sorted(actors)):
            if rng.random() < 0.7:
                actors[actor_id] = version - rng.randint(0, 1)  # applied the newest broadcast, or not yet
            rate = 400 + 120 * i + 40 * rng.random()
            groups_sent[actor_id] += 2
            tokens_sent[actor_id] += rate * 1.5
            reg.set_actor(actor_id, {"tokens_per_s": rate, "version": actors[actor_id],
                                     "delivered_version": actors[actor_id] - 1,
                                     "version_lag": version - actors[actor_id] + 1, "tokens": tokens_sent[actor_id],
                                     "groups": groups_sent[actor_id], "busy_frac": 0.8 + 0.15 * rng.random(),
                                     "leases": rng.randint(2, 6), "pending_groups": rng.randint(0, 2),
                                     "heartbeat_age_s": rng.random(),
                                     "alive": 1})
        reg.set("actors/alive", len(actors))
        reg.set("weights/version_skew_max", max(version - v for v in actors.values()))
        if step == steps:
            reg.set("learner/finished", 1)
        reg.log(step, time=t0 + 1.5 * step)
    reg.close()
    return run_dir


@pytest.fixture(scope="session")
def forced_run(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory):
    """A real run made to drop groups (tests/dashboard/forced_drops.py), shared by the consistency and browser
    tests: one learner and three simulated actors as separate processes."""
    from tests.dashboard.forced_drops import run_forced_drops

    return run_forced_drops(tmp_path_factory.mktemp("forced-drops"), tiny_model_dir)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory holding the learner's metrics.jsonl (see `write_synthetic_run`)."""
    return write_synthetic_run(tmp_path_factory.mktemp("run"))
