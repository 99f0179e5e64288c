"""A scripted learner endpoint: a bare ROUTER socket where the test decides every reply (for client tests)."""

from __future__ import annotations

import time
from typing import Any, Optional

import zmq

from gspo_async.protocol.codec import decode, encode
from gspo_async.protocol.messages import TO_LEARNER, Heartbeat, HeartbeatAck, Limits, Register, Welcome

LIMITS = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=2)


class RawLearner:
    """recv() returns (routing id, message); heartbeats are answered automatically unless `answer_heartbeats`
    is False (then they are returned like any other message)."""

    def __init__(self, port: int = 0, session: str = "session-1", limits: Limits = LIMITS, version: int = 0):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://127.0.0.1:{port or '*'}")
        self.port = int(self.sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"
        self.session, self.limits, self.version = session, limits, version
        self.answer_heartbeats = True
        self.heartbeats: list[Heartbeat] = []

    def recv(self, timeout: float = 5.0, types: Optional[tuple] = None) -> tuple[bytes, Any]:
        """The next message (of `types`, others are skipped) within `timeout` seconds, else TimeoutError."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError(f"no {types or 'message'} from the client within {timeout} s")
            routing, *frames = self.sock.recv_multipart()
            msg = decode(frames, limits=self.limits, accept=TO_LEARNER)
            if isinstance(msg, Heartbeat):
                self.heartbeats.append(msg)
                if self.answer_heartbeats:
                    self.send(routing, HeartbeatAck(self.version, self.session, msg.rid))
                    if types is None or Heartbeat not in types:
                        continue
            if types is None or isinstance(msg, types):
                return routing, msg

    def next_heartbeat(self, where=lambda beat: True, timeout: float = 5.0) -> Heartbeat:
        """The next heartbeat satisfying `where` (others are answered and skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            _, beat = self.recv(max(0.0, deadline - time.monotonic()), (Heartbeat,))
            if where(beat):
                return beat

    def send(self, routing: bytes, msg: Any) -> None:
        self.sock.send_multipart([routing, *encode(msg)])

    def welcome(self, routing: bytes, register: Register, **overrides: Any) -> Welcome:
        fields = dict(actor_id=register.actor_id, session=self.session, version=self.version, config={"k": 1},
                      model_files={"config.json": b"{}"}, weight_store=("127.0.0.1", 1), heartbeat_interval_s=0.2,
                      lease_timeout_s=30.0, limits=self.limits, rid=register.rid)
        fields.update(overrides)
        w = Welcome(**fields)
        self.send(routing, w)
        return w

    def accept_register(self, timeout: float = 5.0, **overrides: Any) -> tuple[bytes, Register]:
        routing, reg = self.recv(timeout, (Register,))
        self.welcome(routing, reg, **overrides)
        return routing, reg

    def close(self) -> None:
        self.ctx.destroy(linger=0)
