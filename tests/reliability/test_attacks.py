"""The numbered attacks of a well-formed hostile client, each reproduced against a real learner process.

1. an actor id outside the telemetry rule, or one made longer than 128 characters by the learner's renaming;
2. a finite reward outside float32 (1e308); 3. a group id reused for another, fresh prompt; 4. one client asking
for 2^31-1 prompts; 5. memory: status requests from a peer that never reads, a 60 MB header of nils, hundreds of
registered ids in metrics.jsonl, 50 MB of multipart messages that never end (each connection cut by the frame
gate, protocol/gate.py); 6. side doors: the weight store's listening address, the welcome's config.

After each attack: the learner process is the one started and a legitimate actor is served (it registers, leases a
prompt and has its group accepted). Each test records what it observed (test-artifacts/reliability.json,
docs/reliability.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gspo_async.learner.fleet import MAX_ACTOR_ROWS
from gspo_async.process import rss_mb
from gspo_async.protocol.ids import MAX_ACTOR_ID_CHARS
from gspo_async.protocol.messages import (
    Ack, ErrorReply, Goodbye, Heartbeat, Lease, LeaseRequest, Register, StatusRequest, Welcome)
from tests.integration.conftest import read_jsonl, wait_for
from tests.reliability.hostile import HostilePeer, endless_multipart
from tests.reliability.test_wellformed_fuzz import RUN, _status, learner_restarts, served
from tests.support.canned import canned_group
from tests.support.raw_actor import RawActor

pytestmark = pytest.mark.slow

# heartbeat timeout 30 s: every peer of these tests stays registered while the others attack (no heartbeats)
ATTACK_RUN = [*RUN, "telemetry.log_every_s=0.5", "learner.heartbeat_timeout_s=30"]
RSS_GROWTH_MB = 64  # the bound the issue sets for each memory attack
MANY_IDS = 3 * MAX_ACTOR_ROWS
MULTIPART_BYTES = 50 << 20  # without the frame gate, this traffic grew the learner by 1.6 GB


def start(cluster_factory, extra: tuple[str, ...] = ()) -> tuple[Any, Any, str, HostilePeer, Any]:
    """A learner process answering status, and a legitimate actor (a raw peer) registered with it."""
    c = cluster_factory([*ATTACK_RUN, *extra])
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    wait_for(lambda: _status(address), 180, "the learner to answer", (learner,))
    legit = HostilePeer(address)
    welcome = legit.register("legit")
    legit.sender = welcome.actor_id
    return c, learner, address, legit, welcome


def alive_and_serving(c, learner, legit: HostilePeer, limits) -> int:
    """The learner process still runs (never restarted) and a legitimate actor gets its work accepted."""
    assert learner.poll() is None, c.dump_logs()
    groups = served(legit, limits)
    assert learner.poll() is None, c.dump_logs()
    return groups


def reply_to(peer: RawActor, timeout_s: float = 10.0) -> Any:
    reply = peer.poll(timeout_s)
    assert reply is not None, f"no reply within {timeout_s} s"
    return reply


def metrics_record_with(run_dir: Path, key: str):
    """A predicate: the newest metrics.jsonl record if it holds `key`."""
    def check():
        records = read_jsonl(run_dir / "metrics.jsonl")
        return records[-1] if records and key in records[-1] else None
    return check


def test_wellformed_attacks_1_to_4_and_6_are_refused_or_bounded_and_the_learner_serves_on(cluster_factory, record):
    c, learner, address, legit, welcome = start(cluster_factory)
    limits = welcome.limits
    peers: list[RawActor] = []
    seen: dict[str, Any] = {}
    try:
        pid = learner.pid
        # 6. side doors: the welcome carries no key path; the weight store listens on loopback only.
        for section in ("learner", "actor"):
            assert "curve" not in welcome.config.get(section, {}), welcome.config.get(section)
        store_host = listening_address(c.store_port)
        assert store_host == "127.0.0.1", store_host
        seen["weight_store_listens_on"] = store_host
        seen["welcome_key_paths"] = 0

        # 1. crash by actor id: ids outside the rule are refused; two processes asking for the same 127-character
        #    id get it and a renamed id of at most 128 characters; telemetry records the renamed one.
        for bad in ("a!b", "x" * (MAX_ACTOR_ID_CHARS + 1)):
            peer = RawActor(address)
            peers.append(peer)
            peer.send(Register(bad, "bad-instance", "raw", rid=7))
            reply = reply_to(peer)
            assert isinstance(reply, ErrorReply) and reply.code == "bad_field" and reply.rid == 7, reply
        long_id = "L" * (MAX_ACTOR_ID_CHARS - 1)
        twins = [RawActor(address), RawActor(address)]
        peers += twins
        names = [t.register(long_id, f"twin-{i}").actor_id for i, t in enumerate(twins)]
        assert names[0] == long_id and names[1] != long_id and len(names[1]) <= MAX_ACTOR_ID_CHARS, names
        for t in twins:  # alive until telemetry has written their rows
            t.send(Heartbeat(0, {}, 0, rid=1))
        wait_for(metrics_record_with(c.run_dir, f"actor/{names[1]}/alive"), 60,
                 "a metrics record with the renamed actor's row", (learner,))
        for t in twins:
            t.send(Goodbye("done", []))
        seen["renamed_id_chars"] = len(names[1])
        seen["served_after_id_attack"] = alive_and_serving(c, learner, legit, limits)

        # 2. crash by reward and 3. a group id reused for a fresh prompt.
        attacker = HostilePeer(address)
        peers.append(attacker.raw)
        attacker.register("attacker")
        (first, second, third), version = attacker.lease(3, timeout_s=60)

        def group(prompt, **change):
            g = canned_group(prompt, limits.group_size, version, "attacker", vocab_size=limits.vocab_size, length=2)
            for key, value in change.items():
                setattr(g.responses[0], key, value)
            return g

        huge = group(first, reward=1e308)
        answer = attacker.ask(huge)
        assert isinstance(answer, ErrorReply) and answer.code == "bad_number", answer
        accepted = group(second)
        assert attacker.ask(accepted) == Ack(accepted.group_id, "accepted", 0.0)
        reused = group(third)
        reused.group_id = accepted.group_id
        answer = attacker.ask(reused)
        assert isinstance(answer, ErrorReply) and answer.code == "group_id_reused", answer
        fresh = group(third)  # the prompt is not lost: under its own id its group is accepted
        assert attacker.ask(fresh) == Ack(fresh.group_id, "accepted", 0.0)
        attacker.goodbye()
        seen["reward_1e308"], seen["reused_group_id"] = "bad_number", "group_id_reused"
        # the learner trains past the refused reward: the legitimate actor's groups fill the next batches
        v_before = _status(address).version
        for _ in range(3):
            seen["served_after_group_attacks"] = alive_and_serving(c, learner, legit, limits)
        wait_for(lambda: (s := _status(address)) is not None and s.version > v_before, 60,
                 "a training step after the refused reward", (learner,))

        # 4. starvation: a hog asks for 2^31-1 prompts twice; it gets its fair share, the legitimate actor is served.
        legit.send(Register("legit", "legit-instance", "raw", rid=legit.rid()))  # live: the hog must share
        legit.wait_reply(lambda r: isinstance(r, Welcome), 30, "the legitimate actor's welcome")
        hog = HostilePeer(address)
        peers.append(hog.raw)
        hog.register("hog")
        s0 = _status(address)
        total = s0.counters["capacity"] + s0.counters["in_flight"]  # all that admission allows now
        fair = max(2, -(-total // len(s0.actors)))  # actor.prompts_per_lease=2 is the floor
        got = []
        for _ in range(2):
            rid = hog.rid()
            hog.send(LeaseRequest(2**31 - 1, wait_s=0.0, rid=rid))
            got.append(hog.wait_reply(lambda r: isinstance(r, Lease) and r.rid == rid, 30, "the hog's lease"))
        assert len(s0.actors) == 2 and total > fair, (s0.counters, [a.actor_id for a in s0.actors])
        assert 0 < len(got[0].prompts) <= fair < total, (len(got[0].prompts), fair, total)
        assert not got[1].prompts and got[1].reason == "actor_cap", got[1]
        seen.update(hog_prompts=len(got[0].prompts), hog_fair_share=fair, admission_total=total,
                    hog_second_reason=got[1].reason)
        seen["served_after_hog"] = alive_and_serving(c, learner, legit, limits)  # while the hog holds its share
        assert len(_status(address).actors) == 2  # the hog still registered, its leases held
        hog.goodbye()

        end = _status(address)
        assert learner.poll() is None and learner.pid == pid, c.dump_logs()
        assert end.counters["internal_errors"] == 0 and end.counters["timer_errors"] == 0, end.counters
    finally:
        for p in peers:
            p.close()
        legit.close()
        c.stop_all()
    restarts = learner_restarts(c.run_dir)
    assert restarts == 0, restarts
    record({**seen, "learner_restarts": restarts, "learner_alive": True})


def listening_address(port: int) -> str:
    """The local address a TCP socket listens on at `port` on this machine (/proc/net/tcp), '' if none."""
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if width == 8:
                    return ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
                return "::" if int(addr, 16) == 0 else addr
    return ""


def test_memory_attacks_5_stay_bounded_and_the_learner_serves_on(cluster_factory, record):
    c, learner, address, legit, welcome = start(cluster_factory)
    limits = welcome.limits
    peers: list[RawActor] = []
    figures: dict[str, Any] = {}
    try:
        alive_and_serving(c, learner, legit, limits)

        # Hundreds of registered ids: per-actor metric rows stay capped, the fleet numbers count them all.
        many = [RawActor(address) for _ in range(MANY_IDS)]
        peers += many
        for i, p in enumerate(many):
            p.send(Register(f"id{i:04d}", f"inst{i}", "raw", rid=1))
        for p in many:
            assert isinstance(reply_to(p, 30), Welcome)
        rec = wait_for(lambda: (r := metrics_record_with(c.run_dir, "actors/alive")()) is not None
                       and r["actors/alive"] >= MANY_IDS and r, 60, f"a metrics record counting {MANY_IDS} actors",
                       (learner,))
        rows = {k.split("/")[1] for k in rec if k.startswith("actor/")}
        assert len(rows) <= MAX_ACTOR_ROWS, len(rows)
        figures.update(registered_ids=MANY_IDS, actors_with_metric_rows=len(rows),
                       metrics_record_bytes=len(str(rec)))

        base = rss_mb(learner.pid)
        # A peer that sends status requests and never reads the replies: rate-limited, paged, queue-capped.
        flood, n_status = RawActor(address), 3000
        peers.append(flood)
        before = _status(address).counters["messages_received"]
        for i in range(n_status):
            flood.send(StatusRequest(rid=i))
        wait_for(lambda: (s := _status(address)) is not None and s.counters["messages_received"] >= before + n_status
                 and s, 60, "the learner to read the status flood", (learner,))
        status_growth = rss_mb(learner.pid) - base
        assert status_growth < RSS_GROWTH_MB, status_growth

        # A header of 60 MB of nils (under max_message_bytes): malformed, refused before msgpack builds it.
        nils = RawActor(address)
        peers.append(nils)
        count = 60 << 20
        nils.send_frames([b"\x83\xa1v\x01\xa1t\xa9heartbeat\xa5stats\xdd" + count.to_bytes(4, "big") + b"\xc0" * count])
        reply = reply_to(nils, 60)
        assert isinstance(reply, ErrorReply) and reply.code == "malformed", reply
        nil_growth = rss_mb(learner.pid) - base
        assert nil_growth < RSS_GROWTH_MB, nil_growth
        figures.update(status_requests_unread=n_status, rss_growth_status_flood_mb=round(status_growth, 1),
                       nil_header_mb=60, rss_growth_after_nil_header_mb=round(nil_growth, 1))

        # Multipart messages that never end (empty frames with the "more" flag), from connection after connection:
        # each is cut after MAX_FRAMES frames (libzmq alone held 64 bytes per 2-byte frame, without bound).
        base, sent, connections, t0 = rss_mb(learner.pid), 0, 0, time.monotonic()
        while sent < MULTIPART_BYTES:
            sent += endless_multipart(c.port, MULTIPART_BYTES - sent)
            connections += 1
        multipart_s = time.monotonic() - t0
        # every connection is cut, but perhaps the last: it may end (having sent the remainder) before the bound
        cut = wait_for(lambda: (s := _status(address)) is not None and s.counters["connections_cut"] >= connections - 1
                       and s, 30, "the learner to count its cut connections", (learner,)).counters["connections_cut"]
        multipart_growth = rss_mb(learner.pid) - base
        assert multipart_growth < RSS_GROWTH_MB, (multipart_growth, sent, cut)
        figures.update(multipart_connections=connections, multipart_connections_cut=cut, multipart_bytes_sent=sent,
                       multipart_s=round(multipart_s, 1),
                       rss_growth_multipart_mb=round(multipart_growth, 1))
        for p in many:
            p.send(Goodbye("done", []))
        figures["served_after_memory_attacks"] = alive_and_serving(c, learner, legit, limits)
        assert _status(address).counters["internal_errors"] == 0
    finally:
        for p in peers:
            p.close()
        legit.close()
        c.stop_all()
    restarts = learner_restarts(c.run_dir)
    assert restarts == 0, restarts
    record({**figures, "learner_restarts": restarts, "learner_alive": True})
