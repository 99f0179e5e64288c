"""A hostile peer for the reliability suite: it registers like an actor and leases real prompts, then sends fuzzed
frames and valid-looking groups with exactly one flaw each, keeping every reply the learner sends back.

The frame mutations are those of the protocol fuzz test (tests/learner/test_endpoint.py), here aimed at a real
learner process.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from typing import Any, Callable, Iterator

import msgpack
import numpy as np

from gspo_async.protocol.codec import encode
from gspo_async.protocol.messages import (
    Ack, ErrorReply, Goodbye, Heartbeat, HeartbeatAck, Lease, LeaseRequest, Limits, PromptLease, RolloutGroup,
    WeightVersion, Welcome)
from tests.learner.test_endpoint import huge_length, wrong_type
from tests.support.canned import canned_group
from tests.support.raw_actor import RawActor

FUZZ_KINDS = ("bit_flips", "truncation", "random_bytes", "wrong_type", "huge_length", "extra_frames")
NEVER_ISSUED = 10**9  # prompt ids from here on are never issued: a fuzzed group can never be accepted


def fuzz_frames(rng: random.Random, bases: list[bytes], n: int) -> Iterator[tuple[str, list[bytes]]]:
    """`n` (kind, frames) pairs, cycling through FUZZ_KINDS. Every kind but bit flips is malformed by construction;
    a bit flip may leave a message readable."""
    for i in range(n):
        base, kind = rng.choice(bases), FUZZ_KINDS[i % len(FUZZ_KINDS)]
        if kind == "bit_flips":
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            frames = [bytes(data)]
        elif kind == "truncation":
            frames = [base[: rng.randrange(len(base))]]
        elif kind == "random_bytes":
            frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(64)))]
        elif kind == "wrong_type":
            frames = [msgpack.packb(wrong_type(rng, msgpack.unpackb(base, raw=False)), use_bin_type=True)]
        elif kind == "huge_length":
            frames = [huge_length(rng)]
        else:
            frames = [base] + [bytes(rng.randrange(256) for _ in range(rng.randrange(16)))
                               for _ in range(rng.randint(1, 3))]
        yield kind, frames


def fuzz_bases(prompt: PromptLease, limits: Limits, version: int, sender: str) -> list[bytes]:
    """Single-frame messages to mutate: groups for never-issued prompt ids (with a real prompt's tokens), a
    heartbeat and an empty lease request."""
    groups = [canned_group(PromptLease(NEVER_ISSUED + i, prompt.tokens, "", {}), limits.group_size, version, sender,
                           vocab_size=limits.vocab_size, length=2) for i in range(4)]
    frames = [encode(g) for g in groups] + [encode(Heartbeat(version, {"tokens_per_s": 1.0}, 0, rid=2)),
                                            encode(LeaseRequest(0, rid=3))]
    assert all(len(f) == 1 for f in frames), "fuzz bases must be single-frame messages"
    return [f[0] for f in frames]


def one_flaw_groups(prompt: PromptLease, limits: Limits, version: int, sender: str,
                    accepted: RolloutGroup) -> list[tuple[str, RolloutGroup, str]]:
    """(name, group, expected answer) for groups that are valid but for one flaw: an ErrorReply code, or 'duplicate'
    for an Ack. `prompt` is a prompt the sender holds a lease on; `accepted` is a group the learner already accepted
    from it for another prompt (its id is reused)."""

    def group(**change: Any) -> RolloutGroup:
        g = canned_group(prompt, limits.group_size, version, sender, vocab_size=limits.vocab_size, length=2)
        for key, value in change.items():
            setattr(g.responses[0], key, value)
        return g

    n = len(group().responses[0].tokens)
    short_group, forged_prompt, unknown, dup = group(), group(), group(), group()
    short_group.responses = short_group.responses[:-1]
    forged_prompt.prompt_tokens = (forged_prompt.prompt_tokens + 1) % limits.vocab_size
    unknown.prompt_id = NEVER_ISSUED
    dup.group_id = accepted.group_id
    return [
        ("length_mismatch", group(logprobs=np.full(n - 1, -0.5, np.float32)), "length_mismatch"),
        ("nan_logprob", group(logprobs=np.array([np.nan] + [-0.5] * (n - 1), np.float32)), "bad_logprob"),
        ("positive_logprob", group(logprobs=np.full(n, 0.25, np.float32)), "bad_logprob"),
        ("out_of_vocab", group(tokens=np.array([limits.vocab_size] + [1] * (n - 1), np.int32)), "out_of_vocab"),
        ("forged_version", group(version_spans=np.array([[version + 10**6, 0, n]], np.int32)), "forged_version"),
        ("wrong_group_size", short_group, "group_size"),
        ("prompt_mismatch", forged_prompt, "prompt_mismatch"),
        ("unknown_prompt", unknown, "unknown_prompt"),
        ("reused_group_id", dup, "group_id_reused"),  # an accepted group's id, for another prompt
        ("duplicate_group", accepted, "duplicate"),  # the accepted group itself, resent
        ("huge_reward", group(reward=1e308), "bad_number"),  # finite, but no float32
        ("negative_timing", _with_timing(group(), -1.0), "bad_number"),
    ]


def _with_timing(g: RolloutGroup, seconds: float) -> RolloutGroup:
    g.timings = {"gen_s": seconds}
    return g


class HostilePeer:
    """A RawActor that keeps every reply (in order) and heartbeats while it waits, so the learner keeps it alive."""

    def __init__(self, address: str, curve: Any = None):
        self.raw = RawActor(address, curve)
        self.replies: list[Any] = []
        self._rid = 1000  # own request ids are above this; the fuzz bases use small ones
        self._last_heartbeat = time.monotonic()

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    def register(self, actor_id: str) -> Welcome:
        return self.raw.register(actor_id, f"{actor_id}-instance")

    def send(self, msg: Any) -> None:
        self.raw.send(msg)

    def send_frames(self, frames: list[bytes]) -> None:
        self.raw.send_frames(frames)

    def drain(self) -> None:
        """Keep whatever replies are already here."""
        while (reply := self.raw.poll()) is not None:
            self.replies.append(reply)

    def wait_reply(self, match: Callable[[Any], bool], timeout_s: float, what: str) -> Any:
        """The first new reply for which `match` holds (others are kept too); heartbeats every second meanwhile."""
        start, deadline = len(self.replies), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if time.monotonic() - self._last_heartbeat > 1.0:
                self.raw.send(Heartbeat(0, {}, 0, rid=self.rid()))
                self._last_heartbeat = time.monotonic()
            reply = self.raw.poll(0.2)
            if reply is not None:
                self.replies.append(reply)
                if match(reply):
                    return reply
        seen = [type(r).__name__ for r in self.replies[start:]]
        raise AssertionError(f"no reply for {what} within {timeout_s:.0f} s (got {seen})")

    def lease(self, n: int, timeout_s: float) -> tuple[list[PromptLease], int]:
        """At least `n` leased prompts (asking again while admission is closed) and the version of the last lease."""
        got: list[PromptLease] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            rid = self.rid()
            self.send(LeaseRequest(n - len(got), wait_s=2.0, rid=rid))
            reply = self.wait_reply(lambda r: isinstance(r, Lease) and r.rid == rid, deadline - time.monotonic(),
                                    f"{n} leases")
            got += reply.prompts
        return got, reply.version

    def ask(self, group: RolloutGroup, timeout_s: float = 10.0) -> Any:
        """Send a group and return its answer: an Ack or an ErrorReply naming its group id."""
        self.send(group)
        return self.wait_reply(lambda r: isinstance(r, (Ack, ErrorReply)) and getattr(
            r, "group_id", getattr(r, "ref", None)) == group.group_id, timeout_s, f"group {group.group_id}")

    def barrier(self, timeout_s: float = 30.0) -> None:
        """Return once the learner has answered everything sent before (it answers one connection in order)."""
        rid = self.rid()
        self.send(Heartbeat(0, {}, 0, rid=rid))
        self.wait_reply(lambda r: isinstance(r, HeartbeatAck) and r.rid == rid, timeout_s, "the barrier heartbeat")

    def errors(self, since: int = 0) -> Counter:
        """Error codes received (replies[since:]) by code."""
        return Counter(r.code for r in self.replies[since:] if isinstance(r, ErrorReply))

    def answers(self, since: int = 0) -> int:
        """Replies to fuzzed messages in replies[since:]: all but version announcements and answers to this peer's
        own requests (its heartbeats, lease requests and barriers)."""
        return sum(not isinstance(r, WeightVersion) and not (isinstance(r, (HeartbeatAck, Lease)) and r.rid > 1000)
                   for r in self.replies[since:])

    def goodbye(self) -> None:
        self.send(Goodbye("done attacking", []))

    def close(self) -> None:
        self.raw.close()


ZMTP_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
_READY = b"\x05READY\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"


def endless_multipart(port: int, max_bytes: int) -> int:
    """Speak ZMTP 3 (NULL) as a DEALER over a raw TCP connection, then send empty frames with the "more" flag (2
    bytes each on the wire) until the learner closes the connection or `max_bytes` are sent. Returns the bytes
    sent. (A libzmq client cannot do this: it keeps an unfinished message to itself.)"""
    sent, chunk = 0, b"\x01\x00" * 32768
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(ZMTP_GREETING)
        got = b""
        while len(got) < len(ZMTP_GREETING):  # the learner's greeting, then the READY command
            data = s.recv(4096)
            if not data:
                return sent
            got += data
        s.sendall(bytes([0x04, len(_READY)]) + _READY)
        try:
            while sent < max_bytes:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset or broken pipe: the learner cut the connection
            pass
    return sent
