"""Small ZeroMQ pieces shared by the learner server and the actor client."""

from __future__ import annotations

import itertools
import threading
from typing import Any, Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

_inproc_ids = itertools.count()

# Handshake outcomes reported by a socket monitor.
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def monitor_events(monitor: zmq.Socket) -> Iterator[tuple[int, Any]]:
    """The (event, value) pairs a socket monitor holds now, without blocking."""
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        yield event["event"], event["value"]


def parse_address(address: str) -> tuple[str, int]:
    """'host:port', 'tcp://host:port' or '[v6]:port' -> (host, port)."""
    text = address.strip()
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"learner address {address!r} must look like host:port (e.g. 127.0.0.1:5555)")
    return host, int(port)


def endpoint(host: str, port: int | str) -> str:
    """A tcp:// endpoint; IPv6 hosts get brackets."""
    if host == "localhost":  # libzmq binds interfaces or addresses, not names
        host = "127.0.0.1"
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class Waker:
    """Wakes a thread blocked in zmq.Poller.poll from any other thread (an inproc PAIR; one byte per wake-up
    at most until the owner drains it)."""

    def __init__(self, context: zmq.Context):
        name = f"inproc://waker-{id(self)}-{next(_inproc_ids)}"
        self.rx = context.socket(zmq.PAIR)
        self.rx.bind(name)
        self._tx = context.socket(zmq.PAIR)
        self._tx.connect(name)
        self._lock = threading.Lock()
        self._pending = False

    def wake(self) -> None:
        with self._lock:
            if not self._pending and not self._tx.closed:
                self._pending = True
                self._tx.send(b"", zmq.NOBLOCK)

    def drain(self) -> None:
        """Called by the owner thread when rx is readable."""
        with self._lock:
            self._pending = False
            while True:
                try:
                    self.rx.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break

    def close(self) -> None:
        with self._lock:
            self._tx.close(linger=0)
            self.rx.close(linger=0)


def peer_address(frame: Any) -> str:
    """The remote IP of the connection a received frame came from ('' when unknown)."""
    try:
        return frame.get("Peer-Address") or ""
    except (zmq.ZMQError, AttributeError, TypeError):
        return ""
