"""Metrics derived from totals: window rates, the learner's counters as metric names, and the bottleneck rule.

Pure functions and one small class with an injected clock; the learner feeds them, the dashboard and the report
read their results from the records (one rule, one place).
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Mapping

from gspo_async.telemetry.names import RATE_WINDOW_S

# Drop reasons of the coordinator (prompts_dropped_by_reason) with a metric of their own; any other reason is
# counted under drops/other. Stale drops are staleness/dropped (groups: every stale prompt had one group).
DROP_REASON_METRICS = {"lease_attempts": "drops/lease_attempts", "prompt_too_long": "drops/prompt_too_long"}

# The bottleneck rule (documented in docs and on the dashboard): see `bottleneck`.
BUSY_LEARNER = 0.8


class WindowRates:
    """Rates of cumulative totals over the last `window_s` seconds of wall time.

    ``observe({"tokens": 1200.0, ...})`` records the totals now; ``rate("tokens")`` is (newest total - total at the
    window's start) / seconds between the two samples. The sample at or just before the window's start is kept as
    the base, so the rate covers the whole window once the process has run that long. clock: seconds.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a finite number of seconds > 0, got {window_s!r}")
        self.window_s = float(window_s)
        self.clock = clock
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def observe(self, totals: Mapping[str, float]) -> None:
        now = self.clock()
        self._samples.append((now, dict(totals)))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def span(self) -> float:
        """Seconds between the base sample and the newest one (0 before two samples)."""
        if len(self._samples) < 2:
            return 0.0
        return self._samples[-1][0] - self._samples[0][0]

    def rate(self, name: str) -> float | None:
        """Increase of total `name` per second over the window; None before two samples or over zero seconds."""
        span = self.span()
        if span <= 0:
            return None
        (_, first), (_, last) = self._samples[0], self._samples[-1]
        if name not in last or name not in first:
            raise KeyError(f"total {name!r} was not observed at both ends of the window; observe it every time")
        return (last[name] - first[name]) / span


class LoopMetrics:
    """The learner loop's time accounting and its window rates, as metric values.

    Call `add_step(train_s, wait_s)` after each optimiser step and `values(totals)` for every record, with the
    totals of `counter_metrics` (tokens accepted and trained, responses trained). Rates are increases of those totals
    per wall second over the last `window_s` seconds, so generation and training compare over one window;
    ``learner/busy_frac`` is the training time in that window over its length. The first call only sets the base:
    its rates are NaN (written as null). clock: seconds, monotonic.
    """

    RATES = {"throughput/gen_tokens_per_s": "throughput/gen_tokens", "throughput/train_tokens_per_s": "train/tokens",
             "throughput/samples_per_s": "train/samples", "learner/busy_frac": "learner/busy_s"}

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.busy_s = 0.0
        self.wait_s = 0.0
        self.rates = WindowRates(window_s, clock)

    def add_step(self, train_s: float, wait_s: float) -> None:
        """One optimiser step took `train_s` seconds of compute after waiting `wait_s` seconds for data."""
        if not (train_s >= 0 and wait_s >= 0):
            raise ValueError(f"step times must be seconds >= 0, got train_s={train_s!r}, wait_s={wait_s!r}")
        self.busy_s += train_s
        self.wait_s += wait_s

    def values(self, totals: Mapping[str, Any]) -> dict[str, float]:
        """Busy and wait totals, busy since start, and the window rates (NaN until the window has two samples)."""
        self.rates.observe({**{t: float(totals[t]) for t in self.RATES.values() if t != "learner/busy_s"},
                            "learner/busy_s": self.busy_s})
        out = {"learner/busy_s": self.busy_s, "learner/wait_total_s": self.wait_s,
               "learner/busy_frac_since_start": min(self.busy_s / max(self.clock() - self.start, 1e-9), 1.0)}
        for name, total in self.RATES.items():
            rate = self.rates.rate(total)
            out[name] = math.nan if rate is None else rate
        out["learner/busy_frac"] = min(out["learner/busy_frac"], 1.0)  # NaN stays NaN
        return out


def initial_values(now: float) -> dict[str, float]:
    """What a learner records when it starts: its start time (a change marks a resume), not finished, and every
    event and failure counter at 0, so a run without failures still writes them (and charts show a flat 0)."""
    return {"learner/started_at": now, "learner/finished": 0.0, "eval/runs": 0.0, "checkpoint/saves": 0.0,
            "checkpoint/failures": 0.0, "ledger/write_failures": 0.0, "weights/failures": 0.0, "weights/syncs": 0.0,
            "weights/bytes_sent": 0.0, "weights/excluded": 0.0}


def counter_metrics(c: Mapping[str, Any], group_size: int) -> dict[str, float]:
    """The coordinator's cumulative counters (`Coordinator.counters()`) as metric values. They survive a resume
    (the coordinator's state is checkpointed), so trained and dropped counts match the run's ledger."""
    by_reason = dict(c.get("prompts_dropped_by_reason", {}))
    out = {
        "train/groups": float(c["groups_trained"]), "train/tokens": float(c["tokens_trained"]),
        "train/samples": float(c["groups_trained"] * group_size),
        "throughput/gen_tokens": float(c["tokens_received"]),
        "staleness/dropped": float(c["dropped_stale"]), "staleness/dropped_tokens": float(c["dropped_stale_tokens"]),
        "drops/duplicate": float(c["groups_duplicate"]), "drops/invalid": float(c["groups_rejected"]),
        "drops/late": float(c["groups_late_for_dropped"]),
        "leases/expired": float(c["leases_expired"]), "leases/granted": float(c["leases_issued"]),
        "leases/in_flight": float(c["in_flight"]), "leases/capacity": float(c["capacity"]),
        "buffer/groups": float(c["buffered"]), "actors/alive": float(c["actors_alive"]),
        "actors/joined": float(c["actors_registered"]), "actors/left": float(c["actors_left"] + c["actors_dead"]),
        "drops/length_hist_kept": _bins(c["length_hist_kept"]),  # type: ignore[dict-item]
        "drops/length_hist_dropped": _bins(c["length_hist_dropped"]),  # type: ignore[dict-item]
    }
    for reason, name in DROP_REASON_METRICS.items():
        out[name] = float(by_reason.get(reason, 0))
    out["drops/other"] = float(sum(n for r, n in by_reason.items() if r not in DROP_REASON_METRICS and r != "stale"))
    return out


def _bins(d: Mapping[Any, float]) -> list[float]:
    """{bin: count} (keys int or str) -> a dense list of counts per bin."""
    counts = {int(k): float(v) for k, v in d.items()}
    return [counts.get(i, 0.0) for i in range(1 + max(counts, default=-1))]


def bottleneck(record: Mapping[str, Any]) -> tuple[str, str]:
    """Which part limits throughput, from one record: ``(label, reason)`` with label one of learner, admission,
    actors, unknown. The rule:

    1. ``learner/busy_frac >= 0.8`` (training at least 80 % of the last rate window): **learner**; the actors'
       work waits for it, more actors would not help.
    2. otherwise, if ``leases/capacity == 0`` (the staleness bound grants no new lease): **admission**; the learner
       waits while max_staleness holds new work back.
    3. otherwise: **actors**; the learner waits for data although leases are open.
    Without a busy fraction yet (no step in the window): unknown.
    """
    busy = record.get("learner/busy_frac")
    if not _finite(busy):
        return "unknown", "no training step in the rate window yet"
    share = f"learner busy {100 * busy:.0f}% of the last {RATE_WINDOW_S:g} s"
    if busy >= BUSY_LEARNER:
        return "learner", f"{share} (>= {100 * BUSY_LEARNER:.0f}%): the actors' work waits for training"
    capacity = record.get("leases/capacity")
    if _finite(capacity) and capacity <= 0:
        return "admission", (f"{share}, and the staleness bound grants no new lease (leases/capacity 0): "
                             "raise off_policy.max_staleness or speed up training")
    return "actors", f"{share}, waiting for data while leases are open: add actors or speed up generation"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
