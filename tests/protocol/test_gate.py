"""The frame gate (protocol/gate.py): ZMTP framing parsed in any chunking, an endless multipart message cut after
MAX_FRAMES frames, and a learner endpoint behind the gate serving actors as before."""

from __future__ import annotations

import random
import socket

import pytest

from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.endpoint import LearnerServer
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.gate import GREETING_BYTES, MAX_FRAMES, _Framing
from gspo_async.protocol.messages import Limits
from tests.support.raw_actor import RawActor

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
READY_BODY = b"\x05READY\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
READY = bytes([0x04, len(READY_BODY)]) + READY_BODY


def frame(body: bytes, more: bool = False) -> bytes:
    """One ZMTP 3 message frame (short or long size)."""
    flags = 0x01 if more else 0
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def feed_in_chunks(framing: _Framing, data: bytes, rng: random.Random):
    i = 0
    while i < len(data):
        k = rng.randint(1, 40)
        reason = framing.feed(data[i:i + k])
        if reason is not None:
            return reason
        i += k
    return None


def test_greeting_commands_and_bounded_messages_pass_in_any_chunking():
    rng = random.Random(0)
    messages = b"".join(frame(b"h" * 10, more=True) + frame(b"x" * 300, more=True) + frame(b"") for _ in range(50))
    stream = GREETING + READY + messages + frame(b"y" * 1000)
    for _ in range(20):
        framing = _Framing(max_frames=3, max_bytes=2000)
        assert feed_in_chunks(framing, stream, rng) is None
        assert framing.frames == 0 and framing.body == 0  # between messages


def test_an_endless_multipart_message_is_cut_after_max_frames_or_max_bytes():
    framing = _Framing(max_frames=100, max_bytes=10**6)
    assert framing.feed(GREETING + READY + frame(b"", more=True) * 100) is None
    assert "more than 100 frames" in framing.feed(frame(b"", more=True))
    framing = _Framing(max_frames=100, max_bytes=1000)
    assert "more than 1000 bytes" in framing.feed(GREETING + READY + frame(b"z" * 600, more=True) * 2)
    # commands between frames (e.g. heartbeats) do not count as frames
    framing = _Framing(max_frames=3, max_bytes=10**6)  # 3 frames, 2 PING commands among them
    ping = bytes([0x04, 7]) + b"\x04PING\x00\x00"
    assert framing.feed(GREETING + READY + (frame(b"", more=True) + ping) * 2 + frame(b"")) is None


def test_a_zmtp_version_below_3_is_refused():
    old = bytearray(GREETING)
    old[10] = 2
    assert "below 3" in _Framing(10, 10).feed(bytes(old))
    split = _Framing(10, 10)
    assert split.feed(bytes(old[:10])) is None and "below 3" in split.feed(bytes(old[10:]))
    assert len(GREETING) == GREETING_BYTES


def raw_zmtp(port: int) -> socket.socket:
    """A raw TCP client that completes the NULL handshake of a DEALER."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(GREETING)
    got = b""
    while len(got) < GREETING_BYTES:  # the server's greeting, then our READY
        got += s.recv(4096)
    s.sendall(READY)
    return s


@pytest.fixture
def gated_server():
    items = ((i, [1, 2, 3], str(i), {}) for i in range(10**6))
    coord = Coordinator(PromptSource(items), groups_per_step=2, group_size=2, max_staleness=1, lease_timeout_s=30,
                        heartbeat_timeout_s=30)
    server = LearnerServer(coord, limits=Limits(vocab_size=64, max_prompt_tokens=8, max_response_tokens=8,
                                                group_size=2))
    server.start()
    yield server
    server.close()


def test_the_learner_cuts_an_endless_multipart_message_and_serves_actors(gated_server):
    attacker = raw_zmtp(gated_server.port)
    sent, chunk = 0, frame(b"", more=True) * 4096
    with pytest.raises(OSError):  # reset or broken pipe once the gate closed the connection
        while sent < 16 << 20:  # without the gate libzmq would hold 32 x this (64 bytes per 2-byte frame)
            attacker.sendall(chunk)
            sent += len(chunk)
    attacker.close()
    assert gated_server._gate.counts["cut"] == 1
    actor = RawActor(f"127.0.0.1:{gated_server.port}")
    try:
        welcome = actor.register("a0", "i0")
        assert welcome.actor_id == "a0"
        status = gated_server.status()
        assert status.actors[0].address == "127.0.0.1"  # the client's address, as the gate saw it
    finally:
        actor.close()
    assert MAX_FRAMES >= 2 + 3 * 64  # the codec's bound for any group size the gate must let through (G <= 64)


def test_behind_the_gate_a_closed_actor_connection_is_seen_at_once(gated_server):
    """The gate closes its side when the client's connection closes, so the learner's socket sees the disconnect
    (the actor leaves weight broadcasts before heartbeats declare it dead)."""
    from tests.integration.conftest import wait_for

    actor = RawActor(f"127.0.0.1:{gated_server.port}")
    actor.register("a0", "i0")
    assert gated_server.reachable_actor_ids() == ["a0"]
    actor.close()
    wait_for(lambda: gated_server.reachable_actor_ids() == [], 10, "the closed connection to be seen")
    assert gated_server.live_actor_ids() == ["a0"]  # still registered: only heartbeats declare death
