"""The actor's endpoint: a DEALER socket to the learner, run by a background thread.

The actor's thread calls connect / lease / push / wait_acked / close. The client's thread sends what they queue,
heartbeats every `heartbeat_interval_s` (with `stats_fn()`), and keeps every pushed group until the learner
acknowledges it, resending it after an ack timeout, after a 'retry_later', and after every re-registration.

It re-registers on its own when the learner forgot it (error 'not_registered', e.g. after being declared dead),
when the learner restarted (a new session id in any reply), and when the learner went silent for
`learner_timeout_s` (then on a fresh socket). `learner_session` and `welcome` show the latest registration.
Callbacks (`on_version`) run on the client's thread: keep them short.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import zmq

from gspo_async.protocol.auth import CurveClientKeys, apply_client_keys
from gspo_async.protocol.codec import DEFAULT_FRAME_THRESHOLD, decode_from_learner, encode, normalize_group
from gspo_async.protocol.messages import (
    TRANSIENT_CODES, Ack, ErrorReply, Goodbye, Heartbeat, HeartbeatAck, Lease, LeaseRequest, PromptLease,
    ProtocolError, Register, RolloutGroup, WeightVersion, Welcome)
from gspo_async.protocol.sockets import HANDSHAKE_EVENTS, Waker, endpoint, monitor_events, parse_address
from gspo_async.protocol.ids import MAX_ACTOR_ID_CHARS, id_problem, is_id
from gspo_async.protocol.validate import check_group

log = logging.getLogger("gspo_async.protocol.client")

REGISTER_RETRY_S = 0.5
SEND_RETRY_S = 0.02  # after EAGAIN (no connection yet, or the queue to the learner is full)


class LearnerUnavailable(ConnectionError):
    """No answer from the learner in time."""


class RegistrationRefused(ConnectionError):
    """The learner (or its security handshake) refused this actor."""


@dataclass
class _Pending:
    """A pushed group waiting for its ack: its encoded frames and how often they were sent."""

    frames: list
    prompt_id: int
    max_version: int = 0  # newest weight version any of its tokens came from
    sends: int = 0


@dataclass
class _Waiter:
    request: Any
    event: threading.Event = field(default_factory=threading.Event)
    reply: Any = None


class ActorClient:
    """Connects actor `actor_id` to the learner at `address` ("host:port").

    engine: the generation engine's name (reported to the learner). curve: keys for a CURVE learner.
    stats_fn: returns the actor's statistics (name -> number) for each heartbeat; called on the client's thread.
    ack_timeout_s: resend a group not acknowledged within this time. learner_timeout_s: reconnect when the
    learner says nothing for this long (default max(5 heartbeats, 3 s)). on_ack(group_id, status): called on the
    client's thread once per pushed group when its final ack arrives (accepted, duplicate or dropped); keep it short.
    """

    def __init__(self, address: str, actor_id: str, *, engine: str = "unknown",
                 curve: Optional[CurveClientKeys] = None, stats_fn: Optional[Callable[[], dict]] = None,
                 ack_timeout_s: float = 30.0, learner_timeout_s: Optional[float] = None,
                 capabilities: Optional[dict[str, Any]] = None, frame_threshold: int = DEFAULT_FRAME_THRESHOLD,
                 on_version: Optional[Callable[[int], None]] = None,
                 on_ack: Optional[Callable[[str, str], None]] = None):
        self.host, self.port = parse_address(address)
        for name, value in (("actor_id", actor_id), ("engine", engine)):
            problem = id_problem(value, MAX_ACTOR_ID_CHARS)
            if problem is not None:
                raise ValueError(f"{name}={value!r}: {problem} (at most {MAX_ACTOR_ID_CHARS} characters)")
        if not ack_timeout_s > 0:
            raise ValueError(f"ack_timeout_s must be > 0, got {ack_timeout_s}")
        self.actor_id = actor_id  # replaced by the id the learner assigns
        self.engine, self.curve, self.stats_fn = engine, curve, stats_fn
        self.ack_timeout_s, self._learner_timeout_s = float(ack_timeout_s), learner_timeout_s
        self.capabilities = dict(capabilities or {})
        self.frame_threshold = frame_threshold
        self.on_version = on_version
        self.on_ack = on_ack
        self.instance = uuid.uuid4().hex[:16]
        self.version = 0  # latest weight version the learner announced
        self.applied_version: Optional[int] = None  # weights this actor runs (reported in heartbeats)
        self.learner_session = ""
        self.run_id = ""  # the training run of the latest Welcome ("" before it, or from a learner that names none)
        self.welcome: Optional[Welcome] = None
        self.limits = None
        self.last_lease_reason = ""
        # written by the client's thread; all keys exist from the start so readers never see the dict grow
        self.counters: Counter[str] = Counter({k: 0 for k in (
            "pushed", "resent", "ack_timeouts", "ack_accepted", "ack_duplicate", "ack_dropped", "ack_retry_later",
            "rejected", "rolled_back", "errors", "bad_replies", "registrations", "learner_restarts", "reconnects",
            "handshakes_failed", "lease_timeouts", "stats_errors", "other_run")})
        self.rejected: deque[tuple[str, str, str]] = deque(maxlen=100)  # (group_id, code, message)

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: dict[str, _Pending] = {}
        self._fresh: deque[str] = deque()  # group ids to send as soon as registered
        self._outbox: deque[Any] = deque()  # control messages from the actor's thread
        self._waiters: dict[int, _Waiter] = {}
        self._spare: list[PromptLease] = []  # leases that arrived after lease() gave up waiting
        self._rids = itertools.count(1)
        self._connect_error: Optional[Exception] = None
        self._closing: Optional[Goodbye] = None
        self._stop = False
        self._heard = time.monotonic()  # last message from the learner (creation time before the first)
        self._ctx = zmq.Context()
        self._waker = Waker(self._ctx)
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------------------------ actor's thread
    @property
    def learner_silent_s(self) -> float:
        """Seconds since the last message from the learner (since this client was made, before the first)."""
        return time.monotonic() - self._heard

    def connect(self, timeout_s: float = 30.0, stop: Optional[threading.Event] = None) -> Welcome:
        """Register with the learner; returns its Welcome. Raises RegistrationRefused or LearnerUnavailable
        (also, at once, when `stop` is set before a learner answered)."""
        if self._thread is not None:
            raise RuntimeError("connect() was already called on this client; make a new ActorClient to retry")
        self._thread = threading.Thread(target=self._run, name=f"actor-client-{self.actor_id}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.welcome is None and self._connect_error is None and time.monotonic() < deadline:
                if stop is not None and stop.is_set():
                    break
                self._cond.wait(min(0.2, max(deadline - time.monotonic(), 0.0)))  # slices: `stop` is checked
            error, welcome = self._connect_error, self.welcome
        if welcome is not None:
            return welcome
        self.close()
        if error is not None:
            raise error
        if stop is not None and stop.is_set():
            raise LearnerUnavailable(f"stopped before a learner at {self.host}:{self.port} answered")
        raise LearnerUnavailable(
            f"no answer from a learner at {self.host}:{self.port} within {timeout_s:g} s: check that the learner "
            "is running and the address is right; with CURVE keys, check actor.curve.server_public_key")

    def lease(self, n: int, timeout_s: float = 10.0, wait_s: float = 0.0,
              stop: Optional[threading.Event] = None) -> list[PromptLease]:
        """Up to `n` prompts. [] when admission is closed (see `last_lease_reason`) or no reply came in
        `timeout_s`, or when `stop` is set meanwhile (seen within 0.1 s: a stopping actor does not wait out the
        timeout of a learner that went away). wait_s > 0 lets the learner hold the request that long for admission
        to open."""
        self._require_connected()
        if n < 1:
            raise ValueError(f"lease(n={n}): ask for at least one prompt")
        with self._lock:
            if self._spare:
                spare, self._spare = self._spare[:n], self._spare[n:]
                return spare
            waiter = _Waiter(LeaseRequest(n, wait_s=max(0.0, min(wait_s, timeout_s)), rid=next(self._rids)))
            self._waiters[waiter.request.rid] = waiter
            self._outbox.append(waiter.request)
        self._waker.wake()
        deadline = time.monotonic() + timeout_s
        while not waiter.event.wait(max(min(0.1, deadline - time.monotonic()), 0.0)):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                break
        with self._lock:
            self._waiters.pop(waiter.request.rid, None)  # from now on a late answer goes to _spare
            reply = waiter.reply
        if reply is None:
            self.counters["lease_timeouts"] += 1
            self.last_lease_reason = "timeout"
            return []
        if isinstance(reply, ErrorReply):
            raise ProtocolError(reply.code, f"the learner refused a lease request: {reply.message}")
        self.last_lease_reason = reply.reason
        return reply.prompts

    def return_leases(self, prompt_ids: list[int]) -> None:
        """Hand back leased prompts this actor will not finish (they are re-issued at once)."""
        self._require_connected()
        with self._lock:
            self._outbox.append(LeaseRequest(0, returned=[int(p) for p in prompt_ids], rid=next(self._rids)))
        self._waker.wake()

    def push(self, group: RolloutGroup, group_size: Optional[int] = None) -> None:
        """Queue `group` for the learner (non-blocking). It is checked here first (ValueError / ProtocolError on
        a malformed group) and kept until acknowledged. Arrays of 1 MiB or more travel without a copy: do not
        modify them after pushing. group_size: responses of an evaluation group (learner.eval_n; default G)."""
        self._require_connected()
        if not group.run_id:  # the run this group is made for: a learner of another run refuses it by name
            group.run_id = self.run_id
        group = normalize_group(group, actor_id=self.actor_id)
        check_group(group, self.limits, max(self.version, self.applied_version or 0), group_size)
        frames = encode(group, frame_threshold=self.frame_threshold)
        with self._lock:
            if group.group_id in self._pending:
                raise ValueError(f"group {group.group_id} was pushed twice; group ids must be unique")
            self._pending[group.group_id] = _Pending(frames, group.prompt_id, group.max_version)
            self._fresh.append(group.group_id)
            self.counters["pushed"] += 1
        self._waker.wake()

    def wait_acked(self, timeout_s: float) -> bool:
        """Block until every pushed group is acknowledged (True) or `timeout_s` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout_s)

    def unacked(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self, return_leases: list[int] | tuple = (), timeout_s: float = 2.0) -> None:
        """Say goodbye (every lease this actor holds goes back to the learner's queue) and stop."""
        if self._ctx.closed:
            return
        if self._thread is not None and self._thread.is_alive():
            self._closing = Goodbye("close", [int(p) for p in return_leases])
            self._stop = True
            self._waker.wake()
            self._thread.join(timeout_s)
        self._stop = True
        if self._thread is None or not self._thread.is_alive():
            self._waker.close()
            self._ctx.destroy(linger=0)

    def _require_connected(self) -> None:
        if self.welcome is None:
            raise RuntimeError("call connect() first")
        if self._stop:
            raise RuntimeError("this client is closed")

    # --------------------------------------------------------------------------------- client's thread
    def _open_socket(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a connection that is not up: we resend ourselves
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # ZMTP pings notice a dead TCP connection
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        if ":" in self.host:
            sock.setsockopt(zmq.IPV6, 1)
        if self.curve is not None:
            apply_client_keys(sock, self.curve)
        self._monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        sock.connect(endpoint(self.host, self.port))
        self._sock = sock
        self._poller = zmq.Poller()
        for s in (sock, self._monitor, self._waker.rx):
            self._poller.register(s, zmq.POLLIN)

    def _close_socket(self, linger_ms: int = 0) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=linger_ms)

    def _run(self) -> None:
        self._open_socket()
        self._registered = False
        self._register_due: Optional[float] = time.monotonic()
        self._register_rid = 0
        self._timers: list[tuple[float, str, int]] = []  # (deadline, group id, sends) ack timeouts / retries
        self._blocked_until = 0.0
        self._next_heartbeat = math.inf
        self._last_recv = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                events = dict(self._poller.poll(max(0.0, self._next_deadline(now) - now) * 1000))
                if self._waker.rx in events:
                    self._waker.drain()
                if self._sock in events:
                    self._receive()
                if self._monitor in events:
                    self._on_monitor()
                self._timers_due(time.monotonic())
        except Exception:
            log.exception("actor client thread failed")
            with self._cond:
                self._connect_error = self._connect_error or RegistrationRefused("the client thread failed")
                self._cond.notify_all()
            raise
        finally:
            goodbye = self._closing
            if goodbye is not None and self._registered:
                self._try_send(encode(goodbye))
            self._close_socket(linger_ms=500 if goodbye is not None else 0)

    def _learner_timeout(self) -> float:
        if self._learner_timeout_s is not None:
            return self._learner_timeout_s
        interval = self.welcome.heartbeat_interval_s if self.welcome else 1.0
        return max(5 * interval, 3.0)

    def _next_deadline(self, now: float) -> float:
        deadlines = [now + 1.0, self._last_recv + self._learner_timeout()]
        if self._register_due is not None:
            deadlines.append(self._register_due)
        if self._registered:
            deadlines.append(self._next_heartbeat)
            if self._timers:
                deadlines.append(self._timers[0][0])
            if self._fresh or self._outbox:
                deadlines.append(self._blocked_until)
        return min(deadlines)

    def _try_send(self, frames: list) -> bool:
        try:
            # copy=False: large groups go without a copy (pyzmq still copies frames under 64 KiB)
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self._blocked_until = time.monotonic() + SEND_RETRY_S
            return False

    def _timers_due(self, now: float) -> None:
        if now - self._last_recv > self._learner_timeout() and (self._registered or self.welcome is not None):
            log.warning("no word from the learner at %s:%d for %.1f s; reconnecting", self.host, self.port,
                        now - self._last_recv)
            self.counters["reconnects"] += 1
            self._close_socket()
            self._open_socket()
            self._last_recv = now
            self._begin_register(now)
        if self._register_due is not None and now >= self._register_due:
            self._register_rid = next(self._rids)
            register = Register(self.actor_id, self.instance, self.engine, self._capabilities(), True,
                                self._register_rid)
            self._register_due = now + (REGISTER_RETRY_S if self._try_send(encode(register)) else SEND_RETRY_S)
        if not self._registered or now < self._blocked_until:
            return
        if now >= self._next_heartbeat:
            stats = self._stats()
            beat = Heartbeat(self._reported_version(stats), stats, self.unacked())
            if self._try_send(encode(beat)):
                self._next_heartbeat = now + self.welcome.heartbeat_interval_s
        while True:  # control messages, then groups
            with self._lock:
                if not self._outbox:
                    break
                msg = self._outbox[0]
            if not self._try_send(encode(msg)):
                return
            with self._lock:
                self._outbox.popleft()
        while self._timers and self._timers[0][0] <= now:
            _, gid, sends = heapq.heappop(self._timers)
            with self._lock:
                pending = self._pending.get(gid)
                if pending is not None and pending.sends == sends:  # no ack since that send: resend
                    self._fresh.append(gid)
                    self.counters["ack_timeouts"] += 1
        while True:
            with self._lock:
                if not self._fresh:
                    break
                gid = self._fresh[0]
                pending = self._pending.get(gid)
            if pending is not None:
                if not self._try_send(pending.frames):
                    return
                pending.sends += 1
                self.counters["resent"] += pending.sends > 1
                heapq.heappush(self._timers, (now + self.ack_timeout_s, gid, pending.sends))
            with self._lock:
                self._fresh.popleft()

    def _begin_register(self, now: float) -> None:
        if self._registered or self._register_due is None:
            self._registered = False
            self._register_due = now

    def _capabilities(self) -> dict[str, Any]:
        return {k: v for k, v in self.capabilities.items() if isinstance(v, (int, float, str, bool))}

    def _stats(self) -> dict[str, Any]:
        if self.stats_fn is None:
            return {}
        try:
            raw = self.stats_fn()
        except Exception as err:  # a broken stats function must not stop heartbeats
            self.counters["stats_errors"] += 1
            log.warning("stats_fn failed: %s", err)
            return {}
        out = {}
        for k, v in list(raw.items())[: self.limits.max_items]:
            if hasattr(v, "item"):
                v = v.item()
            if is_id(k, self.limits.max_string_bytes) and (v is None or type(v) in (int, float, bool, str)):
                out[k] = v if type(v) is not str else v[:200]
        return out

    def _reported_version(self, stats: dict[str, Any]) -> int:
        """applied_version when the actor sets it, else a numeric stats['version'], else 0."""
        if self.applied_version is not None:
            return max(0, int(self.applied_version))
        stat = stats.get("version")
        return max(0, int(stat)) if isinstance(stat, (int, float)) and math.isfinite(stat) else 0

    def _receive(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            self._last_recv = self._heard = now
            try:
                msg = decode_from_learner(frames)
            except ProtocolError as err:
                self.counters["bad_replies"] += 1
                log.warning("bad message from the learner: %s", err)
                continue
            self._dispatch(msg, now)

    def _dispatch(self, msg: Any, now: float) -> None:
        if isinstance(msg, Welcome):
            self._on_welcome(msg, now)
        elif isinstance(msg, Ack):
            self._on_ack(msg, now)
        elif isinstance(msg, Lease):
            if msg.version > self.version:  # a lease the new version admitted may overtake its announcement
                self._set_version(msg.version)
            with self._lock:
                waiter = self._waiters.get(msg.rid)
                if waiter is not None:
                    waiter.reply = msg
                    waiter.event.set()
                else:
                    self._spare.extend(msg.prompts)
        elif isinstance(msg, (HeartbeatAck, WeightVersion)):
            if self._registered and msg.session != self.learner_session:
                log.warning("the learner restarted (session %s -> %s); registering again", self.learner_session,
                            msg.session)
                self._begin_register(now)
                return
            self._set_version(msg.version)
        elif isinstance(msg, ErrorReply):
            self._on_error(msg, now)

    def _on_welcome(self, w: Welcome, now: float) -> None:
        if self._registered and w.session == self.learner_session:
            return  # a second answer (to a retried Register) of a registration we already have
        restarted = self.welcome is not None and w.session != self.learner_session
        other_run = restarted and bool(self.run_id) and w.run_id != self.run_id
        with self._cond:
            previous_run = self.run_id
            self.actor_id, self.limits, self.learner_session = w.actor_id, w.limits, w.session
            self.run_id = w.run_id
            self.welcome = w
            self._registered, self._register_due = True, None
            self._next_heartbeat = now + w.heartbeat_interval_s
            if other_run:  # a new training run on the same address: the old run's groups and leases mean nothing
                self._discard_other_run(previous_run, w.run_id)
            elif restarted:  # resumed from a checkpoint older than some of our weights: those groups cannot count
                self._discard_rolled_back(w.version)
            self._fresh = deque(self._pending)  # resend everything unacked, in push order
            waiting = [waiter.request for waiter in self._waiters.values()]  # unanswered requests: again, once
            self._outbox = deque([m for m in self._outbox if m not in waiting] + waiting)
            self.counters["registrations"] += 1
            self.counters["learner_restarts"] += restarted
            self._cond.notify_all()
        self._set_version(w.version)

    def _discard_other_run(self, old: str, new: str) -> None:
        """Drop every unacknowledged group and spare lease of run `old`: the learner now runs `new`, which never
        issued those prompts. Counted (`other_run`), said once. Call with the lock held."""
        gone = list(self._pending)
        for gid in gone:
            self.rejected.append((gid, "other_run", f"made for run {old}; the learner now runs {new}"))
        self._pending.clear()
        self._spare = []
        self.counters["other_run"] += len(gone)
        log.warning("the learner at %s:%d now runs %s (was %s): dropped %d unacknowledged group(s) of the old run; "
                    "registered afresh", self.host, self.port, new, old, len(gone))
        self._cond.notify_all()

    def _discard_rolled_back(self, version: int) -> None:
        """Drop unacked groups made by weights newer than `version`, the version a restarted learner resumed at:
        those weights were lost with the crash, so the learner would reject the groups as forged. Their prompts
        are returned so they are re-issued at once. Call with the lock held."""
        gone = {gid: p for gid, p in self._pending.items() if p.max_version > version}
        if not gone:
            return
        for gid in gone:
            del self._pending[gid]
            self.rejected.append((gid, "rolled_back", f"made by weights newer than the resumed version {version}"))
        self.counters["rolled_back"] += len(gone)
        self._outbox.append(LeaseRequest(0, returned=sorted({p.prompt_id for p in gone.values()}),
                                         rid=next(self._rids)))
        log.warning("the learner resumed at version %d: dropped %d unacknowledged groups made by newer weights and "
                    "returned their prompts", version, len(gone))
        if not self._pending:
            self._cond.notify_all()

    def _on_ack(self, ack: Ack, now: float) -> None:
        with self._cond:
            pending = self._pending.get(ack.group_id)
            if pending is None:
                return
            self.counters[f"ack_{ack.status}"] += 1
            if ack.status == "retry_later":
                heapq.heappush(self._timers, (now + ack.retry_after_s, ack.group_id, pending.sends))
                return
        if self.on_ack is not None:  # before the group leaves the pending set: wait_acked() implies it ran
            try:
                self.on_ack(ack.group_id, ack.status)
            except Exception:  # the callback's bug must not stop the client's thread
                log.exception("on_ack callback failed")
        with self._cond:
            del self._pending[ack.group_id]  # only this thread removes pending groups
            if not self._pending:  # wait_acked waits for an empty set: no wake-up per ack
                self._cond.notify_all()

    def _on_error(self, err: ErrorReply, now: float) -> None:
        if err.code == "not_registered":
            self._begin_register(now)
            return
        with self._cond:
            if err.rid and err.rid == self._register_rid and not self._registered:
                if self.welcome is None:
                    self._connect_error = RegistrationRefused(f"the learner refused registration: {err.code}: "
                                                              f"{err.message}")
                    self._cond.notify_all()
                else:
                    log.error("the learner refused re-registration: %s: %s", err.code, err.message)
                    self._register_due = now + 5.0
                return
            if err.ref and err.ref in self._pending:
                if err.code in TRANSIENT_CODES:
                    heapq.heappush(self._timers, (now + 1.0, err.ref, self._pending[err.ref].sends))
                    return
                del self._pending[err.ref]  # a final rejection: resending cannot help
                self.counters["rejected"] += 1
                self.rejected.append((err.ref, err.code, err.message))
                if not self._pending:
                    self._cond.notify_all()
                log.warning("the learner rejected group %s: %s: %s", err.ref, err.code, err.message)
                return
            waiter = self._waiters.get(err.rid) if err.rid else None
            if waiter is not None:
                waiter.reply = err
                waiter.event.set()
                return
        self.counters["errors"] += 1
        log.warning("error from the learner: %s: %s", err.code, err.message)

    def _on_monitor(self) -> None:
        for kind, _ in monitor_events(self._monitor):
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                continue
            reason = {
                zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the learner refused this actor's CURVE key (its public key is not "
                                                 "in the learner's authorized_clients)",
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security mechanism mismatch: the learner uses CURVE and this "
                                                     "actor has no keys (or the other way round)",
            }.get(kind, "the security handshake failed (wrong server public key?)")
            self.counters["handshakes_failed"] += 1
            if self.welcome is None:
                with self._cond:
                    self._connect_error = RegistrationRefused(f"{reason}; learner {self.host}:{self.port}")
                    self._cond.notify_all()
            else:
                log.warning("%s", reason)

    def _set_version(self, version: int) -> None:
        if version == self.version:
            return
        self.version = version
        if self.on_version is not None:
            try:
                self.on_version(version)
            except Exception:
                log.exception("on_version callback failed")
