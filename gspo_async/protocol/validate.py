"""Checking every field of a decoded message, then the meaning of a rollout group.

Two layers:
- `read_message(type, body, ctx)`: each message's fields as declared in `messages.py` (types, ranges, sizes, no
  unknown or missing fields; the checks are metadata of the dataclass fields, see `fields.py`); builds the
  dataclass. `SCHEMAS` maps each message type to its :class:`Struct`, derived from those declarations.
- `check_group(group, limits, version)`: what a rollout group means: G responses, equal lengths, token ids in the
  vocabulary, finite log-probs <= 0, version spans covering each response and naming no future version.

The actor runs `check_group` before pushing, so a bug surfaces at its source; the learner runs both on arrival.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gspo_async.protocol.fields import Context, Struct
from gspo_async.protocol.ids import ID_RE
from gspo_async.protocol.messages import (
    FINISH_REASONS, TO_ACTOR, TO_LEARNER, ActorStatus, Limits, PromptLease, Response, RolloutGroup)

ID_PATTERN = ID_RE  # the id rule (protocol/ids.py), under its older name

LIMITS, PROMPT_LEASE, RESPONSE = Struct(Limits), Struct(PromptLease), Struct(Response)
ACTOR_STATUS = Struct(ActorStatus)
SCHEMAS: dict[str, Struct] = {name: Struct(cls) for name, cls in {**TO_LEARNER, **TO_ACTOR}.items()}
# check_group applies the declared rules of these fields to groups built in Python (the actor's own check)
_REWARD = next(f.spec for f in RESPONSE.fields if f.name == "reward")
_TIMING = next(f.spec for f in SCHEMAS["rollout_group"].fields if f.name == "timings").item


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

def check_group(group: RolloutGroup, limits: Limits, version: int, group_size: int | None = None) -> None:
    """Raise ProtocolError unless `group` is a well-formed group of G responses under `limits` whose version spans
    name no version above `version` (the learner's current one). Arrays must already be int32 / float32.
    group_size: the responses expected when not G (an evaluation prompt's learner.eval_n, at most G)."""
    ctx = Context(limits, msg_type="rollout_group", ref=group.group_id if isinstance(group.group_id, str) else "")
    size = limits.group_size if group_size is None else group_size
    if len(group.responses) != size:
        ctx.fail("group_size", f"{len(group.responses)} responses, the learner expects {size} for this prompt "
                               f"(group size {limits.group_size})")
    _check_shape(group.prompt_tokens, "prompt_tokens", limits.max_prompt_tokens, ctx)
    _check_vocab(group.prompt_tokens, "prompt_tokens", limits, ctx)
    for i, r in enumerate(group.responses):  # shapes, types and spans, response by response
        where = f"responses[{i}]"
        n = _check_shape(r.tokens, f"{where}.tokens", limits.max_response_tokens, ctx)
        if np.shape(r.logprobs) != (n,):
            ctx.fail("length_mismatch", f"{where}: {n} tokens but logprobs of shape {np.shape(r.logprobs)}")
        if not isinstance(r.logprobs, np.ndarray) or r.logprobs.dtype != np.float32:
            ctx.fail("bad_field", f"{where}.logprobs must be a float32 array")
        if not (isinstance(r.reward, (float, int, np.floating, np.integer)) and not isinstance(r.reward, bool)):
            ctx.fail("bad_number", f"{where}.reward={r.reward!r} is not a number")
        _REWARD.read(float(r.reward), ctx, f"{where}.reward")  # the declared rule: finite, float32 range
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
        if not (isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool)):
            ctx.fail("bad_number", f"timings.{k}={v!r} is not a number")
        _TIMING.read(float(v), ctx, f"timings.{k}")


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
