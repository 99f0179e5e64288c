"""Messages to ZeroMQ frames and back: one msgpack map, arrays as raw little-endian bytes, never pickle.

Frame 0 is the msgpack header map {"v": SCHEMA_VERSION, "t": type, ...fields}. An array field is a msgpack bin
of little-endian int32 / float32 items; an array of `frame_threshold` bytes or more travels instead as its own
frame k >= 1 and the field holds the int k (zero-copy on both sides). docs/protocol.md is the full specification.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import msgpack
import numpy as np

from gspo_async.protocol.messages import (
    SCHEMA_VERSION, TO_ACTOR, TO_LEARNER, Limits, ProtocolError, Response, RolloutGroup)
from gspo_async.protocol.fields import Context
from gspo_async.protocol.ids import ID_RE
from gspo_async.protocol.validate import read_message

# Arrays this large go as separate frames: below ~1 MiB a bin field costs no more (measured, research/cpu.md §5).
DEFAULT_FRAME_THRESHOLD = 1 << 20

# Entries of one msgpack map or array when no limits are in force (an actor reading the learner's replies).
MAX_CONTAINER_ITEMS = 1 << 20

# Wire dtype of each array field, by field name (int32 for ids and spans, float32 for log-probs).
ARRAY_FIELDS = {"tokens": "<i4", "prompt_tokens": "<i4", "version_spans": "<i4", "logprobs": "<f4"}


def encode(msg: Any, *, frame_threshold: int = DEFAULT_FRAME_THRESHOLD) -> list[Any]:
    """Frames of `msg`: [msgpack header, *array frames]. Array frames are memoryviews (send with copy=False)."""
    extra: list[Any] = []
    inline = [0]  # bytes of bin fields, to size the packer's buffer once (growing it costs a copy per doubling)
    body = _to_wire(msg, extra, frame_threshold, inline)
    body["v"] = SCHEMA_VERSION
    body["t"] = type(msg).TYPE
    # a power of two with room to spare: measured 10x faster than a tight fit for 0.5 MiB headers (allocator reuse)
    packer = msgpack.Packer(use_bin_type=True, buf_size=1 << (inline[0] + (16 << 10)).bit_length())
    return [packer.pack(body), *extra]


def _to_wire(obj: Any, extra: list, threshold: int, inline: list) -> Any:
    if type(obj) is RolloutGroup:
        return _group_to_wire(obj, extra, threshold, inline)
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            out[f.name] = (_array_to_wire(value, ARRAY_FIELDS[f.name], f.name, extra, threshold, inline)
                           if f.name in ARRAY_FIELDS else _to_wire(value, extra, threshold, inline))
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_wire(v, extra, threshold, inline) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_wire(v, extra, threshold, inline) for k, v in obj.items()}
    if isinstance(obj, np.generic):  # numpy scalars in stats or meta
        return obj.item()
    if isinstance(obj, np.ndarray):
        raise TypeError("numpy arrays travel only in the array fields (tokens, logprobs, version_spans); "
                        "convert other arrays to lists")
    if isinstance(obj, (bytes, str)):
        inline[0] += len(obj)
    return obj


def _group_to_wire(g: RolloutGroup, extra: list, threshold: int, inline: list) -> dict:
    """The hot path, spelled out (the same map the generic walk builds; the round-trip tests hold both)."""
    def array(value: Any, dtype: str, name: str) -> Any:
        return _array_to_wire(value, dtype, name, extra, threshold, inline)

    def scalar(value: Any) -> Any:
        return value.item() if isinstance(value, np.generic) else value

    return {"group_id": g.group_id, "prompt_id": scalar(g.prompt_id), "actor_id": g.actor_id,
            "prompt_tokens": array(g.prompt_tokens, "<i4", "prompt_tokens"),
            "responses": [{"tokens": array(r.tokens, "<i4", "tokens"), "logprobs": array(r.logprobs, "<f4", "logprobs"),
                           "reward": scalar(r.reward), "finish_reason": r.finish_reason,
                           "version_spans": array(r.version_spans, "<i4", "version_spans")} for r in g.responses],
            "timings": {k: scalar(v) for k, v in g.timings.items()}, **({"run_id": g.run_id} if g.run_id else {})}


def _array_to_wire(value: Any, dtype: str, name: str, extra: list, threshold: int, inline: list) -> Any:
    arr = as_wire_array(value, dtype, name)
    view = memoryview(arr).cast("B")  # msgpack packs any buffer as bin: no intermediate bytes copy
    if arr.nbytes >= threshold:
        extra.append(view)
        return len(extra)  # frame index: the header is frame 0
    inline[0] += arr.nbytes
    return view


def as_wire_array(value: Any, dtype: str, name: str) -> np.ndarray:
    """`value` as a contiguous little-endian 1-D array of `dtype`, refusing lossy conversions."""
    want = np.dtype(dtype)
    if isinstance(value, np.ndarray) and value.dtype == want and value.flags.c_contiguous:
        return value.reshape(-1)  # already in wire form (the common case): no check, no copy
    arr = np.asarray(value)
    if want.kind == "i":
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integer token ids / spans, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < -2**31 or int(arr.max()) >= 2**31):
            raise ValueError(f"{name}: values outside the int32 range cannot be sent")
    elif arr.size and arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected floating point log-probs, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr.reshape(-1), dtype=want)


def normalize_group(group: RolloutGroup, actor_id: Optional[str] = None) -> RolloutGroup:
    """A shallow copy of `group` with native int32 / float32 arrays, spans of shape [k, 3] (what the learner
    sees) and, if given, `actor_id`. Arrays already in that form are shared, not copied."""
    def native(value: Any, dtype: str, name: str) -> np.ndarray:
        if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
            return value
        return as_wire_array(value, dtype, name).astype(np.dtype(dtype).newbyteorder("="), copy=False)

    def spans(value: Any) -> np.ndarray:
        arr = native(value, "<i4", "version_spans")
        if arr.size % 3:
            raise ProtocolError("bad_spans", f"version_spans of {arr.size} items are not (version, start, end) rows",
                                ref=group.group_id, msg_type="rollout_group")
        return arr if arr.ndim == 2 and arr.shape[1] == 3 else arr.reshape(-1, 3)

    responses = [Response(native(r.tokens, "<i4", "tokens"), native(r.logprobs, "<f4", "logprobs"), r.reward,
                          r.finish_reason, spans(r.version_spans)) for r in group.responses]
    return RolloutGroup(group.group_id, group.prompt_id, group.actor_id if actor_id is None else actor_id,
                        native(group.prompt_tokens, "<i4", "prompt_tokens"), responses, dict(group.timings),
                        group.run_id)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")


def _strict_map(pairs: list[tuple[Any, Any]]) -> dict:
    """A msgpack map as the protocol allows it: str keys, each once (msgpack itself would keep the last of
    duplicate keys and accept bin keys), and no Timestamp values (msgpack decodes that extension natively)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate map key")
    for k, v in pairs:
        if type(k) is not str:
            raise ValueError(f"map key of type {type(k).__name__}")
        if type(v) is msgpack.Timestamp:
            raise ValueError("msgpack extension type -1 (Timestamp) is not part of the protocol")
    return out


def _strict_list(items: list) -> list:
    if any(type(v) is msgpack.Timestamp for v in items):
        raise ValueError("msgpack extension type -1 (Timestamp) is not part of the protocol")
    return items


def decode(frames: Sequence[Any], *, limits: Optional[Limits] = None, accept: Optional[dict[str, type]] = None) -> Any:
    """The message in `frames` (bytes, memoryviews or zmq.Frame), fully validated against `limits`.

    accept: the message types this side may receive (default: those sent to the learner).
    Raises ProtocolError (never anything else for bad input).
    """
    accept = TO_LEARNER if accept is None else accept
    if not frames:
        raise ProtocolError("malformed", "empty message")
    sizes = [memoryview(_buf(f)).nbytes for f in frames]
    if limits is not None and sum(sizes) > limits.max_message_bytes:
        raise ProtocolError("too_large", f"{sum(sizes)} bytes, the limit is {limits.max_message_bytes}")
    max_frames = 2 + 3 * limits.group_size if limits is not None else 4096
    if len(frames) > max_frames:
        raise ProtocolError("bad_frames", f"{len(frames)} frames, at most {max_frames} allowed")
    # No map or array of a valid header has more entries than this: a header of 60 MB of nils is refused before
    # msgpack allocates 8 bytes per nil (each msgpack length is checked before its container is built).
    items = max(limits.max_lease_prompts, limits.max_items, limits.group_size, limits.max_meta_bytes) if limits \
        else MAX_CONTAINER_ITEMS
    try:
        body = msgpack.unpackb(_buf(frames[0]), raw=False, strict_map_key=True, ext_hook=_no_ext,
                               object_pairs_hook=_strict_map, list_hook=_strict_list,
                               max_array_len=items, max_map_len=items)
    except Exception as err:  # msgpack raises many types for bad input; all mean the same here
        raise ProtocolError("malformed", f"header is not valid msgpack ({type(err).__name__}: "
                                         f"{str(err)[:80]})") from None
    if type(body) is not dict:
        raise ProtocolError("malformed", f"header must be a msgpack map, got {type(body).__name__}")
    msg_type = body.get("t")
    rid = body.get("rid") if type(body.get("rid")) is int and 0 <= body["rid"] < 2**31 else 0
    if body.get("v") != SCHEMA_VERSION or type(body.get("v")) is not int:
        raise ProtocolError("schema_version", f"schema version {str(body.get('v'))[:20]!r}; this side speaks "
                                              f"{SCHEMA_VERSION}", rid=rid)
    if type(msg_type) is not str or msg_type not in accept:
        raise ProtocolError("unknown_type", f"message type {str(msg_type)[:40]!r} is not one of {sorted(accept)}",
                            rid=rid)
    ref = body.get("group_id") if msg_type == "rollout_group" else ""
    if not (type(ref) is str and len(ref) <= (limits.max_string_bytes if limits else 4096)
            and ID_RE.fullmatch(ref)):
        ref = ""
    ctx = Context(limits, frames=frames[1:], msg_type=msg_type, ref=ref, rid=rid)
    return read_message(msg_type, body, ctx)


def decode_from_learner(frames: Sequence[Any]) -> Any:
    """Decode a message sent by the learner (what an actor receives)."""
    return decode(frames, limits=None, accept=TO_ACTOR)


def _buf(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame
