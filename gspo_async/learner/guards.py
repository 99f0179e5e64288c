"""Guards of the learner's endpoint: what the Welcome may carry, rate limits, a log that cannot be flooded, held
lease requests and reported rates made fit for the wire."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("gspo_async.learner.endpoint")

# Config sections an actor never needs and must not learn: key file paths of the learner and of its own actor
# settings (an actor uses its local `actor` section for its keys).
WELCOME_CONFIG_OMIT = (("learner", "curve"), ("actor", "curve"))
HANDSHAKE_IVL_MS = 5000  # an unauthenticated connection is dropped after this (libzmq default 30 s)
STATUS_RATE_PER_S, STATUS_BURST = 20.0, 40  # status replies per second, all peers together


def actor_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run config as the Welcome carries it: without the sections of WELCOME_CONFIG_OMIT (secret key paths)."""
    out = dict(config)
    for section, key in WELCOME_CONFIG_OMIT:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


class TokenBucket:
    """At most `burst` events at once and `rate_per_s` on average (status replies: each may be 50 kB)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate_per_s, float(burst), clock
        self.tokens, self.last = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RateLimitedLog:
    """At most one warning per reason every `every_s` seconds (a flood of bad messages must not flood the log)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.last, self.suppressed = every_s, {}, Counter()

    def warn(self, reason: str, text: str) -> None:
        now = time.monotonic()
        if now - self.last.get(reason, -1e9) >= self.every_s:
            more = f" (+{self.suppressed[reason]} similar suppressed)" if self.suppressed[reason] else ""
            log.warning("%s%s", text, more)
            self.last[reason], self.suppressed[reason] = now, 0
        else:
            self.suppressed[reason] += 1


@dataclass
class Parked:
    """A lease request held while admission is closed (deadline: monotonic seconds)."""

    actor_id: str
    rid: int
    n: int
    deadline: float


def wire_rate(value: float) -> float:
    """A reported rate fit for the wire: finite and >= 0 (an actor may report NaN before its first batch)."""
    return value if value >= 0 and value != float("inf") else 0.0
