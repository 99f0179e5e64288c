"""Encoding and decoding: every message type round-trips exactly; random valid groups too (hypothesis)."""

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gspo_async.protocol.codec import decode, decode_from_learner, encode, normalize_group
from gspo_async.protocol.fields import FLOAT32_MAX
from gspo_async.protocol.messages import MAX_ABS_REWARD
from gspo_async.protocol.messages import (
    SCHEMA_VERSION, TO_ACTOR, TO_LEARNER, Ack, ErrorReply, Goodbye, Heartbeat, HeartbeatAck, Lease, LeaseRequest,
    Limits, PromptLease, Register, Response, RolloutGroup, WeightVersion, Welcome)
from gspo_async.protocol.validate import check_group

LIMITS = Limits(vocab_size=1000, max_prompt_tokens=64, max_response_tokens=128, group_size=3)


def sample_group(version=2, frames=False):
    responses = [
        Response(np.array([1, 2, 3], np.int32), np.array([-0.1, -2.0, 0.0], np.float32), 1.0, "stop",
                 np.array([[0, 0, 2], [2, 2, 3]], np.int32)),
        Response.single_version([7], [-3.5], -1.25, "length", 1),
        Response.single_version(np.arange(100), np.full(100, -0.01), 0.0, "abort", version),
    ]
    return RolloutGroup("actor-1:17:abcd", 17, "actor-1", np.array([5, 6], np.int32), responses,
                        {"gen_s": 1.5, "reward_s": 0.25})


def all_messages():
    lease = PromptLease(3, np.array([1, 2, 3], np.int32), "42", {"digits": 3, "nested": {"a": [1, 2.5, None]}})
    return [
        Register("actor-1", "abc123", "hf", {"device": "cpu", "gpus": 0, "fast": True, "x": 1.5, "none": None},
                 True, 7),
        Welcome("actor-1", "sess01", 4, {"rollout_batch_size": 8, "model": {"path": "x"}},
                {"config.json": b"{}", "tokenizer.json": bytes(range(256))}, ("127.0.0.1", 5556), 1.0, 60.0,
                LIMITS, 7),
        Welcome("actor-2", "sess01", 0, {}, {}, None, 0.5, 1.0, LIMITS),
        LeaseRequest(4, 2.5, [1, 2], 9),
        Lease([lease, PromptLease(4, np.array([9], np.int32), "", {})], 60.0, 4, "", 9),
        Lease([], 60.0, 4, "admission", 10),
        sample_group(),
        Ack("actor-1:17:abcd", "accepted"),
        Ack("g2", "retry_later", 1.5),
        Heartbeat(3, {"tokens_per_s": 12.5, "groups": 3, "state": "gen", "ok": True, "nan": float("nan")}, 2, 11),
        HeartbeatAck(4, "sess01", 11),
        Goodbye("sigterm", [3, 4]),
        WeightVersion(5, "sess01"),
        ErrorReply("bad_logprob", "responses[0].logprobs has NaN", "g1", 3),
    ]


@pytest.mark.parametrize("msg", all_messages(), ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("threshold", [1 << 20, 0])
def test_every_message_round_trips(msg, threshold):
    frames = encode(msg, frame_threshold=threshold)
    header = msgpack.unpackb(frames[0], raw=False)
    assert header["v"] == SCHEMA_VERSION and header["t"] == type(msg).TYPE
    accept = TO_LEARNER if type(msg).TYPE in TO_LEARNER else TO_ACTOR
    back = decode(frames, limits=LIMITS if accept is TO_LEARNER else None, accept=accept)
    assert back == msg and type(back) is type(msg)


def test_large_arrays_travel_as_frames_and_decode_to_writable_native_arrays():
    group = sample_group()
    frames = encode(group, frame_threshold=256)
    assert len(frames) == 3  # the 100-token response: tokens (400 B) and log-probs (400 B)
    header = msgpack.unpackb(frames[0], raw=False)
    assert header["responses"][2]["tokens"] == 1 and header["responses"][2]["logprobs"] == 2
    back = decode([bytes(f) for f in frames], limits=LIMITS)
    assert back == group
    r = back.responses[2]
    assert r.tokens.flags.writeable and r.tokens.dtype == np.int32 and r.logprobs.dtype == np.float32
    assert back.responses[0].version_spans.shape == (2, 3)


def test_wire_bytes_are_little_endian():
    header = msgpack.unpackb(encode(sample_group())[0], raw=False)
    assert header["responses"][0]["tokens"] == b"\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00"
    assert header["responses"][1]["logprobs"] == np.array([-3.5], "<f4").tobytes() == b"\x00\x00\x60\xc0"
    assert header["responses"][0]["version_spans"] == np.array([0, 0, 2, 2, 2, 3], "<i4").tobytes()


def test_encoding_refuses_lossy_or_unknown_data():
    g = sample_group()
    g.responses[0].tokens = np.array([1.5, 2.0, 3.0])
    with pytest.raises(TypeError, match="integer"):
        encode(g)
    g.responses[0].tokens = np.array([1, 2, 2**40])
    with pytest.raises(ValueError, match="int32"):
        encode(g)
    with pytest.raises(TypeError, match="only in the array fields"):
        encode(Heartbeat(0, {"x": np.zeros(3)}))


def test_normalize_group_converts_lists_and_wide_dtypes():
    g = sample_group()
    g.prompt_tokens = [5, 6]
    g.responses[1] = Response(np.array([7], np.int64), np.array([-3.5], np.float64), -1.25, "length", [1, 0, 1])
    n = normalize_group(g)
    assert n.prompt_tokens.dtype == np.int32 and n.responses[1].logprobs.dtype == np.float32
    assert n.responses[1].version_spans.shape == (1, 3)
    check_group(n, LIMITS, version=2)
    assert decode(encode(n), limits=LIMITS) == n


def test_group_helpers():
    g = sample_group(version=2)
    assert (g.min_version, g.max_version, g.num_tokens, g.response_lengths) == (0, 2, 104, [3, 1, 100])


def test_decode_from_learner_accepts_only_learner_messages():
    with pytest.raises(Exception) as err:
        decode_from_learner(encode(Goodbye()))
    assert err.value.code == "unknown_type"


# ----------------------------------------------------------------------------------------------------------
# Property test: any valid group round-trips exactly and passes validation
# ----------------------------------------------------------------------------------------------------------

@st.composite
def groups(draw):
    g = draw(st.integers(1, 5))
    vocab = draw(st.integers(2, 2**31 - 1))
    version = draw(st.integers(0, 2**20))
    responses = []
    for _ in range(g):
        n = draw(st.integers(1, 40))
        tokens = draw(hnp.arrays(np.int32, n, elements=st.integers(0, vocab - 1)))
        logprobs = draw(hnp.arrays(np.float32, n, elements=st.floats(max_value=0.0, width=32, allow_nan=False,
                                                                     allow_infinity=False)))
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(4, n - 1)))) if n > 1 else []
        bounds = [0, *cuts, n]
        versions = sorted(draw(st.lists(st.integers(0, version), min_size=len(bounds) - 1,
                                        max_size=len(bounds) - 1)))
        spans = [[v, a, b] for v, a, b in zip(versions, bounds[:-1], bounds[1:])]
        reward = draw(st.floats(-MAX_ABS_REWARD, MAX_ABS_REWARD))  # the declared range
        responses.append(Response(tokens, logprobs, reward,
                                  draw(st.sampled_from(["stop", "length", "abort"])), np.array(spans, np.int32)))
    ident = st.from_regex(r"[A-Za-z0-9_.:@-]{1,40}", fullmatch=True)  # the id rule of protocol/ids.py
    prompt = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=30))
    timings = draw(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                                   st.floats(0.0, FLOAT32_MAX), max_size=4))
    group = RolloutGroup(draw(ident), draw(st.integers(0, 2**63 - 1)), draw(ident), np.array(prompt, np.int32),
                         responses, timings)
    limits = Limits(vocab_size=vocab, max_prompt_tokens=30, max_response_tokens=40, group_size=g)
    return group, limits, version


@settings(max_examples=100, deadline=None)
@given(groups(), st.sampled_from([0, 64, 1 << 20]))
def test_random_valid_groups_round_trip_exactly(case, threshold):
    group, limits, version = case
    check_group(group, limits, version)
    back = decode(encode(group, frame_threshold=threshold), limits=limits)
    assert back == group
    check_group(back, limits, version)
    assert all(math.isfinite(r.reward) for r in back.responses)
