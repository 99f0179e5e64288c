"""A frame gate in front of a ZeroMQ socket: bounds the frames and bytes of one message before libzmq buffers them.

libzmq 4.3 holds the frames of a multipart message below the application until its last frame arrives; its
high-water marks count whole messages and ``ZMQ_MAXMSGSIZE`` bounds each frame, so a peer sending frames with the
"more" flag that never end grows the process without bound (an empty frame costs 2 bytes on the wire and 64 bytes
in libzmq, not given back after the connection closed).

The gate listens on the public address and relays each TCP connection, byte for byte, to the ZeroMQ socket bound
on a loopback port. It reads the ZMTP 3.x framing of what the client sends (greeting, then frames: a flags byte
with MORE 0x01, LONG 0x02 and COMMAND 0x04, a 1- or 8-byte size, the body) and closes a connection whose message
grows past `max_frames` frames or `max_bytes` bytes: the relay never holds more than `BUFFER_BYTES` of a
connection's bytes in each direction, and libzmq never holds more than one bounded message of a cut peer.
Everything else passes unchanged, the security handshake included (CURVE encrypts each frame on its own, so the
gate bounds CURVE clients by frame size only; those passed the handshake and are trusted, docs/protocol.md).

The ZeroMQ socket sees the gate's connections: `client_of` maps one back to the client's address.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections import Counter
from typing import Any, Optional

import zmq

log = logging.getLogger("gspo_async.protocol.gate")

GREETING_BYTES = 64  # ZMTP 3.x: signature (10), version (2), mechanism (20), as-server (1), filler (31)
BUFFER_BYTES = 1 << 20  # bytes held per connection and direction before the gate stops reading that side
READ_BYTES = 1 << 16
# A connection whose message passes this many frames is closed (libzmq would hold them all, 64 bytes each, until
# the last one); a message of 2 + 3 G < n <= MAX_FRAMES frames is read and answered `bad_frames` (codec.py).
MAX_FRAMES = 4096


def source_fd(frame: Any) -> int:
    """The socket descriptor a received ZeroMQ frame came through (-1 where libzmq does not say)."""
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, AttributeError, TypeError):
        return -1


class _Framing:
    """The client's ZMTP byte stream, parsed incrementally: frames and bytes of the message in progress."""

    def __init__(self, max_frames: int, max_bytes: int):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.greeting = GREETING_BYTES
        self.head = bytearray()  # flags and size bytes of the frame being read
        self.body = 0  # body bytes of the current frame still to come
        self.frames = self.bytes = 0  # of the message in progress
        self.command = self.more = False

    def feed(self, data: bytes) -> Optional[str]:
        """Parse `data`; the reason to close the connection, or None."""
        view, i, n = memoryview(data), 0, len(data)
        while i < n:
            if self.greeting:
                take = min(self.greeting, n - i)
                at = GREETING_BYTES - self.greeting  # offset of view[i] in the greeting
                if at <= 10 < at + take and view[i + 10 - at] < 3:  # byte 10: the major version
                    return "a ZMTP version below 3 (libzmq 4.1 or newer speaks 3)"
                self.greeting -= take
                i += take
            elif self.body:
                take = min(self.body, n - i)
                self.body -= take
                i += take
                if not self.body:
                    self._end_frame()
            else:
                self.head.append(view[i])
                i += 1
                flags = self.head[0]
                need = 9 if flags & 0x02 else 2
                if len(self.head) < need:
                    continue
                size = int.from_bytes(self.head[1:need], "big")
                self.head.clear()
                self.command, self.more = bool(flags & 0x04), bool(flags & 0x01)
                if not self.command:
                    self.frames += 1
                    self.bytes += size
                    if self.frames > self.max_frames:
                        return f"a message of more than {self.max_frames} frames"
                    if self.bytes > self.max_bytes:
                        return f"a message of more than {self.max_bytes} bytes"
                self.body = size
                if not size:
                    self._end_frame()
        return None

    def _end_frame(self) -> None:
        if not self.command and not self.more:
            self.frames = self.bytes = 0


class _Pipe:
    """One client connection and its connection to the ZeroMQ socket."""

    def __init__(self, client: socket.socket, address: str, upstream: socket.socket, framing: _Framing):
        self.client, self.address, self.upstream, self.framing = client, address, upstream, framing
        self.to_up, self.to_client = bytearray(), bytearray()  # bytes read from one side, not yet written
        self.watched: dict[socket.socket, int] = {}  # selector events registered per socket (absent: none)
        self.local_port = upstream.getsockname()[1]


class FrameGate:
    """Listens on (host, port) and relays every connection to 127.0.0.1:`upstream_port` through `_Framing`.

    max_frames / max_bytes: the most frames and bytes one message may have. `port` is the bound port (port 0
    picks a free one). `cut` counts connections closed for an oversized message. Start with start(), stop with
    close()."""

    def __init__(self, host: str, port: int, upstream_port: int, *, max_frames: int, max_bytes: int):
        self.upstream_port, self.max_frames, self.max_bytes = upstream_port, max_frames, max_bytes
        name = "127.0.0.1" if host == "localhost" else host.strip("[]")
        family, _, _, _, address = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(1024)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.counts: Counter[str] = Counter({"connections": 0, "cut": 0, "errors": 0, "accept_failed": 0})
        self._paused_until = 0.0  # accepting is paused until then (monotonic s) after a failed accept
        self._by_local_port: dict[int, str] = {}  # the gate's upstream port -> the client's address
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="frame-gate", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._wake_w.send(b"x")
            self._thread.join(timeout=10)
        for pipe in {id(p): p for p in self._pipes.values()}.values():
            self._drop(pipe)
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def client_of(self, fd: int) -> str:
        """The client's IP behind the ZeroMQ socket's connection `fd` (`source_fd`), '' if unknown."""
        if fd < 0:
            return ""
        try:
            with socket.socket(fileno=os.dup(fd)) as conn:  # a duplicate: libzmq's descriptor stays untouched
                return self._by_local_port.get(conn.getpeername()[1], "")
        except OSError:
            return ""

    # --------------------------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stopping:
            try:
                self._pass()
            except Exception:  # the gate must never stop: a failure costs one pass (counted, logged)
                self.counts["errors"] += 1
                log.exception("frame gate: a pass of the relay loop failed; the gate goes on")

    def _pass(self) -> None:
        now = time.monotonic()
        if self._paused_until and now >= self._paused_until:  # accept again after a descriptor shortage
            self._sel.register(self._listener, selectors.EVENT_READ)
            self._paused_until = 0.0
        for pipe in {id(p): p for p in self._pipes.values()}.values():
            try:
                self._interest(pipe)
            except (KeyError, ValueError, OSError):
                self._drop(pipe)
        for key, events in self._sel.select(timeout=0.5):
            sock = key.fileobj
            try:
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    sock.recv(64)
                elif sock in self._pipes:
                    self._io(self._pipes[sock], sock, events)
            except Exception:  # one connection's failure costs that connection, never the gate
                self.counts["errors"] += 1
                log.exception("frame gate: a connection failed and was closed")
                if sock in self._pipes:
                    self._drop(self._pipes[sock])

    def _accept(self) -> None:
        for _ in range(64):
            try:
                client, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. EMFILE: the descriptor limit (docs/protocol.md); retry in 0.1 s
                self.counts["accept_failed"] += 1
                if self.counts["accept_failed"] & (self.counts["accept_failed"] - 1) == 0:  # 1st, 2nd, 4th, ...
                    log.warning("frame gate: cannot accept a connection (%s; %d so far): raise ulimit -n",
                                err, self.counts["accept_failed"])
                self._sel.unregister(self._listener)
                self._paused_until = time.monotonic() + 0.1
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError as err:
                client.close()
                log.warning("frame gate: cannot reach the learner's socket (%s)", err)
                return
            for s in (client, upstream):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client, str(address[0]), upstream, _Framing(self.max_frames, self.max_bytes))
            self._by_local_port[pipe.local_port] = pipe.address
            self._pipes[client] = self._pipes[upstream] = pipe
            self.counts["connections"] += 1

    def _interest(self, pipe: _Pipe) -> None:
        """Watch each side for reading while its inbox has room and for writing while its outbox holds bytes."""
        for sock, inbox, outbox in ((pipe.client, pipe.to_up, pipe.to_client),
                                    (pipe.upstream, pipe.to_client, pipe.to_up)):
            events = (selectors.EVENT_READ if len(inbox) < BUFFER_BYTES else 0) | (
                selectors.EVENT_WRITE if outbox else 0)
            registered = pipe.watched.get(sock, 0)
            if events == registered:
                continue
            if not events:
                self._sel.unregister(sock)
            elif not registered:
                self._sel.register(sock, events)
            else:
                self._sel.modify(sock, events)
            pipe.watched[sock] = events

    def _io(self, pipe: _Pipe, sock: socket.socket, events: int) -> None:
        from_client = sock is pipe.client
        inbox, outbox = (pipe.to_up, pipe.to_client) if from_client else (pipe.to_client, pipe.to_up)
        try:
            if events & selectors.EVENT_WRITE and outbox:
                del outbox[:sock.send(outbox)]
            data = sock.recv(READ_BYTES) if events & selectors.EVENT_READ and len(inbox) < BUFFER_BYTES else None
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset, broken pipe: the connection is over
            data = b""
        if data == b"":  # either side closed: close both (a ZeroMQ peer reconnects by itself)
            self._drop(pipe)
            return
        if data and from_client:
            reason = pipe.framing.feed(data)
            if reason is not None:
                self.counts["cut"] += 1
                log.warning("frame gate: closed the connection of %s: %s", pipe.address, reason)
                self._drop(pipe)
                return
        if data:
            inbox += data

    def _drop(self, pipe: _Pipe) -> None:
        self._by_local_port.pop(pipe.local_port, None)
        for sock in (pipe.client, pipe.upstream):
            self._pipes.pop(sock, None)
            if pipe.watched.pop(sock, 0):
                self._sel.unregister(sock)
            sock.close()
