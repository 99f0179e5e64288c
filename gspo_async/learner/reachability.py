"""Which live actors a weight broadcast should list: those whose connection is open and that spoke recently.

Pure logic with an injected clock (seconds, the coordinator's). The endpoint tells it of closed connections
(libzmq's disconnect events) and of every message; the broadcast asks `reachable` before and during each round:

    message ------------------------------> listed
    connection closed --> cut (out) --(message > one heartbeat interval later)--> listed
    silent > SUSPECT_HEARTBEATS intervals --> out until its next message (declared dead only at heartbeat_timeout_s)

A message read just after its connection's close event is the last words of a killed actor, queued before the
close: it does not bring the actor back (a SIGKILL would otherwise hold a broadcast until heartbeats declare it
dead). A message more than a heartbeat interval after the cut means the connection lives after all (a close matched
to the wrong actor). Silence covers what the close events miss (a libzmq without ZMQ_SRCFD, a hung process, a
partition that keeps TCP open): such an actor holds a round for a few heartbeats, not for the whole timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

SUSPECT_HEARTBEATS = 3


class Reachability:
    """Args: heartbeat_interval_s / heartbeat_timeout_s: the actors' heartbeat period and the death timeout (s);
    clock: seconds."""

    def __init__(self, heartbeat_interval_s: float, heartbeat_timeout_s: float, clock: Callable[[], float]):
        self.heartbeat_interval_s = float(heartbeat_interval_s)
        window = SUSPECT_HEARTBEATS * self.heartbeat_interval_s
        # heartbeats sparse against the timeout: only a closed connection or death counts
        self.heard_within_s: Optional[float] = window if window < heartbeat_timeout_s else None
        self.clock = clock
        self.cut: dict[str, float] = {}  # actor -> clock time its connection closed

    def closed(self, actor_id: str) -> None:
        self.cut[actor_id] = self.clock()

    def heard(self, actor_id: str) -> None:
        """A message from `actor_id` was read."""
        cut_at = self.cut.get(actor_id)
        if cut_at is not None and self.clock() - cut_at > self.heartbeat_interval_s:
            del self.cut[actor_id]

    def forget(self, actor_id: str) -> None:
        """A fresh registration (a new connection) or a death: no cut kept."""
        self.cut.pop(actor_id, None)

    def reachable(self, live: Iterable[str]) -> list[str]:
        """Of `live` (the coordinator's actors heard from within `heard_within_s`), those not cut."""
        return [a for a in live if a not in self.cut]
