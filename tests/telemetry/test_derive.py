"""Derived metrics by hand: window rates with an injected clock, coordinator counters as names, the bottleneck rule."""

import math

import pytest

from gspo_async.telemetry.derive import WindowRates, bottleneck, counter_metrics
from gspo_async.telemetry.names import METRICS, RATE_WINDOW_S, lookup


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rates_cover_the_window_and_forget_older_samples():
    clock = Clock()
    rates = WindowRates(window_s=10, clock=clock)
    assert rates.rate("tokens") is None  # one sample gives no rate
    rates.observe({"tokens": 0, "busy": 0})
    assert rates.rate("tokens") is None
    clock.t = 104
    rates.observe({"tokens": 400, "busy": 4})  # 4 s of pure training
    assert rates.rate("tokens") == 100 and rates.rate("busy") == 1.0
    clock.t = 110
    rates.observe({"tokens": 400, "busy": 4})  # 6 s of waiting: 400 tokens over 10 s
    assert rates.rate("tokens") == 40 and rates.rate("busy") == pytest.approx(0.4)
    clock.t = 120
    rates.observe({"tokens": 1400, "busy": 9})
    # The base is now the sample at t=110 (the newest at or before 120 - 10): 1000 tokens and 5 s busy in 10 s.
    assert rates.span() == 10 and rates.rate("tokens") == 100 and rates.rate("busy") == pytest.approx(0.5)
    clock.t = 125
    rates.observe({"tokens": 1900, "busy": 14})  # the base stays at 110: 15 s span keeps a whole window
    assert rates.span() == 15 and rates.rate("tokens") == pytest.approx(1500 / 15)
    with pytest.raises(KeyError, match="observe it every time"):
        rates.rate("samples")
    with pytest.raises(ValueError, match="window_s"):
        WindowRates(window_s=0)


def test_default_window_is_the_documented_one():
    assert WindowRates().window_s == RATE_WINDOW_S
    assert METRICS["throughput/gen_tokens_per_s"].window == METRICS["throughput/train_tokens_per_s"].window


COUNTERS = {
    "groups_trained": 40, "tokens_trained": 5120, "tokens_received": 6000, "dropped_stale": 12,
    "dropped_stale_tokens": 900, "groups_duplicate": 3, "groups_rejected": 1, "groups_late_for_dropped": 2,
    "leases_expired": 4, "leases_issued": 70, "in_flight": 5, "capacity": 0, "buffered": 6, "actors_alive": 2,
    "actors_registered": 3, "actors_left": 1, "actors_dead": 1,
    "prompts_dropped_by_reason": {"stale": 12, "lease_attempts": 2, "prompt_too_long": 1, "filter": 4},
    "length_hist_kept": {"3": 10, "5": 2}, "length_hist_dropped": {1: 4},
}


def test_counter_metrics_by_hand():
    out = counter_metrics(COUNTERS, group_size=8)
    assert out["train/groups"] == 40 and out["train/samples"] == 320 and out["train/tokens"] == 5120
    assert out["staleness/dropped"] == 12 and out["staleness/dropped_tokens"] == 900
    assert out["drops/lease_attempts"] == 2 and out["drops/prompt_too_long"] == 1 and out["drops/other"] == 4
    assert out["drops/late"] == 2 and out["drops/duplicate"] == 3 and out["drops/invalid"] == 1
    assert out["actors/left"] == 2 and out["actors/joined"] == 3 and out["leases/capacity"] == 0
    assert out["drops/length_hist_kept"] == [0, 0, 0, 10, 0, 2]
    assert out["drops/length_hist_dropped"] == [0, 4]
    for name in out:
        lookup(name)  # every one is a listed metric


@pytest.mark.parametrize("record, label", [
    ({}, "unknown"),
    ({"learner/busy_frac": 0.89, "leases/capacity": 0, "buffer/groups": 30}, "learner"),
    ({"learner/busy_frac": 0.8, "leases/capacity": 12}, "learner"),
    ({"learner/busy_frac": 0.79, "leases/capacity": 0}, "admission"),
    ({"learner/busy_frac": 0.3, "leases/capacity": 5}, "actors"),
    ({"learner/busy_frac": 0.3}, "actors"),
    ({"learner/busy_frac": None}, "unknown"),
])
def test_bottleneck_rule(record, label):
    got, reason = bottleneck(record)
    assert got == label and reason


def test_loop_metrics_by_hand():
    from gspo_async.telemetry.derive import LoopMetrics

    clock = Clock()
    loop = LoopMetrics(window_s=10, clock=clock)
    totals = {"throughput/gen_tokens": 0, "train/tokens": 0, "train/samples": 0}
    first = loop.values(totals)
    assert math.isnan(first["learner/busy_frac"]) and math.isnan(first["throughput/train_tokens_per_s"])
    clock.t += 4
    loop.add_step(train_s=3.0, wait_s=1.0)
    v = loop.values({"throughput/gen_tokens": 800, "train/tokens": 600, "train/samples": 8})
    assert v["throughput/gen_tokens_per_s"] == 200 and v["throughput/train_tokens_per_s"] == 150
    assert v["throughput/samples_per_s"] == 2 and v["learner/busy_frac"] == 0.75
    assert v["learner/busy_frac_since_start"] == 0.75 and v["learner/wait_total_s"] == 1.0
    clock.t += 16  # 16 s idle: the window (10 s) now holds no training, since start still does
    v = loop.values({"throughput/gen_tokens": 800, "train/tokens": 600, "train/samples": 8})
    assert v["learner/busy_frac"] == 0.0 and v["throughput/train_tokens_per_s"] == 0.0
    assert v["learner/busy_frac_since_start"] == pytest.approx(3 / 20)
    for name in v:
        lookup(name)
    with pytest.raises(ValueError, match="seconds >= 0"):
        loop.add_step(-1.0, 0.0)
