"""A bare DEALER peer for server tests: sends any frames, reads the learner's replies."""

from __future__ import annotations

from typing import Any, Optional

import zmq

from gspo_async.protocol.codec import decode_from_learner, encode
from gspo_async.protocol.messages import Register, Welcome


class RawActor:
    def __init__(self, address: str, curve: Optional[Any] = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            from gspo_async.protocol.auth import apply_client_keys
            apply_client_keys(self.sock, curve)
        self.sock.connect(f"tcp://{address}")

    def send(self, msg: Any) -> None:
        self.sock.send_multipart(encode(msg))

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 5.0) -> Any:
        if not self.sock.poll(timeout * 1000):
            raise TimeoutError(f"no reply within {timeout} s")
        return decode_from_learner(self.sock.recv_multipart())

    def poll(self, timeout: float = 0.0) -> Optional[Any]:
        """A reply if one arrives within `timeout` seconds, else None."""
        return self.recv(timeout) if self.sock.poll(timeout * 1000) else None

    def register(self, actor_id: str = "raw", instance: str = "raw-1") -> Welcome:
        self.send(Register(actor_id, instance, "raw", rid=1))
        reply = self.recv()
        assert isinstance(reply, Welcome), reply
        return reply

    def close(self) -> None:
        self.ctx.destroy(linger=0)
