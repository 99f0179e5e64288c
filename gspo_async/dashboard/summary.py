"""What a run's records say in one place: counts, drops by reason, throughput, bottleneck, run state and events.

The dashboard's ``/api/summary``, its drops panel and the static report all show these numbers, so they can only
agree; tests/dashboard/test_consistency.py checks them against the run's ledger and acknowledgement records.
"""

from __future__ import annotations

import math
from typing import Any

from gspo_async.telemetry.derive import bottleneck
from gspo_async.telemetry.names import EVENTS

# Drops by reason, in display order: (metric, label, unit). Stale and message-level drops count groups; prompt-level
# drops (no group was ever trained for the prompt) count prompts.
DROP_REASONS: list[tuple[str, str, str]] = [
    ("staleness/dropped", "too stale", "groups"), ("drops/invalid", "invalid", "groups"),
    ("drops/duplicate", "duplicate", "groups"), ("drops/late", "late for a dropped prompt", "groups"),
    ("drops/lease_attempts", "too many lease attempts", "prompts"),
    ("drops/prompt_too_long", "prompt too long", "prompts"), ("drops/other", "other", "prompts"),
]
COUNTS: list[tuple[str, str]] = [
    ("train/groups", "trained groups"), ("train/samples", "trained responses"), ("train/tokens", "trained tokens"),
    ("leases/granted", "leases granted"), ("leases/expired", "leases expired"),
    ("throughput/gen_tokens", "tokens received"),
]
LIVE_S = 30.0  # a learner record younger than this (and no final record) means the run is live


def is_number(v: Any) -> bool:
    """True for a finite int or float (JSON null, lists and booleans are not numbers)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def last_number(records: list[dict], key: str) -> float | None:
    """The newest finite value of `key`, or None."""
    for r in reversed(records):
        v = r.get(key)
        if is_number(v):
            return float(v)
    return None


def run_state(records: list[dict], now: float) -> str:
    """``ended`` (the learner wrote its final record), ``live`` (a record in the last LIVE_S seconds), ``stopped``
    (no recent record and no final one: killed, crashed or paused), or ``empty``."""
    if not records:
        return "empty"
    last = records[-1]
    if last.get("learner/finished") == 1:
        return "ended"
    return "live" if now - float(last.get("time", 0.0)) < LIVE_S else "stopped"


class RunDigest:
    """The summary of a metrics file read incrementally: `feed` new records as they arrive, `summary` any time.

    Keeps the newest value of each counted metric, the newest record and the events, not the records themselves,
    so a long run's file is read once.
    """

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}
        self.last: dict[str, Any] = {}
        self.n_records = 0
        self.events: list[dict[str, Any]] = []
        self._prev: dict[str, float] = {}

    def feed(self, records: list[dict]) -> None:
        for r in records:
            self.n_records += 1
            self.last = r
            for key, v in r.items():
                if is_number(v):
                    self.latest[key] = float(v)
            for name, label in EVENTS.items():
                v = r.get(name)
                if not is_number(v):
                    continue
                before = self._prev.get(name)
                if name == "learner/started_at":
                    happened, count = before is not None and v != before, 1.0
                else:  # a counter that restarts at 0 (a new learner process) is no event; an increase is
                    happened = (before is None and v > 0) or (before is not None and v > before)
                    count = v - (before if before is not None and v >= before else 0.0)
                if happened:
                    self.events.append({"step": r.get("step"), "time": r.get("time"), "kind": name, "label": label,
                                        "count": count})
                self._prev[name] = float(v)

    def summary(self, now: float) -> dict[str, Any]:
        """Counts (cumulative totals), drops by reason, rates, busy fractions, the bottleneck, the run state (see
        `run_state`) and the events."""
        last = self.last
        label, reason = bottleneck(last)
        get = self.latest.get
        return {
            "state": run_state([last] if last else [], now),
            "records": self.n_records,
            "step": last.get("step"),
            "time": last.get("time"),
            "counts": {name: get(name) for name, _ in COUNTS},
            "drops": {name: get(name) for name, _, _ in DROP_REASONS},
            "rates": {k: get(k) for k in ("throughput/gen_tokens_per_s", "throughput/train_tokens_per_s",
                                          "throughput/samples_per_s")},
            "busy": {"window": get("learner/busy_frac"), "since_start": get("learner/busy_frac_since_start")},
            "bottleneck": {"label": label, "reason": reason},
            "events": list(self.events),
        }


def events(records: list[dict]) -> list[dict[str, Any]]:
    """One entry per event between consecutive records, oldest first: {step, time, kind, label, count}.

    An event is an increase of a counter of `names.EVENTS` (evaluations, checkpoints, joins, leaves, weight-sync
    failures; `count` = by how much) or a change of ``learner/started_at`` after the first record (a resume).
    """
    digest = RunDigest()
    digest.feed(records)
    return digest.events


def run_summary(records: list[dict], now: float) -> dict[str, Any]:
    """`RunDigest.summary` of `records` (the learner's metrics.jsonl, oldest first)."""
    digest = RunDigest()
    digest.feed(records)
    return digest.summary(now)
