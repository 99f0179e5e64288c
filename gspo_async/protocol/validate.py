"""Checking every field of a decoded message, then the meaning of a rollout group.

Two layers:
- `read_message(type, body, frames, ctx)`: the schema of each message (`SCHEMAS`): field types, ranges, sizes,
  no unknown or missing fields; builds the dataclass. Nothing is trusted: a wrong type, a huge length or a
  dangling frame reference becomes a :class:`ProtocolError` with a code from `messages.ERROR_CODES`.
- `check_group(group, limits, version)`: what a rollout group means: G responses, equal lengths, token ids in the
  vocabulary, finite log-probs <= 0, version spans covering each response and naming no future version.

The actor runs `check_group` before pushing, so a bug surfaces at its source; the learner runs both on arrival.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Optional, Sequence

import msgpack
import numpy as np

from gspo_async.protocol.messages import (
    ACK_STATUSES, ERROR_CODES, FINISH_REASONS, LEASE_REASONS, Ack, ActorStatus, ErrorReply, Goodbye, Heartbeat,
    HeartbeatAck, Lease, LeaseRequest, Limits, PromptLease, ProtocolError, Register, Response, RolloutGroup,
    StatusReply, StatusRequest, WeightVersion, Welcome)

# Ids and names: printable ASCII without spaces (safe to log, to use in file names and metric labels).
ID_PATTERN = re.compile(r"[!-~]+")
MAX_DEPTH = 16  # nesting of free-form maps (meta, config, capabilities)
INT64_MAX = 2**63 - 1


@dataclass
class Context:
    """Where a message came from: extra frames (index 1.. in the message) and the limits in force."""

    limits: Optional[Limits]
    frames: Sequence[Any] = ()
    used: set[int] = field(default_factory=set)
    msg_type: str = ""
    ref: str = ""
    rid: int = 0

    def fail(self, code: str, message: str) -> NoReturn:
        raise ProtocolError(code, message, ref=self.ref, msg_type=self.msg_type, rid=self.rid)

    def limit(self, get: Optional[Callable[[Limits], int]]) -> Optional[int]:
        return get(self.limits) if (get is not None and self.limits is not None) else None


def _strlen(ctx: Context) -> int:
    return ctx.limits.max_string_bytes if ctx.limits else 4096


# ------------------------------------------------------------------------------------------------------------
# Field specs: each reads one msgpack value, checks it and returns the Python value
# ------------------------------------------------------------------------------------------------------------

class Spec:
    wire = "?"  # name of the msgpack type, for error messages and docs

    def read(self, value: Any, ctx: Context, path: str) -> Any:
        raise NotImplementedError

    def wrong(self, value: Any, ctx: Context, path: str) -> NoReturn:
        ctx.fail("bad_field", f"{path}: expected {self.wire}, got {type(value).__name__}")


class Int(Spec):
    wire = "int"

    def __init__(self, lo: int = 0, hi: int = INT64_MAX):
        self.lo, self.hi = lo, hi

    def read(self, value, ctx, path):
        if type(value) is not int:  # bool is an int subclass in Python, but not an int on the wire
            self.wrong(value, ctx, path)
        if not self.lo <= value <= self.hi:
            ctx.fail("bad_field", f"{path}={value} is outside [{self.lo}, {self.hi}]")
        return value


class Float(Spec):
    wire = "float"

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, code: str = "bad_field"):
        self.lo, self.hi, self.code = lo, hi, code

    def read(self, value, ctx, path):
        if type(value) not in (float, int):
            self.wrong(value, ctx, path)
        value = float(value)
        if not math.isfinite(value):
            ctx.fail(self.code, f"{path}={value} is not finite")
        if not self.lo <= value <= self.hi:
            ctx.fail("bad_field", f"{path}={value} is outside [{self.lo}, {self.hi}]")
        return value


class Str(Spec):
    wire = "str"

    def __init__(self, choices: Optional[Sequence[str]] = None, ident: bool = False, max_bytes: Optional[int] = None):
        self.choices, self.ident, self.max_bytes = choices, ident, max_bytes

    def read(self, value, ctx, path):
        if type(value) is not str:
            self.wrong(value, ctx, path)
        limit = self.max_bytes or _strlen(ctx)
        if len(value.encode("utf-8", "surrogatepass")) > limit:
            ctx.fail("bad_field", f"{path} is longer than {limit} bytes")
        if self.choices is not None and value not in self.choices:
            ctx.fail("bad_field", f"{path}={value[:40]!r} is not one of {list(self.choices)}")
        if self.ident and not ID_PATTERN.fullmatch(value):
            ctx.fail("bad_field", f"{path} must be 1+ printable ASCII characters without spaces")
        return value


class Bool(Spec):
    wire = "bool"

    def read(self, value, ctx, path):
        if type(value) is not bool:
            self.wrong(value, ctx, path)
        return value


class Array(Spec):
    """A raw little-endian array: a bin field, or an int k naming frame k of the message (header = frame 0)."""

    def __init__(self, dtype: str, max_len: Optional[Callable[[Limits], int]] = None, width: int = 1):
        self.dtype = np.dtype(dtype)
        self.native = self.dtype.newbyteorder("=")
        self.max_len, self.width = max_len, width  # width 3: (version, start, end) rows
        self.wire = f"bin ({'int32' if self.dtype.kind == 'i' else 'float32'} little-endian) or frame index"

    def read(self, value, ctx, path):
        if type(value) is bytes:
            buf, code, nbytes = value, "bad_field", len(value)
        elif type(value) is int:
            if not 1 <= value <= len(ctx.frames) or value in ctx.used:
                ctx.fail("bad_frames", f"{path} names frame {value}: missing or already used "
                                       f"({len(ctx.frames)} extra frames)")
            ctx.used.add(value)
            buf, code = _buffer(ctx.frames[value - 1]), "bad_frames"
            nbytes = memoryview(buf).nbytes
        else:
            self.wrong(value, ctx, path)
        n, partial = divmod(nbytes, 4)
        if partial:
            ctx.fail(code, f"{path}: {nbytes} bytes is not a whole number of 4-byte items")
        if self.max_len is not None and ctx.limits is not None and n > self.max_len(ctx.limits):
            ctx.fail("bad_field", f"{path} has {n} items, more than the limit {self.max_len(ctx.limits)}")
        if n % self.width:
            ctx.fail("bad_spans", f"{path}: {n} items is not a whole number of rows of {self.width}")
        # astype copies into a native, writable array that outlives the ZeroMQ frame
        arr = np.frombuffer(buf, dtype=self.dtype).astype(self.native)
        return arr.reshape(-1, self.width) if self.width > 1 else arr


def _buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


class Scalars(Spec):
    """A map of names to int / float / str / bool / nil (statistics, capabilities); floats may be NaN."""

    wire = "map str -> int|float|str|bool|nil"

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        _check_items(value, ctx, path)
        out = {}
        for k, v in value.items():
            Str(ident=True).read(k, ctx, f"{path} key")
            if type(v) is str:
                Str().read(v, ctx, f"{path}.{k}")
            elif v is not None and type(v) not in (int, float, bool):
                ctx.fail("bad_field", f"{path}.{k}: expected a scalar, got {type(v).__name__}")
            out[k] = v
        return out


class FloatMap(Spec):
    """A map of names to finite floats (timings in seconds)."""

    wire = "map str -> float"

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        _check_items(value, ctx, path)
        return {Str(ident=True).read(k, ctx, f"{path} key"): Float(code="bad_number").read(v, ctx, f"{path}.{k}")
                for k, v in value.items()}


def _check_items(value: dict, ctx: Context, path: str) -> None:
    limit = ctx.limits.max_items if ctx.limits else 4096
    if len(value) > limit:
        ctx.fail("bad_field", f"{path} has {len(value)} entries, more than the limit {limit}")


class Free(Spec):
    """Free-form msgpack data (maps with str keys, arrays, scalars, bin), bounded in size and depth."""

    wire = "map (free-form)"

    def __init__(self, max_bytes: Optional[Callable[[Limits], int]] = None):
        self.max_bytes = max_bytes

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        _check_free(value, ctx, path, 0)
        limit = ctx.limit(self.max_bytes)
        if limit is not None and len(msgpack.packb(value, use_bin_type=True)) > limit:
            ctx.fail("bad_field", f"{path} is larger than {limit} bytes")
        return value


def _check_free(value: Any, ctx: Context, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        ctx.fail("bad_field", f"{path} is nested deeper than {MAX_DEPTH}")
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                ctx.fail("bad_field", f"{path}: map keys must be str")
            _check_free(v, ctx, f"{path}.{k}", depth + 1)
    elif type(value) is list:
        for i, v in enumerate(value):
            _check_free(v, ctx, f"{path}[{i}]", depth + 1)
    elif value is not None and type(value) not in (int, float, bool, str, bytes):
        ctx.fail("bad_field", f"{path}: {type(value).__name__} is not plain data")


class BytesMap(Spec):
    wire = "map str -> bin"

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        out = {}
        for k, v in value.items():
            Str().read(k, ctx, f"{path} key")
            if type(v) is not bytes:
                ctx.fail("bad_field", f"{path}.{k}: expected bin, got {type(v).__name__}")
            out[k] = v
        return out


class ListOf(Spec):
    def __init__(self, item: Spec, max_len: Optional[Callable[[Limits], int]] = None, code: str = "bad_field"):
        self.item, self.max_len, self.code = item, max_len, code
        self.wire = f"array of {item.wire}"

    def read(self, value, ctx, path):
        if type(value) is not list:
            self.wrong(value, ctx, path)
        limit = ctx.limit(self.max_len)
        if limit is not None and len(value) > limit:
            ctx.fail(self.code, f"{path} has {len(value)} items, more than the limit {limit}")
        return [self.item.read(v, ctx, f"{path}[{i}]") for i, v in enumerate(value)]


class HostPort(Spec):
    wire = "[str, int] or nil"

    def read(self, value, ctx, path):
        if value is None:
            return None
        if type(value) is not list or len(value) != 2:
            self.wrong(value, ctx, path)
        return Str().read(value[0], ctx, f"{path}[0]"), Int(0, 65535).read(value[1], ctx, f"{path}[1]")


REQUIRED = object()


class Struct(Spec):
    """A msgpack map with exactly these keys (keys with a default may be left out); builds `cls`."""

    wire = "map"

    def __init__(self, cls: type, fields: dict[str, tuple[Spec, Any]]):
        self.cls, self.fields = cls, fields
        self.items = [(name, spec, default) for name, (spec, default) in fields.items()]
        self.allowed = frozenset(fields)

    def read(self, value, ctx, path, skip: tuple[str, ...] = ()):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        if not value.keys() <= self.allowed:
            unknown = [k for k in value if k not in self.fields and k not in skip]
            if unknown:
                ctx.fail("bad_field", f"{path}: unknown field {str(unknown[0])[:40]!r}")
        kwargs = {}
        for name, spec, default in self.items:
            if name in value:
                kwargs[name] = spec.read(value[name], ctx, path + "." + name if path else name)
            elif default is REQUIRED:
                ctx.fail("bad_field", f"missing field {path + '.' + name if path else name}")
        try:
            return self.cls(**kwargs)
        except ValueError as err:  # the dataclass's own checks (Limits)
            ctx.fail("bad_field", f"{path or self.cls.__name__}: {err}")


# ------------------------------------------------------------------------------------------------------------
# The schemas (docs/protocol.md lists the same fields; a test keeps the two in step)
# ------------------------------------------------------------------------------------------------------------

R = REQUIRED
_rid = (Int(0, 2**31 - 1), 0)

LIMITS = Struct(Limits, {name: (Int(1), R) for name in (
    "vocab_size", "max_prompt_tokens", "max_response_tokens", "group_size", "max_message_bytes", "max_meta_bytes",
    "max_items", "max_string_bytes", "max_lease_prompts")})

PROMPT_LEASE = Struct(PromptLease, {
    "prompt_id": (Int(), R),
    "tokens": (Array("<i4", lambda L: L.max_prompt_tokens), R),
    "answer": (Str(max_bytes=1 << 20), R),
    "meta": (Free(lambda L: L.max_meta_bytes), R),
})

RESPONSE = Struct(Response, {
    "tokens": (Array("<i4", lambda L: L.max_response_tokens), R),
    "logprobs": (Array("<f4", lambda L: L.max_response_tokens), R),
    "reward": (Float(code="bad_number"), R),
    "finish_reason": (Str(FINISH_REASONS), R),
    "version_spans": (Array("<i4", lambda L: 3 * L.max_response_tokens, width=3), R),
})

ACTOR_STATUS = Struct(ActorStatus, {
    "actor_id": (Str(ident=True), R), "engine": (Str(ident=True), R), "version": (Int(), R),
    "tokens_per_s": (Float(0.0), R), "leases": (Int(), R), "last_contact_s": (Float(0.0), R),
    "registered_s": (Float(0.0), 0.0), "groups_accepted": (Int(), 0), "unacked": (Int(), 0), "address": (Str(), "")})

SCHEMAS: dict[str, Struct] = {
    "register": Struct(Register, {
        "actor_id": (Str(ident=True), R), "instance": (Str(ident=True), R), "engine": (Str(ident=True), R),
        "capabilities": (Scalars(), {}), "want_files": (Bool(), True), "rid": _rid}),
    "lease_request": Struct(LeaseRequest, {
        "n": (Int(0, 2**31 - 1), R), "wait_s": (Float(0.0, 3600.0), 0.0),
        "returned": (ListOf(Int(), lambda L: L.max_lease_prompts), []), "rid": _rid}),
    "rollout_group": Struct(RolloutGroup, {
        "group_id": (Str(ident=True), R), "prompt_id": (Int(), R), "actor_id": (Str(ident=True), R),
        "prompt_tokens": (Array("<i4", lambda L: L.max_prompt_tokens), R),
        "responses": (ListOf(RESPONSE, lambda L: L.group_size, code="group_size"), R),
        "timings": (FloatMap(), {})}),
    "heartbeat": Struct(Heartbeat, {
        "version": (Int(), R), "stats": (Scalars(), {}), "unacked": (Int(), 0), "rid": _rid}),
    "goodbye": Struct(Goodbye, {
        "reason": (Str(), ""), "return_leases": (ListOf(Int(), lambda L: L.max_lease_prompts), [])}),
    "welcome": Struct(Welcome, {
        "actor_id": (Str(ident=True), R), "session": (Str(ident=True), R), "version": (Int(), R),
        "config": (Free(), R), "model_files": (BytesMap(), R), "weight_store": (HostPort(), R),
        "heartbeat_interval_s": (Float(1e-3, 3600.0), R), "lease_timeout_s": (Float(1e-3, 1e7), R),
        "limits": (LIMITS, R), "rid": _rid}),
    "lease": Struct(Lease, {
        "prompts": (ListOf(PROMPT_LEASE), R), "expires_in_s": (Float(0.0, 1e7), R), "version": (Int(), R),
        "reason": (Str(LEASE_REASONS), ""), "rid": _rid}),
    "ack": Struct(Ack, {
        "group_id": (Str(ident=True), R), "status": (Str(ACK_STATUSES), R),
        "retry_after_s": (Float(0.0, 3600.0), 0.0)}),
    "heartbeat_ack": Struct(HeartbeatAck, {"version": (Int(), R), "session": (Str(ident=True), R), "rid": _rid}),
    "weight_version": Struct(WeightVersion, {"version": (Int(), R), "session": (Str(ident=True), R)}),
    "status_request": Struct(StatusRequest, {"rid": _rid}),
    "status": Struct(StatusReply, {
        "session": (Str(ident=True), R), "version": (Int(), R), "actors": (ListOf(ACTOR_STATUS), R),
        "accounting": (Scalars(), {}), "counters": (Scalars(), {}), "rid": _rid}),
    "error": Struct(ErrorReply, {
        "code": (Str(tuple(ERROR_CODES)), R), "message": (Str(max_bytes=4096), R), "ref": (Str(), ""), "rid": _rid}),
}


def read_message(msg_type: str, body: dict, ctx: Context) -> Any:
    """Build the message of `msg_type` from its decoded header map (envelope keys v and t are skipped)."""
    msg = SCHEMAS[msg_type].read(body, ctx, "", skip=("v", "t"))
    unused = set(range(1, len(ctx.frames) + 1)) - ctx.used
    if unused:
        ctx.fail("bad_frames", f"extra frame(s) {sorted(unused)[:5]} are not referenced by any field")
    return msg


# ------------------------------------------------------------------------------------------------------------
# Meaning of a rollout group
# ------------------------------------------------------------------------------------------------------------

def check_group(group: RolloutGroup, limits: Limits, version: int) -> None:
    """Raise ProtocolError unless `group` is a well-formed group of G responses under `limits` whose version spans
    name no version above `version` (the learner's current one). Arrays must already be int32 / float32."""
    ctx = Context(limits, msg_type="rollout_group", ref=group.group_id if isinstance(group.group_id, str) else "")
    if len(group.responses) != limits.group_size:
        ctx.fail("group_size", f"{len(group.responses)} responses, the learner's group size is {limits.group_size}")
    _check_shape(group.prompt_tokens, "prompt_tokens", limits.max_prompt_tokens, ctx)
    _check_vocab(group.prompt_tokens, "prompt_tokens", limits, ctx)
    for i, r in enumerate(group.responses):  # shapes, types and spans, response by response
        where = f"responses[{i}]"
        n = _check_shape(r.tokens, f"{where}.tokens", limits.max_response_tokens, ctx)
        if np.shape(r.logprobs) != (n,):
            ctx.fail("length_mismatch", f"{where}: {n} tokens but logprobs of shape {np.shape(r.logprobs)}")
        if not isinstance(r.logprobs, np.ndarray) or r.logprobs.dtype != np.float32:
            ctx.fail("bad_field", f"{where}.logprobs must be a float32 array")
        if not (isinstance(r.reward, (float, int)) and not isinstance(r.reward, bool) and math.isfinite(r.reward)):
            ctx.fail("bad_number", f"{where}.reward={r.reward!r} is not a finite number")
        if r.finish_reason not in FINISH_REASONS:
            ctx.fail("bad_field", f"{where}.finish_reason={r.finish_reason!r} is not one of {list(FINISH_REASONS)}")
        _check_spans(r.version_spans, n, version, f"{where}.version_spans", ctx)
    # values, all responses at once (few numpy calls); on a failure find the response to name it
    tokens = np.concatenate([r.tokens for r in group.responses])
    if tokens.min() < 0 or tokens.max() >= limits.vocab_size:
        for i, r in enumerate(group.responses):
            _check_vocab(r.tokens, f"responses[{i}].tokens", limits, ctx)
    logprobs = np.concatenate([r.logprobs for r in group.responses])
    low, high = logprobs.min(), logprobs.max()  # min is NaN if any item is: two reductions check everything
    if not np.isfinite(low) or not high <= 0:
        for i, r in enumerate(group.responses):
            if not np.isfinite(r.logprobs).all():
                ctx.fail("bad_logprob", f"responses[{i}].logprobs has NaN or infinite values")
            if (r.logprobs > 0).any():
                ctx.fail("bad_logprob", f"responses[{i}].logprobs has positive values (max "
                                        f"{float(r.logprobs.max()):.3g}); log-probabilities are <= 0")
    for k, v in group.timings.items():
        if not (isinstance(v, (float, int)) and math.isfinite(v)):
            ctx.fail("bad_number", f"timings.{k}={v!r} is not a finite number")


def _check_shape(tokens: Any, path: str, max_len: int, ctx: Context) -> int:
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype != np.int32:
        ctx.fail("bad_field", f"{path} must be a 1-D int32 array, got {type(tokens).__name__} "
                              f"{getattr(tokens, 'dtype', '')} {np.shape(tokens)}")
    if not 1 <= len(tokens) <= max_len:
        ctx.fail("bad_field", f"{path} has {len(tokens)} tokens; 1..{max_len} allowed")
    return len(tokens)


def _check_vocab(tokens: np.ndarray, path: str, limits: Limits, ctx: Context) -> None:
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= limits.vocab_size:
        ctx.fail("out_of_vocab", f"{path} has token id {lo if lo < 0 else hi} outside [0, {limits.vocab_size})")


def _check_spans(spans: Any, n: int, version: int, path: str, ctx: Context) -> None:
    s = np.asarray(spans)
    if s.dtype != np.int32 or s.size % 3:
        ctx.fail("bad_spans", f"{path} must be int32 (version, start, end) triples, got {s.dtype} of {s.size} items")
    rows = s.reshape(-1, 3).tolist()  # few rows: plain Python is faster than numpy here
    if not 1 <= len(rows) <= n:
        ctx.fail("bad_spans", f"{path} has {len(rows)} spans for {n} tokens; 1..{n} allowed")
    position, last = 0, 0
    for v, start, end in rows:
        if start != position or end <= start:
            ctx.fail("bad_spans", f"{path} must cover tokens [0, {n}) in order with non-empty, adjacent spans")
        if v < last:
            ctx.fail("bad_spans", f"{path}: versions must be >= 0 and non-decreasing")
        position, last = end, v
    if position != n:
        ctx.fail("bad_spans", f"{path} must cover tokens [0, {n}) in order with non-empty, adjacent spans")
    if last > version:
        ctx.fail("forged_version", f"{path} names version {last}, the learner is at {version}")
