"""Who takes part in the learner's weight broadcasts, and in which process groups: membership, the back-off
policy and the cohorts, without I/O.

A live actor (the coordinator's heartbeats say so) is a *member* once its weight receiver has been seen listening
(listing it earlier would fail the round for everyone: an actor registers before its receiver is up). A member
that makes a round fail is left out for a while so one broken receiver cannot stall the fleet's weights: the hold
is ``timeout_s`` after a first failure and doubles with each consecutive failure, up to ``exclude_s`` (0 = never
leave anyone out). An actor that leaves (heartbeat death, goodbye, connection reset) is forgotten at once: no
hold, no failure count, and it is probed afresh if it comes back.

The members are split into *cohorts* of at most ``cohort_size`` (0 = no limit: one group for the whole fleet),
each its own process group with the learner as rank 0, sent to one after another. A group's members are fixed, so
every change of a cohort's members costs a new group, and while it forms that cohort gets no weights; the other
cohorts do not notice. Lifecycle of a cohort (:class:`Cohorts`):

    newcomers --(at once)--> guest cohort (their own small group: first weights without disturbing anyone)
        |                                                                      |
        +--- a cohort loses a member (death, hold) ---> its survivors and every guest are dealt into new full
        |                                               cohorts (one rebuild, forced by the death anyway)
        +--- guests have stood join_wait_s -----------> guests and cohorts with room are dealt anew (settling)

A fleet whose actors are replaced as they die (spot instances, a supervisor) then pays one rebuild of one cohort
per death, and a replacement gets weights as soon as its receiver listens.

The clock is injected (seconds, monotonic), so the policy is tested with hand-built scenarios.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable


class WeightSyncMembership:
    """Membership of the weight broadcasts.

    Args:
        timeout_s: the publisher's per-wait timeout (s); the first hold after a failure.
        exclude_s: the longest hold (s); 0 disables holds (a failing member stays listed).
        clock: monotonic time in seconds.
    """

    def __init__(self, timeout_s: float, exclude_s: float, clock: Callable[[], float] = time.monotonic):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not exclude_s >= 0:
            raise ValueError(f"exclude_s must be >= 0 seconds (0 = never leave anyone out), got {exclude_s!r}")
        self.timeout_s = float(timeout_s)
        self.exclude_s = float(exclude_s)
        self.clock = clock
        self.excluded: dict[str, float] = {}  # actor id -> clock time until which it is left out
        self.failures: Counter[str] = Counter()  # consecutive failed rounds per actor (for the back-off)
        self.present: set[str] = set()  # actors whose weight receiver has been seen listening

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
        return sorted(candidates & self.present)

    def succeeded(self, members: Iterable[str]) -> None:
        """A round to `members` went through: their failure counts reset."""
        for m in members:
            self.failures.pop(m, None)

    def failed(self, members: list[str], missing: Iterable[str]) -> list[str]:
        """A round to `members` failed; `missing` are those that never got ready or never acknowledged.

        Returns the members now put on hold (empty when exclude_s is 0).
        """
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

    def leave(self, actor_id: str) -> None:
        """Forget `actor_id` (it died or said goodbye): no hold, no failure count, probed again if it comes back."""
        self.excluded.pop(actor_id, None)
        self.failures.pop(actor_id, None)
        self.present.discard(actor_id)


Cohort = tuple[str, ...]  # the members of one broadcast group, sorted (ranks 1..n in this order)


def deal(members: list[str], size: int) -> list[Cohort]:
    """Split sorted `members` into the fewest cohorts of at most `size` (0 = no limit), sizes differing by <= 1."""
    if not members:
        return []
    count = -(-len(members) // size) if size else 1
    base, extra = divmod(len(members), count)
    out, start = [], 0
    for i in range(count):
        end = start + base + (i < extra)
        out.append(tuple(members[start:end]))
        start = end
    return out


class Cohorts:
    """The split of the members into broadcast groups; see the module docstring for the lifecycle.

    Args:
        size: most members per cohort; 0 = no limit (one group for the whole fleet, plus guests while they wait).
        join_wait_s: the longest newcomers keep a guest cohort of their own before the cohorts are dealt anew (s).
        clock: monotonic time in seconds.
    """

    def __init__(self, size: int, join_wait_s: float, clock: Callable[[], float] = time.monotonic):
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"cohort size must be an int >= 0 (0 = one group for all), got {size!r}")
        if not join_wait_s >= 0:
            raise ValueError(f"join_wait_s must be >= 0 seconds, got {join_wait_s!r}")
        self.size = size
        self.join_wait_s = float(join_wait_s)
        self.clock = clock
        self.settled: list[Cohort] = []
        self.guests: dict[Cohort, float] = {}  # newcomers' own cohorts -> clock time they were formed

    @property
    def current(self) -> list[Cohort]:
        """The cohorts of the last plan: settled ones first (their groups exist), then guests."""
        return self.settled + list(self.guests)

    def plan(self, members: Iterable[str]) -> list[Cohort]:
        """The cohorts for the next round, covering exactly `members`; intact cohorts are kept as they are."""
        alive = set(members)
        live = sorted(alive)
        now = self.clock()
        kept = [c for c in self.settled if alive.issuperset(c)]
        guests = {c: t for c, t in self.guests.items() if alive.issuperset(c)}
        broken = len(kept) < len(self.settled) or len(guests) < len(self.guests)
        placed = {m for c in kept + list(guests) for m in c}
        loose = [m for m in live if m not in placed]  # survivors of broken cohorts, and newcomers
        if broken or not kept:  # a group is rebuilt anyway (or there is none): the guests join the dealt cohorts
            self.settled = kept + deal(sorted(loose + [m for c in guests for m in c]), self.size)
            self.guests = {}
        else:  # newcomers get weights at once in a group of their own; the settled groups are not touched
            guests.update({c: now for c in deal(loose, self.size)})
            if guests and now - min(guests.values()) >= self.join_wait_s:  # settle: fill the groups with room
                room = self._with_room(kept, sum(map(len, guests)))
                pool = sorted(m for c in list(guests) + room for m in c)
                self.settled, self.guests = [c for c in kept if c not in room] + deal(pool, self.size), {}
            else:
                self.settled, self.guests = kept, guests
        return self.current

    def _with_room(self, cohorts: list[Cohort], guests: int) -> list[Cohort]:
        """The fewest of `cohorts` (smallest first) whose free places take `guests` members, as far as they go:
        settling rebuilds only those."""
        taken, free = [], 0
        for c in sorted(cohorts, key=lambda c: (len(c), c)):
            if free >= guests or (self.size and len(c) >= self.size):
                break
            taken.append(c)
            free += self.size - len(c) if self.size else guests
        return taken
