"""Every message of the actor-learner protocol, as plain dataclasses.

The wire format (msgpack maps, raw little-endian arrays, frames, the state machine) is specified in
docs/protocol.md; `codec.py` turns these objects into frames and `validate.py` turns frames back into them.

Direction: actor -> learner: Register, LeaseRequest, RolloutGroup, Heartbeat, Goodbye, StatusRequest.
           learner -> actor: Welcome, Lease, Ack, HeartbeatAck, WeightVersion, ErrorReply, StatusReply.
StatusRequest / StatusReply serve operators (`gspo-async status`): a status query is not an actor.
Units: times in seconds, token ids int32, log-probabilities float32 natural-log, weight versions int >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

import numpy as np

from gspo_async.protocol.fields import (  # ProtocolError is re-exported: callers import it from here
    ActorId, Array, Bool, BytesMap, Float, FloatMap, Free, HostPort, Id, Int, ListOf, ProtocolError, Scalars, Str,
    Struct, wire)

SCHEMA_VERSION: int = 1
RID_MAX = 2**31 - 1

FINISH_REASONS = ("stop", "length", "abort")
ACK_STATUSES = ("accepted", "duplicate", "dropped", "retry_later")
LEASE_REASONS = ("", "admission", "exhausted", "actor_cap")
STATUS_PAGE_MAX = 100  # actors per status reply
# Rewards become float32 and feed group statistics that square deviations (variance): far inside float32's range
# (3.4e38) so that every statistic of a batch stays finite; a reward of 1e308 is refused, not trained on.
MAX_ABS_REWARD = 1e9


# Error codes sent in ErrorReply.code. Transient ones mean "fix the session and resend"; every other code is final
# for the message (a rejected group is never accepted on resend, so the actor drops it).
ERROR_CODES = {
    "malformed": "not a msgpack map in the expected frames, bad UTF-8, trailing bytes",
    "too_large": "the message exceeds limits.max_message_bytes",
    "schema_version": "field v is not this learner's SCHEMA_VERSION",
    "unknown_type": "field t names no message this side accepts",
    "bad_field": "a field is missing, unknown, of the wrong type, or out of range",
    "bad_frames": "extra frames missing, unreferenced, referenced twice, or of the wrong size",
    "length_mismatch": "tokens and logprobs of a response differ in length",
    "out_of_vocab": "a token id is negative or >= limits.vocab_size",
    "bad_logprob": "a log-probability is NaN, infinite or positive",
    "bad_number": "a reward or a timing is NaN, infinite or outside the float32 range, or a timing is negative",
    "group_size": "the number of responses differs from limits.group_size",
    "bad_spans": "version spans do not cover the response exactly, in order, without gaps",
    "forged_version": "a span or a heartbeat names a weight version newer than the learner's current version",
    "unknown_prompt": "the prompt id was never issued by this learner",
    "prompt_mismatch": "the prompt tokens differ from the leased prompt's",
    "group_id_reused": "the group id was already used by an accepted group for another prompt",
    "other_run": "the group was made for another training run than the learner's (an actor of a finished run)",
    "not_registered": "the sender has not registered (or was declared dead): send Register, then resend",
    "internal": "the learner failed while handling the message (a bug; the message may be resent)",
    "rate_limited": "too many status requests: ask again later",
}
TRANSIENT_CODES = frozenset({"not_registered", "internal", "rate_limited"})


class _Message:
    """Field-wise equality that understands numpy arrays (dtype, shape and values, NaN equal to NaN)."""

    TYPE: ClassVar[str] = ""

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))  # type: ignore[arg-type]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


@dataclass(eq=False)
class Limits(_Message):
    """What the learner accepts. Sizes in tokens or bytes; `group_size` is G, responses per prompt."""

    vocab_size: int = wire(Int(1))
    max_prompt_tokens: int = wire(Int(1))
    max_response_tokens: int = wire(Int(1))
    group_size: int = wire(Int(1))
    # every limit is required on the wire (an actor must not guess the learner's); the defaults serve Python callers
    max_message_bytes: int = wire(Int(1), 64 << 20, required=True)
    # msgpack size of a lease's meta, a Welcome's config, an actor's stats
    max_meta_bytes: int = wire(Int(1), 64 << 10, required=True)
    max_items: int = wire(Int(1), 64, required=True)  # entries in stats / timings / capabilities maps
    max_string_bytes: int = wire(Int(1), 256, required=True)  # ids, names, reasons, map keys
    max_lease_prompts: int = wire(Int(1), 1024, required=True)  # prompts per LeaseRequest

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {value!r}")
        if self.vocab_size > 2**31:
            raise ValueError(f"Limits.vocab_size={self.vocab_size} does not fit int32 token ids")


@dataclass(eq=False)
class PromptLease(_Message):
    """One leased prompt. tokens: int32 [prompt_len]."""

    prompt_id: int = wire(Int())
    tokens: np.ndarray = wire(Array("<i4", lambda L: L.max_prompt_tokens))
    answer: str = wire(Str(max_bytes=1 << 20))
    meta: dict[str, Any] = wire(Free(lambda L: L.max_meta_bytes), factory=dict, required=True)
    # "" = a training prompt; else the eval set of an evaluation prompt (answered with learner.eval_n responses at
    # the evaluation sampling; its group is scored, never trained on: learner/evaluation.py)
    eval_set: str = wire(Str(max_bytes=64), "", required=True)


@dataclass(eq=False)
class Response(_Message):
    """One sampled response.

    tokens: int32 [n] sampled token ids (n >= 1); logprobs: float32 [n], log-prob of each sampled token under the
    behaviour policy at the sampling temperature (<= 0); version_spans: int32 [k, 3] rows (version, start, end),
    token positions [start, end) produced by weights `version`, covering 0..n in order.
    """

    tokens: np.ndarray = wire(Array("<i4", lambda L: L.max_response_tokens))
    logprobs: np.ndarray = wire(Array("<f4", lambda L: L.max_response_tokens))
    reward: float = wire(Float(-MAX_ABS_REWARD, MAX_ABS_REWARD, code="bad_number", range_code="bad_number"))
    finish_reason: str = wire(Str(FINISH_REASONS))
    version_spans: np.ndarray = wire(Array("<i4", lambda L: 3 * L.max_response_tokens, width=3))

    @classmethod
    def single_version(cls, tokens: Any, logprobs: Any, reward: float, finish_reason: str,
                       version: int) -> "Response":
        """A response produced entirely by one weight version."""
        tok = np.asarray(tokens, dtype=np.int32)
        return cls(tok, np.asarray(logprobs, dtype=np.float32), float(reward), finish_reason,
                   np.array([[version, 0, len(tok)]], dtype=np.int32))

    @property
    def min_version(self) -> int:
        return int(np.asarray(self.version_spans).reshape(-1, 3)[:, 0].min())

    @property
    def max_version(self) -> int:
        return int(np.asarray(self.version_spans).reshape(-1, 3)[:, 0].max())


@dataclass(eq=False)
class RolloutGroup(_Message):
    """G responses to one leased prompt. prompt_tokens: int32 [prompt_len]; timings: seconds by name."""

    TYPE: ClassVar[str] = "rollout_group"
    group_id: str = wire(Id())
    prompt_id: int = wire(Int())
    actor_id: str = wire(Id())
    prompt_tokens: np.ndarray = wire(Array("<i4", lambda L: L.max_prompt_tokens))
    responses: list[Response] = wire(ListOf(Struct(Response), lambda L: L.group_size, code="group_size"))
    timings: dict[str, float] = wire(FloatMap(Float(0.0, code="bad_number", f32=True, range_code="bad_number")),
                                     factory=dict)
    run_id: str = wire(Str(max_bytes=64), "")  # the run the group was made for (the Welcome's); "" = not said

    @property
    def min_version(self) -> int:
        """Oldest weight version of any token: staleness = learner version - min_version."""
        return min(r.min_version for r in self.responses)

    @property
    def max_version(self) -> int:
        return max(r.max_version for r in self.responses)

    @property
    def num_tokens(self) -> int:
        """Response tokens in the group (prompt tokens not counted)."""
        return sum(len(r.tokens) for r in self.responses)

    @property
    def response_lengths(self) -> list[int]:
        return [len(r.tokens) for r in self.responses]


@dataclass(eq=False)
class Register(_Message):
    """First message of an actor. `instance` is random per client process: it tells a reconnect of the same
    process (keeps its leases) from a second process that asks for the same actor id (gets a new id)."""

    TYPE: ClassVar[str] = "register"
    actor_id: str = wire(ActorId())
    instance: str = wire(Id())
    engine: str = wire(Id())
    capabilities: dict[str, Any] = wire(Scalars(), factory=dict)
    want_files: bool = wire(Bool(), True)
    rid: int = wire(Int(0, RID_MAX), 0)


@dataclass(eq=False)
class Welcome(_Message):
    """The learner's answer to Register: everything a remote actor needs besides host:port."""

    TYPE: ClassVar[str] = "welcome"
    # the id the learner assigned (the requested one unless another live actor holds it)
    actor_id: str = wire(ActorId())
    session: str = wire(Id())  # random per LearnerServer: changes when the learner restarts
    version: int = wire(Int())  # current weight version
    config: dict[str, Any] = wire(Free())  # the run config an actor needs (no secrets, no learner-only paths)
    # file name -> content (config, tokenizer); empty when want_files was false
    model_files: dict[str, bytes] = wire(BytesMap())
    weight_store: Optional[tuple[str, int]] = wire(HostPort())  # (host, port) of the weight broadcast rendezvous
    heartbeat_interval_s: float = wire(Float(1e-3, 3600.0))
    lease_timeout_s: float = wire(Float(1e-3, 1e7))
    limits: Limits = wire(Struct(Limits))
    rid: int = wire(Int(0, RID_MAX), 0, required=True)
    # the training run (kept across resumes; a new run on the same address has another): groups carry it back
    run_id: str = wire(Str(max_bytes=64), "")


@dataclass(eq=False)
class LeaseRequest(_Message):
    """Ask for up to `n` prompts; the learner may hold the request up to `wait_s` seconds while admission is
    closed. `returned` hands back leased prompt ids this actor will not finish."""

    TYPE: ClassVar[str] = "lease_request"
    n: int = wire(Int(0, 2**31 - 1))
    wait_s: float = wire(Float(0.0, 3600.0), 0.0)
    returned: list[int] = wire(ListOf(Int(), lambda L: L.max_lease_prompts), factory=list)
    rid: int = wire(Int(0, RID_MAX), 0)


@dataclass(eq=False)
class Lease(_Message):
    """Leased prompts (possibly none, with `reason`), valid for `expires_in_s` seconds from receipt."""

    TYPE: ClassVar[str] = "lease"
    prompts: list[PromptLease] = wire(ListOf(Struct(PromptLease)))
    expires_in_s: float = wire(Float(0.0, 1e7))
    version: int = wire(Int())
    # "" | "admission" (closed until the next version) | "exhausted" (no prompts left) | "actor_cap" (this actor
    # holds its fair share of the admission capacity already)
    reason: str = wire(Str(LEASE_REASONS), "")
    rid: int = wire(Int(0, RID_MAX), 0, required=True)


@dataclass(eq=False)
class Ack(_Message):
    """Final answer for a group (`retry_later`: keep it and resend after `retry_after_s`)."""

    TYPE: ClassVar[str] = "ack"
    group_id: str = wire(Id())
    status: str = wire(Str(ACK_STATUSES))
    retry_after_s: float = wire(Float(0.0, 3600.0), 0.0)


@dataclass(eq=False)
class Heartbeat(_Message):
    """Liveness plus the actor's statistics. version: weights the actor has applied."""

    TYPE: ClassVar[str] = "heartbeat"
    version: int = wire(Int())
    stats: dict[str, Any] = wire(Scalars(), factory=dict)
    unacked: int = wire(Int(), 0)
    rid: int = wire(Int(0, RID_MAX), 0)


@dataclass(eq=False)
class HeartbeatAck(_Message):
    TYPE: ClassVar[str] = "heartbeat_ack"
    version: int = wire(Int())
    session: str = wire(Id())
    rid: int = wire(Int(0, RID_MAX), 0, required=True)


@dataclass(eq=False)
class Goodbye(_Message):
    """The actor leaves; every lease it holds goes back to the front of the queue."""

    TYPE: ClassVar[str] = "goodbye"
    reason: str = wire(Str(), "")
    return_leases: list[int] = wire(ListOf(Int(), lambda L: L.max_lease_prompts), factory=list)


@dataclass(eq=False)
class WeightVersion(_Message):
    """Announcement of a new weight version (the weights themselves travel over torch.distributed)."""

    TYPE: ClassVar[str] = "weight_version"
    version: int = wire(Int())
    session: str = wire(Id())


@dataclass(eq=False)
class ErrorReply(_Message):
    """A rejected message. ref: the group id when the rejected message was a readable group; rid: the
    request id of the rejected request when readable."""

    TYPE: ClassVar[str] = "error"
    code: str = wire(Str(tuple(ERROR_CODES)))
    message: str = wire(Str(max_bytes=4096))
    ref: str = wire(Str(), "")
    rid: int = wire(Int(0, RID_MAX), 0)


@dataclass(eq=False)
class StatusRequest(_Message):
    """Ask for the fleet's state. Needs no registration and changes no membership: any peer that passes the
    security handshake may ask (`gspo-async status`)."""

    TYPE: ClassVar[str] = "status_request"
    rid: int = wire(Int(0, RID_MAX), 0)
    # paging of the actor list (a fleet of thousands must not cost a reply of megabytes)
    offset: int = wire(Int(0, 2**31 - 1), 0)
    limit: int = wire(Int(1, STATUS_PAGE_MAX), STATUS_PAGE_MAX)


@dataclass(eq=False)
class ActorStatus(_Message):
    """One live actor as the learner sees it. version: weights it has applied; tokens_per_s: its last reported
    generation rate (0 when it reported none); leases: prompts it holds; last_contact_s / registered_s: seconds
    since its last message / its registration; address: its IP as the learner saw it ("" when unknown)."""

    actor_id: str = wire(ActorId())
    engine: str = wire(Id())
    version: int = wire(Int())
    tokens_per_s: float = wire(Float(0.0))
    leases: int = wire(Int())
    last_contact_s: float = wire(Float(0.0))
    registered_s: float = wire(Float(0.0), 0.0)
    groups_accepted: int = wire(Int(), 0)
    unacked: int = wire(Int(), 0)
    address: str = wire(Str(), "")


@dataclass(eq=False)
class StatusReply(_Message):
    """The learner's answer to StatusRequest.

    accounting: prompts by state, from `Coordinator.accounting()` (issued, trained, dropped, in_flight, buffered,
    training, pending_reissue, balanced). counters: the learner's flat cumulative counts and current sizes
    (groups_received, groups_accepted, groups_trained, groups_dropped, ..., from `Coordinator.counters()`).
    """

    TYPE: ClassVar[str] = "status"
    session: str = wire(Id())
    version: int = wire(Int())
    actors: list[ActorStatus] = wire(ListOf(Struct(ActorStatus), lambda L: STATUS_PAGE_MAX))
    accounting: dict[str, Any] = wire(Scalars(), factory=dict)
    counters: dict[str, Any] = wire(Scalars(), factory=dict)
    rid: int = wire(Int(0, RID_MAX), 0, required=True)
    total_actors: int = wire(Int(), 0)  # live actors in all; `actors` is the page [offset, offset + limit)
    offset: int = wire(Int(), 0)


TO_LEARNER: dict[str, type] = {c.TYPE: c for c in (Register, LeaseRequest, RolloutGroup, Heartbeat, Goodbye,
                                                   StatusRequest)}
TO_ACTOR: dict[str, type] = {c.TYPE: c for c in (Welcome, Lease, Ack, HeartbeatAck, WeightVersion, ErrorReply,
                                                 StatusReply)}
