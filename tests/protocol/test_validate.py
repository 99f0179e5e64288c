"""Every kind of bad message is refused with its own error code (decoding plus group checks)."""

import msgpack
import numpy as np
import pytest

from gspo_async.protocol.codec import decode, encode
from gspo_async.protocol.messages import ERROR_CODES, Limits, ProtocolError, Response, RolloutGroup
from gspo_async.protocol.validate import check_group

LIMITS = Limits(vocab_size=100, max_prompt_tokens=8, max_response_tokens=16, group_size=2, max_message_bytes=4096,
                max_items=4, max_string_bytes=32)
VERSION = 3


def good_group() -> RolloutGroup:
    return RolloutGroup("g-1", 5, "a0", np.array([1, 2, 3], np.int32), [
        Response.single_version([4, 5, 6], [-0.5, -0.25, 0.0], 1.0, "stop", 3),
        Response(np.array([7, 8], np.int32), np.array([-1, -2], np.float32), 0.0, "length",
                 np.array([[1, 0, 1], [2, 1, 2]], np.int32)),
    ], {"gen_s": 0.5})


def wire() -> dict:
    return msgpack.unpackb(encode(good_group())[0], raw=False)


def i32(*values) -> bytes:
    return np.array(values, "<i4").tobytes()


def f32(*values) -> bytes:
    return np.array(values, "<f4").tobytes()


def check(frames, code, ref="g-1"):
    """Decoding + group checks, as the learner does on arrival."""
    with pytest.raises(ProtocolError) as err:
        msg = decode(frames, limits=LIMITS)
        check_group(msg, LIMITS, VERSION)
    assert err.value.code == code, err.value
    assert code in ERROR_CODES
    if ref is not None:
        assert err.value.ref == ref
    return err.value


def mutated(fn):
    body = wire()
    fn(body)
    return [msgpack.packb(body, use_bin_type=True)]


def test_the_good_group_passes():
    g = decode(encode(good_group()), limits=LIMITS)
    check_group(g, LIMITS, VERSION)


def r0(body):
    return body["responses"][0]


CASES = {
    "logprobs shorter than tokens": (lambda b: r0(b).update(logprobs=f32(-1, -1)), "length_mismatch"),
    "NaN log-prob": (lambda b: r0(b).update(logprobs=f32(-1, float("nan"), -1)), "bad_logprob"),
    "infinite log-prob": (lambda b: r0(b).update(logprobs=f32(-1, float("-inf"), -1)), "bad_logprob"),
    "positive log-prob": (lambda b: r0(b).update(logprobs=f32(-1, 0.5, -1)), "bad_logprob"),
    "token id = vocab size": (lambda b: r0(b).update(tokens=i32(1, 100, 2)), "out_of_vocab"),
    "negative token id": (lambda b: r0(b).update(tokens=i32(1, -1, 2)), "out_of_vocab"),
    "prompt token outside vocab": (lambda b: b.update(prompt_tokens=i32(1, 1000)), "out_of_vocab"),
    "one response too few": (lambda b: b["responses"].pop(), "group_size"),
    "one response too many": (lambda b: b["responses"].append(dict(r0(b))), "group_size"),
    "response longer than the limit": (lambda b: r0(b).update(tokens=i32(*[1] * 17), logprobs=f32(*[-1] * 17),
                                                              version_spans=i32(0, 0, 17)), "bad_field"),
    "empty response": (lambda b: r0(b).update(tokens=b"", logprobs=b"", version_spans=b""), "bad_field"),
    "empty prompt": (lambda b: b.update(prompt_tokens=b""), "bad_field"),
    "spans end early": (lambda b: r0(b).update(version_spans=i32(3, 0, 2)), "bad_spans"),
    "spans with a gap": (lambda b: r0(b).update(version_spans=i32(1, 0, 1, 2, 2, 3)), "bad_spans"),
    "empty span": (lambda b: r0(b).update(version_spans=i32(1, 0, 0, 2, 0, 3)), "bad_spans"),
    "versions going back": (lambda b: r0(b).update(version_spans=i32(2, 0, 1, 1, 1, 3)), "bad_spans"),
    "negative version": (lambda b: r0(b).update(version_spans=i32(-1, 0, 3)), "bad_spans"),
    "spans not triples": (lambda b: r0(b).update(version_spans=i32(3, 0, 3, 1)), "bad_spans"),
    "no spans": (lambda b: r0(b).update(version_spans=b""), "bad_spans"),
    "forged future version": (lambda b: r0(b).update(version_spans=i32(4, 0, 3)), "forged_version"),
    "NaN reward": (lambda b: r0(b).update(reward=float("nan")), "bad_number"),
    "infinite timing": (lambda b: b.update(timings={"gen_s": float("inf")}), "bad_number"),
    "unknown finish reason": (lambda b: r0(b).update(finish_reason="eos"), "bad_field"),
    "unknown field": (lambda b: b.update(extra=1), "bad_field"),
    "missing field": (lambda b: b.pop("prompt_id"), "bad_field"),
    "bool as prompt id": (lambda b: b.update(prompt_id=True), "bad_field"),
    "negative prompt id": (lambda b: b.update(prompt_id=-1), "bad_field"),
    "tokens as a list": (lambda b: r0(b).update(tokens=[4, 5, 6]), "bad_field"),
    "tokens with a partial item": (lambda b: r0(b).update(tokens=i32(4, 5, 6) + b"\x00"), "bad_field"),
    "reward as a string": (lambda b: r0(b).update(reward="1.0"), "bad_field"),
    "actor id with a space": (lambda b: b.update(actor_id="a 0"), "bad_field"),
    "actor id too long": (lambda b: b.update(actor_id="a" * 33), "bad_field"),
    "too many timings": (lambda b: b.update(timings={f"t{i}": 1.0 for i in range(5)}), "bad_field"),
    "timings not a map": (lambda b: b.update(timings=[1.0]), "bad_field"),
    "responses not a list": (lambda b: b.update(responses={"a": 1}), "bad_field"),
    "a response not a map": (lambda b: b["responses"].__setitem__(0, 3), "bad_field"),
    "frame reference without frames": (lambda b: r0(b).update(tokens=1), "bad_frames"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_group_fields_are_refused_with_their_code(name):
    fn, code = CASES[name]
    check(mutated(fn), code)


def test_group_id_is_echoed_only_when_readable():
    err = check(mutated(lambda b: b.update(group_id="has space", prompt_id=True)), "bad_field", ref=None)
    assert err.ref == ""


@pytest.mark.parametrize("frames, code", [
    ([], "malformed"),
    ([b"\xc1"], "malformed"),  # a byte msgpack never uses
    ([msgpack.packb([1, 2])], "malformed"),
    ([msgpack.packb({"v": 1, "t": "heartbeat", "version": 0}) + b"\x00"], "malformed"),  # trailing bytes
    ([b"\xc6\x7f\xff\xff\xff" + b"x" * 10], "malformed"),  # bin32 claiming 2 GiB
    ([b"\xdf\xff\xff\xff\xff"], "malformed"),  # map32 claiming 4 billion entries
    ([b"\x81\xa1t\xa3\xff\xfe\xfd"], "malformed"),  # invalid UTF-8
    ([msgpack.packb({1: 2})], "malformed"),  # keys must be str
    ([msgpack.packb({"t": "heartbeat", "version": 0})], "schema_version"),
    ([msgpack.packb({"v": 2, "t": "heartbeat", "version": 0})], "schema_version"),
    ([msgpack.packb({"v": True, "t": "heartbeat", "version": 0})], "schema_version"),
    ([msgpack.packb({"v": 1, "t": "welcome"})], "unknown_type"),
    ([msgpack.packb({"v": 1, "t": 7})], "unknown_type"),
    ([msgpack.packb({"v": 1, "t": "heartbeat", "version": 0}), b"x"], "bad_frames"),
    ([msgpack.packb({"v": 1, "t": "heartbeat", "version": 0})] + [b""] * 10, "bad_frames"),
    ([b"x" * 5000], "too_large"),
    ([msgpack.packb({"v": 1, "t": "heartbeat", "version": 0, "stats": {"a": [1]}})], "bad_field"),
    ([msgpack.packb({"v": 1, "t": "heartbeat", "version": 0, "stats": {"a b": 1}})], "bad_field"),
    ([msgpack.packb({"v": 1, "t": "register", "actor_id": "a", "instance": "i", "engine": "e",
                     "capabilities": {"deep": {"x": 1}}})], "bad_field"),
    ([msgpack.packb({"v": 1, "t": "lease_request", "n": -1})], "bad_field"),
    ([msgpack.packb({"v": 1, "t": "lease_request", "n": 1, "wait_s": float("nan")})], "bad_field"),
    ([msgpack.packb({"v": 1, "t": "goodbye", "return_leases": list(range(1100))})], "bad_field"),
    ([msgpack.packb({"v": 1, "t": "heartbeat", "version": msgpack.ExtType(5, b"x")})], "malformed"),
])
def test_bad_envelopes_are_refused(frames, code):
    check(frames, code, ref=None)


def test_extra_frames_must_be_referenced_once_and_whole():
    body = wire()
    tokens = r0(body)["tokens"]
    r0(body).update(tokens=1)
    header = msgpack.packb(body)
    assert decode([header, tokens], limits=LIMITS).responses[0].tokens.tolist() == [4, 5, 6]
    check([header, tokens, b"spare"], "bad_frames")  # unreferenced frame
    check([header, tokens[:-1]], "bad_frames")  # not a whole number of int32 items
    body["responses"][1]["tokens"] = 1  # the same frame twice
    check([msgpack.packb(body), tokens], "bad_frames")


def test_rid_is_echoed_on_errors():
    with pytest.raises(ProtocolError) as err:
        decode([msgpack.packb({"v": 1, "t": "lease_request", "n": "x", "rid": 42})], limits=LIMITS)
    assert err.value.rid == 42 and err.value.code == "bad_field"


def test_check_group_refuses_wrong_dtypes_directly():
    g = good_group()
    g.responses[0].logprobs = g.responses[0].logprobs.astype(np.float64)
    with pytest.raises(ProtocolError, match="float32"):
        check_group(g, LIMITS, VERSION)
    g = good_group()
    g.prompt_tokens = g.prompt_tokens.astype(np.int64)
    with pytest.raises(ProtocolError, match="int32"):
        check_group(g, LIMITS, VERSION)
