"""The learner's weight broadcasts, off the training thread, so that no step waits for a broadcast.

    training thread                                    broadcast thread (background: true)
    ---------------                                    -----------------------------------
    step k trained, version k
      offer(k, snapshot) ---- idle? ---- yes ---->      round: version k to the members now
           |                   (takes a copy)             (to each cohort in turn, intact ones first;
           |                                               a changed cohort forms a new group; a death
           no: nothing; offered again after the            fails its cohort at once: retried without the
           next step and at every wait tick               dead or the held-out, the others untouched)
                                                        idle, every TICK_S: a cohort without the held
                                                          version (a newcomer, a rebuilt cohort)?
                                                          -> the held version to those cohorts only
                                                          (unless a newer one waits: it goes instead)

Rules that follow from it:
  * At most one copy of the weights exists for broadcasting: the training thread takes a snapshot only when the
    broadcast thread is idle and holds an older version; the thread keeps the last one it sent, so a newcomer gets
    it without disturbing training. Memory: one copy of the weights in the broadcast dtype on the learner device.
  * When rounds take longer than steps, actors get every other version (or fewer); the versions they miss are
    visible as staleness (``staleness/*``) and as ``weights/version_lag`` (learner version minus the version the
    last successful round carried, after each step). The learner bounds that lag: its next step waits while it
    exceeds ``weight_sync.max_version_lag`` (``weights/wait_s``), and admission counts from the fleet's version
    (``on_sent`` -> Coordinator.set_fleet_version), so the actors are not handed prompts whose groups would be
    stale on arrival.
  * ``background: false`` runs the same rounds inline on the training thread (the step waits for them), as in a
    synchronous trainer; the snapshot is then a view, not a copy.
  * A version counts as sent (``on_sent``, ``sent_version``) once every cohort holds it.

Membership and back-off are :class:`~gspo_async.learner.weight_sync.WeightSyncMembership`, the split into
process groups :class:`~gspo_async.learner.weight_sync.Cohorts`; who is alive is
``reachable()`` (the endpoint's connections and heartbeats); the rounds are
:class:`~gspo_async.weights.elastic.WeightPublisher`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Optional

import torch

from gspo_async.learner.weight_sync import Cohort, Cohorts, WeightSyncMembership
from gspo_async.telemetry.registry import MetricRegistry
from gspo_async.weights.elastic import WeightPublisher

log = logging.getLogger(__name__)

TICK_S = 0.2  # how often an idle broadcast thread looks for a membership change (s)
Snapshot = Callable[[bool], list[tuple[str, torch.Tensor]]]  # copy -> [(name, tensor)]; copy=False may alias


class WeightBroadcaster:
    """Sends each new version of the weights to the live actors; see the module docstring for the lifecycle.

    Args:
        publisher: the rounds (owns the store and the process groups).
        membership: who takes part, with back-off for members that fail rounds.
        cohorts: how the members are split into process groups (default: one group for all).
        reachable: the actor ids alive and connected now (thread-safe; polled during rounds).
        registry: where ``weights/*`` counters go (thread-safe).
        background: run rounds on a thread of their own (True) or inline in :meth:`offer` (False).
        on_sent: called with the version of each successful round (on the thread that ran it).
    """

    def __init__(self, publisher: WeightPublisher, membership: WeightSyncMembership,
                 reachable: Callable[[], list[str]], registry: MetricRegistry, background: bool = True,
                 on_sent: Callable[[int], None] = lambda version: None, cohorts: Optional[Cohorts] = None):
        self.on_sent = on_sent
        self.publisher = publisher
        self.membership = membership
        self.cohorts = cohorts if cohorts is not None else Cohorts(0, membership.timeout_s)
        self._holds: dict[Cohort, int] = {}  # cohort -> newest version it received (its current group)
        self.reachable = reachable
        self.registry = registry
        self.background = background
        self._cond = threading.Condition()
        self._job: Optional[tuple[int, list[tuple[str, torch.Tensor]]]] = None  # handed over, not yet started
        self._busy = False  # a round (or its retry) is running on the thread
        self._held: Optional[tuple[int, list[tuple[str, torch.Tensor]]]] = None  # the thread's last version sent
        self._offered = -1  # newest version handed over (or sent inline)
        self._newest = -1  # newest version the training thread has offered, taken or not
        self._sent = -1  # version of the newest successful round
        self._last: dict[str, float] = {}
        self._closing = False
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="weight-broadcast", daemon=True)
            self._thread.start()

    # ----- the training thread's side -----
    def offer(self, version: int, snapshot: Snapshot) -> bool:
        """Hand `version` over for broadcasting if the broadcast side can take it now. Never waits for a round in
        background mode. Returns whether a round for `version` was started (background) or run (inline).

        `snapshot(copy)` returns the weights as (name, tensor) pairs; with ``copy=True`` they must not alias the
        parameters (the optimiser would change them mid-broadcast). Called on the training thread only, so that
        collective gathers (ZeRO-3) happen where the other ranks expect them.
        """
        if not self.background:
            if version > self._offered:
                self._offered = version
                self._round(version, snapshot(False), "new version")
                return True
            if self._lacking(version):
                self._round(version, snapshot(False), "membership")
                return True
            return False
        with self._cond:
            self._newest = max(self._newest, version)
            if version <= self._offered or self._busy or self._job is not None or self._closing:
                return False
            self._held = None  # the idle thread's old copy goes before the new one is made: one copy at a time
        tensors = snapshot(True)
        with self._cond:
            self._offered = version
            self._job = (version, tensors)
            self._cond.notify_all()
        return True

    def wait_sent(self, version: int, snapshot: Snapshot, timeout_s: float) -> bool:
        """Offer `version` until a round carrying it (or a newer one) has succeeded, at most `timeout_s`. Used at the
        end of a run so that the actors hold the final weights. Returns whether it went out."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.offer(version, snapshot)
            with self._cond:
                if self._sent >= version:
                    return True
                if not self.background:  # inline: the round above was the only try
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, TICK_S))

    def last_sync(self) -> dict[str, float]:
        """Metrics of the newest round: ``weights/sync_s``, ``weights/transfer_s`` (s), ``weights/bytes``."""
        with self._cond:
            return dict(self._last)

    @property
    def sent_version(self) -> int:
        """Version carried by the newest successful round (-1 before the first)."""
        with self._cond:
            return self._sent

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread once its round is over (rounds are bounded by the publisher's timeouts); it is left
        running as a daemon if that takes longer than `timeout_s`."""
        with self._cond:
            self._closing = True
            self._job = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("[learner] a weight broadcast was still running at exit (it ends within the weight "
                            "sync timeout of %gs)", self.publisher.timeout_s)

    # ----- the broadcast thread -----
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._job is None and not self._closing:
                    self._cond.wait(TICK_S)
                if self._closing:
                    return
                job, self._job = self._job, None
                self._busy = True
            try:
                if job is not None:
                    self._held = job
                    self._round(job[0], job[1], "new version")
                elif self._held is not None and self._held[0] >= self._newest and self._lacking(self._held[0]):
                    # (with a newer version waiting, the training thread's next offer reaches the new members)
                    self._round(self._held[0], self._held[1], "membership")
            except Exception:  # a bug, not a peer's failure (publish never raises for those): keep serving
                log.exception("[learner] weight broadcast failed unexpectedly; the next version retries")
                self._holds.clear()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # ----- rounds (on the broadcast thread, or inline) -----
    def _plan(self) -> list[Cohort]:
        """The cohorts of the current members; forgets the groups (and holds) of cohorts no longer planned."""
        members = self.membership.members(self.reachable(), self.publisher.present)
        cohorts = self.cohorts.plan(members)
        self.publisher.retain(cohorts)
        self._holds = {c: v for c, v in self._holds.items() if c in cohorts}
        return cohorts

    def _lacking(self, version: int) -> bool:
        """Whether some cohort of the current members does not hold `version` (a newcomer, a rebuilt cohort)."""
        return any(self._holds.get(c, -1) < version for c in self._plan())

    def _round(self, version: int, tensors: list[tuple[str, torch.Tensor]], reason: str,
               retry: bool = True) -> None:
        """`version` to every cohort that lacks it; when one fails, one retry at once without the dead and the
        held-out (the cohorts that got it are not sent to again)."""
        cohorts = self._plan()
        pending = [c for c in cohorts if self._holds.get(c, -1) < version]
        seconds = group_seconds = 0.0
        nbytes, failed = 0, []
        for cohort in pending:
            generation = self.publisher.generation
            result = self.publisher.publish(tensors, version, list(cohort), alive=self.reachable)
            self.registry.inc("weights/group_builds", float(self.publisher.generation - generation))
            seconds += result.seconds
            group_seconds += result.group_seconds
            nbytes = result.nbytes
            if result.ok:
                self._holds[cohort] = version
                self.membership.succeeded(cohort)
                self.registry.inc("weights/bytes_sent", float(result.nbytes * len(cohort)))
            else:
                failed.append(result)
        everyone = all(self._holds.get(c, -1) >= version for c in cohorts)
        with self._cond:
            self._last = {"weights/sync_s": seconds, "weights/bytes": float(nbytes),
                          "weights/transfer_s": max(seconds - group_seconds, 0.0)}
            if everyone:
                self._sent = max(self._sent, version)
        if everyone:
            self.on_sent(version)
            if pending or not cohorts:  # (a version to an empty fleet counts as sent, as before anyone joins)
                self.registry.inc("weights/syncs")
        reachable = set(self.reachable())
        dropped = []  # the dead and the held-out of the failed cohorts
        for result in failed:
            self.registry.inc("weights/failures")
            gone = [m for m in result.members if m not in reachable]  # died meanwhile (a reset, a closed socket)
            held = self.membership.failed([m for m in result.members if m in reachable], result.missing)
            dropped += gone + held
            log.warning("[learner] weight sync v%d (%s) to %s failed: %s%s%s", version, reason, result.members,
                        result.error, f"; {gone} left the fleet" if gone else "",
                        f"; leaving {held} out of broadcasts for a while (backing off up to "
                        f"{self.membership.exclude_s:g}s)" if held else "")
        if dropped and retry and self._plan():  # (no one left: the next version is recorded when it comes)
            self._round(version, tensors, f"{reason}, without {sorted(dropped)}", retry=False)
        self.registry.set("weights/excluded", float(len(self.membership.excluded)))
