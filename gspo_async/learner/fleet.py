"""Fleet-wide metrics read from the learner's endpoint: generation rate, version skew, buffer and drop counters.

Per-actor rows go to the registry directly (an actor that left has its row removed); the fleet-wide numbers are
returned for the learner's per-step record. Per-actor rows are bounded: at most MAX_ACTOR_ROWS actors (the first
to register) have rows, so a thousand registered ids cannot grow every record of metrics.jsonl without bound; the
fleet-wide numbers still count every actor. A failure on one actor's row costs that row (counted in
`actor_row_errors`, logged), never the learner's loop. StaleDropWatch warns when most groups are dropped as stale.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Optional

from gspo_async.learner.endpoint import LearnerServer
from gspo_async.telemetry.derive import counter_metrics
from gspo_async.telemetry.registry import MetricRegistry

log = logging.getLogger("gspo_async.learner.fleet")

MAX_ACTOR_ROWS = 64  # actors with per-actor metric rows (11 values each, in every record)


class FleetMetrics:
    """Collects the fleet's numbers from `server` into `registry` at each call of :meth:`collect`."""

    def __init__(self, server: LearnerServer, registry: MetricRegistry, group_size: int = 1):
        self.server = server
        self.registry = registry
        self.group_size = group_size  # responses per group: trained responses = trained groups x group_size
        self.known_actors: set[str] = set()
        self.actor_row_errors = 0  # per-actor rows dropped by a failure (logged)
        self.actors_without_rows = 0  # live actors beyond MAX_ACTOR_ROWS at the last collect

    def collect(self, version: int) -> dict[str, Any]:
        """Fleet-wide numbers at learner `version` (tokens/s, counts, seconds; the length histograms are lists
        indexed by length bin); per-actor rows are set in the registry as a side effect."""
        gen_rate, skew = 0.0, 0
        live = set()
        actors = self.server.actors()
        rows = {a["actor_id"] for a in actors if a["actor_id"] in self.known_actors}
        for a in actors:  # newcomers get a row while there is room
            if len(rows) >= MAX_ACTOR_ROWS:
                break
            rows.add(a["actor_id"])
        if len(actors) - len(rows) > self.actors_without_rows:
            log.warning("%d live actors; per-actor metric rows are kept for %d of them (MAX_ACTOR_ROWS)",
                        len(actors), len(rows))
        self.actors_without_rows = len(actors) - len(rows)
        for a in actors:
            aid = a["actor_id"]
            # The staleness of the actor's newest delivered group on arrival, not heartbeat timing.
            lag = int(a.get("delivered_lag", 0))
            gen_rate += a["tokens_per_s"]
            skew = max(skew, lag)
            if aid in rows and self._set_row(aid, a, lag):
                live.add(aid)
        for gone in self.known_actors - live:
            self.registry.forget_actor(gone)
        self.known_actors = live
        return self._fleet(gen_rate, skew)

    def _set_row(self, aid: str, a: dict[str, Any], lag: int) -> bool:
        """Set one actor's row; False (counted, logged) when its numbers cannot be recorded."""
        try:
            st = a.get("stats", {})
            self.registry.set_actor(aid, {
                "tokens_per_s": a["tokens_per_s"], "version": float(a["version"]), "version_lag": float(lag),
                "delivered_version": float(a.get("delivered_version", -1)),
                "leases": float(a["leases"]), "tokens": float(st.get("tokens_total", 0.0)),
                "groups": float(st.get("groups_total", 0.0)), "busy_frac": float(st.get("busy_frac", 0.0)),
                "pending_groups": float(a.get("unacked", 0)), "heartbeat_age_s": float(a["last_contact_s"]),
                "alive": 1.0})
            return True
        except (TypeError, ValueError) as err:  # e.g. a stat an actor reported as text
            self.actor_row_errors += 1
            self.registry.forget_actor(aid)
            log.warning("metrics row of actor %s dropped this step (%s); %d row(s) dropped so far", aid, err,
                        self.actor_row_errors)
            return False

    def _fleet(self, gen_rate: float, skew: int) -> dict[str, Any]:
        """The coordinator's totals as metrics (`telemetry.derive.counter_metrics`: trained and dropped counts,
        leases, buffer, length histograms), the worst actor lag, the queue ages and `gen_rate`, the sum of the
        actors' own rates; the learner's record replaces that rate with the tokens it accepted per wall second over
        the same window as trained tokens/s (`LoopMetrics`), so the two compare."""
        c = self.server.counters()
        return {**counter_metrics(c, self.group_size), "throughput/gen_tokens_per_s": gen_rate,
                "weights/version_skew_max": float(skew),
                "groups/filtered": float(c["groups_filtered"]),
                **{f"groups/filtered/{k}": float(v) for k, v in c["groups_filtered_by_reward"].items()},
                **self.server.ages()}


class StaleDropWatch:
    """Says when most of what the fleet generates is thrown away as too stale (compute spent on nothing).

    :meth:`observe` takes the cumulative counts after each step (``train/groups``, ``staleness/dropped``) and
    returns a warning when, over the last `window` steps, more than `share` of the groups that left the buffer were
    dropped as stale; at most one warning per `window` steps.
    """

    def __init__(self, max_staleness: int, window: int = 20, share: float = 0.5):
        self.max_staleness, self.window, self.share = max_staleness, window, share
        self.history: deque[tuple[float, float]] = deque(maxlen=window + 1)  # (trained, stale) after each step
        self.quiet = 0  # steps left before another warning may be given

    def observe(self, trained: float, stale: float) -> Optional[str]:
        self.history.append((trained, stale))
        self.quiet = max(0, self.quiet - 1)
        if len(self.history) <= self.window or self.quiet:
            return None
        (t0, s0), (t1, s1) = self.history[0], self.history[-1]
        dropped, used = s1 - s0, t1 - t0
        if dropped <= self.share * (dropped + used):
            return None
        self.quiet = self.window
        return (f"{dropped:.0f} of the {dropped + used:.0f} groups taken in the last {self.window} steps were dropped "
                f"as too stale (off_policy.max_staleness={self.max_staleness}): the actors generate with weights "
                "that are old by the time the learner gets to them. Look at weights/version_lag and weights/sync_s; "
                "lower learner.weight_sync.max_version_lag or raise off_policy.max_staleness.")
