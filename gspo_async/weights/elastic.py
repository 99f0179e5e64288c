"""Elastic weight sync: the learner broadcasts full weights to whichever actors are members right now.

One long-lived TCPStore, owned by the learner, carries everything but the payload. Each publish is a
*round* with a sequence number `seq`; a *generation* `gen` is one process group over a fixed member
list. Store keys:

    sync/latest              seq of the newest round
    sync/<seq>               JSON record: seq, version, gen, members, new_group, bucket plan
    sync/<seq>/ready/<id>    member has seen the record and is about to build the new group
    sync/<seq>/go            "1": build generation `gen` now; "0": the round was abandoned
    sync/<seq>/ack/<id>      member received every bucket
    sync/<seq>/status        "ok" or "failed", written when the round is over
    notify/<id>              queue of round numbers listing actor <id> (and wake-ups from `stop`)
    present/<id>             set by actor <id>'s subscriber when it starts listening (WeightPublisher.present)
    pg/<gen>/...             rendezvous of generation `gen`'s process group

Rounds run one at a time (publish returns only when its round is over), so a member that sees
several notifications needs only the newest. The learner keeps one process group per member list it
sends to (a *cohort*: the fleet may be split into several, see learner/weight_sync.py), so a round to
one cohort leaves the others' groups alone. A round to a member list that has no group yet, or whose
previous round failed, forms generation gen + 1 with ranks 1..n in member order (the learner is rank
0), after aborting every group that shares a member with it (an actor is in one group at a time).
Every wait is bounded by `timeout_s`; a failed round aborts its group, which unblocks the survivors,
and the next round forms a fresh generation. Who is alive is decided elsewhere (the learner's
connections and heartbeats): given an `alive` callable, a round stops waiting the moment a member it
waits for is no longer alive, and names it in `missing`, so a dead actor costs one failed round,
never `timeout_s`. That holds inside the process group's rendezvous too: it runs on a thread of its
own (`GroupFormation`) on both sides; the learner gives up on it when a member is gone and marks the
round failed, and the survivors, polling that status, give up as well.

Receivers get every round into fresh buffers, so an engine can apply a complete version at a safe
point (between generation batches) while the next one is already arriving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from gspo_async.weights.buckets import (Bucket, NamedTensors, flatten_bucket, named_items, plan_buckets,
                                        plan_from_json, plan_to_json, state_checksum, unflatten_bucket)
from gspo_async.weights.groups import (GroupAbandoned, GroupFormation, abort_group, broadcast, check_backend,
                                       default_bind, join_formations, listen_socket, wait_work)

log = logging.getLogger(__name__)

KEY_LATEST = "sync/latest"
WAKE = b"wake"
CLOSED = b"closed"
KEEP_ROUNDS = 4  # store keys of older rounds are deleted
IDLE_WAIT_S = 600.0  # a subscriber's idle wait re-arms after this long (a store timeout logs a warning)
# A subscriber's first connection to the weight store may take this long: it happens at start-up, and a loaded
# machine can be slow to complete a loopback connect. Its store operations then use timeout_s.
CONNECT_S = 30.0
ALIVE_POLL_S = 0.02  # how often a round that waits on members asks whether they are still alive


def _key(seq: int, part: str = "", actor_id: str = "") -> str:
    return "/".join(p for p in ("sync", str(seq), part, actor_id) if p)


def _check_actor_id(actor_id: object) -> str:
    if not isinstance(actor_id, str) or not actor_id or "/" in actor_id or actor_id != actor_id.strip():
        raise ValueError(f"actor id must be a non-empty string without '/' or surrounding spaces, got {actor_id!r}")
    return actor_id


def _check_timeout(timeout_s: object) -> float:
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


@dataclass
class PublishResult:
    """Outcome of one publish. `nbytes` is the payload each member received; times are seconds."""

    ok: bool
    seq: int
    version: int
    gen: int
    members: list[str]
    nbytes: int
    seconds: float
    group_seconds: float = 0.0  # part of `seconds` spent forming a new group
    error: str | None = None
    missing: list[str] = field(default_factory=list)  # members that never got ready or never acknowledged
    checksum: str | None = None  # state_checksum of what was sent, when asked for


@dataclass
class ReceivedWeights:
    """One complete weight version, held in buffers nobody else writes to.

    `tensors` maps names to views into per-bucket buffers (shapes and dtypes as the learner sent
    them, on the subscriber's device). `checksum` is `state_checksum(tensors)` or None when disabled.
    """

    version: int
    tensors: dict[str, torch.Tensor]
    checksum: str | None
    seq: int
    gen: int
    nbytes: int
    seconds: float  # from reading the round's record to the last bucket


class _RoundFailed(Exception):
    def __init__(self, message: str, missing: list[str] | None = None):
        super().__init__(message)
        self.missing = missing or []


class WeightPublisher:
    """Learner side: owns the store and sends each version to the current members (rank 0).

    Call `publish` from one thread (the training thread); it is serialised by a lock anyway.
    `port=0` picks a free port, exposed as `.port`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float, bucket_bytes: int,
                 backend: str = "gloo", device: torch.device | str = "cpu", bind_host: str | None = None):
        self.timeout_s = _check_timeout(timeout_s)
        if not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be a positive int (bytes), got {bucket_bytes!r}")
        self.bucket_bytes = bucket_bytes
        self.backend = backend
        self.device = check_backend(backend, device)
        self.host = host
        self.bind_host = default_bind(host, bind_host)
        # the store listens on the learner's own address only (see listen_socket)
        fd, port = listen_socket(host, port)
        self._store: dist.TCPStore | None = dist.TCPStore(
            host, port, None, True, timedelta(seconds=self.timeout_s), wait_for_workers=False, master_listen_fd=fd)
        self.port: int = port
        self._store.set(KEY_LATEST, "0")
        self._lock = threading.Lock()
        self._seq = 0
        self._gen = 0
        self._groups: dict[tuple[str, ...], tuple[int, dist.ProcessGroup]] = {}  # member list -> (gen, live group)
        self._plan_cache: tuple[tuple, list[Bucket], list[dict]] | None = None  # (signature, plan, its JSON)
        self._staging: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self._round_members: dict[int, list[str]] = {}
        self._known: set[str] = set()  # every actor ever listed: told when the store closes
        self._abandoned: list[GroupFormation] = []  # rendezvous given up on; joined at close

    @property
    def generation(self) -> int:
        """Number of the newest group generation formed (0 before the first)."""
        return self._gen

    def publish(self, named_tensors: NamedTensors, version: int, members: Iterable[str], *,
                checksum: bool = False, alive: Callable[[], Iterable[str]] | None = None) -> PublishResult:
        """Broadcast every tensor to exactly `members` (actor ids; ranks 1..n in this order).

        Never raises for a peer's failure: returns `ok=False` with the error within a few
        `timeout_s`. `members=[]` only records the version. `checksum=True` also hashes what was
        sent (costs a pass over the weights). `alive()` (the actor ids alive now) is polled while
        the round waits for members to get ready or acknowledge: a member that leaves it fails the
        round at once, listed in `missing`.
        """
        members = [_check_actor_id(m) for m in members]
        if len(set(members)) != len(members):
            raise ValueError(f"members must be unique actor ids, got {members}")
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        tensors = dict(named_items(named_tensors))
        with self._lock:
            if self._store is None:
                raise RuntimeError("publish() after close(): create a new WeightPublisher")
            return self._round(tensors, version, members, checksum, alive)

    def _round(self, tensors: dict[str, torch.Tensor], version: int, members: list[str],
               checksum: bool, alive: Callable[[], Iterable[str]] | None = None) -> PublishResult:
        store = self._store
        start = time.perf_counter()
        self._seq += 1
        seq = self._seq
        cohort = tuple(members)
        new_group = bool(members) and cohort not in self._groups
        if new_group:  # its members leave whatever group they were in: one group per actor at a time
            self._drop_groups([c for c in self._groups if not set(c).isdisjoint(cohort)])
            self._gen += 1
        gen = self._groups[cohort][0] if cohort in self._groups else self._gen
        buckets, plan = self._plan(tensors) if members else ([], [])
        nbytes = sum(b.nbytes for b in buckets)
        digest = state_checksum(tensors) if checksum else None
        record = {"seq": seq, "version": version, "gen": gen, "members": members,
                  "new_group": new_group, "nbytes": nbytes, "plan": plan}
        store.set(_key(seq), json.dumps(record))
        store.set(KEY_LATEST, str(seq))
        for m in members:
            store.queue_push(f"notify/{m}", str(seq))
        self._known.update(members)
        self._round_members[seq] = members
        self._forget(seq - KEEP_ROUNDS)

        result = PublishResult(ok=True, seq=seq, version=version, gen=gen, members=members,
                               nbytes=nbytes, seconds=0.0, checksum=digest)
        phase = "forming group"
        try:
            if members:
                if new_group:
                    result.group_seconds = self._form_group(seq, members, alive)
                phase = f"sending {len(buckets)} buckets"
                self._send(self._groups[cohort][1], buckets, tensors)
                phase = "waiting for acknowledgements"
                missing, gone = self._wait_keys([_key(seq, "ack", m) for m in members], alive)
                if gone:
                    raise _RoundFailed(f"members {gone} left (connection closed or heartbeat lost) before "
                                       "acknowledging", gone)
                if missing:
                    raise _RoundFailed(f"no acknowledgement from {missing} within {self.timeout_s:g}s", missing)
        except (_RoundFailed, RuntimeError, TimeoutError) as e:
            self._drop_groups([cohort])
            store.set(_key(seq, "status"), "failed")
            result.ok, result.error = False, f"{phase} (generation {gen}): {type(e).__name__}: {e}"
            result.missing = getattr(e, "missing", [])
            log.warning("weight sync round %d (version %d, gen %d, members %s) failed: %s",
                        seq, version, gen, members, result.error)
        except BaseException:  # interrupted mid-round: leave no half-used group behind
            self._drop_groups([cohort])
            store.set(_key(seq, "status"), "failed")
            raise
        else:
            store.set(_key(seq, "status"), "ok")
        result.seconds = time.perf_counter() - start
        return result

    def _plan(self, tensors: dict[str, torch.Tensor]) -> tuple[list[Bucket], list[dict]]:
        signature = (self.bucket_bytes, tuple((n, tuple(t.shape), t.dtype) for n, t in tensors.items()))
        if self._plan_cache is None or self._plan_cache[0] != signature:
            buckets = plan_buckets(tensors, self.bucket_bytes)
            self._plan_cache = (signature, buckets, plan_to_json(buckets))
        return self._plan_cache[1], self._plan_cache[2]

    def _form_group(self, seq: int, members: list[str], alive: Callable[[], Iterable[str]] | None) -> float:
        missing, gone = self._wait_keys([_key(seq, "ready", m) for m in members], alive)
        if gone:
            self._store.set(_key(seq, "go"), "0")
            raise _RoundFailed(f"members {gone} left (connection closed or heartbeat lost) before getting ready for "
                               f"generation {self._gen}", gone)
        if missing:
            self._store.set(_key(seq, "go"), "0")
            raise _RoundFailed(f"members {missing} did not get ready for generation {self._gen} "
                               f"within {self.timeout_s:g}s", missing)
        self._store.set(_key(seq, "go"), "1")
        start = time.perf_counter()
        # The rendezvous runs on a thread of its own: a member that dies inside it (after "ready") would hold it
        # for timeout_s, so the round stops waiting as soon as `alive` no longer lists a member. The survivors see
        # the round's "failed" status and give up on this generation too.
        formation = GroupFormation(self.backend, self.host, self.port, f"pg/{self._gen}", 0, len(members) + 1,
                                   self.timeout_s, self.device, self.bind_host)
        gone: list[str] = []

        def members_gone() -> str | None:
            if alive is not None:
                living = set(alive())
                gone[:] = [m for m in members if m not in living]
            return f"members {gone} left while generation {self._gen} formed" if gone else None
        try:
            self._groups[tuple(members)] = (self._gen, formation.wait(members_gone, ALIVE_POLL_S))
        except GroupAbandoned as e:
            self._abandoned = [f for f in self._abandoned if not f.join(0)] + [formation]
            raise _RoundFailed(f"{e} (connection closed or heartbeat lost)", list(gone)) from None
        return time.perf_counter() - start

    def _send(self, group: dist.ProcessGroup, buckets: list[Bucket], tensors: dict[str, torch.Tensor]) -> None:
        # Two staging buffers: bucket i+1 is packed while bucket i is on the wire.
        in_flight: deque[dist.Work] = deque()
        for i, bucket in enumerate(buckets):
            if len(in_flight) == 2:
                wait_work(in_flight.popleft(), self.timeout_s, self.backend)
            in_flight.append(broadcast(group, self._packed(i % 2, bucket, tensors)))
        while in_flight:
            wait_work(in_flight.popleft(), self.timeout_s, self.backend)

    def _packed(self, slot: int, bucket: Bucket, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        if len(bucket.names) == 1:  # a lone tensor that is already a usable buffer is sent as is
            t = tensors[bucket.names[0]].detach()
            if t.is_contiguous() and t.device == self.device:
                return t.view(-1)
        buf = self._staging.get((slot, bucket.dtype))
        if buf is None or buf.numel() < bucket.numel:
            buf = torch.empty(bucket.numel, dtype=bucket.dtype, device=self.device)
            self._staging[(slot, bucket.dtype)] = buf
        return flatten_bucket(bucket, tensors, out=buf)

    def present(self, actor_ids: Iterable[str]) -> list[str]:
        """The actors among `actor_ids` whose subscriber has started listening (ever). Listing an actor before
        that would fail the round for everyone: it registers with the learner before its receiver is up."""
        with self._lock:
            if self._store is None:
                return []
            return [a for a in actor_ids if self._store.check([f"present/{a}"])]

    def _wait_keys(self, keys: list[str], alive: Callable[[], Iterable[str]] | None = None
                   ) -> tuple[list[str], list[str]]:
        """Wait until all keys (``.../<actor id>``) exist, at most timeout_s. Returns (missing, gone): the actor
        ids whose key is missing at the timeout, or, as soon as one of them is no longer in `alive()`, those that
        left (the wait stops there). Without `alive` it is one store wait."""
        if alive is None:
            try:
                self._store.wait(keys, timedelta(seconds=self.timeout_s))
                return [], []
            except dist.DistStoreError:
                return [k.rsplit("/", 1)[1] for k in keys if not self._store.check([k])], []
        deadline = time.monotonic() + self.timeout_s
        pending = list(keys)
        while True:
            pending = [k for k in pending if not self._store.check([k])]
            if not pending:
                return [], []
            waiting = [k.rsplit("/", 1)[1] for k in pending]
            living = set(alive())
            gone = [a for a in waiting if a not in living]
            if gone:
                return waiting, gone
            if time.monotonic() >= deadline:
                return waiting, []
            time.sleep(ALIVE_POLL_S)

    def retain(self, cohorts: Iterable[Iterable[str]]) -> None:
        """Abort the groups of every member list not in `cohorts` (lists the caller no longer sends to)."""
        keep = {tuple(c) for c in cohorts}
        with self._lock:
            self._drop_groups([c for c in self._groups if c not in keep])

    def _drop_groups(self, cohorts: list[tuple[str, ...]]) -> None:
        for cohort in cohorts:
            _, group = self._groups.pop(cohort, (None, None))
            abort_group(group)
        if cohorts:
            self._staging.clear()  # buffers may still be referenced by aborted work

    def _forget(self, seq: int) -> None:
        members = self._round_members.pop(seq, None)
        if members is None:
            return
        keys = [_key(seq), _key(seq, "go"), _key(seq, "status")]
        keys += [_key(seq, part, m) for m in members for part in ("ready", "ack")]
        for k in keys:
            self._store.delete_key(k)

    def close(self) -> None:
        """Abort every group and shut the store down. Actors that were ever members are told
        (their `receive` raises ConnectionError); others find the store gone (the same error)."""
        with self._lock:
            self._drop_groups(list(self._groups))
            if self._store is not None:
                for m in self._known:  # waiting members end cleanly instead of meeting a dead socket
                    self._store.queue_push(f"notify/{m}", CLOSED)
            self._store = None  # the server goes: abandoned rendezvous fail at once and their threads end
            self._abandoned = join_formations(self._abandoned, self.timeout_s + 1)


class WeightSubscriber:
    """Actor side: receives every round that lists `actor_id`, skipping the others.

    Run `receive` in a loop on one background thread (see `WeightReceiverThread`); `stop` and
    `close` may be called from any thread. A round that fails returns None and the subscriber is
    ready for the next one. If the learner goes away, `receive` raises ConnectionError.
    """

    def __init__(self, host: str, port: int, actor_id: str, *, timeout_s: float,
                 device: torch.device | str = "cpu", backend: str = "gloo", bind_host: str | None = None,
                 compute_checksum: bool | None = None):
        self.actor_id = _check_actor_id(actor_id)
        self.timeout_s = _check_timeout(timeout_s)
        self.backend = backend
        self.device = check_backend(backend, device)
        self.bind_host = default_bind(host, bind_host)
        # hashing costs a pass over the weights (about 1 GB/s on one core): on by default on CPU only
        self.compute_checksum = self.device.type == "cpu" if compute_checksum is None else compute_checksum
        self.failed_rounds = 0
        timeout = timedelta(seconds=self.timeout_s)
        self._host, self._port = host, port
        self._abandoned: list[GroupFormation] = []  # rendezvous given up on; joined at close
        connect = timedelta(seconds=max(self.timeout_s, CONNECT_S))
        try:
            self._store: dist.TCPStore | None = dist.TCPStore(host, port, None, False, connect)
            self._waker: dist.TCPStore | None = dist.TCPStore(host, port, None, False, connect)  # only stop() uses it
        except dist.DistError as err:  # refused or timed out: the learner is gone, or the address is wrong
            raise ConnectionError(f"the learner's weight store at {host}:{port} did not answer within "
                                  f"{connect.total_seconds():g}s ({type(err).__name__}: {str(err).splitlines()[0]})"
                                  ) from None
        for store in (self._store, self._waker):
            store.set_timeout(timeout)
        self._notify = f"notify/{self.actor_id}"
        self._lock = threading.Lock()  # guards the group and the waker against stop() from another thread
        self._receiving = threading.Lock()
        self._stop = threading.Event()
        self._group: dist.ProcessGroup | None = None
        self._gen: int | None = None
        self._min_seq = 0
        self._store_gone = False  # the learner closed or vanished: nothing left to tell it
        try:
            self.start_after()
            self._store.set(f"present/{self.actor_id}", "1")  # listening from now on: the learner may list us
        except dist.DistError as err:
            self._store_gone = True
            self.close(timeout_s=0)
            raise ConnectionError(f"the learner's weight store at {host}:{port} went away while this actor "
                                  f"subscribed ({type(err).__name__}: {str(err).splitlines()[0]})") from None

    def start_after(self) -> int:
        """Ignore rounds that ended before now (read from sync/latest); return that round number.

        The newest round is still joined if it lists this actor and has not finished yet.
        """
        latest = int(self._store.get(KEY_LATEST))
        self._min_seq = latest
        return latest

    def receive(self, stop_event: threading.Event | None = None) -> ReceivedWeights | None:
        """Block until the next round listing this actor and return its weights.

        Returns None when that round failed or when stopped (`stop()`, or `stop_event` set and
        `stop()` or a new round woke the wait).
        """
        if not self._receiving.acquire(blocking=False):
            raise RuntimeError("receive() is already running in another thread; use one receiving thread")
        try:
            if self._store is None:
                raise RuntimeError("receive() after close(): create a new WeightSubscriber")
            while True:
                seq = self._next_round(stop_event)
                if seq is None:
                    return None
                record = self._record(seq)
                if record is None or self.actor_id not in record["members"]:
                    continue
                if self._store.check([_key(seq, "status")]):
                    continue  # we came too late: that round is over
                return self._join(record)
        except dist.DistNetworkError as e:
            self._store_gone = True
            raise ConnectionError(f"weight store unreachable (learner gone?): {e}") from e
        finally:
            self._receiving.release()

    def _stopped(self, stop_event: threading.Event | None) -> bool:
        return self._stop.is_set() or (stop_event is not None and stop_event.is_set())

    def _next_round(self, stop_event: threading.Event | None) -> int | None:
        store = self._store
        while not self._stopped(stop_event):
            store.set_timeout(timedelta(seconds=IDLE_WAIT_S))
            try:
                raw = store.queue_pop(self._notify, block=True)
            except dist.DistNetworkError:
                raise
            except dist.DistStoreError:
                continue  # idle for IDLE_WAIT_S: wait again
            finally:
                store.set_timeout(timedelta(seconds=self.timeout_s))
            newest = -1
            while True:  # drain: only the newest round can still be running
                if raw == CLOSED:
                    self._store_gone = True
                    raise ConnectionError("the learner closed the weight store")
                newest = newest if raw == WAKE else max(newest, int(raw))
                if store.queue_len(self._notify) == 0:
                    break
                raw = store.queue_pop(self._notify, block=False)
            if newest >= self._min_seq and not self._stopped(stop_event):
                return newest
        return None

    def _record(self, seq: int) -> dict | None:
        if not self._store.check([_key(seq)]):
            return None  # deleted: long over
        raw = self._store.get(_key(seq))
        try:
            return json.loads(raw)
        except ValueError:  # deleted between the check and the read (the store answers empty): long over too
            return None

    def _join(self, record: dict) -> ReceivedWeights | None:
        store, seq, gen = self._store, record["seq"], record["gen"]
        start = time.perf_counter()
        if record["new_group"]:
            self._drop_group()
            store.set(_key(seq, "ready", self.actor_id), "1")
            try:  # the learner answers within its own timeout; allow for its group build too
                store.wait([_key(seq, "go")], timedelta(seconds=2 * self.timeout_s + 1))
            except dist.DistNetworkError:
                raise
            except dist.DistStoreError:
                return self._fail(seq, "the learner never answered 'go'")
            if store.get(_key(seq, "go")) != b"1":
                return self._fail(seq, "the learner abandoned this generation")
            # on a thread of its own: if a member dies inside the rendezvous, the learner calls the round off
            # (its status appears) and this actor is free for the next round instead of waiting out timeout_s
            formation = GroupFormation(self.backend, self._host, self._port, f"pg/{gen}",
                                       record["members"].index(self.actor_id) + 1, len(record["members"]) + 1,
                                       self.timeout_s, self.device, self.bind_host)

            def called_off() -> str | None:
                if self._stop.is_set():
                    return "stopped"
                if store.check([_key(seq, "status")]):
                    return "the learner called the round off (a member left while the group formed)"
                return None
            try:
                group = formation.wait(called_off)
            except GroupAbandoned as e:
                self._abandoned = [f for f in self._abandoned if not f.join(0)] + [formation]
                return None if self._stop.is_set() else self._fail(seq, f"generation {gen}: {e}")
            except RuntimeError as e:
                return self._fail(seq, f"forming generation {gen} failed: {e}")
            with self._lock:
                if self._stop.is_set():  # stop() came while the group formed: leave now
                    abort_group(group)
                    return None
                self._group, self._gen = group, gen
        elif self._group is None or self._gen != gen:
            return self._fail(seq, f"the round reuses generation {gen}, which this actor is not in")

        buckets = plan_from_json(record["plan"])
        buffers = [torch.empty(b.numel, dtype=b.dtype, device=self.device) for b in buckets]
        try:
            works = [broadcast(self._group, buf) for buf in buffers]
            for work in works:
                wait_work(work, self.timeout_s, self.backend)
        except (RuntimeError, TimeoutError) as e:
            return self._fail(seq, f"receiving failed: {type(e).__name__}: {e}")
        store.set(_key(seq, "ack", self.actor_id), "1")
        tensors = {name: view for b, buf in zip(buckets, buffers) for name, view in unflatten_bucket(b, buf)}
        return ReceivedWeights(version=record["version"], tensors=tensors,
                               checksum=state_checksum(tensors) if self.compute_checksum else None,
                               seq=seq, gen=gen, nbytes=record["nbytes"], seconds=time.perf_counter() - start)

    def _fail(self, seq: int, reason: str) -> None:
        log.info("actor %s: weight sync round %d failed: %s", self.actor_id, seq, reason)
        self.failed_rounds += 1
        self._drop_group()
        return None

    def _drop_group(self) -> None:
        with self._lock:
            abort_group(self._group)
            self._group, self._gen = None, None

    @property
    def stopped(self) -> bool:
        """True once `stop` or `close` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Make a blocked or later `receive` return None soon; aborts a round in progress."""
        self._stop.set()
        with self._lock:
            abort_group(self._group)
            if self._waker is not None and not self._store_gone:
                try:
                    self._waker.queue_push(self._notify, WAKE)
                except RuntimeError:
                    pass  # store gone: receive() fails on its own

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop, wait for `receive` to return (default: 3 x timeout_s) and drop the store clients.

        Returns False if `receive` did not return in time (its clients are then left alone, so stop
        the receiving thread before the interpreter exits: a thread holding a TCPStore at exit can
        abort the process), or if a rendezvous this actor gave up on (a member died while a group
        formed) still waits for its timeout after the same wait.
        """
        self.stop()
        if not self._receiving.acquire(timeout=3 * self.timeout_s + 1 if timeout_s is None else timeout_s):
            return False
        try:
            with self._lock:
                self._store, self._waker = None, None
        finally:
            self._receiving.release()
        # an abandoned rendezvous ends at its timeout, or at once when the learner's store is gone
        self._abandoned = join_formations(self._abandoned, self.timeout_s + 1 if timeout_s is None else timeout_s)
        return not self._abandoned
