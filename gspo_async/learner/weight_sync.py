"""Who takes part in the learner's weight broadcasts: membership and the back-off policy, without I/O.

A live actor (the coordinator's heartbeats say so) is a *member* once its weight receiver has been seen listening
(listing it earlier would fail the round for everyone: an actor registers before its receiver is up). A member
that makes a round fail is left out for a while so one broken receiver cannot stall the fleet's weights: the hold
is ``timeout_s`` after a first failure and doubles with each consecutive failure, up to ``exclude_s`` (0 = never
leave anyone out). An actor that leaves (heartbeat death, goodbye, connection reset) is forgotten at once: no
hold, no failure count, and it is probed afresh if it comes back.

Every change of the member list costs a new process group, and while it forms no actor gets weights. A death
forces one at once (the old group is broken); an arrival does not, so newcomers join in batches: with the group's
next rebuild that happens anyway (a member left, was held out, or a round failed), or once the first of them has
waited ``join_wait_s``, whichever comes first. A fleet whose actors are replaced as they die (spot instances, a
supervisor) then pays one rebuild per death instead of two; a newcomer waits at most ``join_wait_s`` for its first
weights. With no current members (the run's start, or everyone left) newcomers join at once.

The clock is injected (seconds, monotonic), so the policy is tested with hand-built scenarios.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Optional


class WeightSyncMembership:
    """Membership of the weight broadcasts.

    Args:
        timeout_s: the publisher's per-wait timeout (s); the first hold after a failure.
        exclude_s: the longest hold (s); 0 disables holds (a failing member stays listed).
        join_wait_s: the longest a newcomer waits for the next rebuild before it forces one (s); 0 = at once.
        clock: monotonic time in seconds.
    """

    def __init__(self, timeout_s: float, exclude_s: float, join_wait_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not exclude_s >= 0:
            raise ValueError(f"exclude_s must be >= 0 seconds (0 = never leave anyone out), got {exclude_s!r}")
        if not join_wait_s >= 0:
            raise ValueError(f"join_wait_s must be >= 0 seconds (0 = newcomers join at once), got {join_wait_s!r}")
        self.timeout_s = float(timeout_s)
        self.exclude_s = float(exclude_s)
        self.join_wait_s = float(join_wait_s)
        self.clock = clock
        self.joining: dict[str, float] = {}  # newcomer -> clock time it was first ready to join
        self.excluded: dict[str, float] = {}  # actor id -> clock time until which it is left out
        self.failures: Counter[str] = Counter()  # consecutive failed rounds per actor (for the back-off)
        self.present: set[str] = set()  # actors whose weight receiver has been seen listening
        self.published: Optional[list[str]] = None  # members of the last successful round; None: rebuild

    def members(self, live: Iterable[str], probe: Callable[[list[str]], Iterable[str]]) -> list[str]:
        """The members for the next round, sorted: live actors whose receiver listens, less those on hold.

        `live` is the heartbeat's view; `probe(ids)` returns those of `ids` whose receiver is listening (asked
        only for live actors not yet seen listening). Actors absent from `live` are forgotten (see `leave`).
        """
        live = set(live)
        for gone in (set(self.present) | set(self.excluded) | set(self.failures)) - live:
            self.leave(gone)
        now = self.clock()
        self.excluded = {a: until for a, until in self.excluded.items() if now < until}
        candidates = live - set(self.excluded)
        unseen = sorted(candidates - self.present)
        if unseen:
            self.present |= set(probe(unseen)) & set(unseen)
        ready = sorted(candidates & self.present)
        current = set(self.published or ())
        newcomers = [a for a in ready if a not in current]
        self.joining = {a: self.joining.get(a, now) for a in newcomers}
        if not newcomers or not current or not self.join_wait_s:
            return ready
        rebuilt_anyway = not current <= set(ready)  # a member left or is held out: the group is rebuilt now
        if rebuilt_anyway or now - min(self.joining.values()) >= self.join_wait_s:
            return ready
        return [a for a in ready if a in current]  # the newcomers wait for the next rebuild

    def changed(self, members: list[str]) -> bool:
        """Whether `members` differ from those of the last successful round (or that round failed)."""
        return members != self.published

    def succeeded(self, members: list[str]) -> None:
        """A round to `members` went through: they are what the fleet holds; their failure counts reset."""
        self.published = list(members)
        for m in members:
            self.failures.pop(m, None)
            self.joining.pop(m, None)

    def failed(self, members: list[str], missing: Iterable[str]) -> list[str]:
        """A round to `members` failed; `missing` are those that never got ready or never acknowledged.

        Returns the members now put on hold (empty when exclude_s is 0). The next round rebuilds the group.
        """
        self.published = None
        if not self.exclude_s:
            return []
        held = [m for m in members if m in set(missing)]
        now = self.clock()
        for m in held:  # back off: one timeout after a first failure, doubling up to exclude_s
            self.failures[m] += 1
            self.excluded[m] = now + self.hold_s(self.failures[m])
        return held

    def hold_s(self, failures: int) -> float:
        """How long (s) a member is left out after its `failures`-th consecutive failed round (>= 1)."""
        return min(self.exclude_s, self.timeout_s * 2 ** (failures - 1))

    def leave(self, actor_id: str) -> bool:
        """Forget `actor_id` (it died or said goodbye): no hold, no failure count, probed again if it comes back.

        Returns whether it was part of the last successful round (then the next round rebuilds the group).
        """
        self.excluded.pop(actor_id, None)
        self.failures.pop(actor_id, None)
        self.joining.pop(actor_id, None)
        self.present.discard(actor_id)
        was_member = self.published is not None and actor_id in self.published
        return was_member
