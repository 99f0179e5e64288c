"""The learner's coordinator: prompt leases, admission control, the group buffer, stale drops and membership.

Pure logic: no sockets, no threads, time from an injected `clock` (seconds). `LearnerServer` calls it under a
lock from its socket thread; tests drive it directly.

Every issued prompt (an id from the PromptSource) is in exactly one state until it ends trained or dropped:

    leased --(group accepted)--> buffered --(take, fresh enough)--> training --(mark_trained)--> trained
      |  ^                          |                                   |
      |  | re-issue (front of queue)  +--(take, too stale)--> dropped    +--(mark_dropped)--> dropped
      |  |                          ^                                   |
      |  |                          +------(put_back: the learner stopped before training the batch)
      v  |
    queued  <--(lease expired, holder dead or gone, lease returned; restore: buffered/training -> queued)

A group is accepted for any open prompt that has no accepted group yet, whoever holds its lease now, queued
prompts included (a late group from an actor whose lease expired beats regenerating it). Later groups for the
prompt are duplicates. A prompt also ends dropped when drawn too long (max_prompt_tokens) or after
max_lease_attempts leases without a group.

Admission control (AReaL's bound): a lease is granted only while
    accepted + in_flight <= (max_staleness + version + 1) * groups_per_step,
accepted = buffered + training + trained (dropped groups do not count, so replacements can be leased),
in_flight = leased prompts. max_staleness = 0 makes the run synchronous. `version` there is the newest version
the fleet has received (set_fleet_version) when the learner broadcasts in the background and has stepped past it:
the actors generate with those weights, so a bound on the learner's own version would admit groups that are
already stale when the learner gets to them.

Dynamic sampling (filter_groups): zero-variance groups are dropped on arrival, freeing their slot (group_filter.py).

Fairness: an actor holds at most actor_cap = max(min_actor_leases, ceil((capacity + in_flight) / live_actors))
leases, its fair share of all that admission allows (floor: one lease request, the actors' prompts_per_lease).

Every prompt that ends (trained or dropped) is also appended to `journal`, which the learner drains into the run's
ledger (learner/ledger.py): an audit trail, independent of the counters, of which group went into which step.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from typing import Any, Callable, Optional

import numpy as np

from gspo_async.learner.group_filter import constant_reward, reward_key
from gspo_async.learner.prompts import Prompt, PromptSource
from gspo_async.learner.records import ActorRecord, OpenPrompt, finite_number, group_record
from gspo_async.protocol.ids import check_actor_id, suffixed
from gspo_async.protocol.messages import ProtocolError, RolloutGroup
from gspo_async.telemetry.names import length_bin  # bin b holds [2^(b-1), 2^b - 1] tokens

LEASED, QUEUED, BUFFERED, TRAINING = "leased", "queued", "buffered", "training"
STATE_FORMAT = 1
RECENT_GROUP_IDS = 65536  # ids of ended groups remembered to tell a reused id from a resend (~10 MB at most)


class Coordinator:
    """Leases, admission, buffer, stale drops and membership of one learner.

    prompts: where prompts come from. groups_per_step: groups per training batch (B). group_size: G.
    max_staleness: eta of the admission bound and of the drop policy (versions). lease_timeout_s: a lease not
    answered by then is re-issued. heartbeat_timeout_s: an actor silent this long is dead and loses its leases.
    max_buffered_groups: above this, groups get 'retry_later'. drop_stale: drop groups whose staleness
    (version - oldest token version) exceeds max_staleness when the batch is taken. max_prompt_tokens: longer
    prompts are dropped when drawn. max_lease_attempts: a prompt leased this often without a group is dropped
    (a prompt that kills actors must not kill them all). min_actor_leases: the floor of the per-actor lease cap
    (see the module docstring; the actors' prompts_per_lease). clock: seconds, monotonic.
    """

    def __init__(self, prompts: PromptSource, *, groups_per_step: int, group_size: int, max_staleness: int,
                 lease_timeout_s: float, heartbeat_timeout_s: float, max_buffered_groups: Optional[int] = None,
                 drop_stale: bool = True, max_prompt_tokens: Optional[int] = None,
                 max_lease_attempts: Optional[int] = 8, min_actor_leases: int = 1, filter_groups: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        for name, value, low in (("groups_per_step", groups_per_step, 1), ("group_size", group_size, 1),
                                 ("max_staleness", max_staleness, 0), ("min_actor_leases", min_actor_leases, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name, value in (("lease_timeout_s", lease_timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        max_buffered_groups = 4 * groups_per_step if max_buffered_groups is None else max_buffered_groups
        if max_buffered_groups < groups_per_step:
            raise ValueError(f"max_buffered_groups={max_buffered_groups} is below groups_per_step={groups_per_step}: "
                             "a batch could never fill; raise it to at least groups_per_step")
        self.prompts = prompts
        self.groups_per_step, self.group_size, self.max_staleness = groups_per_step, group_size, max_staleness
        self.lease_timeout_s, self.heartbeat_timeout_s = float(lease_timeout_s), float(heartbeat_timeout_s)
        self.max_buffered_groups, self.drop_stale = max_buffered_groups, drop_stale
        self.max_prompt_tokens, self.max_lease_attempts = max_prompt_tokens, max_lease_attempts
        self.min_actor_leases = min_actor_leases
        if filter_groups and group_size < 2:
            raise ValueError("filter_groups needs groups of at least 2 responses: a single response always has a "
                             "constant reward, so every group would be filtered")
        self.filter_groups = filter_groups
        self.clock = clock
        self.version = 0
        self._allowed_version = 0
        self.fleet_version: Optional[int] = None  # newest version broadcast to the fleet (None: as `version`)

        self._open: dict[int, OpenPrompt] = {}
        self._queue: deque[int] = deque()  # queued prompt ids; the front is leased first
        self._leased: dict[int, None] = {}  # leased prompt ids (an ordered set)
        self._buffer: deque[int] = deque()  # buffered prompt ids in arrival order
        self._training: dict[int, None] = {}
        self._group_ids: dict[str, int] = {}  # group id -> prompt id, for groups of open prompts
        # the same for the latest RECENT_GROUP_IDS ended prompts: a reused id is told from a resend after the end
        self._ended_group_ids: OrderedDict[str, int] = OrderedDict()
        self._dropped: dict[int, str] = {}  # ended prompt id -> drop reason (absent: trained)
        self._actors: dict[str, ActorRecord] = {}
        self.n: Counter[str] = Counter()  # cumulative event counts (see counters())
        self.rejected: Counter[str] = Counter()  # rejected messages by error code
        self.groups_rejected: Counter[str] = Counter()
        self.dropped_groups: Counter[str] = Counter()  # by reason
        self.dropped_tokens: Counter[str] = Counter()
        self.dropped_prompts: Counter[str] = Counter()
        self.lengths: dict[str, Counter[int]] = {"kept": Counter(), "dropped": Counter()}  # response length bins
        self.staleness: Counter[int] = Counter()  # lag of the groups handed out for training
        self.filtered: Counter[str] = Counter()  # groups dropped by filter_groups, by their (constant) reward
        self.journal: list[dict[str, Any]] = []  # prompts ended since the last drain_journal()
        self.intake_closed = False  # set by close_intake(): the learner is saving its final state

    # -------------------------------------------------------------------------------------------------- sizes
    @property
    def accepted(self) -> int:
        return len(self._buffer) + len(self._training) + self.n["prompts_trained"]

    @property
    def in_flight(self) -> int:
        return len(self._leased)

    def capacity(self) -> int:
        """Leases admission allows right now (>= 0)."""
        bound = (self.max_staleness + self.admission_version + 1) * self.groups_per_step
        return max(0, bound - self.accepted - self.in_flight)

    def actor_cap(self) -> int:
        """Leases one actor may hold at a time (see the module docstring)."""
        return max(self.min_actor_leases, -(-(self.capacity() + self.in_flight) // max(1, len(self._actors))))

    @property
    def exhausted(self) -> bool:
        """No prompt left to lease, ever (finite source drawn and nothing queued)."""
        return not self._queue and self.prompts.exhausted

    @property
    def finished(self) -> bool:
        """Every prompt of a finite source has ended."""
        return self.exhausted and not self._open

    # ------------------------------------------------------------------------------------------- membership
    def register(self, actor_id: str, instance: str, engine: str, info: Optional[dict[str, Any]] = None) -> str:
        """Add an actor (or refresh a reconnecting one); returns its id, made unique if another live process
        already uses `actor_id`."""
        now = self.clock()
        known = self._actors.get(actor_id)
        if known is not None and known.instance == instance:
            known.last_contact, known.registrations = now, known.registrations + 1
            return actor_id
        check_actor_id(actor_id)  # the wire checked it already; a direct caller gets the same rule
        if known is not None:  # the renamed id obeys the id rule too: the base is shortened to fit the suffix
            k = 2
            while suffixed(actor_id, k) in self._actors:
                k += 1
            actor_id = suffixed(actor_id, k)
        self._actors[actor_id] = ActorRecord(actor_id, instance, engine, dict(info or {}), now, now)
        self.n["actors_registered"] += 1
        return actor_id

    def instance_of(self, actor_id: str) -> Optional[str]:
        actor = self._actors.get(actor_id)
        return actor.instance if actor is not None else None

    def is_alive(self, actor_id: str) -> bool:
        return actor_id in self._actors

    def touch(self, actor_id: str) -> None:
        """Any message from the actor proves it alive."""
        actor = self._actors.get(actor_id)
        if actor is not None:
            actor.last_contact = self.clock()

    def heartbeat(self, actor_id: str, version: int, stats: dict[str, Any], unacked: int = 0) -> None:
        """Record an actor's heartbeat; ProtocolError('forged_version') for weights that never left the learner."""
        if version > self.allowed_version:
            raise ProtocolError("forged_version", f"heartbeat names weight version {version}, the learner is at "
                                                  f"{self.allowed_version}", msg_type="heartbeat")
        actor = self._actors.get(actor_id)
        if actor is not None:
            actor.last_contact, actor.version, actor.stats, actor.unacked = self.clock(), version, dict(stats), unacked

    def goodbye(self, actor_id: str) -> list[int]:
        """The actor leaves: its leases go back to the front of the queue. Returns their prompt ids."""
        if self._actors.pop(actor_id, None) is None:
            return []
        self.n["actors_left"] += 1
        return self._release(self.leases_of(actor_id), "leases_returned")

    def leases_of(self, actor_id: str) -> list[int]:
        return [pid for pid in self._leased if self._open[pid].holder == actor_id]

    def live_actor_ids(self, heard_within_s: Optional[float] = None) -> list[str]:
        """Actors not declared dead; with `heard_within_s`, only those heard from within that many seconds."""
        if heard_within_s is None:
            return list(self._actors)
        now = self.clock()
        return [a.actor_id for a in self._actors.values() if now - a.last_contact <= heard_within_s]

    # ----------------------------------------------------------------------------------------------- leases
    def lease(self, actor_id: str, n: int) -> tuple[list[Prompt], str]:
        """Up to `n` prompts for `actor_id`, queued ones first; (prompts, reason): reason is '' when any were
        granted, else 'admission' (closed until the next version or a drop), 'actor_cap' (the actor holds its
        fair share already, see actor_cap) or 'exhausted'."""
        granted: list[Prompt] = []
        now = self.clock()
        room = self.actor_cap() - sum(1 for pid in self._leased if self._open[pid].holder == actor_id)
        want = 0 if self.intake_closed else min(n, self.capacity(), room)
        while len(granted) < want:
            if self._queue:
                entry = self._open[self._queue.popleft()]
                if self.max_lease_attempts is not None and entry.attempts >= self.max_lease_attempts:
                    self._end(entry.prompt.prompt_id, "lease_attempts")
                    continue
            else:
                prompt = self.prompts.next()
                if prompt is None:
                    break
                self.n["prompts_issued"] += 1
                entry = self._open[prompt.prompt_id] = OpenPrompt(prompt, QUEUED)
                if self.max_prompt_tokens is not None and len(prompt.tokens) > self.max_prompt_tokens:
                    self._end(prompt.prompt_id, "prompt_too_long")
                    continue
            entry.state, entry.holder, entry.expires_at = LEASED, actor_id, now + self.lease_timeout_s
            entry.since = now
            entry.attempts += 1
            self._leased[entry.prompt.prompt_id] = None
            self.n["leases_issued"] += 1
            self.n["leases_reissued"] += entry.attempts > 1
            granted.append(entry.prompt)
        if granted:
            return granted, ""
        if self.exhausted:
            return granted, "exhausted"
        if room <= 0 and self.capacity() > 0:
            self.n["leases_capped"] += 1
            return granted, "actor_cap"
        return granted, "admission"

    def return_leases(self, actor_id: str, prompt_ids: list[int]) -> list[int]:
        """The actor gives back leases it will not finish (only its own count)."""
        mine = [pid for pid in prompt_ids if pid in self._leased and self._open[pid].holder == actor_id]
        return self._release(mine, "leases_returned")

    def orphan(self, actor_id: str) -> list[int]:
        """The actor's connection closed (it most likely died): its leases go back to the front of the queue now,
        not when heartbeats declare it dead. It stays registered; a group it still delivers is accepted if its
        prompt has none yet, as for any re-issued lease."""
        return self._release(self.leases_of(actor_id), "leases_orphaned")

    def _release(self, prompt_ids: list[int], counter: str) -> list[int]:
        """Leased prompts back to the front of the queue, lowest id first."""
        for pid in sorted(set(prompt_ids), reverse=True):
            entry = self._open[pid]
            del self._leased[pid]
            entry.state, entry.holder = QUEUED, ""
            self._queue.appendleft(pid)
            self.n[counter] += 1
        return sorted(set(prompt_ids))

    def tick(self) -> dict[str, list]:
        """Expire leases and declare silent actors dead; call often. Returns {'dead': ids, 'expired': ids}."""
        now = self.clock()
        dead = [a.actor_id for a in self._actors.values() if now - a.last_contact > self.heartbeat_timeout_s]
        for actor_id in dead:
            del self._actors[actor_id]
            self.n["actors_dead"] += 1
            self.orphan(actor_id)
        expired = [pid for pid in self._leased if now >= self._open[pid].expires_at]
        self._release(expired, "leases_expired")
        return {"dead": dead, "expired": expired}

    # ----------------------------------------------------------------------------------------------- groups
    def offer(self, actor_id: str, group: RolloutGroup) -> str:
        """Take a validated group from `actor_id`: 'accepted', 'duplicate', 'dropped' (its prompt already ended
        dropped) or 'retry_later' (buffer full, or intake closed). Raises ProtocolError for a prompt never issued,
        a prompt whose tokens differ from the issued ones, or a group id accepted before for another prompt."""
        self.n["groups_received"] += 1
        pid = group.prompt_id
        if self.intake_closed:  # not accepted after the final state is taken: the actor keeps it and resends
            self.n["groups_retry_later"] += 1
            return "retry_later"
        known = self._group_ids.get(group.group_id, self._ended_group_ids.get(group.group_id))
        if known is not None and known != pid:  # never swallowed as a duplicate: the other prompt would wait
            raise ProtocolError("group_id_reused", f"group id {group.group_id} was already accepted for another "
                                "prompt; give every group its own id", ref=group.group_id, msg_type="rollout_group")
        if group.group_id in self._group_ids:  # a resend (an ended prompt's resend: the prompt-level check below)
            self.n["groups_duplicate"] += 1
            return "duplicate"
        if not 0 <= pid < self.prompts.next_prompt_id:
            raise ProtocolError("unknown_prompt", f"prompt {pid} was never issued", ref=group.group_id,
                                msg_type="rollout_group")
        entry = self._open.get(pid)
        if entry is None or entry.state in (BUFFERED, TRAINING):
            if entry is None and pid in self._dropped:
                self.n["groups_late_for_dropped"] += 1
                return "dropped"
            self.n["groups_duplicate"] += 1
            return "duplicate"
        if not np.array_equal(group.prompt_tokens, entry.prompt.tokens):
            raise ProtocolError("prompt_mismatch", f"prompt {pid}: tokens differ from the leased prompt",
                                ref=group.group_id, msg_type="rollout_group")
        if len(self._buffer) >= self.max_buffered_groups:
            self.n["groups_retry_later"] += 1
            return "retry_later"
        if entry.state == LEASED:
            del self._leased[pid]
            if entry.holder != actor_id:
                self.n["leases_superseded"] += 1
        else:
            self._queue.remove(pid)
        group.actor_id = actor_id  # the registered sender, not what the message claims
        entry.state, entry.holder, entry.group = BUFFERED, "", group
        entry.since = self.clock()
        self._buffer.append(pid)
        self._group_ids[group.group_id] = pid
        self.n["groups_accepted"] += 1
        self.n["tokens_received"] += group.num_tokens
        actor = self._actors.get(actor_id)
        if actor is not None:
            actor.groups_accepted += 1
            actor.tokens_accepted += group.num_tokens
            actor.delivered_version = int(group.min_version)
            actor.delivered_lag = max(self.version - int(group.min_version), 0)
        if self.filter_groups:
            reward = constant_reward(group)
            if reward is not None:  # no signal: dropped now, so its admission slot is leased again at once
                self.filtered[reward_key(reward)] += 1
                self._end(pid, "filtered")
                return "dropped"
        return "accepted"

    def close_intake(self) -> None:
        """The learner is stopping: from now on no lease is granted and no group accepted ('retry_later', so the
        actor keeps it for a resumed learner). The state saved afterwards then holds every group acknowledged as
        accepted."""
        self.intake_closed = True

    def count_rejected(self, code: str, is_group: bool) -> None:
        self.rejected[code] += 1
        if is_group:
            self.groups_rejected[code] += 1

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take(self, n: int) -> list[RolloutGroup]:
        """Up to `n` buffered groups in arrival order for training; on the way, groups staler than
        max_staleness at the current version are dropped (if drop_stale)."""
        out: list[RolloutGroup] = []
        while self._buffer and len(out) < n:
            pid = self._buffer.popleft()
            entry = self._open[pid]
            group = entry.group
            lag = self.version - group.min_version
            if self.drop_stale and lag > self.max_staleness:
                self._end(pid, "stale")
                continue
            entry.state, entry.taken_at = TRAINING, self.version
            self._training[pid] = None
            self.staleness[lag] += 1
            for length in group.response_lengths:
                self.lengths["kept"][length_bin(length)] += 1
            out.append(group)
        return out

    def put_back(self, groups: list[RolloutGroup]) -> None:
        """Taken groups that were not trained on (the learner stopped while gathering a batch) go back to the front
        of the buffer in their order, and take()'s counts of them are undone: a stop mid-batch leaves them buffered,
        as the final state and summary then say, never half-way in training."""
        for group in reversed(groups):
            pid = self._taken(group)
            entry = self._open[pid]
            del self._training[pid]
            self._buffer.appendleft(pid)
            self.staleness[entry.taken_at - group.min_version] -= 1
            entry.state, entry.taken_at = BUFFERED, -1
            for length in group.response_lengths:
                self.lengths["kept"][length_bin(length)] -= 1
        self.staleness, self.lengths["kept"] = +self.staleness, +self.lengths["kept"]  # drop zero counts

    def mark_trained(self, groups: list[RolloutGroup]) -> None:
        """These taken groups were trained on: their prompts end as trained."""
        for group in groups:
            pid = self._taken(group)
            entry = self._open.pop(pid)
            del self._training[pid]
            self._forget_group_id(group.group_id)  # from now on the prompt-level check answers resends
            self.n["prompts_trained"] += 1
            self.n["groups_trained"] += 1
            self.n["tokens_trained"] += group.num_tokens
            self.journal.append({"prompt_id": pid, "outcome": "trained", **group_record(group),
                                 "trained_at": entry.taken_at})

    def mark_dropped(self, groups: list[RolloutGroup], reason: str) -> None:
        """These taken groups will not be trained on (e.g. a filter): their prompts end dropped with `reason`."""
        for group in groups:
            self._end(self._taken(group), reason)

    def _taken(self, group: RolloutGroup) -> int:
        entry = self._open.get(group.prompt_id)
        if entry is None or entry.state != TRAINING or entry.group is not group:
            raise ValueError(f"group {group.group_id} (prompt {group.prompt_id}) was not handed out by take() or "
                             "was already marked trained/dropped")
        return group.prompt_id

    def _end(self, pid: int, reason: str) -> None:
        """End prompt `pid` as dropped, whatever state it is in, recording its group's lengths if any."""
        entry = self._open.pop(pid)
        if entry.state == BUFFERED and pid in self._buffer:  # take() pops it before dropping it
            self._buffer.remove(pid)
        self._training.pop(pid, None)
        self._leased.pop(pid, None)
        if entry.group is not None:
            self._forget_group_id(entry.group.group_id)
            self.dropped_groups[reason] += 1
            self.dropped_tokens[reason] += entry.group.num_tokens
            for length in entry.group.response_lengths:
                self.lengths["dropped"][length_bin(length)] += 1
        self._dropped[pid] = reason
        self.dropped_prompts[reason] += 1
        self.journal.append({"prompt_id": pid, "outcome": "dropped", "reason": reason,
                             **(group_record(entry.group) if entry.group is not None else {})})

    def _forget_group_id(self, group_id: str) -> None:
        """The group's prompt ended: keep its id among the recent ones only."""
        pid = self._group_ids.pop(group_id, None)
        if pid is not None:
            self._ended_group_ids[group_id] = pid
            if len(self._ended_group_ids) > RECENT_GROUP_IDS:
                self._ended_group_ids.popitem(last=False)

    def drain_journal(self) -> list[dict[str, Any]]:
        """The prompts that ended since the last call, in order: {prompt_id, outcome: trained|dropped, reason (if
        dropped), group_id, actor_id, min_version (if a group existed), trained_at (trained: the weight version the
        learner held when it took the group, so its staleness is trained_at - min_version)}."""
        out, self.journal = self.journal, []
        return out

    # ---------------------------------------------------------------------------------------------- version
    def set_version(self, version: int) -> None:
        """The learner published weights `version` (never decreasing): admission widens by groups_per_step."""
        if version < self.version:
            raise ValueError(f"weight version {version} is below the current {self.version}; versions only grow")
        self.version = int(version)
        self._allowed_version = max(self._allowed_version, self.version)

    def set_fleet_version(self, version: int) -> None:
        """A broadcast of weights `version` reached the fleet (never decreasing)."""
        self.fleet_version = max(int(version), -1 if self.fleet_version is None else self.fleet_version)

    @property
    def admission_version(self) -> int:
        """The version admission counts from: the learner's, or the fleet's newest when that is older."""
        return self.version if self.fleet_version is None else min(self.version, self.fleet_version)

    def allow_version(self, version: int) -> None:
        """Groups may name weights up to `version` (about to be published) before set_version is called."""
        self._allowed_version = max(self._allowed_version, int(version))

    @property
    def allowed_version(self) -> int:
        """The newest weight version a group may name; newer ones are forged."""
        return max(self._allowed_version, self.version)

    # -------------------------------------------------------------------------------------------- reporting
    def actors(self) -> list[dict[str, Any]]:
        """Live actors for telemetry: id, engine, applied version, rate, leases held, seconds since contact."""
        now = self.clock()
        held = Counter(self._open[pid].holder for pid in self._leased)
        return [{"actor_id": a.actor_id, "engine": a.engine, "version": a.version,
                 "tokens_per_s": finite_number(a.stats.get("tokens_per_s")), "leases": held[a.actor_id],
                 "last_contact_s": now - a.last_contact, "registered_s": now - a.registered_at,
                 "groups_accepted": a.groups_accepted, "tokens_accepted": a.tokens_accepted, "unacked": a.unacked,
                 "delivered_version": a.delivered_version, "delivered_lag": a.delivered_lag,
                 "registrations": a.registrations, "stats": dict(a.stats), "info": dict(a.info)}
                for a in self._actors.values()]

    def ages(self) -> dict[str, float]:
        """Seconds since each in-flight lease was granted and each buffered group arrived: mean and max."""
        now = self.clock()
        out: dict[str, float] = {}
        for name, pids in (("leases", self._leased), ("buffer", self._buffer)):
            ages = [now - self._open[pid].since for pid in pids if pid in self._open]
            out[f"{name}/age_mean_s"] = sum(ages) / len(ages) if ages else 0.0
            out[f"{name}/age_max_s"] = max(ages, default=0.0)
        return out

    def counters(self) -> dict[str, Any]:
        """Cumulative counts and current sizes (flat numbers, plus dicts keyed by reason / bin / lag)."""
        out: dict[str, Any] = {k: 0 for k in (
            "groups_received", "groups_accepted", "groups_duplicate", "groups_retry_later", "groups_trained",
            "groups_late_for_dropped", "tokens_received", "tokens_trained", "leases_issued", "leases_reissued",
            "leases_expired", "leases_returned", "leases_orphaned", "leases_superseded", "prompts_issued",
            "prompts_trained", "actors_registered", "actors_dead", "actors_left", "leases_capped")}
        out.update(self.n)
        out.update(version=self.version, buffered=self.buffered, in_flight=self.in_flight,
                   training=len(self._training), pending_reissue=len(self._queue), actors_alive=len(self._actors),
                   capacity=self.capacity(), actor_cap=self.actor_cap(),
                   groups_rejected=sum(self.groups_rejected.values()), messages_rejected=sum(self.rejected.values()),
                   groups_dropped=sum(self.dropped_groups.values()), prompts_dropped=sum(self.dropped_prompts.values()),
                   tokens_dropped=sum(self.dropped_tokens.values()),
                   dropped_stale=self.dropped_groups["stale"], dropped_stale_tokens=self.dropped_tokens["stale"],
                   rejected_by_reason=dict(self.rejected), groups_rejected_by_reason=dict(self.groups_rejected),
                   groups_dropped_by_reason=dict(self.dropped_groups),
                   tokens_dropped_by_reason=dict(self.dropped_tokens),
                   prompts_dropped_by_reason=dict(self.dropped_prompts),
                   length_hist_kept=dict(self.lengths["kept"]), length_hist_dropped=dict(self.lengths["dropped"]),
                   staleness_hist=dict(self.staleness), groups_filtered=self.dropped_groups["filtered"],
                   groups_filtered_by_reward=dict(self.filtered), **{f"size_{k}": n for k, n in self.sizes().items()})
        return out

    def sizes(self) -> dict[str, int]:
        """Entries per internal structure: bounded by admission and fleet size, except `dropped` (per dropped prompt)."""
        return {k: len(v) for k, v in (("open", self._open), ("leased", self._leased), ("buffer", self._buffer),
                ("queue", self._queue), ("training", self._training), ("group_ids", self._group_ids),
                ("ended_group_ids", self._ended_group_ids), ("actors", self._actors), ("journal", self.journal), ("dropped", self._dropped))}

    def accounting(self) -> dict[str, Any]:
        """issued == trained + dropped + in_flight + buffered + training + pending_reissue, from independent tallies:
        issued from the prompt source's cursor, trained / dropped from the end-of-life counters, the rest from the
        per-state sets."""
        acc = {"issued": self.prompts.next_prompt_id,
               "trained": self.n["prompts_trained"], "dropped": sum(self.dropped_prompts.values()),
               "in_flight": len(self._leased), "buffered": len(self._buffer), "training": len(self._training),
               "pending_reissue": len(self._queue)}
        parts = sum(v for k, v in acc.items() if k != "issued")
        states = Counter(e.state for e in self._open.values())  # the per-prompt records must agree with the sets
        by_sets = Counter({LEASED: acc["in_flight"], BUFFERED: acc["buffered"], TRAINING: acc["training"],
                           QUEUED: acc["pending_reissue"]})
        acc["balanced"] = (acc["issued"] == parts == self.n["prompts_issued"] and +states == +by_sets)
        return acc

    # ------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state. Group data is not saved: buffered and training prompts are re-issued on restore."""
        return {
            "format": STATE_FORMAT, "version": self.version, "source": self.prompts.state_dict(),
            "open": [{**e.prompt.to_dict(), "state": e.state, "holder": e.holder, "attempts": e.attempts}
                     for e in self._open.values()],
            "queue": list(self._queue), "dropped": {str(k): v for k, v in self._dropped.items()},
            "n": dict(self.n), "rejected": dict(self.rejected), "groups_rejected": dict(self.groups_rejected),
            "dropped_groups": dict(self.dropped_groups), "dropped_tokens": dict(self.dropped_tokens),
            "dropped_prompts": dict(self.dropped_prompts),
            "lengths": {k: {str(b): c for b, c in v.items()} for k, v in self.lengths.items()},
            "staleness": {str(k): v for k, v in self.staleness.items()},
            "filtered": dict(self.filtered),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore into a fresh coordinator (its PromptSource fresh on the same stream). Leased prompts stay leased
        to their holders for one more lease timeout, so groups the actors resend are accepted; buffered and
        training prompts lost their data with the old process and are queued first for re-issue."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"coordinator state format {state.get('format')!r} is not {STATE_FORMAT}")
        if self._open or self.n:
            raise ValueError("load_state_dict needs a fresh Coordinator")
        self.prompts.load_state_dict(state["source"])
        self.version = int(state["version"])
        now = self.clock()
        requeue = []
        for d in state["open"]:
            entry = OpenPrompt(Prompt.from_dict(d), QUEUED, attempts=int(d["attempts"]))
            pid = entry.prompt.prompt_id
            self._open[pid] = entry
            if d["state"] == LEASED:
                entry.state, entry.holder, entry.expires_at = LEASED, d["holder"], now + self.lease_timeout_s
                self._leased[pid] = None
            elif d["state"] in (BUFFERED, TRAINING):
                requeue.append(pid)
        self._queue = deque(sorted(requeue) + [pid for pid in state["queue"] if pid in self._open])
        self._dropped = {int(k): v for k, v in state["dropped"].items()}
        self.n = Counter(state["n"])
        self.rejected, self.groups_rejected = Counter(state["rejected"]), Counter(state["groups_rejected"])
        self.dropped_groups, self.dropped_tokens = Counter(state["dropped_groups"]), Counter(state["dropped_tokens"])
        self.dropped_prompts = Counter(state["dropped_prompts"])
        self.lengths = {k: Counter({int(b): c for b, c in v.items()}) for k, v in state["lengths"].items()}
        self.staleness = Counter({int(k): v for k, v in state["staleness"].items()})
        self.filtered = Counter(state.get("filtered", {}))  # absent in states saved before the filter existed
