"""Held-out evaluation on the fleet: evaluation leases, their groups and the results by weight version.

The learner starts a *round* for a weight version (``start``): every item of every eval set is queued as an
evaluation prompt. The endpoint grants evaluation prompts before training prompts (a lease reply holds one kind
only), outside the admission bound: they are never trained on, so they cannot make training data stale. An actor
generates ``n`` responses per evaluation prompt with the evaluation sampling and pushes them as a rollout group;
the endpoint routes a group here when its prompt id is an evaluation id (``owns``), so the two kinds never mix:

- evaluation prompt ids are ``EVAL_PROMPT_ID_BASE + k`` (2^62 and up); training prompt ids count from 0 and never
  get there, and the coordinator refuses an id it did not issue. Which kind a group is follows from the id the
  learner issued, never from anything the actor says.
- a group is counted for a round only if every token came from weights of the round's version or later (an actor
  that had not applied the version yet has its prompt queued again); the round reports the newest version seen.

A round is complete when every prompt has its group; ``completed`` hands out finished rounds in order, one result
per set: accuracy (mean reward over all responses), pass_at_k (share of prompts with a response of reward >= 1,
k = n) and mean_length (response tokens). Leases expire after ``lease_timeout_s`` (the prompt is queued again);
an actor that leaves hands its leases back (``forget``). Pure bookkeeping with an injected clock: the endpoint
calls it under its lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from gspo_async.protocol.messages import ProtocolError, RolloutGroup

EVAL_PROMPT_ID_BASE = 1 << 62  # evaluation prompt ids start here; training ids count from 0
DEFAULT_SET = "default"  # the task's own eval split; logged under eval/<key>, other sets under eval/<set>/<key>


@dataclass
class EvalPrompt:
    """One evaluation prompt as leased. tokens: int32 [prompt_len]; eval_set: the set's name."""

    prompt_id: int
    tokens: np.ndarray
    answer: str
    meta: dict[str, Any]
    eval_set: str


@dataclass
class _Round:
    version: int
    started_at: float
    prompts: dict[int, EvalPrompt]  # prompt id -> prompt, every prompt of the round
    rewards: dict[int, list[float]] = field(default_factory=dict)  # prompt id -> its group's rewards
    lengths: dict[int, int] = field(default_factory=dict)  # prompt id -> response tokens of its group
    newest_version: int = -1

    @property
    def done(self) -> bool:
        return len(self.rewards) == len(self.prompts)


def eval_metrics(set_name: str, result: dict[str, float]) -> dict[str, float]:
    """Metric names of one set's result: eval/<key> for the default set, eval/<set>/<key> for the others."""
    prefix = "eval/" if set_name == DEFAULT_SET else f"eval/{set_name}/"
    return {prefix + k: float(result[k]) for k in ("accuracy", "pass_at_k", "mean_length")}


class FleetEvaluation:
    """Evaluation rounds served by the actors.

    sets: set name -> [(tokens int32 [len], answer, meta)], each non-empty; none: evaluation is not on the
    fleet (nothing is ever leased, every evaluation id is unknown). n: responses per prompt (1..G).
    lease_timeout_s: an evaluation lease not answered by then is queued again. clock: seconds, monotonic.
    """

    def __init__(self, sets: dict[str, list[tuple[np.ndarray, str, dict[str, Any]]]], *, n: int,
                 lease_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        empty = [name for name, items in sets.items() if not items]
        if empty:
            raise ValueError(f"eval set(s) {empty} have no items: give each an eval split (eval_size > 0) or leave "
                             "it out of task.eval_sets")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} responses per evaluation prompt must be an int >= 1")
        if not lease_timeout_s > 0:
            raise ValueError(f"lease_timeout_s must be > 0 seconds, got {lease_timeout_s!r}")
        self.sets = {name: list(items) for name, items in sets.items()}
        self.n, self.lease_timeout_s, self.clock = n, float(lease_timeout_s), clock
        self._next_id = EVAL_PROMPT_ID_BASE
        self._rounds: OrderedDict[int, _Round] = OrderedDict()  # round id (its first prompt id) -> round
        self._round_of: dict[int, int] = {}  # open prompt id -> round id
        self._queue: deque[int] = deque()
        self._leased: dict[int, tuple[str, float]] = {}  # prompt id -> (holder, expires_at)
        self._done_ids: set[int] = set()  # prompt ids whose group was counted (a resend is a duplicate), kept
        self.counts: dict[str, int] = {"rounds_started": 0, "rounds_completed": 0, "leases_issued": 0,
                                       "leases_expired": 0, "groups_counted": 0, "groups_older_weights": 0}

    @staticmethod
    def owns(prompt_id: int) -> bool:
        """Whether `prompt_id` is an evaluation id (never a training one)."""
        return prompt_id >= EVAL_PROMPT_ID_BASE

    def group_size(self, prompt_id: int) -> Optional[int]:
        """n for an evaluation prompt this learner issued (open or answered); None for any other id: a training
        prompt, or an id never issued, which the coordinator then refuses as unknown."""
        return self.n if prompt_id in self._round_of or prompt_id in self._done_ids else None

    @property
    def pending(self) -> int:
        """Rounds started and not yet handed out by `completed`."""
        return len(self._rounds)

    def start(self, version: int) -> int:
        """Queue a round of every set for weights `version`; returns the number of prompts queued."""
        if not self.sets:
            raise RuntimeError("no eval sets: this learner does not evaluate on the fleet (learner.eval_on)")
        prompts: dict[int, EvalPrompt] = {}
        for name, items in self.sets.items():
            for tokens, answer, meta in items:
                pid, self._next_id = self._next_id, self._next_id + 1
                prompts[pid] = EvalPrompt(pid, np.asarray(tokens, dtype=np.int32), str(answer), dict(meta), name)
        round_id = next(iter(prompts))
        self._rounds[round_id] = _Round(int(version), self.clock(), prompts)
        for pid in prompts:
            self._round_of[pid] = round_id
            self._queue.append(pid)
        self.counts["rounds_started"] += 1
        return len(prompts)

    def lease(self, actor_id: str, k: int) -> list[EvalPrompt]:
        """Up to `k` queued evaluation prompts for `actor_id` (oldest round first)."""
        out: list[EvalPrompt] = []
        expires = self.clock() + self.lease_timeout_s
        while self._queue and len(out) < k:
            pid = self._queue.popleft()
            self._leased[pid] = (actor_id, expires)
            out.append(self._rounds[self._round_of[pid]].prompts[pid])
        self.counts["leases_issued"] += len(out)
        return out

    def return_leases(self, actor_id: str, prompt_ids: list[int]) -> None:
        """`actor_id` will not finish these (only its own evaluation leases count; other ids are ignored)."""
        mine = [pid for pid in prompt_ids if self._leased.get(pid, ("",))[0] == actor_id]
        self._requeue(mine)

    def forget(self, actor_id: str) -> None:
        """The actor left or died: its evaluation leases are queued again."""
        self._requeue([pid for pid, (holder, _) in self._leased.items() if holder == actor_id])

    def tick(self) -> int:
        """Queue expired leases again; returns how many expired."""
        now = self.clock()
        expired = [pid for pid, (_, at) in self._leased.items() if now >= at]
        self._requeue(expired)
        self.counts["leases_expired"] += len(expired)
        return len(expired)

    def _requeue(self, prompt_ids: list[int]) -> None:
        for pid in sorted(prompt_ids, reverse=True):  # to the front, lowest id first
            del self._leased[pid]
            self._queue.appendleft(pid)

    def offer(self, actor_id: str, group: RolloutGroup) -> str:
        """Count an evaluation group: 'accepted', 'duplicate' (counted before) or 'dropped' (made with weights
        older than the round's version: its prompt is queued again). ProtocolError for an id never issued, other
        tokens than the leased prompt's or a number of responses other than n."""
        pid = group.prompt_id
        if pid in self._done_ids:
            return "duplicate"
        round_id = self._round_of.get(pid)
        if round_id is None:
            raise ProtocolError("unknown_prompt", f"evaluation prompt {pid} was never issued (or its round ended)",
                                ref=group.group_id, msg_type=RolloutGroup.TYPE)
        rnd = self._rounds[round_id]
        prompt = rnd.prompts[pid]
        if not np.array_equal(group.prompt_tokens, prompt.tokens):
            raise ProtocolError("prompt_mismatch", f"evaluation prompt {pid}: tokens differ from the leased prompt",
                                ref=group.group_id, msg_type=RolloutGroup.TYPE)
        if len(group.responses) != self.n:
            raise ProtocolError("group_size", f"{len(group.responses)} responses to evaluation prompt {pid}, the "
                                f"learner asks for {self.n} (learner.eval_n)", ref=group.group_id,
                                msg_type=RolloutGroup.TYPE)
        if group.min_version < rnd.version:
            self.counts["groups_older_weights"] += 1
            if pid in self._leased:
                self._requeue([pid])
            return "dropped"
        if pid in self._leased:
            del self._leased[pid]
        else:
            self._queue.remove(pid)  # expired and queued again meanwhile: this answer counts
        del self._round_of[pid]
        self._done_ids.add(pid)
        rnd.rewards[pid] = [float(r.reward) for r in group.responses]
        rnd.lengths[pid] = group.num_tokens
        rnd.newest_version = max(rnd.newest_version, group.max_version)
        self.counts["groups_counted"] += 1
        return "accepted"

    def completed(self) -> list[dict[str, Any]]:
        """Finished rounds in the order they were started (a later round waits for earlier ones):
        [{version, newest_version, seconds, sets: {name: {accuracy, pass_at_k, mean_length, prompts}}}]."""
        out = []
        while self._rounds:
            round_id, rnd = next(iter(self._rounds.items()))
            if not rnd.done:
                break
            del self._rounds[round_id]
            sets: dict[str, dict[str, float]] = {}
            for name in self.sets:
                pids = [pid for pid, p in rnd.prompts.items() if p.eval_set == name]
                rewards = [rnd.rewards[pid] for pid in pids]
                responses = sum(len(r) for r in rewards)
                sets[name] = {"accuracy": sum(sum(r) for r in rewards) / responses,
                              "pass_at_k": sum(max(r) >= 1.0 for r in rewards) / len(pids),
                              "mean_length": sum(rnd.lengths[pid] for pid in pids) / responses,
                              "prompts": float(len(pids))}
            self.counts["rounds_completed"] += 1
            out.append({"version": rnd.version, "newest_version": rnd.newest_version,
                        "seconds": self.clock() - rnd.started_at, "sets": sets})
        return out
