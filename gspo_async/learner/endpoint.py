"""The learner's endpoint: one ROUTER socket and the Coordinator, served by a background thread.

The learner's main thread only calls take_groups / set_version / mark_trained / counters; the socket thread
decodes, validates and answers every message. Every message gets exactly one reply except Goodbye. Nothing is
dropped silently: ROUTER_MANDATORY makes a reply to a vanished peer an error we count (the actor resends what
matters: an unacked group, an unanswered lease request), and a Lease that cannot be delivered is returned.

Memory stays bounded whatever the actors do: leases bound the groups in flight (and one actor's share of them),
`max_buffered_groups` bounds the buffer ('retry_later' beyond), the frame gate (protocol/gate.py) closes a
connection whose message passes MAX_FRAMES frames or twice limits.max_message_bytes before libzmq buffers it, each
peer's queue is capped by the high-water marks, status replies are paged and rate-limited, and an unauthenticated
CURVE connection is dropped after HANDSHAKE_IVL_MS.

Fault isolation: an exception while handling one peer's message costs that message (an `internal` error reply and
a counter), and an exception in a timer (lease expiry, parked leases, version announcements) costs that pass of
the timer (counted, logged): neither reaches the loop, so no message can stop the server.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any, Optional

import zmq

from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.evaluation import FleetEvaluation
from gspo_async.learner.guards import (
    HANDSHAKE_IVL_MS, STATUS_BURST, STATUS_RATE_PER_S, Parked, RateLimitedLog, TokenBucket, actor_config, wire_rate)
from gspo_async.learner.reachability import Reachability
from gspo_async.protocol.auth import CurveServerKeys, apply_server_keys, check_bind, is_loopback, start_authenticator
from gspo_async.protocol.codec import DEFAULT_FRAME_THRESHOLD, decode, encode
from gspo_async.protocol.gate import MAX_FRAMES, FrameGate, source_fd
from gspo_async.protocol.messages import (
    STATUS_PAGE_MAX, TO_LEARNER, Ack, ActorStatus, ErrorReply, Goodbye, Heartbeat, HeartbeatAck, Lease, LeaseRequest,
    Limits, PromptLease, ProtocolError, Register, RolloutGroup, StatusReply, StatusRequest, WeightVersion, Welcome)
from gspo_async.protocol.sockets import HANDSHAKE_EVENTS, Waker, endpoint, monitor_events, peer_address
from gspo_async.protocol.validate import check_group

log = logging.getLogger("gspo_async.learner.endpoint")

WELCOME_KEYS = ("config", "model_files", "weight_store")


class LearnerServer:
    """Binds host:port (ROUTER) and serves actors for `coordinator`.

    limits: what arriving messages may contain (group_size must equal the coordinator's G).
    welcome_extra: {'config': resolved run config (dict), 'model_files': {name: bytes}, 'weight_store': (host, port)}.
    curve: server keys (required for a non-loopback host unless insecure=True).
    heartbeat_interval_s: how often actors should heartbeat (the coordinator's heartbeat_timeout_s declares death).
    session: id of this server instance (default: random), changes on every restart.
    """

    def __init__(self, coordinator: Coordinator, *, host: str = "127.0.0.1", port: int = 0, limits: Limits,
                 welcome_extra: Optional[dict[str, Any]] = None, curve: Optional[CurveServerKeys] = None,
                 insecure: bool = False, heartbeat_interval_s: float = 1.0, session: Optional[str] = None,
                 frame_threshold: int = DEFAULT_FRAME_THRESHOLD, retry_after_s: float = 1.0, run_id: str = "",
                 frame_gate: bool = True,
                 evaluation: Optional[FleetEvaluation] = None):
        check_bind(host, curve, insecure)
        extra = dict(welcome_extra or {})
        unknown = set(extra) - set(WELCOME_KEYS)
        if unknown:
            raise ValueError(f"welcome_extra has unknown keys {sorted(unknown)}; allowed: {list(WELCOME_KEYS)}")
        if limits.group_size != coordinator.group_size:
            raise ValueError(f"limits.group_size={limits.group_size} differs from the coordinator's "
                             f"group_size={coordinator.group_size}")
        if not heartbeat_interval_s > 0 or heartbeat_interval_s >= coordinator.heartbeat_timeout_s:
            raise ValueError(f"heartbeat_interval_s={heartbeat_interval_s} must be > 0 and below the heartbeat "
                             f"timeout ({coordinator.heartbeat_timeout_s} s)")
        ws = extra.get("weight_store")
        self.coordinator, self.host, self.limits, self.curve = coordinator, host, limits, curve
        self._requested_port = port
        self.port: int = port
        self.session = session or uuid.uuid4().hex[:16]
        self.run_id = run_id  # the training run (kept across resumes); "" = groups are not checked
        # evaluation leases and groups (learner/evaluation.py); without one, one with no sets (never leases)
        self.evaluation = evaluation or FleetEvaluation({}, n=1, lease_timeout_s=coordinator.lease_timeout_s)
        self.heartbeat_interval_s, self.retry_after_s = float(heartbeat_interval_s), float(retry_after_s)
        self.frame_threshold = frame_threshold
        self.frame_gate = frame_gate  # relay connections through protocol/gate.py (bounds a multipart message)
        self._gate: Optional[FrameGate] = None
        self._config = actor_config(dict(extra.get("config") or {}))
        self._model_files = dict(extra.get("model_files") or {})
        self._weight_store = (str(ws[0]), int(ws[1])) if ws else None
        self._lock = threading.RLock()  # guards the coordinator (socket thread and learner thread)
        self._cond = threading.Condition(self._lock)
        self._peers: dict[bytes, str] = {}  # routing id -> actor id
        self._routes: dict[str, bytes] = {}  # actor id -> routing id
        # A closed connection (a dead process) is seen on the monitor socket by descriptor: mapped to its actor here
        self._fds: dict[bytes, int] = {}  # routing id -> socket descriptor of its last message
        self._reach = Reachability(heartbeat_interval_s, coordinator.heartbeat_timeout_s, coordinator.clock)
        self._parked: dict[bytes, Parked] = {}
        self._announce: Optional[int] = None
        self._wanted = 0  # groups take_groups still waits for
        # message-level counts, written by the socket thread; every key exists from the start so that readers
        # on other threads never see the dict change size
        self.transport: Counter[str] = Counter({k: 0 for k in (
            "messages_received", "messages_ok", "replies_failed", "handshakes_ok", "handshakes_failed",
            "internal_errors", "timer_errors", "status_refused", "connections_closed", "connections_cut",
            "no_source_fd", *(f"received_{t}" for t in TO_LEARNER))})
        # status for any peer only where the handshake authenticates (CURVE) or only local users can connect
        # (NULL on loopback); elsewhere (learner.insecure) only registered actors may ask
        self._status_open = curve is not None or is_loopback(host)
        self._status_bucket = TokenBucket(STATUS_RATE_PER_S, STATUS_BURST)
        self._warn = RateLimitedLog()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._tick_s = min(0.1, coordinator.heartbeat_timeout_s / 10)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Bind (errors such as a port in use raise here) and start serving."""
        if self._thread is not None:
            raise RuntimeError("LearnerServer.start() called twice")
        self._ctx = zmq.Context()
        self._auth = start_authenticator(self._ctx, self.curve) if self.curve else None
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        # A frame over twice the limit makes libzmq drop the connection before anything is buffered; messages
        # between the limit and that are read and answered 'too_large' (decode checks the sum over frames).
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_message_bytes)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        if ":" in self.host:
            sock.setsockopt(zmq.IPV6, 1)
        if self.curve:
            apply_server_keys(sock, self.curve)
        try:
            # behind the frame gate, the socket listens on a loopback port and the gate on the public address
            sock.bind(endpoint(*(("127.0.0.1", "*") if self.frame_gate else (self.host, self._requested_port or "*"))))
            self.port = int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
            if self.frame_gate:
                self._gate = FrameGate(self.host, self._requested_port, self.port, max_frames=MAX_FRAMES,
                                       max_bytes=2 * self.limits.max_message_bytes)
                self.port = self._gate.port
        except (zmq.ZMQError, OSError) as err:
            sock.close(linger=0)
            self._close_context()
            raise OSError(f"cannot bind the learner to {self.host}:{self._requested_port} ({err}); is another "
                          "learner running? pick another learner.port or 0 for a free one") from None
        if self._gate is not None:
            self._gate.start()
        self._monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS | zmq.EVENT_DISCONNECTED)
        self._sock = sock
        self._waker = Waker(self._ctx)
        self._thread = threading.Thread(target=self._run, name="learner-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port (the coordinator and its state stay usable)."""
        if self._thread is None:
            return
        self._stopping = True
        self._waker.wake()
        self._thread.join(timeout=10)
        with self._cond:
            self._cond.notify_all()
        if self._gate is not None:
            self._gate.close()
            self._gate = None
        self._close_context()
        self._thread = None

    def _close_context(self) -> None:
        if getattr(self, "_auth", None) is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.destroy(linger=0)

    def __enter__(self) -> "LearnerServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- the learner's side
    def take_groups(self, n: int, timeout_s: float) -> list[RolloutGroup]:
        """Up to `n` groups for training, waiting up to `timeout_s` for them. Groups staler than max_staleness at
        the current version are dropped (counted) on the way. Mark them trained (or dropped) afterwards."""
        deadline = time.monotonic() + timeout_s
        out: list[RolloutGroup] = []
        with self._cond:
            while True:
                out += self.coordinator.take(n - len(out))
                remaining = deadline - time.monotonic()
                if len(out) >= n or remaining <= 0 or self._thread is None:
                    break
                # wake up once that many are buffered, not at every group (one consumer thread)
                self._wanted = min(n - len(out), self.coordinator.max_buffered_groups)
                self._cond.wait(remaining)
            self._wanted = 0
        self._poke()  # stale drops may have re-opened admission for parked lease requests
        return out

    def allow_version(self, version: int) -> None:
        """Weights `version` are about to leave the learner: from now on accept groups whose spans name it.
        Call it before broadcasting the weights and `set_version` after, so that an actor fast enough to use the
        new weights before `set_version` is not taken for a forger."""
        self._locked(self.coordinator.allow_version, version)

    def set_fleet_version(self, version: int) -> None:
        """A broadcast of weights `version` succeeded: admission may count from it (Coordinator.capacity)."""
        self._locked(self.coordinator.set_fleet_version, version)
        self._poke()

    def set_version(self, version: int) -> None:
        """Weights `version` are published: widen admission (by groups_per_step per version), make it the
        staleness reference, and announce it to every actor."""
        with self._lock:
            self.coordinator.set_version(version)
            self._announce = version
        self._poke()

    def evaluation_rounds(self, start_version: Optional[int] = None) -> list[dict[str, Any]]:
        """Queue an evaluation round for weights `start_version` on the fleet (when given; parked lease requests
        take it at the next tick); returns the rounds finished since the last call (`FleetEvaluation.completed`)."""
        with self._lock:
            if start_version is not None:
                self.evaluation.start(start_version)
            return self.evaluation.completed()

    def mark_trained(self, groups: list[RolloutGroup]) -> None:
        self._locked(self.coordinator.mark_trained, groups)
        self._poke()

    def put_back(self, groups: list[RolloutGroup]) -> None:
        """Taken groups the learner stopped before training: buffered again, first in line."""
        self._locked(self.coordinator.put_back, groups)

    def mark_dropped(self, groups: list[RolloutGroup], reason: str) -> None:
        """Taken groups the learner decided not to train on (e.g. a filter); counted under `reason`."""
        self._locked(self.coordinator.mark_dropped, groups, reason)
        self._poke()

    def live_actor_ids(self) -> list[str]:
        return self._locked(self.coordinator.live_actor_ids)

    def reachable_actor_ids(self) -> list[str]:
        """The live actors worth listing in a weight broadcast (learner/reachability.py)."""
        with self._lock:
            return self._reach.reachable(self.coordinator.live_actor_ids(self._reach.heard_within_s))

    def actors(self) -> list[dict[str, Any]]:
        return self._locked(self.coordinator.actors)

    def counters(self) -> dict[str, Any]:
        """The coordinator's counters plus message-level ones (messages_received, messages_ok, replies_failed,
        handshakes_failed, ...)."""
        with self._lock:
            out = self.coordinator.counters()
        out.update(self.transport)
        return out

    def ages(self) -> dict[str, float]:
        """Mean and max age of in-flight leases and buffered groups, seconds (telemetry names)."""
        return self._locked(self.coordinator.ages)

    def accounting(self) -> dict[str, Any]:
        return self._locked(self.coordinator.accounting)

    def status(self, rid: int = 0, offset: int = 0, limit: int = STATUS_PAGE_MAX) -> StatusReply:
        """The fleet as a StatusReply: live actors [offset, offset + limit) (at most STATUS_PAGE_MAX), version,
        prompt accounting and the flat counters. Reading it changes nothing (no contact time, no membership)."""
        with self._lock:
            actors, accounting = self.coordinator.actors(), self.coordinator.accounting()
            counters, version = self.coordinator.counters(), self.coordinator.version
        total = len(actors)
        actors = actors[offset: offset + min(limit, STATUS_PAGE_MAX)]
        rows = [ActorStatus(a["actor_id"], a["engine"], int(a["version"]), wire_rate(a["tokens_per_s"]),
                            int(a["leases"]), max(0.0, a["last_contact_s"]), max(0.0, a["registered_s"]),
                            int(a["groups_accepted"]), int(a["unacked"]), str(a["info"].get("address", ""))[:200])
                for a in actors]
        flat = {k: v for k, v in {**counters, **self.transport}.items() if type(v) in (int, float, bool)}
        return StatusReply(self.session, version, rows, accounting, flat, rid=rid, total_actors=total, offset=offset)

    def state_dict(self) -> dict[str, Any]:
        return self._locked(self.coordinator.state_dict)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._locked(self.coordinator.load_state_dict, state)

    def close_intake(self) -> None:
        """Grant no more leases and accept no more groups (Coordinator.close_intake): call before the final save."""
        self._locked(self.coordinator.close_intake)

    def drain_journal(self) -> list[dict[str, Any]]:
        """Prompts that ended since the last drain (Coordinator.drain_journal)."""
        return self._locked(self.coordinator.drain_journal)

    def snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The coordinator's state and the journal drained at the same instant: a checkpoint's state and the ledger
        lines that bring the ledger up to exactly that state."""
        with self._lock:
            return self.coordinator.state_dict(), self.coordinator.drain_journal()

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def _poke(self) -> None:
        if self._thread is not None:
            self._waker.wake()

    # ------------------------------------------------------------------------------------- socket thread
    def _run(self) -> None:
        poller = zmq.Poller()
        for s in (self._sock, self._waker.rx, self._monitor):
            poller.register(s, zmq.POLLIN)
        next_tick = 0.0
        try:
            while not self._stopping:
                now = time.monotonic()
                wait = max(0.0, min([next_tick - now] + [p.deadline - now for p in self._parked.values()]))
                events = dict(poller.poll(wait * 1000))
                if self._waker.rx in events:
                    self._waker.drain()
                if self._announce is not None:  # before any lease that the new version admitted
                    self._guarded(self._broadcast_version)
                if self._monitor in events:  # first: a descriptor closed and reused is seen closed before reuse
                    self._guarded(self._on_monitor)
                if self._sock in events:
                    for _ in range(512):  # then look at timers again
                        try:
                            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
                        del frames  # a large message is freed now, not when the next one arrives
                now = time.monotonic()
                if now >= next_tick:
                    self._guarded(self._tick)
                    next_tick = now + self._tick_s
                if self._announce is not None:
                    self._guarded(self._broadcast_version)
                if self._parked:
                    self._guarded(self._serve_parked, now)
        except Exception:  # the thread must never die silently
            log.exception("learner server thread failed; actors will time out")
            raise
        finally:
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._waker.close()

    def _guarded(self, fn: Any, *args: Any) -> None:
        """Run one timer pass; a failure costs that pass (counted, logged), never the server."""
        try:
            fn(*args)
        except Exception:
            self.transport["timer_errors"] += 1
            log.exception("learner server: %s failed; the server goes on", getattr(fn, "__name__", fn))

    def _tick(self) -> None:
        if self._gate is not None:  # connections the frame gate closed for an oversized message
            self.transport["connections_cut"] = self._gate.counts["cut"]
        with self._lock:
            events = self.coordinator.tick()
            self.evaluation.tick()
        for actor_id in events["dead"]:
            log.warning("actor %s silent for > %.1f s: declared dead, its leases are re-issued", actor_id,
                        self.coordinator.heartbeat_timeout_s)
            self._forget(actor_id)
        if events["expired"]:
            log.info("%d lease(s) expired and go back to the queue", len(events["expired"]))

    def _forget(self, actor_id: str) -> None:
        routing = self._routes.pop(actor_id, None)
        with self._lock:
            self._reach.forget(actor_id)
            self.evaluation.forget(actor_id)
        if routing is not None:
            self._peers.pop(routing, None)
            self._parked.pop(routing, None)
            self._fds.pop(routing, None)

    def _on_monitor(self) -> None:
        for kind, value in monitor_events(self._monitor):
            if kind == zmq.EVENT_DISCONNECTED:
                self._on_disconnected(int(value))
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.transport["handshakes_ok"] += 1
            else:
                self.transport["handshakes_failed"] += 1
                self._warn.warn("handshake", "a client failed the security handshake (no key, unauthorised key "
                                             "or wrong server key) and was refused")

    def _on_disconnected(self, fd: int) -> None:
        for routing in [r for r, f in self._fds.items() if f == fd]:
            del self._fds[routing]
            self._connection_lost(routing)

    def _connection_lost(self, routing: bytes) -> None:
        """`routing`'s connection is gone: its actor (if that is its current connection) leaves the broadcasts."""
        actor_id = self._peers.get(routing)
        if actor_id is None or self._routes.get(actor_id) != routing:
            return
        with self._lock:
            self._reach.closed(actor_id)
            released = self.coordinator.orphan(actor_id)  # re-issued now, not after the heartbeat timeout
        self.transport["connections_closed"] += 1
        log.info("actor %s: connection closed; its %d leases are re-issued and it is left out of weight "
                 "broadcasts until it is heard from again", actor_id, len(released))

    def _address(self, frame: zmq.Frame) -> str:
        """The sender's IP (behind the frame gate: the client the gate relays for it)."""
        return self._gate.client_of(source_fd(frame)) if self._gate is not None else peer_address(frame)

    def _send(self, routing: bytes, msg: Any) -> bool:
        frames = encode(msg, frame_threshold=self.frame_threshold)
        try:
            # copy=False: large headers go without a copy (pyzmq still copies frames under 64 KiB)
            self._sock.send_multipart([routing, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as err:
            # EAGAIN: the peer's queue is full; EHOSTUNREACH (ROUTER_MANDATORY): the peer is gone, before its close
            # event was read (which then no longer names it). Either way the actor resends what it still needs.
            self.transport["replies_failed"] += 1
            if err.errno == zmq.EHOSTUNREACH:
                self._connection_lost(routing)
                actor_id = self._peers.pop(routing, None)
                if actor_id is not None and self._routes.get(actor_id) == routing:
                    del self._routes[actor_id]
            return False

    # ------------------------------------------------------------------------------------ message handling
    def _handle(self, frames: list) -> None:
        routing, body = frames[0].bytes, frames[1:]
        self.transport["messages_received"] += 1
        actor_id = self._peers.get(routing)
        self._fds[routing] = fd = source_fd(body[0])
        if fd < 0 and not self.transport["no_source_fd"]:
            self.transport["no_source_fd"] += 1
            log.warning("this libzmq does not report a message's socket (ZMQ_SRCFD): a dead actor leaves weight "
                        "broadcasts only when heartbeats declare it dead (learner.heartbeat_timeout_s)")
        if actor_id in self._reach.cut:  # (the lock only for a cut actor: this runs for every message)
            with self._lock:
                self._reach.heard(actor_id)
        try:
            msg = decode(body, limits=self.limits, accept=TO_LEARNER)
            self.transport[f"received_{type(msg).TYPE}"] += 1
            if isinstance(msg, Register):
                self._on_register(routing, msg, self._address(body[0]))
            elif isinstance(msg, StatusRequest):  # before the membership check: a status query is not an actor
                self._on_status(routing, actor_id, msg)
            else:
                with self._lock:
                    alive = actor_id is not None and self.coordinator.is_alive(actor_id)
                    if alive:
                        self.coordinator.touch(actor_id)
                if not alive:
                    raise ProtocolError("not_registered", "this connection is not registered (or was declared "
                                                          "dead): send register, then resend",
                                        ref=getattr(msg, "group_id", ""), msg_type=type(msg).TYPE,
                                        rid=getattr(msg, "rid", 0))
                if isinstance(msg, RolloutGroup):
                    self._on_group(routing, actor_id, msg)
                elif isinstance(msg, LeaseRequest):
                    self._on_lease_request(routing, actor_id, msg)
                elif isinstance(msg, Heartbeat):
                    with self._lock:
                        self.coordinator.heartbeat(actor_id, msg.version, msg.stats, msg.unacked)
                        version = self.coordinator.version
                    self._send(routing, HeartbeatAck(version, self.session, rid=msg.rid))
                elif isinstance(msg, Goodbye):
                    with self._lock:
                        self._return(actor_id, msg.return_leases)
                        returned = self.coordinator.goodbye(actor_id)
                    self._forget(actor_id)
                    log.info("actor %s left (%s); %d lease(s) go back to the queue", actor_id, msg.reason or "goodbye",
                             len(returned))
            self.transport["messages_ok"] += 1
        except ProtocolError as err:
            self._reject(routing, actor_id, body, err)
        except Exception as err:  # a bug must cost one message, never the server
            self.transport["internal_errors"] += 1
            with self._lock:
                self.coordinator.count_rejected("internal", False)
            log.exception("internal error handling a message from %s", actor_id or routing.hex())
            self._send(routing, ErrorReply("internal", f"{type(err).__name__} in the learner; resend later"))

    def _on_status(self, routing: bytes, actor_id: Optional[str], msg: StatusRequest) -> None:
        if not self._status_open:
            with self._lock:
                registered = actor_id is not None and self.coordinator.is_alive(actor_id)
            if not registered:
                self.transport["status_refused"] += 1
                raise ProtocolError("not_registered", "on an unauthenticated learner only registered actors may ask "
                                                      "for its status", msg_type=msg.TYPE, rid=msg.rid)
        if not self._status_bucket.take():
            self.transport["status_refused"] += 1
            raise ProtocolError("rate_limited", f"more than {STATUS_RATE_PER_S:g} status requests per second; ask "
                                                "again later", msg_type=msg.TYPE, rid=msg.rid)
        self._send(routing, self.status(msg.rid, msg.offset, msg.limit))

    def _reject(self, routing: bytes, actor_id: Optional[str], body: list, err: ProtocolError) -> None:
        with self._lock:
            self.coordinator.count_rejected(err.code, err.msg_type == "rollout_group")
        sender = actor_id or f"unregistered peer {routing.hex()}"
        address = self._address(body[0]) if body else ""
        self._warn.warn(err.code, f"rejected {err.msg_type or 'message'} from {sender}"
                                  f"{' at ' + address if address else ''}: {err}")
        self._send(routing, ErrorReply(err.code, err.message[:4000], ref=err.ref, rid=err.rid))

    def _on_register(self, routing: bytes, msg: Register, address: str) -> None:
        with self._lock:
            requested = msg.actor_id
            previous = self._peers.get(routing)
            if previous is not None and self.coordinator.instance_of(previous) == msg.instance:
                requested = previous  # the same process registering again on the same connection
            elif previous is not None:  # another process behind the same routing id: the old one left
                self.coordinator.goodbye(previous)
                self._forget(previous)
            info = dict(msg.capabilities, address=address) if address else dict(msg.capabilities)
            actor_id = self.coordinator.register(requested, msg.instance, msg.engine, info)
            version = self.coordinator.version
        old = self._routes.get(actor_id)
        if old is not None and old != routing:  # a reconnect from a new socket: forget the old connection
            self._peers.pop(old, None)
            self._parked.pop(old, None)
        self._peers[routing], self._routes[actor_id] = actor_id, routing
        with self._lock:
            self._reach.forget(actor_id)
        log.info("actor %s registered (engine %s%s)", actor_id, msg.engine, f", {address}" if address else "")
        self._send(routing, Welcome(
            actor_id=actor_id, session=self.session, version=version, config=self._config,
            model_files=self._model_files if msg.want_files else {}, weight_store=self._weight_store,
            heartbeat_interval_s=self.heartbeat_interval_s, lease_timeout_s=self.coordinator.lease_timeout_s,
            limits=self.limits, rid=msg.rid, run_id=self.run_id))

    def _on_group(self, routing: bytes, actor_id: str, group: RolloutGroup) -> None:
        if group.run_id and self.run_id and group.run_id != self.run_id:  # before the version checks: not forgery
            raise ProtocolError("other_run", f"group {group.group_id} is from run {group.run_id}, this is run "
                                f"{self.run_id}: drop it (the actor of a finished run)", ref=group.group_id,
                                msg_type=RolloutGroup.TYPE)
        with self._lock:
            allowed = self.coordinator.allowed_version
        size = self.evaluation.group_size(group.prompt_id)  # None: not an evaluation prompt this learner issued
        check_group(group, self.limits, allowed, size)  # the ceiling only grows, so a pass stays a pass
        with self._lock:
            status = (self.coordinator if size is None else self.evaluation).offer(actor_id, group)
            if status == "accepted" and self.coordinator.buffered >= self._wanted:
                self._cond.notify_all()
        self._send(routing, Ack(group.group_id, status, self.retry_after_s if status == "retry_later" else 0.0))

    def _on_lease_request(self, routing: bytes, actor_id: str, req: LeaseRequest) -> None:
        with self._lock:
            if req.returned:
                self._return(actor_id, req.returned)
        held = self._parked.pop(routing, None)
        if held is not None:  # a new request replaces a held one, which still gets its (empty) answer
            self._send(routing, self._lease_reply([], "admission", held.rid))
        n = min(req.n, self.limits.max_lease_prompts)
        if n == 0 or not self._grant(routing, actor_id, req.rid, n, final=req.wait_s <= 0):
            if n:
                self._parked[routing] = Parked(actor_id, req.rid, n, time.monotonic() + req.wait_s)
            else:
                self._send(routing, self._lease_reply([], "", req.rid))

    def _grant(self, routing: bytes, actor_id: str, rid: int, n: int, final: bool) -> bool:
        """Lease up to n prompts and reply; with nothing to grant, reply only if `final` or exhausted."""
        with self._lock:  # evaluation prompts first (outside admission); a reply holds one kind only
            prompts = self.evaluation.lease(actor_id, n)
            prompts, reason = (prompts, "") if prompts else self.coordinator.lease(actor_id, n)
        if not prompts and not final and reason != "exhausted":
            return False
        if not self._send(routing, self._lease_reply(prompts, reason, rid)) and prompts:
            with self._lock:  # undeliverable: the prompts go back at once instead of waiting for the timeout
                self._return(actor_id, [p.prompt_id for p in prompts])
        return True

    def _return(self, actor_id: str, prompt_ids: list[int]) -> None:
        """Leases the actor hands back, training and evaluation ones (each side ignores the other's ids)."""
        self.coordinator.return_leases(actor_id, prompt_ids)
        self.evaluation.return_leases(actor_id, prompt_ids)

    def _lease_reply(self, prompts: list, reason: str, rid: int) -> Lease:
        return Lease([PromptLease(p.prompt_id, p.tokens, p.answer, p.meta, getattr(p, "eval_set", ""))
                      for p in prompts],
                     expires_in_s=self.coordinator.lease_timeout_s, version=self.coordinator.version,
                     reason=reason, rid=rid)

    def _serve_parked(self, now: float) -> None:
        for routing, p in list(self._parked.items()):
            if self._grant(routing, p.actor_id, p.rid, p.n, final=now >= p.deadline):
                del self._parked[routing]

    def _broadcast_version(self) -> None:
        with self._lock:
            version, self._announce = self._announce, None
        for routing in list(self._peers):
            self._send(routing, WeightVersion(version, self.session))
